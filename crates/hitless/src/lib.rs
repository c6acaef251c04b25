//! # hitless: rotate TLS credentials without a restart and without a failed handshake
//!
//! Short-lived certificates are written to disk again and again by an agent (OpenBao/Vault
//! Agent, the kubelet, certbot). A service that reads its certificate once must restart for
//! every renewal. `hitless` reloads credentials while the service runs: new handshakes get the
//! new credential, open connections keep theirs, a half-written or broken file never replaces a
//! good one, and the handshake path stays as cheap as static rustls.
//!
//! ## Design
//!
//! A credential flows one way through the crate:
//!
//! 1. [`source`](IdentitySource): files on disk → PEM sections (blocks in any order, CRLF, blocks
//!    run together on one line as a one-line agent template renders them);
//! 2. [`Identity`]: a validated chain + key (the key must match the leaf, the leaf must be
//!    within its validity period, the chain is ordered leaf → issuers);
//! 3. [`Snapshot`]: the last known good value with its generation, kept in an `ArcSwap`;
//! 4. change detection ([`Detection`]: watch, poll, manual) only says "look again", on a
//!    background thread, never on the handshake path;
//! 5. the rustls adapters ([`IdentityResolver`]) read the snapshot with one atomic load.
//!
//! ## Guarantees and their costs
//!
//! - **Hitless**: a connection keeps the `CertifiedKey` it started with; every handshake that
//!   starts after a swap gets the new one.
//! - **Consistent**: certificate and key are read as one unit: the files' identities (device,
//!   inode, size, mtime) are taken before and after reading and must not have changed, and the
//!   key must match the leaf. A key/leaf mismatch during a rotation (new certificate, old key)
//!   means "not yet": it is retried after the quiet period (default 200 ms) and reported only if
//!   it persists.
//! - **Last known good**: missing, empty, truncated, unparsable, mismatched, expired or
//!   not-yet-valid input never replaces what is serving; it is recorded in [`Status`], logged
//!   with the file and the reason, announced as an [`Event`], and retried.
//! - **Cheap**: `resolve` costs one atomic load and an `Arc` clone: no file-system call, no
//!   lock, no allocation. Reading files, parsing and validating happen on the detector thread.
//!
//! ## Quick start
//!
//! ```no_run
//! use hitless::{IdentitySource, ReloadingIdentity};
//!
//! # fn main() -> Result<(), hitless::Error> {
//! let identity = ReloadingIdentity::builder(IdentitySource::bundle("/run/secrets/identity.pem"))
//!     .build()?; // fails with the file and the reason if there is no good identity
//! let config = rustls::ServerConfig::builder()
//!     .with_no_client_auth()
//!     .with_cert_resolver(identity.resolver());
//! // hand `config` to tokio-rustls, hyper, axum, tonic...; rotations need nothing more.
//! # let _ = config; Ok(()) }
//! ```
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod credential;
pub mod detect;
mod error;
mod identity;
mod reload;
mod rustls;
mod snapshot;
mod source;
mod trust;

pub use crate::rustls::{
    ClientConfigBuilder, ClientIdentityResolver, IdentityResolver, ReloadingClientConfig,
    ReloadingServerConfig, ReloadingServerVerifier, ServerConfigBuilder, SniResolver,
};
pub use credential::{
    IdentityBuilder, MemberOptions, Reload, ReloadingIdentity, ReloadingTrust, ServerIdentities,
    ServerIdentitiesBuilder, TrustBuilder,
};
pub use detect::Detection;
pub use error::Error;
pub use identity::{CertInfo, Identity};
pub use snapshot::{Event, EventCallback, Health, LastError, Snapshot, Status};
pub use source::{IdentitySource, Password};
pub use trust::{CrlInfo, Trust, TrustSource};
