//! `proxy server`: mutual TLS in, plaintext out.
//!
//! Per accepted connection: the TLS handshake with the configuration current when the
//! ClientHello arrives (`hitless::TlsAcceptor`; the client's chain is verified against the
//! trust current at that moment), then the `--allow-*` rules on the client certificate's
//! names, then a connection to the target (optionally preceded by a PROXY v2 header), then the
//! tunnel. With `--drop-untrusted`, every trust change re-verifies the open tunnels' client
//! chains and closes those the new trust refuses.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use hitless::{
    CertInfo, ReloadingIdentity, ReloadingServerConfig, ReloadingTrust, Role, TlsAcceptor,
};
use rustls::pki_types::CertificateDer;
use tokio::io::AsyncWriteExt;

use super::endpoint::{Address, Plain};
use super::observe::{Credential, Families, ProxyStats};
use super::{pp2, tunnel, Common, Running};
use crate::admin::{self, Metrics};
use crate::allow::{PeerNames, Rules};
use crate::flags::{ClientTrustFlags, IdentityFlags, ReloadFlags};
use crate::listen::{Accepted, Limits, Listener};

/// Flags of `hitless proxy server`.
#[derive(clap::Args, Debug)]
#[command(after_help = "Examples:
  hitless proxy server --listen 0.0.0.0:8443 --target 127.0.0.1:8080 \\
      --identity /run/secrets/identity.pem --client-ca /run/secrets/ca.pem \\
      --allow-uri 'spiffe://example.org/ns/prod/*' --admin-listen 127.0.0.1:9090
  hitless proxy server --listen 0.0.0.0:8443 --target unix:/run/app.sock \\
      --cert tls.crt --key tls.key --client-ca ca.pem --crl crl.pem --drop-untrusted \\
      --allow-cn billing --proxy-protocol

A client is admitted when the client CAs (and CRLs) accept its chain AND an --allow-* rule
names it; --allow-all admits every trusted client. Without a rule the command refuses to start.
SIGHUP reloads every credential. SIGINT/SIGTERM stop accepting and let open tunnels finish
(--shutdown-timeout).")]
pub struct Args {
    /// Address to accept TLS on.
    #[arg(long)]
    pub listen: SocketAddr,
    /// Where admitted clients' bytes go: HOST:PORT or unix:/path.
    #[arg(long, value_parser = Address::parse)]
    pub target: Address,
    #[command(flatten)]
    pub identity: IdentityFlags,
    #[command(flatten)]
    pub trust: ClientTrustFlags,
    #[command(flatten)]
    pub reload: ReloadFlags,
    /// Admit every client the trust accepts (required when no other --allow-* is given).
    #[arg(long)]
    pub allow_all: bool,
    /// Admit clients whose certificate's subject CN is this. Repeatable.
    #[arg(long)]
    pub allow_cn: Vec<String>,
    /// Admit clients whose certificate's subject OU is this. Repeatable.
    #[arg(long)]
    pub allow_ou: Vec<String>,
    /// Admit clients whose certificate has this DNS SAN (case-insensitive). Repeatable.
    #[arg(long)]
    pub allow_dns: Vec<String>,
    /// Admit clients whose certificate has this URI SAN (e.g. a SPIFFE ID), exactly or, with a
    /// trailing /*, anything under it. Repeatable.
    #[arg(long)]
    pub allow_uri: Vec<String>,
    /// Send a PROXY protocol v2 header (client address, TLS version, client certificate CN) to
    /// the target before the client's bytes.
    #[arg(long)]
    pub proxy_protocol: bool,
    /// When the client trust or CRLs change, re-verify every open tunnel's client certificate
    /// and close the tunnels the new trust refuses.
    #[arg(long)]
    pub drop_untrusted: bool,
    #[command(flatten)]
    pub common: Common,
}

/// A `proxy server` with its credentials loaded.
pub struct Proxy {
    listen: SocketAddr,
    target: Address,
    identity: ReloadingIdentity,
    trust: ReloadingTrust,
    rules: Rules,
    proxy_protocol: bool,
    drop_untrusted: bool,
    metrics: Arc<Metrics>,
    /// Counters and status.
    pub stats: Arc<ProxyStats>,
}

