//! # hitless: rotate TLS credentials without a restart and without a failed handshake
//!
//! Short-lived certificates are issued by an internal CA (OpenBao/Vault PKI, cert-manager, ACME)
//! and written to disk again and again by an agent (OpenBao/Vault Agent, the kubelet, certbot).
//! A service that reads its certificate once must restart for every renewal: connections are
//! severed, the service is briefly down, and a fleet renewed at once restarts at once. `hitless`
//! reloads TLS identities (certificate chain + key), trust bundles and CRLs while the service
//! runs, and hands them to rustls: new handshakes get the new credential, open connections keep
//! theirs, a half-written or broken file never replaces a good one, and the handshake path stays
//! as cheap as static rustls.
//!
//! ## Quick start: the recommended set-up
//!
//! Build each side *from the credentials*: a server from its identities and the client CAs it
//! trusts, a client from the CAs it trusts and its identities. Rotations, trust changes,
//! resumption and the CertificateRequest's CA names are then handled; nothing else reloads.
//!
//! ```
//! use hitless::{
//!     IdentitySource, ReloadingClientConfig, ReloadingIdentity, ReloadingServerConfig,
//!     ReloadingTrust, TrustSource,
//! };
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let dir = tempfile::tempdir()?;
//! # // What an agent does: write a certificate and its key, then rename over the old file.
//! # let renew = || -> Result<(), Box<dyn std::error::Error>> {
//! #     let issued = rcgen::generate_simple_self_signed(vec!["localhost".to_string()])?;
//! #     let pem = issued.cert.pem() + &issued.signing_key.serialize_pem();
//! #     std::fs::write(dir.path().join(".identity.pem.tmp"), pem)?;
//! #     std::fs::rename(dir.path().join(".identity.pem.tmp"), dir.path().join("identity.pem"))?;
//! #     std::fs::write(dir.path().join("ca.pem"), issued.cert.pem())?;
//! #     Ok(())
//! # };
//! # renew()?;
//! let path = dir.path().join("identity.pem"); // e.g. /run/secrets/identity.pem
//! let ca = dir.path().join("ca.pem"); // e.g. /run/secrets/ca.pem (+ CRLs: `.with_crls(..)`)
//! // Each fails with the file and the reason unless there is a good credential to start with.
//! let identity = ReloadingIdentity::builder(IdentitySource::bundle(&path)).build()?;
//! let trust = ReloadingTrust::builder(TrustSource::cas([&ca])).build()?;
//!
//! // A server requiring client certificates from `trust`:
//! let server = ReloadingServerConfig::builder(&identity).client_trust(&trust).build()?;
//! // A client trusting `trust`, presenting `identity` when asked:
//! let client = ReloadingClientConfig::builder(&trust)
//!     .identities(vec![identity.clone()])
//!     .build()?;
//! // Per connection: `server.current()` / `client.current()` (one atomic load), or, with
//! // feature `tokio`, `hitless::TlsAcceptor::new(server)` as the accept step.
//! let (_server_config, _client_config) = (server.current(), client.current());
//!
//! renew()?; // the agent writes a new certificate: the watcher sees it within milliseconds
//! identity.reload()?; // (or look now, e.g. on SIGHUP)
//! assert_eq!(identity.status().generation, 2);
//! # Ok(()) }
//! ```
//!
//! A fixed `rustls::ServerConfig` can still take [`ReloadingIdentity::resolver`] as its
//! certificate resolver, but then only the identity reloads. The `examples/`
//! directory has a recipe for each common stack, each run by the test suite through a rotation:
//!
//! | example | what it shows |
//! |---|---|
//! | `tokio_rustls_server.rs` | the plain accept loop every other server is built on |
//! | `axum_mtls.rs` | axum 0.8 with a reloading identity *and* reloading client-CA verification |
//! | `axum_server_mtls.rs` | axum-server (which owns its accept loop): `RustlsConfig::reload_from_config` driven by [`ReloadingServerConfig::subscribe`] |
//! | `tonic_mtls.rs` | a tonic gRPC server and client, both with reloading mutual TLS |
//! | `hyper_client.rs` | a hyper-util client whose connector follows a [`ReloadingClientConfig`] |
//! | `reqwest_client.rs` | reqwest with one fixed `ClientConfig` that reloads inside ([`ClientIdentityResolver`], [`ReloadingServerCertVerifier`]) |
//!
//! ## Design
//!
//! A credential flows one way through the crate, and each stage knows only the one before it:
//!
//! 1. **source** ([`IdentitySource`], [`TrustSource`], [`Password`]): where bytes come from. A
//!    certificate + key pair of files, one bundle, a PKCS#12 keystore; PEM blocks in any order,
//!    CRLF, blocks run together on one line as a one-line agent template renders them;
//!    symlinks as the Kubernetes `..data` swap and certbot's `live/` use them.
//! 2. **identity / trust** ([`Identity`], [`Trust`]): a validated value. An identity is an
//!    ordered chain whose leaf matches the key and that a peer accepts short of its trust
//!    anchor (signatures, validity periods, CA flags, extendedKeyUsage for its [`Role`]); a
//!    trust is a set of CAs and CRLs with the rustls verifiers already built from them.
//! 3. **snapshot** ([`Snapshot`]): the last known good value with its generation, kept in an
//!    `ArcSwap`. Only a fully read and validated value becomes a snapshot.
//! 4. **detection** ([`Detection`]): *when* to look at the files again; it only ever says "look
//!    again", on a background thread (or inline, at most once per TTL, in `on-handshake` mode).
//! 5. **rustls adapters**: [`IdentityResolver`] and [`SniResolver`] (servers),
//!    [`ClientIdentityResolver`] (clients), [`ReloadingServerCertVerifier`], and whole
//!    configurations that follow a trust bundle ([`ReloadingServerConfig`],
//!    [`ReloadingClientConfig`]). They read snapshots; they never touch the disk.
//!
//! The handles an application holds ([`ReloadingIdentity`], [`ServerIdentities`],
//! [`ReloadingTrust`]) tie a source, its snapshot and its detector together. They are cheap to
//! clone; the detector runs while any clone, resolver or configuration made from it is alive,
//! and its thread is stopped and joined when the last one is dropped.
//!
//! ## Sources that are not files
//!
//! A source that knows when it has something new (the SPIFFE Workload API stream, an ACME
//! client) needs no detector: [`ReloadingIdentity::pushed`] and [`ReloadingTrust::pushed`]
//! return the ordinary handle and a publisher ([`IdentityPublisher`], [`TrustPublisher`]) that
//! the source keeps. Each value it publishes goes through stages 2 to 5 above exactly as a
//! file's contents do (content hash, validation, snapshot, generation, events, status), a
//! refused one is reported while the last good value keeps serving, and `report_outage` shows
//! a broken stream in [`Status::outage`] without replacing anything. The handles work with
//! every configuration and resolver; the handshake path does not change.
//!
//! ## Guarantees
//!
//! - **Hitless**: a connection keeps the `CertifiedKey` it started with; every handshake that
//!   starts after a swap gets the new one. Nothing is closed or restarted.
//! - **Consistent**: certificate and key are read as one unit: the files' identities (device,
//!   inode, size, mtime) are taken before and after reading and must not have changed, and the
//!   key must match the leaf. A mismatch during a rotation (new certificate, old key) means "not
//!   yet": it is retried after the quiet period (default 200 ms) and reported only if it
//!   persists.
//! - **Last known good**: missing, empty, truncated, unparsable, mismatched, expired or
//!   not-yet-valid input, or a chain that does not verify, never replaces what is serving; it is recorded in [`Status`], logged
//!   with the file and the reason, announced as an [`Event`], and retried with backoff.
//!   Identical content is never swapped in again (a content hash decides).
//! - **Trust means what it says**: with [`ReloadingServerConfig`] and
//!   [`ReloadingClientConfig`], after a CA bundle or CRL change no new handshake and no resumed
//!   session gets in under the old verdict: the peer's certificate is verified against the
//!   trust current *when it is verified*, whatever configuration the connection was accepted
//!   with, and sessions made before the change no longer resume (see the cost below).
//! - **Cheap**: the handshake path does no file-system call, takes no lock and does not
//!   allocate beyond an `Arc` clone. Reading, parsing and validating happen on the detector
//!   thread.
//!
//! ## Costs
//!
//! **On the handshake path.** [`IdentityResolver`]'s `resolve` is one atomic load (arc-swap's
//! `load`) and one `Arc` clone (an atomic increment): the same order of cost as rustls'
//! own fixed resolver. [`SniResolver`] adds one hash lookup (two for a wildcard) in an index
//! rebuilt on every reload. [`ReloadingServerConfig::current`] and
//! [`ReloadingClientConfig::current`] are one atomic load and one `Arc` clone per connection.
//! [`ClientIdentityResolver`] is one atomic load per identity it considers;
//! [`ReloadingServerCertVerifier`] is one atomic load in front of the WebPKI verification rustls
//! does anyway. Measured against static rustls by the `hitless-bench` crate of this
//! repository (in-memory handshakes, interleaved rounds, with and without a rotation every
//! 100 ms).
//!
//! **Per reload**, on the detector thread: `stat` and read each file, a SHA-256 of the
//! contents (unchanged content stops here), parse, check the key against the leaf, build the
//! rustls `CertifiedKey` (or, for a trust bundle, the verifiers); then one atomic store. An old
//! key stays in memory only as long as connections made with it are open.
//!
//! **Per detection mode**:
//!
//! | mode | threads | cost while nothing changes | time to notice a change |
//! |---|---|---|---|
//! | [`Watch`](Detection::Watch) (default) | one detector thread per handle (a [`ServerIdentities`] set shares one) and notify's inotify thread | none: it sleeps on inotify; one inotify instance per handle, one watch per parent directory and symlink hop | milliseconds |
//! | [`Poll`](Detection::Poll) | one detector thread per handle | one `stat` per file and symlink hop per interval (±10% jitter) | up to the interval |
//! | [`OnHandshake`](Detection::OnHandshake) | none long-lived (a trust change is loaded on a thread that ends with the reload) | a clock read per handshake; once per TTL, one caller `stat`s the files; on a change an identity is read and validated inline by that handshake, a trust bundle on the short-lived thread | up to the TTL, and only when handshakes happen |
//! | [`Manual`](Detection::Manual) | none | none | when you call `reload()` |
//!
//! **Per trust change and per rotation**: a new `ServerConfig`/`ClientConfig` is built (new
//! verifier CA names, sessions bound to the new trust generation and rotation epoch) and
//! swapped in. rustls does not verify certificates on a resumed session, so sessions made
//! before the change are neither handed out nor decrypted by any configuration: every peer
//! pays one full handshake after a trust change or a rotation of a server identity followed
//! with `new_sessions_on_rotation`, or of a client identity of a [`ReloadingClientConfig`].
//! Resumption between changes works as usual.
//!
//! ## Choosing a detection mode
//!
//! - **`Watch`** (default) for files on a local file system or a Kubernetes volume: renames,
//!   `..data` swaps, certbot relinks and in-place writes are all seen at once. Each watching
//!   handle uses one inotify instance (`fs.inotify.max_user_instances`, often 128 per user).
//! - **`Poll`** where inotify says nothing: NFS and other network or FUSE file systems, files
//!   written by another host or container runtime that does not propagate events; or where a
//!   predictable, tiny background cost matters more than latency.
//! - **`OnHandshake`** where a long-lived background thread is unwelcome (a sandbox, a process
//!   that forks). The handshake that notices an identity change pays for reading and validating
//!   the files (in an async server, on an executor thread); a trust change is read on a thread
//!   started for that one reload, because the trust is checked from
//!   `ReloadingServerConfig::current()`, on accept loops, which must never wait for a slow read.
//!   A service without traffic does not reload and does not announce expiry unless it calls
//!   `check_expiry`.
//! - **`Manual`** when something else knows when the files changed (a `SIGHUP`, an admin
//!   endpoint, the agent's own callback): call `reload()`.
//!
//! ## No async runtime needed
//!
//! Nothing in `hitless` needs tokio or any other runtime: detectors are plain std threads, and
//! resolvers, verifiers and configurations are synchronous rustls types. It works the same
//! under blocking rustls (`StreamOwned`), tokio-rustls or any other runtime; the library's own
//! tests use std threads only (`tests/drop.rs` checks a handshake and a rotation with no
//! runtime at all). `reload()` reads files and may sleep for the quiet period: in async code,
//! call it from a blocking task (`tokio::task::spawn_blocking`).
//!
//! ## Events and status
//!
//! Every credential announces what happens to it as an [`Event`]: `Reloaded` (a new
//! generation is served), `ReloadFailed` (input refused, the last good value keeps serving),
//! `ExpiringSoon` (less than a third of the lifetime left, by default, and no renewal yet) and
//! `Expired`; a pushed credential also `SourceOutage` and `SourceRestored`. Subscribe with the
//! builders' `on_event` or with `subscribe`; callbacks run on the
//! thread that did the reload (the detector, the caller of `reload()`, or in `on-handshake`
//! mode the handshake, or for a trust bundle the short-lived reload thread), so keep them
//! short. Expiry is announced by the detector's timer in
//! `watch` and `poll` modes, by the publisher of a pushed credential on each value; call
//! `check_expiry` in the others. The configurations have the same mechanism one level up:
//! [`ReloadingServerConfig::subscribe`] and [`ReloadingClientConfig::subscribe`] hand over every
//! new configuration as a [`ConfigChange`] (for frameworks that hold one `Arc<ServerConfig>`,
//! such as axum-server's `RustlsConfig::reload_from_config`).
//!
//! [`Status`] is what a status page shows: generation, load time, last check, last error,
//! counters and the validity of what is served; [`Status::health`] condenses it to a
//! [`Health`] (`ok`, `degraded`, `expired`). Errors are one type, [`Error`], each variant
//! naming the file and the reason.
//!
//! ## Public items
//!
//! - **Build a server or a client** (the recommended way): [`ReloadingServerConfig`] with its
//!   [`ServerConfigBuilder`] and [`ServedIdentities`]; [`ReloadingClientConfig`] with its
//!   [`ClientConfigBuilder`]; with feature `tokio`, `TlsAcceptor`. Each hands every new
//!   configuration to `subscribe` as a [`ConfigChange`].
//! - **Credentials**: [`ReloadingIdentity`] ([`IdentityBuilder`]), [`ServerIdentities`]
//!   ([`ServerIdentitiesBuilder`], [`MemberOptions`]), [`ReloadingTrust`] ([`TrustBuilder`]);
//!   where they come from: [`IdentitySource`], [`TrustSource`], [`Password`]; how changes are
//!   noticed: [`Detection`] (with its defaults and limits as constants,
//!   [`Detection::DEFAULT_POLL_INTERVAL`], ...); the outcome of `reload()`: [`Reload`].
//! - **Extend** with sources that are not files: [`ReloadingIdentity::pushed`]
//!   ([`PushedIdentityBuilder`], [`IdentityPublisher`]), [`ReloadingTrust::pushed`]
//!   ([`PushedTrustBuilder`], [`TrustPublisher`]).
//! - **SPIFFE**: [`SpiffeId`] and [`SpiffeIdMatcher`] (authorize peers by SPIFFE ID: exact, or
//!   every ID under a path with a trailing `/*`), [`InvalidSpiffeId`],
//!   [`SpiffeServerCertVerifier`] (a client verifies its server by SPIFFE ID against the
//!   current trust), [`ServerConfigBuilder::client_trust_spiffe`] (a server admits clients by
//!   SPIFFE ID); with feature `spiffe`,
//!   the Workload API as a source: `SpiffeSource` (`SpiffeSourceBuilder`), whose identity and
//!   trust are ordinary pushed handles, with `WorkloadApiStatus`, `SpiffeError` and
//!   `SPIFFE_ENDPOINT_SOCKET`.
//! - **Validated values**: [`Identity`] (and [`Role`]), [`Trust`], [`CertInfo`], [`CrlInfo`],
//!   held in a [`Snapshot`]; one-shot loading: [`Identity::load`], [`read_credential_file`].
//! - **Observe**: [`Status`] (with [`Status::DEFAULT_EXPIRING_SOON`]), [`Health`],
//!   [`LastError`], [`Outage`], [`Event`] (the builders' `on_event`, the handles' `subscribe`);
//!   errors: [`Error`].
//! - **rustls adapters for configurations built by hand** (only the credential reloads, not
//!   the configuration: prefer the configurations above): [`IdentityResolver`],
//!   [`SniResolver`], [`ClientIdentityResolver`], [`ReloadingServerCertVerifier`].
//!
//! ## Crypto providers
//!
//! The crate's features choose the rustls crypto provider compiled in, as rustls and
//! tokio-rustls do: `aws-lc-rs` (the default) or `ring` (`default-features = false, features =
//! ["ring"]`: then nothing of aws-lc is built). Every builder ([`IdentityBuilder`],
//! [`ServerIdentitiesBuilder`], [`TrustBuilder`], [`ServerConfigBuilder`],
//! [`ClientConfigBuilder`]) takes an explicit provider with `crypto_provider(..)`; without
//! one, the provider is the process default if one is installed
//! (`rustls::crypto::CryptoProvider::install_default`), else the one compiled in (aws-lc-rs when
//! both features are on), and with neither, building fails with [`Error::NoCryptoProvider`]:
//! never a silent fallback, and never rustls's panic when both providers are compiled in and
//! none is installed. A configuration ([`ReloadingServerConfig`], [`ReloadingClientConfig`])
//! takes, unless given its own, the provider of the trust it follows, so configuration and
//! verifier agree; give the identities the same provider (or install one process default and
//! give none). A rustls configuration built by hand can take the provider of its credentials
//! with [`ReloadingIdentity::crypto_provider`] or [`ReloadingTrust::crypto_provider`] and
//! `builder_with_provider`.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod crl;
mod detect;
mod error;
mod handle;
mod identity;
mod reload;
mod rustls;
mod snapshot;
mod source;
mod spiffe_id;
mod spiffe_verify;
mod trust;
#[cfg(feature = "spiffe")]
mod workload_api;

