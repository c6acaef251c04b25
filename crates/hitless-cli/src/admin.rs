//! What an operator sees: `/healthz`, a JSON `/status` of every credential, and Prometheus
//! `/metrics`; served on the TLS listener and on the optional plain-HTTP admin listener.
//!
//! Why a separate admin listener (`--admin-listen`, loopback by default): a Prometheus scraper
//! or a kubelet probe should not need a client certificate, and mutual TLS on the service port
//! must not be weakened for them. It exposes only public facts (certificate subjects, names,
//! fingerprints, validity, generations, file paths, error messages, counters): never key
//! material, never passwords.
//!
//! `/status` schema (stable; fields may be added):
//! ```json
//! { "state": "ok|degraded|expired", "ready": true, "now": "RFC 3339",
//!   "credentials": [
//!     { "kind": "identity", "name": "...", "sources": ["/path"], "detection": "watch",
//!       "generation": 3, "state": "ok", "fingerprint": "sha256 hex", "subject": "CN=...",
//!       "serial": "aa:bb", "issuer": "CN=...", "dns_names": [], "ip_addresses": [],
//!       "key_type": "ECDSA P-256", "not_before": "...", "not_after": "...",
//!       "seconds_to_expiry": 3600, "expiring_soon_at": "...", "loaded_at": "...",
//!       "last_check": "...", "reloads_ok": 3, "reloads_failed": 0,
//!       "last_error": { "file": "/path", "reason": "...", "at": "..." } },
//!     { "kind": "trust", "name": "client-trust", ..., "fingerprint": "sha256 hex",
//!       "cas": [ { "subject": "...", "fingerprint": "...", "not_after": "..." } ],
//!       "crls": [ { "file": "...", "issuer": "...", "number": "7", "this_update": "...",
//!                   "next_update": "...", "revoked": 1, "verified_by": "CA sha256 hex" } ],
//!       "superseded_crls": [ same fields: CRLs of an issuer hidden by a newer one ],
//!       "non_ca_anchors": [ { "subject": "...", "fingerprint": "..." } ] } ] }
//! ```
//! The overall `state` is the worst of the credentials': `degraded` when a reload is failing or
//! expiry is near, `expired` when an expired certificate is served (or nothing is).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use hitless::{Event, Health, ReloadingTrust, ServerIdentities, Status};
use hyper::StatusCode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde_json::{json, Value};

