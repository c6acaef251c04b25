//! `proxy client`: plaintext in, mutual TLS out.
//!
//! Per local connection: a connection to the target, a TLS handshake with the client
//! configuration current at that moment (the reloading client identity; the server's chain
//! verified against the trust current when it is verified), the `--verify-*` pins on the
//! server certificate's names, then the tunnel. TLS 1.3 sessions are resumed between changes:
//! the configuration's session store is bound to the trust generation and the identity's
//! rotations, so a session from before a rotation or a trust change is never offered.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use hitless::{CertInfo, ReloadingClientConfig, ReloadingIdentity, ReloadingTrust, Role};
use rustls::pki_types::ServerName;
use tokio::io::AsyncWriteExt;
use tokio_rustls::TlsConnector;

use super::endpoint::{Address, Plain, UnixAccept};
use super::observe::{Credential, Families, ProxyStats};
use super::{tunnel, Common, Running};
use crate::admin::{self, Metrics};
use crate::allow::{PeerNames, Rules};
use crate::flags::{IdentityFlags, ReloadFlags, ServerTrustFlags};
use crate::listen::{Limits, Listener};

/// Flags of `hitless proxy client`.
#[derive(clap::Args, Debug)]
#[command(after_help = "Examples:
  hitless proxy client --listen 127.0.0.1:8080 --target api.internal:8443 \\
      --identity /run/secrets/client.pem --ca /run/secrets/ca.pem
  hitless proxy client --listen unix:/run/api.sock --target 10.0.0.7:8443 \\
      --server-name api.internal --cert tls.crt --key tls.key --ca ca.pem \\
      --verify-uri 'spiffe://example.org/ns/prod/sa/api' --admin-listen 127.0.0.1:9091

The server certificate must verify against --ca (and CRLs) and name --server-name (default:
the host of --target); with --verify-*, it must also carry one of the names given.")]
pub struct Args {
    /// Where local clients connect in plaintext: IP:PORT or unix:/path.
    #[arg(long, value_parser = Address::parse)]
    pub listen: Address,
    /// The TLS server to forward to: HOST:PORT or unix:/path.
    #[arg(long, value_parser = Address::parse)]
    pub target: Address,
    #[command(flatten)]
    pub identity: IdentityFlags,
    #[command(flatten)]
    pub trust: ServerTrustFlags,
    #[command(flatten)]
    pub reload: ReloadFlags,
    /// The name the server certificate must carry, also sent as SNI (default: the host of
    /// --target; required with a unix:/path target).
    #[arg(long)]
    pub server_name: Option<String>,
    /// Also require the server certificate to have this DNS SAN. Repeatable (any one
    /// suffices).
    #[arg(long)]
    pub verify_dns: Vec<String>,
    /// Also require the server certificate to have this URI SAN (e.g. a SPIFFE ID), exactly or,
    /// with a trailing /*, anything under it. Repeatable (any one suffices).
    #[arg(long)]
    pub verify_uri: Vec<String>,
    /// Also require the server certificate's subject CN to be this. Repeatable.
    #[arg(long)]
    pub verify_cn: Vec<String>,
    /// Also require the server certificate's subject OU to be this. Repeatable.
    #[arg(long)]
    pub verify_ou: Vec<String>,
    #[command(flatten)]
    pub common: Common,
}

/// A `proxy client` with its credentials loaded.
pub struct Proxy {
    listen: Address,
    target: Address,
    server_name: ServerName<'static>,
    identity: ReloadingIdentity,
    trust: ReloadingTrust,
    pins: Rules,
    metrics: Arc<Metrics>,
    /// Counters and status.
    pub stats: Arc<ProxyStats>,
}

