//! Crypto providers: the configurations are built with the provider given to their builders,
//! else the trust's, else the default one, never with rustls's process-wide lookup (which
//! panics when both of rustls's providers are compiled in and none is installed).
//!
//! Alone in its test binary: no test here installs a process-default provider, and each
//! checks that none is installed. The dev-dependencies compile both aws-lc-rs and ring into
//! rustls, whatever the crate's features.

mod common;

use std::sync::Arc;

use common::{connect, Server};
use hitless::{
    IdentitySource, ReloadingClientConfig, ReloadingIdentity, ReloadingServerConfig,
    ReloadingTrust, Role, TrustSource,
};
use hitless_test_pki::{write_atomic, Ca, KeyFormat, KeyType, LeafSpec};
use rustls::crypto::CryptoProvider;

/// Files for a server identity, a client identity and their CA.
struct Files {
    _dir: tempfile::TempDir,
    /// SHA-256 of the server's leaf.
    server_leaf: String,
    server: std::path::PathBuf,
    client: std::path::PathBuf,
    cas: std::path::PathBuf,
}

fn files() -> Files {
    let ca = Ca::new_root("CA", KeyType::EcP256);
    let dir = tempfile::tempdir().unwrap();
    let server = dir.path().join("server.pem");
    let client = dir.path().join("client.pem");
    let cas = dir.path().join("ca.pem");
    let server_leaf = ca.issue(&LeafSpec::server("localhost"));
    let client_leaf = ca.issue(&LeafSpec::client("client"));
    write_atomic(&server, server_leaf.bundle_pem(KeyFormat::Pkcs8).as_bytes());
    write_atomic(&client, client_leaf.bundle_pem(KeyFormat::Pkcs8).as_bytes());
    write_atomic(&cas, ca.cert_pem().as_bytes());
    Files {
        _dir: dir,
        server_leaf: server_leaf.fingerprint_sha256_hex(),
        server,
        client,
        cas,
    }
}

/// Which crypto library a provider is (its key provider's type name: `AwsLcRs`, `Ring`).
fn library(provider: &CryptoProvider) -> String {
    format!("{:?}", provider.key_provider)
}

/// A mutual-TLS handshake through a `ReloadingServerConfig` and a `ReloadingClientConfig`
/// built with `provider` given to every builder (or with no provider anywhere when `None`);
/// returns the names of the providers of the two configurations in use.
fn handshake(files: &Files, provider: Option<Arc<CryptoProvider>>) -> (String, String) {
    let with = |b: hitless::IdentityBuilder| match &provider {
        Some(p) => b.crypto_provider(p.clone()),
        None => b,
    };
    let server_identity =
        with(ReloadingIdentity::builder(IdentitySource::bundle(&files.server)).role(Role::Server))
            .build()
            .unwrap();
    let client_identity =
        with(ReloadingIdentity::builder(IdentitySource::bundle(&files.client)).role(Role::Client))
            .build()
            .unwrap();
    let trust = ReloadingTrust::builder(TrustSource::cas([&files.cas]));
    let trust = match &provider {
        Some(p) => trust.crypto_provider(p.clone()),
        None => trust,
    }
    .build()
    .unwrap();

    let server = ReloadingServerConfig::builder(&server_identity).client_trust(&trust);
    let server = match &provider {
        Some(p) => server.crypto_provider(p.clone()),
        None => server,
    }
    .build()
    .unwrap();
    let client = ReloadingClientConfig::builder(&trust).identities(vec![client_identity]);
    let client = match &provider {
        Some(p) => client.crypto_provider(p.clone()),
        None => client,
    }
    .build()
    .unwrap();

    let names = (
        library(server.current().crypto_provider()),
        library(client.current().crypto_provider()),
    );
    let served = server.clone();
    let listener = Server::start_with(move || served.current());
    let conn = connect(listener.addr, &client.current(), "localhost").unwrap();
    assert_eq!(
        conn.fingerprint, files.server_leaf,
        "the server presents its identity"
    );
    assert_eq!(
        listener.clients.lock().unwrap().len(),
        1,
        "the client presented its certificate (mutual TLS)"
    );
    names
}

/// The ring build: configurations given the ring provider hand shake with it, with no
/// process default installed (nothing falls back to aws-lc-rs or panics).
#[cfg(feature = "ring")]
#[test]
fn configurations_built_with_an_explicit_ring_provider_hand_shake() {
    assert!(
        CryptoProvider::get_default().is_none(),
        "no process default"
    );
    let files = files();
    let ring = Arc::new(rustls::crypto::ring::default_provider());
    let (server, client) = handshake(&files, Some(ring));
    assert_eq!((server.as_str(), client.as_str()), ("Ring", "Ring"));
    assert!(
        CryptoProvider::get_default().is_none(),
        "none installed by the library"
    );
}

/// Both providers compiled into rustls, none installed, none given: the configurations are
/// built (rustls's `ServerConfig::builder()` panics here) with the provider the crate's
/// features choose, aws-lc-rs if its feature is on, else ring.
#[cfg(any(feature = "aws-lc-rs", feature = "ring"))]
#[test]
fn with_both_providers_compiled_in_and_none_installed_configurations_build() {
    assert!(
        CryptoProvider::get_default().is_none(),
        "no process default"
    );
    let files = files();
    let (server, client) = handshake(&files, None);
    let expected = if cfg!(feature = "aws-lc-rs") {
        "AwsLcRs"
    } else {
        "Ring"
    };
    assert_eq!((server.as_str(), client.as_str()), (expected, expected));
    assert!(
        CryptoProvider::get_default().is_none(),
        "none installed by the library"
    );
}

/// Neither feature, no process default, no provider given: a clear error, no fallback.
#[cfg(not(any(feature = "aws-lc-rs", feature = "ring")))]
#[test]
fn without_a_provider_building_fails_with_no_crypto_provider() {
    assert!(
        CryptoProvider::get_default().is_none(),
        "no process default"
    );
    let files = files();
    let err = ReloadingTrust::builder(TrustSource::cas([&files.cas]))
        .build()
        .unwrap_err();
    assert!(matches!(err, hitless::Error::NoCryptoProvider), "{err}");
    let err = ReloadingIdentity::builder(IdentitySource::bundle(&files.server))
        .build()
        .unwrap_err();
    assert!(matches!(err, hitless::Error::NoCryptoProvider), "{err}");
    assert!(err.to_string().contains("crypto_provider"), "{err}");
    // An explicit provider is enough.
    let ring = Arc::new(rustls::crypto::ring::default_provider());
    let (server, client) = handshake(&files, Some(ring));
    assert_eq!((server.as_str(), client.as_str()), ("Ring", "Ring"));
}