use crate::http::{self, Body};
use crate::listen::{self, Accepted, Limits, Listener};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReloadLabels {
    credential: String,
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CredentialLabels {
    credential: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HandshakeLabels {
    result: String,
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ListenerLabels {
    listener: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TimeoutLabels {
    listener: String,
    timeout: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EventLabels {
    credential: String,
    event: String,
}

/// The Prometheus metrics of `hitless serve`.
pub struct Metrics {
    registry: Registry,
    reloads: Family<ReloadLabels, Counter>,
    events: Family<EventLabels, Counter>,
    handshakes: Family<HandshakeLabels, Counter>,
    open_connections: Gauge,
    dropped_untrusted: Counter,
    generation: Family<CredentialLabels, Gauge>,
    not_after: Family<CredentialLabels, Gauge>,
    last_reload: Family<CredentialLabels, Gauge>,
    listener_open: Family<ListenerLabels, Gauge>,
    listener_max: Family<ListenerLabels, Gauge>,
    listener_limit_reached: Family<ListenerLabels, Counter>,
    listener_accept_errors: Family<ListenerLabels, Counter>,
    listener_timeouts: Family<TimeoutLabels, Counter>,
}

/// The metrics of one listener (see [`crate::listen`]), labelled with its name.
#[derive(Clone)]
pub struct ListenerMetrics {
    listener: String,
    /// Connections open now (TLS handshakes included).
    pub open: Gauge,
    /// The connection limit in force.
    pub max: Gauge,
    /// Times a connection had to wait because every slot was taken.
    pub limit_reached: Counter,
    /// Failed `accept()`s.
    pub accept_errors: Counter,
    timeouts: Family<TimeoutLabels, Counter>,
}

impl ListenerMetrics {
    /// Counts a connection closed by a timeout (`handshake`, `header_read`, `idle`).
    pub fn timed_out(&self, which: &str) {
        self.timeouts
            .get_or_create(&TimeoutLabels {
                listener: self.listener.clone(),
                timeout: which.into(),
            })
            .inc();
    }
}

impl Metrics {
    /// New metrics; hand [`Metrics::on_event`] to every credential builder (`on_event`) so that
    /// the initial load and anything announced during `build` are counted too.
    pub fn new() -> Arc<Metrics> {
        let mut registry = Registry::with_prefix("hitless");
        let m = Metrics {
            reloads: Family::default(),
            events: Family::default(),
            handshakes: Family::default(),
            open_connections: Gauge::default(),
            dropped_untrusted: Counter::default(),
            generation: Family::default(),
            not_after: Family::default(),
            last_reload: Family::default(),
            listener_open: Family::default(),
            listener_max: Family::default(),
            listener_limit_reached: Family::default(),
            listener_accept_errors: Family::default(),
            listener_timeouts: Family::default(),
            registry: Registry::default(),
        };
        registry.register(
            "reloads",
            "Reload attempts that were reported, by credential and result (ok, error)",
            m.reloads.clone(),
        );
        registry.register(
            "credential_events",
            "Expiry events by credential (expiring_soon, expired)",
            m.events.clone(),
        );
        registry.register(
            "handshakes",
            "TLS handshakes by result (accepted, refused) and refusal reason",
            m.handshakes.clone(),
        );
        registry.register(
            "open_connections",
            "TLS connections currently open",
            m.open_connections.clone(),
        );
        registry.register(
            "connections_dropped_untrusted",
            "Open connections closed because new trust refused their client certificate",
            m.dropped_untrusted.clone(),
        );
        registry.register(
            "credential_generation",
            "Generation being served (1 at start, +1 per swap)",
            m.generation.clone(),
        );
        registry.register(
            "credential_not_after_timestamp_seconds",
            "Expiry of the served certificate, Unix time",
            m.not_after.clone(),
        );
        registry.register(
            "credential_last_reload_timestamp_seconds",
            "Time of the last successful load, Unix time",
            m.last_reload.clone(),
        );
        registry.register(
            "listener_connections",
            "Connections open per listener (tls, admin), TLS handshakes included",
            m.listener_open.clone(),
        );
        registry.register(
            "listener_max_connections",
            "Connection limit per listener, after fitting the descriptor limit",
            m.listener_max.clone(),
        );
        registry.register(
            "listener_limit_reached",
            "Times a listener stopped accepting because every connection slot was taken",
            m.listener_limit_reached.clone(),
        );
        registry.register(
            "listener_accept_errors",
            "Failed accept() calls per listener (e.g. out of descriptors)",
            m.listener_accept_errors.clone(),
        );
        registry.register(
            "listener_timeouts",
            "Connections closed by a timeout, per listener and timeout (handshake, header_read, idle)",
            m.listener_timeouts.clone(),
        );
        Arc::new(Metrics { registry, ..m })
    }

    /// The metrics of the listener named `name` (`tls`, `admin`).
    pub fn listener(&self, name: &str) -> ListenerMetrics {
        let labels = ListenerLabels {
            listener: name.into(),
        };
        ListenerMetrics {
            listener: name.into(),
            open: self.listener_open.get_or_create(&labels).clone(),
            max: self.listener_max.get_or_create(&labels).clone(),
            limit_reached: self.listener_limit_reached.get_or_create(&labels).clone(),
            accept_errors: self.listener_accept_errors.get_or_create(&labels).clone(),
            timeouts: self.listener_timeouts.clone(),
        }
    }

    /// Counts a completed handshake.
    pub fn accepted(&self) {
        self.handshakes
            .get_or_create(&HandshakeLabels {
                result: "accepted".into(),
                reason: String::new(),
            })
            .inc();
    }

    /// Counts a refused handshake with its reason (see [`refusal_reason`]).
    pub fn refused(&self, reason: &str) {
        self.handshakes
            .get_or_create(&HandshakeLabels {
                result: "refused".into(),
                reason: reason.into(),
            })
            .inc();
    }

    /// Counts an open connection until the guard is dropped.
    pub fn open_connection(self: &Arc<Self>) -> ConnectionGuard {
        self.open_connections.inc();
        ConnectionGuard(self.clone())
    }

    /// Counts a connection closed by `--drop-untrusted`.
    pub fn dropped_untrusted(&self) {
        self.dropped_untrusted.inc();
    }

    /// Counts a credential event.
    pub fn on_event(&self, event: &Event) {
        let (credential, what) = match event {
            Event::Reloaded { name, .. } => {
                self.reloads
                    .get_or_create(&ReloadLabels {
                        credential: name.clone(),
                        result: "ok".into(),
                    })
                    .inc();
                return;
            }
            Event::ReloadFailed { name, .. } => {
                self.reloads
                    .get_or_create(&ReloadLabels {
                        credential: name.clone(),
                        result: "error".into(),
                    })
                    .inc();
                return;
            }
            Event::ExpiringSoon { name, .. } => (name, "expiring_soon"),
            Event::Expired { name, .. } => (name, "expired"),
            _ => return,
        };
        self.events
            .get_or_create(&EventLabels {
                credential: credential.clone(),
                event: what.into(),
            })
            .inc();
    }

    fn set_credential(&self, status: &Status) {
        let labels = CredentialLabels {
            credential: status.name.clone(),
        };
        self.generation
            .get_or_create(&labels)
            .set(i64::try_from(status.generation).unwrap_or(i64::MAX));
        if let Some(t) = status.not_after {
            self.not_after.get_or_create(&labels).set(unix(t));
        }
        if let Some(t) = status.loaded_at {
            self.last_reload.get_or_create(&labels).set(unix(t));
        }
    }
}

/// Decrements the open-connection gauge when dropped.
pub struct ConnectionGuard(Arc<Metrics>);

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.0.open_connections.dec();
    }
}

fn unix(t: SystemTime) -> i64 {
    match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_secs()).unwrap_or(i64::MAX),
    }
}

/// A stable, low-cardinality reason for a refused handshake.
pub fn refusal_reason(error: &std::io::Error) -> &'static str {
    use rustls::{CertificateError, Error as TlsError};
    let Some(tls) = error.get_ref().and_then(|e| e.downcast_ref::<TlsError>()) else {
        return match error.kind() {
            std::io::ErrorKind::UnexpectedEof => "eof",
            std::io::ErrorKind::TimedOut => "timeout",
            _ => "io",
        };
    };
    match tls {
        TlsError::NoCertificatesPresented => "no_client_certificate",
        TlsError::InvalidCertificate(c) => match c {
            CertificateError::UnknownIssuer => "unknown_ca",
            CertificateError::BadSignature => "bad_signature",
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => "expired",
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                "not_yet_valid"
            }
            CertificateError::Revoked => "revoked",
            CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. } => {
                "wrong_key_usage"
            }
            _ => "invalid_certificate",
        },
        TlsError::AlertReceived(_) => "peer_alert",
        TlsError::PeerIncompatible(_) => "incompatible",
        TlsError::NoApplicationProtocol => "no_alpn",
        _ => "other",
    }
}

