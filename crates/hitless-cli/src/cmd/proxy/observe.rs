//! What `proxy` reports: per proxy, tunnels open and opened, bytes each way, refusals by
//! reason, target connect failures, upstream handshakes (full or resumed) and the last peer
//! seen; per process, the credentials' state. Served on `--admin-listen` as `/healthz`,
//! `/status` (JSON) and `/metrics` (OpenMetrics, the `hitless_proxy_*` families beside the
//! credential families of `serve`).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use hitless::{Health, ReloadingIdentity, ReloadingTrust};
use hyper::StatusCode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde_json::{json, Value};

use crate::admin::{self, Endpoints, Metrics};
use crate::http::{self, Body};
use crate::lock;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProxyLabels {
    proxy: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DirectionLabels {
    proxy: String,
    direction: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    proxy: String,
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    proxy: String,
    kind: String,
}

/// The `hitless_proxy_*` metric families, shared by every proxy of the process.
#[derive(Clone, Default)]
pub struct Families {
    open: Family<ProxyLabels, Gauge>,
    opened: Family<ProxyLabels, Counter>,
    bytes: Family<DirectionLabels, Counter>,
    refused: Family<ReasonLabels, Counter>,
    closed: Family<ReasonLabels, Counter>,
    connect_failures: Family<ProxyLabels, Counter>,
    handshakes: Family<KindLabels, Counter>,
}

impl Families {
    /// Registers the families (under the `hitless_` prefix of `registry`).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "proxy_tunnels_open",
            "Tunnels open now, per proxy",
            self.open.clone(),
        );
        registry.register(
            "proxy_tunnels",
            "Tunnels opened (peer admitted and target connected), per proxy",
            self.opened.clone(),
        );
        registry.register(
            "proxy_bytes",
            "Bytes forwarded, per proxy and direction (client_to_target, target_to_client)",
            self.bytes.clone(),
        );
        registry.register(
            "proxy_refused",
            "Connections refused, per proxy and reason (unknown_ca, revoked, expired, \
             no_client_certificate, not_allowed, server_not_allowed, handshake_timeout, \
             upstream_handshake, target_unreachable, ...)",
            self.refused.clone(),
        );
        registry.register(
            "proxy_tunnels_closed",
            "Tunnels closed, per proxy and reason (done, idle, failed, dropped_untrusted)",
            self.closed.clone(),
        );
        registry.register(
            "proxy_connect_failures",
            "Failed connections to the target, per proxy",
            self.connect_failures.clone(),
        );
        registry.register(
            "proxy_upstream_handshakes",
            "TLS handshakes with the upstream server (proxy client), per kind (full, resumed)",
            self.handshakes.clone(),
        );
    }
}

/// One proxy's counters and what `/status` says about it.
pub struct ProxyStats {
    name: String,
    /// `server` or `client`.
    mode: &'static str,
    listen: String,
    target: String,
    rules: Vec<String>,
    families: Families,
    /// Tunnels open now.
    pub open: Gauge,
    /// Bytes client → target.
    pub up: Counter,
    /// Bytes target → client.
    pub down: Counter,
    opened: Counter,
    connect_failures: Counter,
    refused: Mutex<BTreeMap<String, u64>>,
    closed: Mutex<BTreeMap<String, u64>>,
    handshakes: Mutex<BTreeMap<String, u64>>,
    last_peer: Mutex<Option<Value>>,
}

impl ProxyStats {
    /// Counters for the proxy `name` (a label value).
    pub fn new(
        families: &Families,
        name: &str,
        mode: &'static str,
        listen: String,
        target: String,
        rules: Vec<String>,
    ) -> Arc<ProxyStats> {
        let p = ProxyLabels { proxy: name.into() };
        let direction = |d: &str| {
            families
                .bytes
                .get_or_create(&DirectionLabels {
                    proxy: name.into(),
                    direction: d.into(),
                })
                .clone()
        };
        Arc::new(ProxyStats {
            name: name.into(),
            mode,
            listen,
            target,
            rules,
            families: families.clone(),
            open: families.open.get_or_create(&p).clone(),
            up: direction("client_to_target"),
            down: direction("target_to_client"),
            opened: families.opened.get_or_create(&p).clone(),
            connect_failures: families.connect_failures.get_or_create(&p).clone(),
            refused: Mutex::default(),
            closed: Mutex::default(),
            handshakes: Mutex::default(),
            last_peer: Mutex::default(),
        })
    }

    /// The proxy's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Counts a refused connection.
    pub fn refused(&self, reason: &str) {
        self.families
            .refused
            .get_or_create(&ReasonLabels {
                proxy: self.name.clone(),
                reason: reason.into(),
            })
            .inc();
        *lock(&self.refused).entry(reason.into()).or_default() += 1;
    }

    /// Counts a failed connection to the target.
    pub fn connect_failed(&self) {
        self.connect_failures.inc();
    }

