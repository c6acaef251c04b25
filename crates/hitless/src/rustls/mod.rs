//! Where rustls meets the snapshots: certificate resolvers, verifiers and configurations.
//!
//! Everything here runs on the handshake path, so it must not touch the disk, take a lock or
//! allocate beyond an `Arc` clone: each call is one atomic load of the current snapshot. The
//! snapshots are read through the handles' crate-private accessors (`snapshot()`,
//! `check_on_handshake()`), never through their fields.

#[cfg(feature = "tokio")]
mod acceptor;
mod client;
mod config;
mod server;
mod sessions;
mod sni;
mod verify;

#[cfg(feature = "tokio")]
pub use acceptor::TlsAcceptor;
pub use client::{ClientIdentityResolver, ReloadingServerCertVerifier};
pub use config::{
    ClientConfigBuilder, ConfigChange, ReloadingClientConfig, ReloadingServerConfig,
    ServedIdentities, ServerConfigBuilder,
};
pub use server::IdentityResolver;
pub use sni::SniResolver;
pub(crate) use sni::{MemberSnapshots, NameIndex};
