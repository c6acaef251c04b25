//! The fake Workload API as the `spiffe` crate's client sees it: contents, pushed updates,
//! the security header, a restart, a delay.

use std::time::Duration;

use hitless_spiffe_fake::proto::spiffe_workload_api_client::SpiffeWorkloadApiClient;
use hitless_spiffe_fake::proto::X509svidRequest;
use hitless_spiffe_fake::{FakeWorkloadApi, Svid};
use hitless_test_pki::{Ca, KeyType, LeafSpec};
use spiffe::WorkloadApiClient;
use tokio_stream::StreamExt;

const TIMEOUT: Duration = Duration::from_secs(20);

fn svid(ca: &Ca, id: &str) -> Svid {
    let leaf = ca.issue(&LeafSpec::svid(id));
    Svid::new(
        id,
        leaf.rustls_chain().iter().map(|c| c.to_vec()).collect(),
        leaf.key_pkcs8_der.clone(),
    )
}

#[tokio::test]
async fn streams_contents_and_every_update() {
    let dir = tempfile::tempdir().unwrap();
    let agent = FakeWorkloadApi::start(dir.path().join("agent.sock"))
        .await
        .unwrap();
    let ca = Ca::new_root("example.org CA", KeyType::EcP256);
    let other = Ca::new_root("other.org CA", KeyType::EcP256);
    agent.update(|c| {
        c.svids = vec![svid(&ca, "spiffe://example.org/web")];
        c.bundles.insert("example.org".into(), vec![ca.cert_der()]);
        c.bundles.insert("other.org".into(), vec![other.cert_der()]);
    });

    let client = WorkloadApiClient::connect_to(agent.endpoint())
        .await
        .unwrap();
    let mut stream = client.stream_x509_contexts().await.unwrap();
    let first = tokio::time::timeout(TIMEOUT, stream.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let default = first.default_svid().unwrap();
    assert_eq!(default.spiffe_id().to_string(), "spiffe://example.org/web");
    let td = spiffe::TrustDomain::new("example.org").unwrap();
    let bundle = first.bundle_set().get(&td).unwrap();
    assert_eq!(bundle.authorities()[0].as_bytes(), ca.cert_der().as_slice());
    let federated = spiffe::TrustDomain::new("other.org").unwrap();
    assert!(first.bundle_set().get(&federated).is_some());
    assert_eq!(agent.x509_svid_calls(), 1);
    assert_eq!(agent.open_streams(), 1);

    // A rotation reaches the open stream.
    let next = svid(&ca, "spiffe://example.org/web");
    let next_leaf = next.chain_der[0].clone();
    agent.set_svids(vec![next]);
    let second = tokio::time::timeout(TIMEOUT, stream.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(
        second.default_svid().unwrap().leaf().as_bytes(),
        next_leaf.as_slice()
    );

    // A malformed SVID is sent as is: the client refuses that message, the stream goes on.
    agent.set_svids(vec![Svid::garbage("spiffe://example.org/web")]);
    let bad = tokio::time::timeout(TIMEOUT, stream.next())
        .await
        .unwrap()
        .unwrap();
    assert!(bad.is_err());
    agent.set_svids(vec![svid(&ca, "spiffe://example.org/web")]);
    let good = tokio::time::timeout(TIMEOUT, stream.next())
        .await
        .unwrap()
        .unwrap();
    assert!(good.is_ok());

    // Delayed messages still arrive, later.
    agent.set_delay(Duration::from_millis(300));
    let started = std::time::Instant::now();
    agent.set_svids(vec![svid(&ca, "spiffe://example.org/web")]);
    tokio::time::timeout(TIMEOUT, stream.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(started.elapsed() >= Duration::from_millis(300));
}

#[tokio::test]
async fn a_restart_ends_streams_and_refuses_connections_until_restored() {
    let dir = tempfile::tempdir().unwrap();
    let agent = FakeWorkloadApi::start(dir.path().join("agent.sock"))
        .await
        .unwrap();
    let ca = Ca::new_root("example.org CA", KeyType::EcP256);
    agent.update(|c| {
        c.svids = vec![svid(&ca, "spiffe://example.org/web")];
        c.bundles.insert("example.org".into(), vec![ca.cert_der()]);
    });
    let client = WorkloadApiClient::connect_to(agent.endpoint())
        .await
        .unwrap();
    let mut stream = client.stream_x509_contexts().await.unwrap();
    stream.next().await.unwrap().unwrap();

    agent.stop().await;
    // The open stream ends (an error, then nothing).
    let ended = tokio::time::timeout(TIMEOUT, async {
        while let Some(item) = stream.next().await {
            if item.is_err() {
                continue;
            }
        }
    })
    .await;
    assert!(
        ended.is_ok(),
        "the stream did not end when the agent stopped"
    );
    assert!(!agent.socket_path().exists());
    assert!(WorkloadApiClient::connect_to(agent.endpoint())
        .await
        .is_err());

    agent.restart().unwrap();
    let client = WorkloadApiClient::connect_to(agent.endpoint())
        .await
        .unwrap();
    let mut stream = client.stream_x509_contexts().await.unwrap();
    let ctx = tokio::time::timeout(TIMEOUT, stream.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(
        ctx.default_svid().unwrap().spiffe_id().to_string(),
        "spiffe://example.org/web"
    );
    assert_eq!(agent.x509_svid_calls(), 2);
}

#[tokio::test]
async fn refuses_a_call_without_the_security_header_and_without_an_identity() {
    let dir = tempfile::tempdir().unwrap();
    let agent = FakeWorkloadApi::start(dir.path().join("agent.sock"))
        .await
        .unwrap();
    let ca = Ca::new_root("example.org CA", KeyType::EcP256);

    // No identity yet: PermissionDenied, as SPIRE answers an unregistered workload.
    let client = WorkloadApiClient::connect_to(agent.endpoint())
        .await
        .unwrap();
    let e = client.fetch_x509_context().await.unwrap_err();
    assert!(
        matches!(e, spiffe::WorkloadApiError::NoIdentityIssued),
        "{e:?}"
    );

    agent.update(|c| {
        c.svids = vec![svid(&ca, "spiffe://example.org/web")];
        c.bundles.insert("example.org".into(), vec![ca.cert_der()]);
    });

    let calls = agent.x509_svid_calls();
    // A raw client that does not send `workload.spiffe.io: true`.
    let path = agent.socket_path().to_path_buf();
    let channel = tonic::transport::Endpoint::try_from("http://localhost")
        .unwrap()
        .connect_with_connector(tower::service_fn(move |_| {
            let path = path.clone();
            async move {
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                    tokio::net::UnixStream::connect(path).await?,
                ))
            }
        }))
        .await
        .unwrap();
    let mut raw = SpiffeWorkloadApiClient::new(channel);
    let status = raw
        .fetch_x509svid(X509svidRequest::default())
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert_eq!(agent.refused_without_header(), 1);
    assert_eq!(
        agent.x509_svid_calls(),
        calls,
        "a refused call is not served"
    );

    // The same call with the header is served.
    let mut request = tonic::Request::new(X509svidRequest::default());
    request
        .metadata_mut()
        .insert("workload.spiffe.io", "true".parse().unwrap());
    let mut stream = raw.fetch_x509svid(request).await.unwrap().into_inner();
    let message = stream.message().await.unwrap().unwrap();
    assert_eq!(message.svids[0].spiffe_id, "spiffe://example.org/web");
    assert_eq!(message.svids[0].bundle, ca.cert_der());
}

#[tokio::test]
async fn streams_bundles_and_their_rotation() {
    let dir = tempfile::tempdir().unwrap();
    let agent = FakeWorkloadApi::start(dir.path().join("agent.sock"))
        .await
        .unwrap();
    let ca1 = Ca::new_root("example.org CA 1", KeyType::EcP256);
    let ca2 = Ca::new_root("example.org CA 2", KeyType::EcP256);
    agent.set_bundle("example.org", vec![ca1.cert_der()]);
    let client = WorkloadApiClient::connect_to(agent.endpoint())
        .await
        .unwrap();
    let mut stream = client.stream_x509_bundles().await.unwrap();
    let td = spiffe::TrustDomain::new("example.org").unwrap();
    let authorities = |set: &spiffe::X509BundleSet| -> Vec<Vec<u8>> {
        set.get(&td)
            .unwrap()
            .authorities()
            .iter()
            .map(|c| c.as_bytes().to_vec())
            .collect()
    };
    let first = tokio::time::timeout(TIMEOUT, stream.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(authorities(&first), [ca1.cert_der()]);
    agent.set_bundle("example.org", vec![ca1.cert_der(), ca2.cert_der()]);
    let both = tokio::time::timeout(TIMEOUT, stream.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(authorities(&both), [ca1.cert_der(), ca2.cert_der()]);
    agent.set_bundle("example.org", vec![ca2.cert_der()]);
    let last = tokio::time::timeout(TIMEOUT, stream.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(authorities(&last), [ca2.cert_der()]);
    assert_eq!(agent.x509_bundles_calls(), 1);
    assert!(agent.messages_sent() >= 3);
}