    /// Counts an upstream handshake (`full`, `resumed`).
    pub fn handshake(&self, kind: &str) {
        self.families
            .handshakes
            .get_or_create(&KindLabels {
                proxy: self.name.clone(),
                kind: kind.into(),
            })
            .inc();
        *lock(&self.handshakes).entry(kind.into()).or_default() += 1;
    }

    /// Marks a tunnel open until the guard is dropped; records its peer certificate.
    pub fn opened(self: &Arc<Self>, peer: Option<&hitless::CertInfo>) -> OpenTunnel {
        self.opened.inc();
        self.open.inc();
        if let Some(c) = peer {
            *lock(&self.last_peer) = Some(json!({
                "subject": c.subject,
                "serial": c.serial,
                "fingerprint": c.fingerprint,
                "not_after": admin::rfc3339(c.not_after),
                "at": admin::rfc3339(SystemTime::now()),
            }));
        }
        OpenTunnel(self.clone())
    }

    /// Counts a closed tunnel by reason (`done`, `idle`, `failed`, `dropped_untrusted`).
    pub fn closed(&self, reason: &str) {
        self.families
            .closed
            .get_or_create(&ReasonLabels {
                proxy: self.name.clone(),
                reason: reason.into(),
            })
            .inc();
        *lock(&self.closed).entry(reason.into()).or_default() += 1;
    }

    fn status(&self) -> Value {
        json!({
            "name": self.name,
            "mode": self.mode,
            "listen": self.listen,
            "target": self.target,
            "rules": self.rules,
            "tunnels_open": self.open.get(),
            "tunnels_opened": self.opened.get(),
            "bytes_client_to_target": self.up.get(),
            "bytes_target_to_client": self.down.get(),
            "connect_failures": self.connect_failures.get(),
            "refused": *lock(&self.refused),
            "closed": *lock(&self.closed),
            "upstream_handshakes": *lock(&self.handshakes),
            "last_peer": *lock(&self.last_peer),
        })
    }
}

/// Decrements the open-tunnel gauge when dropped.
pub struct OpenTunnel(Arc<ProxyStats>);

impl Drop for OpenTunnel {
    fn drop(&mut self) {
        self.0.open.dec();
    }
}

/// A credential the process reports on.
#[derive(Clone)]
pub enum Credential {
    /// An identity.
    Identity(ReloadingIdentity),
    /// A trust bundle.
    Trust(ReloadingTrust),
}

impl Credential {
    /// Has it a good value?
    pub fn loaded(&self) -> bool {
        match self {
            Credential::Identity(i) => i.status().generation > 0,
            Credential::Trust(t) => t.status().generation > 0,
        }
    }

    /// Its status.
    pub fn status(&self) -> hitless::Status {
        match self {
            Credential::Identity(i) => i.status(),
            Credential::Trust(t) => t.status(),
        }
    }

    /// Reloads it now (SIGHUP); may sleep for the quiet period.
    pub fn reload(&self) -> Result<hitless::Reload, hitless::Error> {
        match self {
            Credential::Identity(i) => i.reload(),
            Credential::Trust(t) => t.reload(),
        }
    }
}

/// Everything `/healthz`, `/status` and `/metrics` report for the process.
pub struct Report {
    /// The credential metrics (with the proxy families registered).
    pub metrics: Arc<Metrics>,
    /// Every credential of every proxy.
    pub credentials: Vec<Credential>,
    /// Every proxy.
    pub proxies: Vec<Arc<ProxyStats>>,
    /// Every credential has loaded and every proxy listens.
    pub ready: AtomicBool,
}

impl Report {
    /// Do all credentials have a good value?
    pub fn all_loaded(&self) -> bool {
        self.credentials.iter().all(Credential::loaded)
    }

    /// The `/status` document: `serve`'s, plus `proxies`.
    pub fn status(&self) -> Value {
        let now = SystemTime::now();
        let mut worst = Health::Ok;
        let mut credentials = Vec::new();
        for c in &self.credentials {
            let (v, health) = match c {
                Credential::Identity(i) => {
                    admin::identity_json(&i.status(), i.current().as_deref(), now)
                }
                Credential::Trust(t) => admin::trust_json(t, now),
            };
            worst = worst.max(health);
            credentials.push(v);
        }
        json!({
            "state": worst.as_str(),
            "ready": self.ready.load(Ordering::SeqCst),
            "now": admin::rfc3339(now),
            "credentials": credentials,
            "proxies": self.proxies.iter().map(|p| p.status()).collect::<Vec<_>>(),
        })
    }
}

impl Endpoints for Report {
    fn respond(&self, path: &str) -> Option<hyper::Response<Body>> {
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
                for c in &self.credentials {
                    self.metrics.set_credential(&c.status());
                }
                let mut r = http::text(StatusCode::OK, self.metrics.encode());
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