/// Everything the endpoints report on.
pub struct Observed {
    /// The server identities.
    pub identities: ServerIdentities,
    /// The client trust, with mutual TLS.
    pub trust: Option<ReloadingTrust>,
    /// The metrics.
    pub metrics: Arc<Metrics>,
    /// Every credential has loaded and the TLS listener serves.
    pub ready: AtomicBool,
}

impl Observed {
    /// Reports on credentials built with `metrics` subscribed (see [`Metrics::new`]).
    pub fn new(
        identities: ServerIdentities,
        trust: Option<ReloadingTrust>,
        metrics: Arc<Metrics>,
    ) -> Arc<Observed> {
        Arc::new(Observed {
            identities,
            trust,
            metrics,
            ready: AtomicBool::new(false),
        })
    }

    /// Whether every credential has a good value.
    pub fn all_loaded(&self) -> bool {
        self.identities
            .members()
            .iter()
            .all(|(s, _)| s.generation > 0)
            && self
                .trust
                .as_ref()
                .is_none_or(|t| t.status().generation > 0)
    }

    /// The `/status` document.
    pub fn status(&self) -> Value {
        let now = SystemTime::now();
        let mut worst = Health::Ok;
        let mut credentials = Vec::new();
        for (status, current) in self.identities.members() {
            let health = status.health(now);
            worst = worst.max(health);
            let mut v = common(&status, health, now);
            v["kind"] = json!("identity");
            if let Some(c) = current {
                let leaf = c.value.leaf();
                v["sources"] = json!(c.sources);
                v["fingerprint"] = json!(leaf.fingerprint);
                v["subject"] = json!(leaf.subject);
                v["issuer"] = json!(leaf.issuer);
                v["serial"] = json!(leaf.serial);
                v["dns_names"] = json!(leaf.dns_names);
                v["ip_addresses"] = json!(leaf.ip_addresses);
                v["key_type"] = json!(leaf.key_type);
                v["chain_length"] = json!(c.value.chain().len());
                v["seconds_to_expiry"] = json!(seconds_between(now, leaf.not_after));
            }
            credentials.push(v);
        }
        if let Some(trust) = &self.trust {
            let status = trust.status();
            let health = status.health(now);
            worst = worst.max(health);
            let mut v = common(&status, health, now);
            v["kind"] = json!("trust");
            if let Some(c) = trust.current() {
                v["sources"] = json!(c.sources);
                v["fingerprint"] = json!(c.value.fingerprint());
                v["cas"] = c
                    .value
                    .cas()
                    .iter()
                    .map(|ca| {
                        json!({
                            "subject": ca.subject,
                            "fingerprint": ca.fingerprint,
                            "not_after": rfc3339(ca.not_after),
                        })
                    })
                    .collect();
                let crl_json = |crl: &hitless::CrlInfo| {
                    json!({
                        "file": crl.path,
                        "issuer": crl.issuer,
                        "number": crl.number,
                        "this_update": rfc3339(crl.this_update),
                        "next_update": crl.next_update.map(rfc3339),
                        "revoked": crl.revoked,
                        "verified_by": crl.verified_by,
                    })
                };
                v["crls"] = c.value.crls().iter().map(crl_json).collect();
                v["superseded_crls"] = c.value.superseded_crls().iter().map(crl_json).collect();
                v["non_ca_anchors"] = c
                    .value
                    .non_ca_anchors()
                    .iter()
                    .map(|ca| json!({ "subject": ca.subject, "fingerprint": ca.fingerprint }))
                    .collect();
            }
            credentials.push(v);
        }
        json!({
            "state": worst.as_str(),
            "ready": self.ready.load(Ordering::SeqCst),
            "now": rfc3339(now),
            "credentials": credentials,
        })
    }

