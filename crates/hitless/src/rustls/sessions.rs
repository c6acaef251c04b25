//! Resumption bound to the credentials it was made under.
//!
//! rustls does not verify certificates when a session is resumed (TLS 1.2 session ids and
//! tickets, TLS 1.3 PSK). So a session made under one trust must not resume under another, and a
//! session made with one certificate must not resume after a rotation, *whatever configuration
//! the connection started with*: a connection accepted before a change can hold the previous
//! configuration, and with it the previous session cache and ticketer.
//!
//! Each configuration built by [`ReloadingServerConfig`](crate::ReloadingServerConfig) or
//! [`ReloadingClientConfig`](crate::ReloadingClientConfig) gets a [`Binding`]: the trust
//! generation it was built from and the rotation epoch of its identities. Its session cache,
//! ticketer and client session store are wrapped so that they store, hand out and decrypt
//! sessions only while both are still current. A resumption attempt after a change therefore
//! finds nothing and falls back to a full handshake, whose certificate is verified against the
//! trust current at that moment.
//!
//! Cost: one atomic load of the trust snapshot and one of the epoch per stored or resumed
//! session; nothing on a full handshake that does not touch resumption.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use rustls::client::{ClientSessionStore, Tls12ClientSessionValue, Tls13ClientSessionValue};
use rustls::pki_types::ServerName;
use rustls::server::{ProducesTickets, StoresServerSessions};
use rustls::NamedGroup;

use crate::ReloadingTrust;

/// The trust generation and identity epoch a configuration was built under.
#[derive(Clone)]
pub(crate) struct Binding {
    trust: Option<ReloadingTrust>,
    trust_generation: u64,
    epoch: Arc<AtomicU64>,
    built_epoch: u64,
}

impl std::fmt::Debug for Binding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Binding")
            .field("trust_generation", &self.trust_generation)
            .field("epoch", &self.built_epoch)
            .finish()
    }
}

impl Binding {
    pub(crate) fn new(
        trust: Option<ReloadingTrust>,
        trust_generation: u64,
        epoch: Arc<AtomicU64>,
        built_epoch: u64,
    ) -> Self {
        Binding {
            trust,
            trust_generation,
            epoch,
            built_epoch,
        }
    }

    /// Whether sessions made under this binding may still be stored and resumed.
    fn current(&self) -> bool {
        if self.epoch.load(Ordering::SeqCst) != self.built_epoch {
            return false;
        }
        match &self.trust {
            None => true,
            Some(trust) => trust
                .snapshot()
                .as_ref()
                .is_some_and(|t| t.generation == self.trust_generation),
        }
    }

    /// 16 bytes naming this binding, put in front of what is stored so that a cache or a
    /// ticket key shared between configurations (installed by `configure`) still cannot
    /// hand a session to another binding.
    fn tag(&self) -> [u8; 16] {
        let mut tag = [0u8; 16];
        tag[..8].copy_from_slice(&self.trust_generation.to_be_bytes());
        tag[8..].copy_from_slice(&self.built_epoch.to_be_bytes());
        tag
    }

    fn tagged(&self, value: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 + value.len());
        out.extend_from_slice(&self.tag());
        out.extend_from_slice(value);
        out
    }

    fn untag(&self, mut value: Vec<u8>) -> Option<Vec<u8>> {
        if value.len() < 16 || value[..16] != self.tag() || !self.current() {
            return None;
        }
        value.drain(..16);
        Some(value)
    }
}

/// A server session cache (TLS 1.2 session ids, TLS 1.3 stateful tickets) bound to a
/// [`Binding`].
#[derive(Debug)]
pub(crate) struct BoundServerSessions {
    pub(crate) inner: Arc<dyn StoresServerSessions>,
    pub(crate) binding: Binding,
}

impl StoresServerSessions for BoundServerSessions {
    fn put(&self, key: Vec<u8>, value: Vec<u8>) -> bool {
        self.binding.current() && self.inner.put(key, self.binding.tagged(&value))
    }

    fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.binding.untag(self.inner.get(key)?)
    }

    fn take(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.binding.untag(self.inner.take(key)?)
    }

    fn can_cache(&self) -> bool {
        self.inner.can_cache()
    }
}

/// A ticketer (stateless resumption) bound to a [`Binding`]: the tag is encrypted inside the
/// ticket, so it cannot be rewritten by a client.
#[derive(Debug)]
pub(crate) struct BoundTickets {
    pub(crate) inner: Arc<dyn ProducesTickets>,
    pub(crate) binding: Binding,
}

impl ProducesTickets for BoundTickets {
    fn enabled(&self) -> bool {
        self.inner.enabled()
    }

    fn lifetime(&self) -> u32 {
        self.inner.lifetime()
    }

    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        if !self.binding.current() {
            return None;
        }
        self.inner.encrypt(&self.binding.tagged(plain))
    }

    fn decrypt(&self, cipher: &[u8]) -> Option<Vec<u8>> {
        self.binding.untag(self.inner.decrypt(cipher)?)
    }
}

/// A client session store bound to a [`Binding`]: sessions are kept and offered only while
/// the trust and the client identities they were made under are current.
#[derive(Debug)]
pub(crate) struct BoundClientSessions {
    pub(crate) inner: Arc<dyn ClientSessionStore>,
    pub(crate) binding: Binding,
}

impl ClientSessionStore for BoundClientSessions {
    fn set_kx_hint(&self, server_name: ServerName<'static>, group: NamedGroup) {
        self.inner.set_kx_hint(server_name, group);
    }

    fn kx_hint(&self, server_name: &ServerName<'_>) -> Option<NamedGroup> {
        self.inner.kx_hint(server_name)
    }

    fn set_tls12_session(&self, server_name: ServerName<'static>, value: Tls12ClientSessionValue) {
        if self.binding.current() {
            self.inner.set_tls12_session(server_name, value);
        }
    }

    fn tls12_session(&self, server_name: &ServerName<'_>) -> Option<Tls12ClientSessionValue> {
        if !self.binding.current() {
            return None;
        }
        self.inner.tls12_session(server_name)
    }

    fn remove_tls12_session(&self, server_name: &ServerName<'static>) {
        self.inner.remove_tls12_session(server_name);
    }

    fn insert_tls13_ticket(
        &self,
        server_name: ServerName<'static>,
        value: Tls13ClientSessionValue,
    ) {
        if self.binding.current() {
            self.inner.insert_tls13_ticket(server_name, value);
        }
    }

    fn take_tls13_ticket(
        &self,
        server_name: &ServerName<'static>,
    ) -> Option<Tls13ClientSessionValue> {
        if !self.binding.current() {
            return None;
        }
        self.inner.take_tls13_ticket(server_name)
    }
}
