//! Where rustls meets the snapshots: certificate resolvers, verifiers and configurations.
//!
//! Everything here runs on the handshake path, so it must not touch the disk, take a lock or
//! allocate beyond an `Arc` clone: each call is one atomic load of the current snapshot.

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
pub use client::{ClientIdentityResolver, ReloadingServerVerifier};
pub use config::{
    ClientConfigBuilder, ReloadingClientConfig, ReloadingServerConfig, ServedIdentities,
    ServerConfigBuilder,
};
pub use server::IdentityResolver;
pub use sni::SniResolver;
pub(crate) use sni::{MemberSnapshots, Names, SniIndex};