    /// The `/metrics` text (OpenMetrics).
    pub fn metrics_text(&self) -> String {
        for (status, _) in self.identities.members() {
            self.metrics.set_credential(&status);
        }
        if let Some(t) = &self.trust {
            self.metrics.set_credential(&t.status());
        }
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.metrics.registry).is_err() {
            out.clear();
        }
        out
    }

    /// Answers `/healthz`, `/status` and `/metrics`; `None` for any other path.
    pub fn respond(&self, path: &str) -> Option<hyper::Response<Body>> {
        Some(match path {
            "/healthz" => {
                if self.ready.load(Ordering::SeqCst) {
                    http::text(StatusCode::OK, "ok\n")
                } else {
                    http::text(StatusCode::SERVICE_UNAVAILABLE, "waiting for credentials\n")
                }
            }
            "/status" => http::json(StatusCode::OK, &self.status()),
            "/metrics" => {
                let mut r = http::text(StatusCode::OK, self.metrics_text());
                r.headers_mut().insert(
                    hyper::header::CONTENT_TYPE,
                    hyper::header::HeaderValue::from_static(
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    ),
                );
                r
            }
            _ => return None,
        })
    }
}

fn common(status: &Status, health: Health, now: SystemTime) -> Value {
    json!({
        "name": status.name,
        "detection": status.detection.name(),
        "generation": status.generation,
        "state": health.as_str(),
        "not_before": status.not_before.map(rfc3339),
        "not_after": status.not_after.map(rfc3339),
        "seconds_to_expiry": status.not_after.map(|t| seconds_between(now, t)),
        "expiring_soon_at": status.expiring_soon_at.map(rfc3339),
        "loaded_at": status.loaded_at.map(rfc3339),
        "last_check": status.last_check.map(rfc3339),
        "reloads_ok": status.reloads_ok,
        "reloads_failed": status.reloads_failed,
        "last_error": status.last_error.as_ref().map(|e| json!({
            "file": e.path,
            "reason": e.message,
            "at": rfc3339(e.at),
        })),
    })
}

fn seconds_between(now: SystemTime, then: SystemTime) -> i64 {
    unix(then) - unix(now)
}

/// RFC 3339, UTC, seconds.
pub fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

/// Serves `/healthz`, `/status` and `/metrics` over plain HTTP/1.1 on `listener`, with the
/// limits and timeouts of `limits`, until `shutdown` turns true.
pub async fn serve_admin(
    mut listener: Listener,
    observed: Arc<Observed>,
    limits: Limits,
    shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let builder = Arc::new(listen::http_builder(&limits, true));
    let mut stop = shutdown.clone();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = listen::stopped(&mut stop) => return,
        };
        let observed = observed.clone();
        let builder = builder.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let Accepted { tcp, peer, slot } = accepted;
            let service =
                hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let response = observed
                        .respond(req.uri().path())
                        .unwrap_or_else(|| http::text(StatusCode::NOT_FOUND, "not found\n"));
                    std::future::ready(Ok::<_, std::convert::Infallible>(response))
                });
            let ended = listen::serve_http(&builder, tcp, service, &limits, &slot, shutdown).await;
            tracing::debug!(%peer, "admin connection ended: {ended}");
        });
    }
}