/// Checks the flags and loads the credentials (or starts them empty, to wait for them).
///
/// `name` names the proxy in status, metrics and logs (a `[[proxy]]` table's name); without one
/// the proxy is `server` and its credentials `server` and `client-trust`.
pub fn prepare(
    args: &Args,
    name: Option<&str>,
    metrics: &Arc<Metrics>,
    families: &Families,
) -> anyhow::Result<Proxy> {
    let (proxy_name, identity_name, trust_name) = match name {
        Some(n) => (n.to_owned(), n.to_owned(), format!("{n}/client-trust")),
        None => (
            "server".to_owned(),
            "server".to_owned(),
            "client-trust".to_owned(),
        ),
    };
    let rules = Rules::parse(
        args.allow_all,
        &args.allow_cn,
        &args.allow_ou,
        &args.allow_dns,
        &args.allow_uri,
    )?;
    if rules.is_empty() {
        bail!(
            "no --allow-* rule: say which trusted clients to admit (--allow-cn, --allow-ou, \
             --allow-dns, --allow-uri), or --allow-all to admit every client the CA trusts"
        );
    }
    let waiting = !args.reload.wait_for_credentials.is_zero();
    let source = args.identity.source()?;
    let trust_source = args.trust.source()?;
    let on_event = {
        let m = metrics.clone();
        move |e: &hitless::Event| m.on_event(e)
    };
    let identity = ReloadingIdentity::builder(source)
        .name(identity_name)
        .role(Role::Server)
        .detection(args.reload.detection())
        .quiet_period(args.reload.quiet_period)
        .accept_expired(args.reload.accept_expired)
        .expiring_soon(args.reload.expiring_soon)
        .allow_empty_start(waiting)
        .on_event(on_event.clone())
        .build()
        .context("no valid server identity")?;
    let trust = ReloadingTrust::builder(trust_source)
        .name(trust_name)
        .detection(args.reload.detection())
        .quiet_period(args.reload.quiet_period)
        .allow_empty_start(waiting)
        .on_event(on_event)
        .build()
        .context("no valid client trust bundle")?;
    let stats = ProxyStats::new(
        families,
        &proxy_name,
        "server",
        args.listen.to_string(),
        args.target.to_string(),
        rules.describe(),
    );
    Ok(Proxy {
        listen: args.listen,
        target: args.target.clone(),
        identity,
        trust,
        rules,
        proxy_protocol: args.proxy_protocol,
        drop_untrusted: args.drop_untrusted,
        metrics: metrics.clone(),
        stats,
    })
}

/// What every connection of one proxy shares.
struct Shared {
    acceptor: TlsAcceptor,
    configs: ReloadingServerConfig,
    trust_changes: tokio::sync::watch::Receiver<u64>,
    target: Address,
    rules: Rules,
    proxy_protocol: bool,
    drop_untrusted: bool,
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
        // Built from the identity: a rotation starts a new session binding, so no client
        // resumes into a session made with the old certificate; a trust change rebuilds it.
        let configs = ReloadingServerConfig::builder(&self.identity)
            .client_trust(&self.trust)
            .local_ip(self.listen.ip())
            .build()
            .context("cannot build the TLS configuration")?;
        let (trust_tx, trust_changes) = tokio::sync::watch::channel(configs.trust_generation());
        configs.subscribe(move |change| {
            if change.trust_changed {
                trust_tx.send_replace(change.trust_generation);
            }
        });
        let listener = Listener::bind(
            "proxy",
            self.listen,
            limits.max_connections,
            self.metrics.listener(self.stats.name()),
        )
        .with_context(|| format!("cannot listen on {} (--listen)", self.listen))?;
        let local = listener.local_addr().context("listener has no address")?;
        tracing::info!(
            listen = %local,
            target = %self.target,
            allow = ?self.rules.describe(),
            proxy_protocol = self.proxy_protocol,
            drop_untrusted = self.drop_untrusted,
            max_connections = limits.max_connections,
            "proxy server: mutual TLS in, plaintext to the target"
        );
        let shared = Arc::new(Shared {
            acceptor: TlsAcceptor::new(configs.clone()),
            configs,
            trust_changes,
            target: self.target,
            rules: self.rules,
            proxy_protocol: self.proxy_protocol,
            drop_untrusted: self.drop_untrusted,
            stats: self.stats,
            connect_timeout: common.connect_timeout,
            limits,
        });
        Ok(super::spawn_accept_loop(listener, stop, move |accepted| {
            handle(shared.clone(), accepted)
        }))
    }
}