#[cfg(feature = "tokio")]
pub use crate::rustls::TlsAcceptor;
pub use crate::rustls::{
    ClientConfigBuilder, ClientIdentityResolver, ConfigChange, IdentityResolver,
    ReloadingClientConfig, ReloadingServerCertVerifier, ReloadingServerConfig, ServedIdentities,
    ServerConfigBuilder, SniResolver,
};
pub use detect::Detection;
pub use error::Error;
pub use handle::{
    IdentityBuilder, IdentityPublisher, MemberOptions, PushedIdentityBuilder, PushedTrustBuilder,
    Reload, ReloadingIdentity, ReloadingTrust, ServerIdentities, ServerIdentitiesBuilder,
    TrustBuilder, TrustPublisher,
};
pub use identity::{CertInfo, Identity, IdentityRules, KeyInfo, Role};
pub use snapshot::{Event, Health, LastError, Outage, Snapshot, Status};
pub use source::{pem, pkcs12, read_credential_file, IdentitySource, Password};
pub use spiffe_id::{InvalidSpiffeId, SpiffeId, SpiffeIdMatcher};
pub use spiffe_verify::SpiffeServerCertVerifier;
pub use trust::{CrlInfo, Trust, TrustSource};
#[cfg(feature = "spiffe")]
pub use workload_api::{
    SpiffeError, SpiffeSource, SpiffeSourceBuilder, WorkloadApiStatus, SPIFFE_ENDPOINT_SOCKET,
};

/// The README's code compiles against this crate (`cargo test --doc`): its snippet cannot
/// drift from the API.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
pub struct ReadmeDoctests;
