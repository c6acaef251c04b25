//! The client side: a `ResolvesClientCert` over reloading identities and a
//! `ServerCertVerifier` over a reloading trust bundle.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::ResolvesClientCert;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, SignatureScheme};

use crate::{ReloadingIdentity, ReloadingTrust};

/// Presents the current generation of one of several client identities.
///
/// Selection, per handshake: the first identity (in the order given) that chains to a CA named
/// in the server's CertificateRequest and whose key can sign with one of the offered schemes.
/// If none fits, no certificate is sent and a warning says why (the server then decides).
/// Cost: one atomic load per identity considered.
#[derive(Debug)]
pub struct ClientIdentityResolver {
    identities: Vec<ReloadingIdentity>,
}

impl ClientIdentityResolver {
    /// A resolver choosing among `identities`, in order of preference.
    pub fn new(identities: Vec<ReloadingIdentity>) -> Self {
        ClientIdentityResolver { identities }
    }
}

impl ResolvesClientCert for ClientIdentityResolver {
    fn resolve(
        &self,
        root_hint_subjects: &[&[u8]],
        sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        let mut loaded = 0;
        for identity in &self.identities {
            identity.check_on_handshake();
            let current = identity.snapshot();
            let Some(snapshot) = current.as_ref() else {
                continue;
            };
            loaded += 1;
            let id = &snapshot.value;
            if id.issued_by_any(root_hint_subjects)
                && id.certified_key().key.choose_scheme(sigschemes).is_some()
            {
                return Some(id.certified_key().clone());
            }
        }
        if loaded == 0 {
            tracing::warn!("no client certificate sent: no client identity is loaded");
        } else {
            tracing::warn!(
                identities = loaded,
                server_names_cas = root_hint_subjects.len(),
                "no client certificate sent: none of the client identities is issued by a CA \
                 the server asks for with a key type it accepts"
            );
        }
        None
    }

    fn has_certs(&self) -> bool {
        !self.identities.is_empty()
    }
}

/// A rustls `ServerCertVerifier` (the client side's verifier of server certificates) that
/// takes its verdict from the generation of a [`ReloadingTrust`] (its CAs and CRLs) current
/// when the certificate is verified: one atomic load per handshake.
///
/// For a `ClientConfig` built by hand that must keep one fixed configuration (reqwest takes
/// one). A client session resumed from before a trust change skips verification (that is how
/// TLS resumption works); [`ReloadingClientConfig`](crate::ReloadingClientConfig), which uses
/// this verifier and starts a new session store on every trust change, is the way to get both.
#[derive(Debug)]
pub struct ReloadingServerCertVerifier {
    trust: ReloadingTrust,
}

impl ReloadingServerCertVerifier {
    /// A verifier following `trust`.
    pub fn new(trust: ReloadingTrust) -> Self {
        ReloadingServerCertVerifier { trust }
    }

    fn inner(&self) -> Result<Arc<rustls::client::WebPkiServerVerifier>, rustls::Error> {
        self.trust
            .snapshot()
            .as_ref()
            .map(|t| t.value.fixed_server_verifier().clone())
            .ok_or_else(|| rustls::Error::General("no trust bundle loaded".into()))
    }
}

impl ServerCertVerifier for ReloadingServerCertVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.inner()?
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner()?.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner()?.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner()
            .map(|v| v.supported_verify_schemes())
            .unwrap_or_else(|_| {
                // No trust loaded yet: the schemes of the provider its verifiers will use.
                self.trust
                    .crypto_provider()
                    .signature_verification_algorithms
                    .supported_schemes()
            })
    }
}
