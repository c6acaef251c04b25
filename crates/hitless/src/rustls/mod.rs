//! Where rustls meets the snapshots: certificate resolvers (and, later, verifiers).
//!
//! Everything here runs on the handshake path, so it must not touch the disk, take a lock or
//! allocate beyond an `Arc` clone: each call is one atomic load of the current snapshot.

mod server;

pub use server::IdentityResolver;