/// Checks the flags and loads the credentials (or starts them empty, to wait for them).
///
/// `name` names the proxy in status, metrics and logs (a `[[proxy]]` table's name); without one
/// the proxy is `client` and its credentials `client` and `server-trust`.
pub fn prepare(
    args: &Args,
    name: Option<&str>,
    metrics: &Arc<Metrics>,
    families: &Families,
) -> anyhow::Result<Proxy> {
    let (proxy_name, identity_name, trust_name) = match name {
        Some(n) => (n.to_owned(), n.to_owned(), format!("{n}/server-trust")),
        None => (
            "client".to_owned(),
            "client".to_owned(),
            "server-trust".to_owned(),
        ),
    };
    let pins = Rules::parse(
        false,
        &args.verify_cn,
        &args.verify_ou,
        &args.verify_dns,
        &args.verify_uri,
    )?;
    let name = match (&args.server_name, args.target.host()) {
        (Some(name), _) => name.clone(),
        (None, Some(host)) => host.to_owned(),
        (None, None) => bail!("--server-name is required with a unix:/path --target"),
    };
    let server_name = ServerName::try_from(name.clone())
        .map_err(|e| anyhow!("{name}: not a valid server name: {e}"))?;
    if let Address::Tcp { host, .. } = &args.listen {
        host.parse::<std::net::IpAddr>()
            .with_context(|| format!("--listen {}: give an IP address", args.listen))?;
    }
    let waiting = !args.reload.wait_for_credentials.is_zero();
    let on_event = {
        let m = metrics.clone();
        move |e: &hitless::Event| m.on_event(e)
    };
    let identity = ReloadingIdentity::builder(args.identity.source()?)
        .name(identity_name)
        .role(Role::Client)
        .detection(args.reload.detection())
        .quiet_period(args.reload.quiet_period)
        .accept_expired(args.reload.accept_expired)
        .expiring_soon(args.reload.expiring_soon)
        .allow_empty_start(waiting)
        .on_event(on_event.clone())
        .build()
        .context("no valid client identity")?;
    let trust = ReloadingTrust::builder(args.trust.source()?)
        .name(trust_name)
        .detection(args.reload.detection())
        .quiet_period(args.reload.quiet_period)
        .allow_empty_start(waiting)
        .on_event(on_event)
        .build()
        .context("no valid trust bundle for the server's certificate")?;
    let stats = ProxyStats::new(
        families,
        &proxy_name,
        "client",
        args.listen.to_string(),
        args.target.to_string(),
        pins.describe(),
    );
    Ok(Proxy {
        listen: args.listen.clone(),
        target: args.target.clone(),
        server_name,
        identity,
        trust,
        pins,
        metrics: metrics.clone(),
        stats,
    })
}

/// What every connection of one proxy shares.
struct Shared {
    configs: ReloadingClientConfig,
    target: Address,
    server_name: ServerName<'static>,
    pins: Rules,
    stats: Arc<ProxyStats>,
    connect_timeout: Duration,
    limits: Limits,
}

impl Proxy {
    /// Its credentials, for status and SIGHUP.
    pub fn credentials(&self) -> Vec<Credential> {
        vec![
            Credential::Identity(self.identity.clone()),
            Credential::Trust(self.trust.clone()),
        ]
    }

    /// Listens and serves until `stop` turns true.
    pub fn start(
        self,
        limits: Limits,
        common: &Common,
        stop: tokio::sync::watch::Receiver<bool>,
    ) -> anyhow::Result<Running> {
        // Default resumption: a session store bound to the trust generation and to the
        // identity's rotations (a new store after either), so resumed handshakes never skip a
        // verification the current trust would make, and a rotated certificate is presented.
        let configs = ReloadingClientConfig::builder(&self.trust)
            .identities(vec![self.identity.clone()])
            .build()
            .context("cannot build the TLS client configuration")?;
        let shared = Arc::new(Shared {
            configs,
            target: self.target.clone(),
            server_name: self.server_name,
            pins: self.pins,
            stats: self.stats,
            connect_timeout: common.connect_timeout,
            limits,
        });
        tracing::info!(
            listen = %self.listen,
            target = %self.target,
            verify = ?shared.pins.describe(),
            max_connections = limits.max_connections,
            "proxy client: plaintext in, mutual TLS to the target"
        );
        match &self.listen {
            Address::Tcp { host, port } => {
                let ip: std::net::IpAddr = host
                    .parse()
                    .with_context(|| format!("--listen {}: give an IP address", self.listen))?;
                let addr = std::net::SocketAddr::new(ip, *port);
                let listener = Listener::bind(
                    "proxy",
                    addr,
                    limits.max_connections,
                    self.metrics.listener(shared.stats.name()),
                )
                .with_context(|| format!("cannot listen on {addr} (--listen)"))?;
                Ok(super::spawn_accept_loop(listener, stop, move |accepted| {
                    let shared = shared.clone();
                    async move {
                        let peer = accepted.peer.to_string();
                        let slot = accepted.slot;
                        handle(shared, Plain::Tcp(accepted.tcp), peer).await;
                        drop(slot);
                    }
                }))
            }
            Address::Unix(path) => {
                let mut listener = UnixAccept::bind(path, limits.max_connections)?;
                let (done_tx, done) = tokio::sync::oneshot::channel();
                let mut stop = stop;
                tokio::spawn(async move {
                    loop {
                        let (stream, permit) = tokio::select! {
                            accepted = listener.accept() => accepted,
                            () = crate::listen::stopped(&mut stop) => break,
                        };
                        let shared = shared.clone();
                        tokio::spawn(async move {
                            handle(shared, Plain::Unix(stream), "unix".into()).await;
                            drop(permit);
                        });
                    }
                    listener.drain().await;
                    let _ = done_tx.send(());
                });
                Ok(Running { done })
            }
        }
    }
}

