//! The verdict on a client certificate, taken with the trust current when it is verified.
//!
//! A server accepts a TCP connection, then waits for the client's certificate (up to its
//! handshake timeout, seconds). A verifier fixed when the connection was accepted would let a
//! client that keeps an idle TCP connection ready complete its handshake under the trust of
//! that moment, after its revocation has landed. [`ReloadingClientCertVerifier`] holds no trust
//! of its own for the verdict: each `verify_client_cert` loads the trust snapshot current at
//! that moment (one atomic load) and asks its verifier.
//!
//! What a verifier cannot take from the current trust is the list of CA names a server sends
//! in its CertificateRequest: rustls borrows that slice from the verifier for the whole
//! handshake. So each configuration's verifier keeps the names of the trust it was built from,
//! and a new configuration is built for every trust change; a connection accepted just before a
//! change may be sent the previous names, which only guide the client's choice of certificate
//! and never decide the verdict.

use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use std::sync::Arc;

use crate::snapshot::Snapshot;
use crate::trust::Trust;
use crate::ReloadingTrust;

/// Verifies client certificates against the trust current at verification time, and names
/// the CAs of the trust it was built from in CertificateRequests.
pub(crate) struct ReloadingClientCertVerifier {
    trust: ReloadingTrust,
    /// The verifier of the trust this configuration was built from: its CA names and its
    /// signature algorithms (which depend only on the crypto provider).
    built_from: Arc<dyn ClientCertVerifier>,
    /// When set, a verified client must also carry an allowed SPIFFE ID.
    allowed: Option<crate::SpiffeIdMatcher>,
}

impl std::fmt::Debug for ReloadingClientCertVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReloadingClientCertVerifier")
            .field("trust", &self.trust)
            .finish_non_exhaustive()
    }
}

impl ReloadingClientCertVerifier {
    pub(crate) fn new(trust: ReloadingTrust, built_from: &Snapshot<Trust>) -> Self {
        ReloadingClientCertVerifier {
            trust,
            built_from: built_from.value.fixed_client_verifier().clone(),
            allowed: None,
        }
    }

    /// Also requires an X.509-SVID whose SPIFFE ID `allowed` matches (`None`: any client the
    /// trust accepts).
    pub(crate) fn allowing(mut self, allowed: Option<crate::SpiffeIdMatcher>) -> Self {
        self.allowed = allowed;
        self
    }
}

impl ClientCertVerifier for ReloadingClientCertVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.built_from.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        // In on-handshake mode this is where a changed CRL must be noticed: the connection may
        // have been accepted long before.
        self.trust.check_on_handshake();
        let current = self.trust.snapshot();
        let Some(trust) = current.as_ref() else {
            return Err(rustls::Error::General("no client trust loaded".into()));
        };
        let verified = trust.value.fixed_client_verifier().verify_client_cert(
            end_entity,
            intermediates,
            now,
        )?;
        if let Some(allowed) = &self.allowed {
            // After the chain: the ID of a certificate nobody vouches for means nothing.
            allowed
                .check_certificate(end_entity.as_ref())
                .map_err(|e| {
                    rustls::Error::InvalidCertificate(rustls::CertificateError::Other(
                        rustls::OtherError(Arc::new(e)),
                    ))
                })?;
        }
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.built_from.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.built_from.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.built_from.supported_verify_schemes()
    }
}
