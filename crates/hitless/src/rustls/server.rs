//! The server side: a `ResolvesServerCert` over a reloading identity.

use std::sync::Arc;

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::ReloadingIdentity;

/// Serves the current generation of a [`ReloadingIdentity`] to every handshake.
///
/// `resolve` is one atomic load (arc-swap) and one `Arc` clone; the handshake never waits for a
/// reload, and a reload never waits for a handshake. A connection keeps the `CertifiedKey` it
/// was given for its whole life, so open connections are untouched by a swap.
#[derive(Debug)]
pub struct IdentityResolver {
    identity: ReloadingIdentity,
}

impl IdentityResolver {
    pub(crate) fn new(identity: ReloadingIdentity) -> Self {
        IdentityResolver { identity }
    }

    /// The identity this resolver serves.
    pub fn identity(&self) -> &ReloadingIdentity {
        &self.identity
    }
}

impl ResolvesServerCert for IdentityResolver {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.identity.check_on_handshake();
        self.identity
            .snapshot()
            .as_ref()
            .map(|s| s.value.certified_key().clone())
    }
}