/// One local connection: upstream connection, handshake, pins, tunnel.
async fn handle(shared: Arc<Shared>, mut local: Plain, peer: String) {
    let stats = &shared.stats;
    let upstream = match shared.target.connect(shared.connect_timeout).await {
        Ok(upstream) => upstream,
        Err(e) => {
            stats.connect_failed();
            stats.refused(if e.kind() == std::io::ErrorKind::TimedOut {
                "target_timeout"
            } else {
                "target_unreachable"
            });
            tracing::warn!(%peer, target = %shared.target, "cannot connect to the target: {e}");
            return;
        }
    };
    // The configuration current now: the trust, identity and session store of this moment.
    let connector = TlsConnector::from(shared.configs.current());
    let handshake = connector.connect(shared.server_name.clone(), upstream);
    let mut tls = match tokio::time::timeout(shared.limits.handshake_timeout, handshake).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            stats.refused("upstream_handshake");
            tracing::warn!(
                %peer,
                target = %shared.target,
                reason = admin::refusal_reason(&e),
                "TLS handshake with the target failed: {e}"
            );
            return;
        }
        Err(_) => {
            stats.refused("handshake_timeout");
            tracing::warn!(%peer, target = %shared.target, "TLS handshake with the target timed out");
            return;
        }
    };
    let (_, session) = tls.get_ref();
    stats.handshake(match session.handshake_kind() {
        Some(rustls::HandshakeKind::Resumed) => "resumed",
        _ => "full",
    });
    let leaf = session
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|d| d.clone().into_owned());
    if !shared.pins.is_empty() {
        let names = leaf.as_ref().map(|der| PeerNames::from_der(der));
        let admitted = match &names {
            Some(Ok(names)) => shared.pins.admitting(names).is_some(),
            _ => false,
        };
        if !admitted {
            stats.refused("server_not_allowed");
            let described = match &names {
                Some(Ok(n)) => n.describe(),
                Some(Err(e)) => format!("{e:#}"),
                None => "no certificate".into(),
            };
            tracing::warn!(
                %peer,
                target = %shared.target,
                server = %described,
                "closing: the server certificate matches no --verify-* pin"
            );
            let _ = tokio::time::timeout(Duration::from_secs(1), tls.shutdown()).await;
            return;
        }
    }
    let info = leaf
        .as_ref()
        .and_then(|der| CertInfo::parse(Path::new("server"), 0, der).ok());
    let _open = stats.opened(info.as_ref());
    let ended = tunnel::run(
        &mut local,
        &mut tls,
        stats.up.clone(),
        stats.down.clone(),
        shared.limits.idle_timeout,
    )
    .await;
    match ended {
        tunnel::Ended::Done(up, down) => {
            stats.closed("done");
            tracing::debug!(%peer, up, down, "tunnel closed");
        }
        tunnel::Ended::Idle => {
            stats.closed("idle");
            tracing::info!(%peer, "tunnel closed: idle");
            let _ = tokio::time::timeout(Duration::from_secs(1), tls.shutdown()).await;
        }
        tunnel::Ended::Failed(e) => {
            stats.closed("failed");
            tracing::debug!(%peer, "tunnel failed: {e}");
        }
    }
}