/// One connection: handshake, admission, target, tunnel.
async fn handle(shared: Arc<Shared>, accepted: Accepted) {
    let Accepted { tcp, peer, slot } = accepted;
    let stats = &shared.stats;
    let local = tcp.local_addr().ok();
    let handshake = shared.acceptor.accept(tcp);
    let mut tls = match tokio::time::timeout(shared.limits.handshake_timeout, handshake).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            // A TCP health check or port scan: nothing was offered, nothing refused.
            tracing::debug!(%peer, "connection closed before a TLS handshake: {e}");
            return;
        }
        Ok(Err(e)) => {
            stats.refused(admin::refusal_reason(&e));
            tracing::info!(%peer, "handshake refused: {e}");
            return;
        }
        Err(_) => {
            stats.refused("handshake_timeout");
            slot.timed_out("handshake");
            tracing::info!(%peer, "handshake timed out");
            return;
        }
    };
    let (_, session) = tls.get_ref();
    let chain: Vec<CertificateDer<'static>> = session
        .peer_certificates()
        .map(|c| c.iter().map(|d| d.clone().into_owned()).collect())
        .unwrap_or_default();
    let Some(leaf) = chain.first() else {
        // The verifier requires a certificate; this cannot happen with client trust set.
        stats.refused("no_client_certificate");
        close(tls).await;
        return;
    };
    let names = match PeerNames::from_der(leaf) {
        Ok(names) => names,
        Err(e) => {
            stats.refused("bad_certificate");
            tracing::info!(%peer, "refused: {e:#}");
            close(tls).await;
            return;
        }
    };
    if shared.rules.admitting(&names).is_none() {
        stats.refused("not_allowed");
        tracing::info!(
            %peer,
            client = %names.describe(),
            "refused: trusted client matches no --allow-* rule"
        );
        close(tls).await;
        return;
    }
    let facts = pp2::TlsFacts {
        sni: session.server_name().map(str::to_owned),
        version: session.protocol_version().map(version_name),
        cipher: session
            .negotiated_cipher_suite()
            .map(|s| format!("{:?}", s.suite())),
        cn: names.cn().map(str::to_owned),
        cert_on_connection: session.handshake_kind() != Some(rustls::HandshakeKind::Resumed),
    };
    let info = CertInfo::parse(Path::new("peer"), 0, leaf).ok();
    let mut target = match shared.target.connect(shared.connect_timeout).await {
        Ok(target) => target,
        Err(e) => {
            stats.connect_failed();
            stats.refused(if e.kind() == std::io::ErrorKind::TimedOut {
                "target_timeout"
            } else {
                "target_unreachable"
            });
            tracing::warn!(%peer, target = %shared.target, "cannot connect to the target: {e}");
            close(tls).await;
            return;
        }
    };
    if shared.proxy_protocol {
        let destination = local.unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)));
        let header = pp2::header(peer, destination, &facts);
        if let Err(e) = write_header(&mut target, &header, shared.connect_timeout).await {
            stats.connect_failed();
            stats.refused("target_unreachable");
            tracing::warn!(%peer, target = %shared.target, "cannot send the PROXY header: {e}");
            close(tls).await;
            return;
        }
    }
    let _open = stats.opened(info.as_ref());
    tracing::debug!(%peer, client = %names.describe(), "tunnel open");
    let tunnel = tunnel::run(
        &mut tls,
        &mut target,
        stats.up.clone(),
        stats.down.clone(),
        shared.limits.idle_timeout,
    );
    let mut trust_changes = shared.trust_changes.clone();
    let untrusted = async {
        if !shared.drop_untrusted {
            return std::future::pending::<rustls::Error>().await;
        }
        loop {
            if trust_changes.changed().await.is_err() {
                return std::future::pending().await;
            }
            if let Err(e) = shared.configs.verify_client(&chain) {
                return e;
            }
        }
    };
    // Whether the proxy ends the tunnel itself (and says so to the client: close_notify).
    let cut = tokio::select! {
        ended = tunnel => match ended {
            tunnel::Ended::Done(up, down) => {
                stats.closed("done");
                tracing::debug!(%peer, up, down, "tunnel closed");
                false
            }
            tunnel::Ended::Idle => {
                stats.closed("idle");
                slot.timed_out("idle");
                tracing::info!(%peer, "tunnel closed: idle");
                true
            }
            tunnel::Ended::Failed(e) => {
                stats.closed("failed");
                tracing::debug!(%peer, "tunnel failed: {e}");
                false
            }
        },
        reason = untrusted => {
            stats.closed("dropped_untrusted");
            tracing::warn!(
                %peer,
                client = %names.describe(),
                "closing open tunnel: the new trust refuses its client certificate: {reason}"
            );
            true
        }
    };
    if cut {
        close(tls).await;
    }
}

async fn write_header(target: &mut Plain, header: &[u8], timeout: Duration) -> std::io::Result<()> {
    match tokio::time::timeout(timeout, target.write_all(header)).await {
        Ok(result) => result,
        Err(_) => Err(std::io::ErrorKind::TimedOut.into()),
    }
}

/// Ends a TLS connection politely (close_notify, FIN), without waiting long for a peer that
/// does not read.
async fn close<S: tokio::io::AsyncWrite + Unpin>(mut tls: S) {
    let _ = tokio::time::timeout(Duration::from_secs(1), tls.shutdown()).await;
}

fn version_name(v: rustls::ProtocolVersion) -> String {
    match v {
        rustls::ProtocolVersion::TLSv1_3 => "TLSv1.3".into(),
        rustls::ProtocolVersion::TLSv1_2 => "TLSv1.2".into(),
        other => format!("{other:?}"),
    }
}
