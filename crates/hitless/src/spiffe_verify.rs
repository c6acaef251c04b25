//! Verifying a server by SPIFFE ID instead of by DNS name: what a SPIFFE client does (an
//! X.509-SVID names a workload, not a host).
//!
//! The verdict is taken at verification from the trust current at that moment (as
//! [`ReloadingClientConfig`](crate::ReloadingClientConfig) does), so it follows bundle
//! rotations; this module only adds the SPIFFE ID check in place of the name check.

use std::fmt;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, Error, OtherError, SignatureScheme};

use crate::{ReloadingTrust, SpiffeIdMatcher};

/// A rustls server-certificate verifier for SPIFFE clients: the server's chain must verify to
/// the trust current at verification (its CAs and CRLs), and its X.509-SVID must carry a SPIFFE
/// ID that `allowed` matches (exactly one URI SAN). The server name the client connects with
/// is not checked: the SPIFFE ID is the server's name.
///
/// Install it on every configuration a [`ReloadingClientConfig`](crate::ReloadingClientConfig)
/// builds:
///
/// ```no_run
/// # fn demo(trust: &hitless::ReloadingTrust, identity: &hitless::ReloadingIdentity) -> Result<(), Box<dyn std::error::Error>> {
/// use hitless::{ReloadingClientConfig, SpiffeIdMatcher, SpiffeServerCertVerifier};
///
/// let verifier = SpiffeServerCertVerifier::new(
///     trust,
///     SpiffeIdMatcher::new(["spiffe://example.org/ns/prod/web"])?,
/// );
/// let client = ReloadingClientConfig::builder(trust)
///     .identities(vec![identity.clone()])
///     .configure(move |c| c.dangerous().set_certificate_verifier(verifier.clone()))
///     .build()?;
/// # let _ = client; Ok(()) }
/// ```
pub struct SpiffeServerCertVerifier {
    trust: ReloadingTrust,
    allowed: SpiffeIdMatcher,
    provider: Arc<CryptoProvider>,
}

impl fmt::Debug for SpiffeServerCertVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SpiffeServerCertVerifier")
            .field("allowed", &self.allowed.patterns())
            .finish_non_exhaustive()
    }
}

impl SpiffeServerCertVerifier {
    /// A verifier of servers whose SVIDs chain to `trust` and whose SPIFFE IDs `allowed`
    /// matches; signatures are checked with the trust's crypto provider.
    pub fn new(trust: &ReloadingTrust, allowed: SpiffeIdMatcher) -> Arc<SpiffeServerCertVerifier> {
        Arc::new(SpiffeServerCertVerifier {
            provider: trust.crypto_provider().clone(),
            trust: trust.clone(),
            allowed,
        })
    }

    /// The SPIFFE IDs allowed.
    pub fn allowed(&self) -> &SpiffeIdMatcher {
        &self.allowed
    }
}

/// A name no SVID is issued for: the chain check needs one, the SPIFFE ID replaces it.
const NO_NAME: &str = "spiffe-id-checked-instead.invalid";

impl ServerCertVerifier for SpiffeServerCertVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        let trust = self
            .trust
            .current()
            .ok_or_else(|| Error::General("no trust bundle loaded".into()))?;
        let name = ServerName::try_from(NO_NAME)
            .map_err(|e| Error::General(format!("internal server name: {e}")))?;
        // rustls checks the chain and revocation first and the name last: a name mismatch means
        // everything else passed.
        match trust.value.fixed_server_verifier().verify_server_cert(
            end_entity,
            intermediates,
            &name,
            ocsp_response,
            now,
        ) {
            Ok(_)
            | Err(Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => {}
            Err(e) => return Err(e),
        }
        self.allowed
            .check_certificate(end_entity.as_ref())
            .map_err(|e| {
                Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(e))))
            })?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
