//! `hitless serve`: an HTTPS server that enforces mutual TLS (with `--client-ca`) and reloads its
//! identities, client trust bundle and CRLs while it runs.
//!
//! Every accepted TCP connection is handshaken with the configuration current at that moment
//! (rebuilt only when the client trust changes); the server certificate is resolved from the
//! reloading snapshots (one atomic load), so rotations need no restart and open connections keep
//! the certificate they started with.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use hitless::{
    CertInfo, Detection, IdentitySource, MemberOptions, Password, ReloadingServerConfig,
    ReloadingTrust, ServerIdentities, TrustSource,
};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioExecutor;
use hyper_util::server::conn::auto;
use rustls::pki_types::CertificateDer;
use serde_json::json;
use tokio_rustls::TlsAcceptor;

use crate::admin::{self, Observed};
use crate::http::{self, Body};
use crate::listen::{self, Accepted, Limits, Listener, Slot};
use crate::value;

/// How the credentials notice changes on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ReloadMode {
    /// File-system notifications (default): picks up an atomic rename in milliseconds.
    Watch,
    /// Compare file identities every --poll-interval (±10% jitter).
    Poll,
    /// No background thread: a handshake checks the files at most once per --on-handshake-ttl.
    OnHandshake,
    /// Only on SIGHUP.
    Manual,
}

/// Flags of `hitless serve`.
#[derive(clap::Args, Debug)]
#[command(after_help = "Examples:
  hitless serve --listen 127.0.0.1:8443 --cert server.crt --key server.key --client-ca ca.pem
  hitless serve --identity identity.pem --client-ca ca.pem --crl crl.pem --drop-untrusted
  hitless serve --pkcs12 server.p12 --password-file server.pass --reload poll --poll-interval 30s
  hitless serve --identity identity.pem --admin-listen 127.0.0.1:9090 --wait-for-credentials 60s

SIGHUP reloads every credential at once, whatever the reload mode.
SIGINT/SIGTERM stop accepting, let requests in flight finish (--shutdown-timeout), exit 0.")]
pub struct Args {
    /// A TOML configuration file describing listener, identities, client trust and reload
    /// settings (see examples/hitless.toml); replaces the credential flags.
    #[arg(long, conflicts_with_all = ["cert", "identity", "pkcs12", "client_ca"])]
    pub config: Option<PathBuf>,
    /// With --config: validate it, load every credential once, print what would be served,
    /// and exit (0 if everything is good).
    #[arg(long, requires = "config")]
    pub check: bool,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8443")]
    pub listen: SocketAddr,
    /// PEM certificate chain (with --key).
    #[arg(long, requires = "key", conflicts_with_all = ["identity", "pkcs12"])]
    pub cert: Option<PathBuf>,
    /// PEM private key: PKCS#8, PKCS#1 (RSA) or SEC1 (EC) (with --cert).
    #[arg(long, requires = "cert")]
    pub key: Option<PathBuf>,
    /// One PEM bundle holding certificates and key in any order (what an agent template renders).
    #[arg(long, conflicts_with = "pkcs12")]
    pub identity: Option<PathBuf>,
    /// A PKCS#12 keystore (.p12/.pfx) holding the identity; password from --password-file or
    /// --password-env.
    #[arg(long)]
    pub pkcs12: Option<PathBuf>,
    /// File holding the PKCS#12 password (one trailing newline ignored).
    #[arg(long, conflicts_with = "password_env")]
    pub password_file: Option<PathBuf>,
    /// Environment variable holding the PKCS#12 password.
    #[arg(long)]
    pub password_env: Option<String>,
    /// PEM file of CA certificates trusted for client certificates; requires every client to
    /// present one (mutual TLS). Repeatable; reloaded while running.
    #[arg(long = "client-ca")]
    pub client_ca: Vec<PathBuf>,
    /// CRL file (PEM or DER) applied to client certificates; reloaded while running.
    /// Repeatable; requires --client-ca.
    #[arg(long, requires = "client_ca")]
    pub crl: Vec<PathBuf>,
    /// When the client trust or CRLs change, re-check the client certificate of every open
    /// connection and close those the new trust refuses.
    #[arg(long, requires = "client_ca")]
    pub drop_untrusted: bool,
    /// How changes on disk are noticed.
    #[arg(long, value_enum, default_value_t = ReloadMode::Watch)]
    pub reload: ReloadMode,
    /// Interval of --reload poll (more than zero).
    #[arg(long, value_parser = value::positive_duration, default_value = "10s")]
    pub poll_interval: Duration,
    /// Minimum time between two checks of --reload on-handshake.
    #[arg(long, value_parser = value::duration, default_value = "1s")]
    pub on_handshake_ttl: Duration,
    /// How long an inconsistent read (a writer still busy) waits before a retry.
    #[arg(long, value_parser = value::duration, default_value = "200ms")]
    pub quiet_period: Duration,
    /// Serve a leaf that is expired or not yet valid instead of refusing it.
    #[arg(long)]
    pub accept_expired: bool,
    /// Raise "expiring soon" when less than this fraction of a certificate's lifetime is left.
    #[arg(long, value_parser = value::fraction, default_value_t = hitless::Status::DEFAULT_EXPIRING_SOON)]
    pub expiring_soon: f64,
    /// Plain-HTTP admin listener for /healthz, /status and /metrics (no client certificate
    /// needed; keep it on loopback).
    #[arg(long)]
    pub admin_listen: Option<SocketAddr>,
    /// Start before the credentials exist (a sidecar agent has not written yet) and wait this
    /// long for them; /healthz answers 503 meanwhile. 0 = fail at once.
    #[arg(long, value_parser = value::duration, default_value = "0s")]
    pub wait_for_credentials: Duration,
    /// On SIGINT/SIGTERM, how long requests in flight may take to finish.
    #[arg(long, value_parser = value::duration, default_value = "10s")]
    pub shutdown_timeout: Duration,
    /// Connections open at once on the TLS listener [default: 10000, lowered to what the
    /// descriptor limit allows]. At the limit, new connections wait in the kernel's backlog.
    /// Overrides the configuration file.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: Option<u32>,
    /// Connections open at once on the admin listener [default: 100].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub admin_max_connections: Option<u32>,
    /// Time a client has to complete the TLS handshake [default: 10s].
    #[arg(long, value_parser = value::positive_duration)]
    pub handshake_timeout: Option<Duration>,
    /// Time a client has to send a complete request head, after the handshake and (HTTP/1.1)
    /// after each response; so also how long an idle HTTP/1.1 connection is kept [default: 10s].
    #[arg(long, value_parser = value::positive_duration)]
    pub header_read_timeout: Option<Duration>,
    /// A connection with no request in flight for this long is closed [default: 60s].
    #[arg(long, value_parser = value::positive_duration)]
    pub idle_timeout: Option<Duration>,
}

impl Args {
    fn source(&self) -> anyhow::Result<IdentitySource> {
        let password = match (&self.password_file, &self.password_env) {
            (Some(f), _) => Password::File(f.clone()),
            (None, Some(e)) => Password::Env(e.clone()),
            (None, None) => Password::None,
        };
        match (&self.identity, &self.cert, &self.key, &self.pkcs12) {
            (Some(bundle), None, None, None) => Ok(IdentitySource::bundle(bundle)),
            (None, Some(cert), Some(key), None) => Ok(IdentitySource::pair(cert, key)),
            (None, None, None, Some(p12)) => Ok(IdentitySource::pkcs12(p12, password)),
            _ => bail!("give one of --identity BUNDLE, --cert CERT --key KEY, or --pkcs12 FILE"),
        }
    }

    fn detection(&self) -> Detection {
        match self.reload {
            ReloadMode::Watch => Detection::Watch,
            ReloadMode::Poll => Detection::Poll {
                interval: self.poll_interval,
            },
            ReloadMode::OnHandshake => Detection::OnHandshake {
                ttl: self.on_handshake_ttl,
            },
            ReloadMode::Manual => Detection::Manual,
        }
    }

    /// The connection limits: these flags over `base` (the configuration file's or the
    /// defaults).
    fn limits(&self, base: Limits) -> Limits {
        Limits {
            max_connections: self.max_connections.unwrap_or(base.max_connections),
            admin_max_connections: self
                .admin_max_connections
                .unwrap_or(base.admin_max_connections),
            handshake_timeout: self.handshake_timeout.unwrap_or(base.handshake_timeout),
            header_read_timeout: self.header_read_timeout.unwrap_or(base.header_read_timeout),
            idle_timeout: self.idle_timeout.unwrap_or(base.idle_timeout),
        }
    }
}

/// What to serve, from flags (or, later, a configuration file).
pub struct Plan {
    /// TLS listener.
    pub listen: SocketAddr,
    /// Admin listener.
    pub admin: Option<SocketAddr>,
    /// Identities in selection order.
    pub identities: Vec<(IdentitySource, MemberOptions)>,
    /// Client trust (mutual TLS).
    pub trust: Option<TrustSource>,
    /// Change detection.
    pub detection: Detection,
    /// Quiet period.
    pub quiet: Duration,
    /// Serve expired leaves.
    pub accept_expired: bool,
    /// Expiring-soon fraction.
    pub expiring_soon: f64,
    /// Wait for credentials at start.
    pub wait: Duration,
    /// Close connections the new trust refuses.
    pub drop_untrusted: bool,
    /// Graceful shutdown bound.
    pub shutdown_timeout: Duration,
    /// Connection limits and timeouts of the listeners.
    pub limits: Limits,
}

impl Plan {
    fn from_args(args: &Args) -> anyhow::Result<Plan> {
        let trust = (!args.client_ca.is_empty())
            .then(|| TrustSource::cas(args.client_ca.clone()).with_crls(args.crl.clone()));
        Ok(Plan {
            listen: args.listen,
            admin: args.admin_listen,
            identities: vec![(args.source()?, MemberOptions::named("server"))],
            trust,
            detection: args.detection(),
            quiet: args.quiet_period,
            accept_expired: args.accept_expired,
            expiring_soon: args.expiring_soon,
            wait: args.wait_for_credentials,
            drop_untrusted: args.drop_untrusted,
            shutdown_timeout: args.shutdown_timeout,
            limits: args.limits(Limits::default()),
        })
    }
}

impl Plan {
    fn from_config(config: &crate::config::Config) -> anyhow::Result<Plan> {
        let listener = match config.listeners.as_slice() {
            [] => None,
            [one] => Some(one),
            _ => bail!("only one [[listener]] is supported by this version of hitless serve"),
        };
        Ok(Plan {
            listen: listener.map_or_else(|| SocketAddr::from(([127, 0, 0, 1], 8443)), |l| l.listen),
            admin: listener.and_then(|l| l.admin),
            identities: config.identity_sources(),
            trust: config.trust_source(),
            detection: config.detection(),
            quiet: config.reload.quiet_period,
            accept_expired: config.reload.accept_expired,
            expiring_soon: config.reload.expiring_soon,
            wait: config.reload.wait_for_credentials,
            drop_untrusted: listener.is_some_and(|l| l.drop_untrusted),
            shutdown_timeout: Duration::from_secs(10),
            limits: listener.map_or_else(Limits::default, |l| l.limits()),
        })
    }
}

/// Runs the server until SIGINT or SIGTERM (or, with `--check`, validates and exits).
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let Some(path) = &args.config else {
        return run_plan(Plan::from_args(&args)?);
    };
    let config = crate::config::Config::load(path, true)?;
    let mut plan = Plan::from_config(&config)?;
    plan.shutdown_timeout = args.shutdown_timeout;
    plan.limits = args.limits(plan.limits);
    if args.check {
        return check(&plan);
    }
    run_plan(plan)
}

/// Loads every credential once (no watching) and prints what would be served.
fn check(plan: &Plan) -> anyhow::Result<ExitCode> {
    let mut ok = true;
    println!("listener: {}", plan.listen);
    if let Some(admin) = plan.admin {
        println!("admin listener: {admin}");
    }
    let limits = &plan.limits;
    println!(
        "connections: at most {} open (admin {}); timeouts: handshake {}, header read {}, idle {}",
        limits.max_connections,
        limits.admin_max_connections,
        humantime::format_duration(limits.handshake_timeout),
        humantime::format_duration(limits.header_read_timeout),
        humantime::format_duration(limits.idle_timeout),
    );
    println!("reload: {}", plan.detection.name());
    for (i, (source, options)) in plan.identities.iter().enumerate() {
        let name = options
            .name
            .clone()
            .unwrap_or_else(|| format!("identity[{i}]"));
        // The one-shot load `inspect` gives its verdict with: the two cannot disagree.
        let rules =
            hitless::IdentityRules::new(hitless::Role::Server).accept_expired(plan.accept_expired);
        match hitless::Identity::load(source, rules) {
            Ok(identity) => {
                let leaf = identity.leaf();
                println!(
                    "identity {name}{}: {} ({}), names {:?}, serial {}, not after {}, sha256 {}",
                    if options.default { " (default)" } else { "" },
                    leaf.subject,
                    leaf.key_type,
                    options
                        .names
                        .clone()
                        .unwrap_or_else(|| leaf.dns_names.clone()),
                    leaf.serial,
                    admin::rfc3339(leaf.not_after),
                    leaf.fingerprint
                );
            }
            Err(e) => {
                ok = false;
                println!("identity {name}: ERROR {e}");
            }
        }
    }
    match &plan.trust {
        None => println!("client trust: none (clients are not verified)"),
        Some(source) => match hitless::Trust::load(source) {
            Ok(trust) => {
                for ca in trust.cas() {
                    println!(
                        "client CA: {} (not after {})",
                        ca.subject,
                        admin::rfc3339(ca.not_after)
                    );
                }
                for crl in trust.crls() {
                    println!(
                        "CRL: {} from {}, {} revoked",
                        crl.path.display(),
                        crl.issuer,
                        crl.revoked
                    );
                }
            }
            Err(e) => {
                ok = false;
                println!("client trust: ERROR {e}");
            }
        },
    }
    println!(
        "{}",
        if ok {
            "configuration OK"
        } else {
            "configuration has errors"
        }
    );
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Runs a [`Plan`] until SIGINT or SIGTERM.
pub fn run_plan(plan: Plan) -> anyhow::Result<ExitCode> {
    let metrics = admin::Metrics::new();
    let (identities, trust) = load_credentials(&plan, &metrics)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(serve(
        plan,
        identities,
        trust,
        metrics,
        shutdown_signal(),
        None,
    ))
}

/// Loads the plan's identities and client trust (or starts them empty, to wait for them).
pub fn load_credentials(
    plan: &Plan,
    metrics: &Arc<admin::Metrics>,
) -> anyhow::Result<(ServerIdentities, Option<ReloadingTrust>)> {
    // aws-lc checks once per process, on first use of its random generator, whether it runs in
    // a VM snapshot (/dev/sysgenid): do it now, not during the first handshake.
    let mut warm = [0u8; 16];
    let _ = rustls::crypto::aws_lc_rs::default_provider()
        .secure_random
        .fill(&mut warm);
    let waiting = !plan.wait.is_zero();
    let mut builder = ServerIdentities::builder()
        .name("server")
        .detection(plan.detection)
        .quiet_period(plan.quiet)
        .accept_expired(plan.accept_expired)
        .expiring_soon(plan.expiring_soon)
        .allow_empty_start(waiting)
        .on_event({
            let m = metrics.clone();
            move |e| m.on_event(e)
        });
    for (source, options) in &plan.identities {
        builder = builder.identity(source.clone(), options.clone());
    }
    let identities = builder.build().context("no valid server identity")?;
    let trust = match &plan.trust {
        None => {
            tracing::warn!(
                "no client CA given: serving server-authenticated TLS only, clients are not verified"
            );
            None
        }
        Some(source) => Some(
            ReloadingTrust::builder(source.clone())
                .name("client-trust")
                .detection(plan.detection)
                .quiet_period(plan.quiet)
                .allow_empty_start(waiting)
                .on_event({
                    let m = metrics.clone();
                    move |e| m.on_event(e)
                })
                .build()
                .context("no valid client trust bundle")?,
        ),
    };
    Ok((identities, trust))
}

/// What an in-process caller (the demo) gets once the server listens.
pub struct Started {
    /// The TLS listener's address.
    pub local: SocketAddr,
    /// Status and metrics.
    pub observed: Arc<Observed>,
}

/// Serves until `shutdown` resolves; tells `started` where it listens once it does.
pub async fn serve(
    plan: Plan,
    identities: ServerIdentities,
    trust: Option<ReloadingTrust>,
    metrics: Arc<admin::Metrics>,
    shutdown: impl std::future::Future<Output = ()>,
    started: Option<tokio::sync::oneshot::Sender<Started>>,
) -> anyhow::Result<ExitCode> {
    let limits = plan
        .limits
        .fitted(listen::descriptor_limit(), plan.admin.is_some());
    let observed = Observed::new(identities.clone(), trust.clone(), metrics.clone());
    // Every connection task watches this to finish gracefully on shutdown.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    if let Some(addr) = plan.admin {
        let admin = Listener::bind(
            "admin",
            addr,
            limits.admin_max_connections,
            metrics.listener("admin"),
        )
        .with_context(|| format!("cannot listen on {addr} (--admin-listen)"))?;
        if !addr.ip().is_loopback() {
            tracing::warn!(admin = %addr, "admin listener is not on loopback: /status and /metrics are readable from the network");
        }
        tracing::info!(
            admin = %addr,
            max_connections = limits.admin_max_connections,
            "admin listener: /healthz /status /metrics"
        );
        tokio::spawn(admin::serve_admin(
            admin,
            observed.clone(),
            limits,
            stop_rx.clone(),
        ));
    }
    spawn_sighup_reload(identities.clone(), trust.clone());
    // Without a detector thread (manual, on-handshake) nothing else announces expiry.
    if matches!(
        plan.detection,
        Detection::Manual | Detection::OnHandshake { .. }
    ) {
        let identities = identities.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                identities.check_expiry();
            }
        });
    }
    tokio::pin!(shutdown);

    if !observed.all_loaded() {
        tracing::info!(timeout = ?plan.wait, "waiting for credentials to be written");
        // The flag's parser bounds the wait; a deadline past the end of time is "never".
        let give_up = Instant::now().checked_add(plan.wait);
        loop {
            if observed.all_loaded() {
                break;
            }
            if give_up.is_some_and(|g| Instant::now() >= g) {
                bail!(
                    "gave up after --wait-for-credentials {}: {}",
                    humantime::format_duration(plan.wait),
                    missing_credentials(&observed)
                );
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                _ = &mut shutdown => return Ok(ExitCode::SUCCESS),
            }
        }
        tracing::info!("credentials loaded");
    }

    // Built from the identities: every handshake after a rotation presents the new
    // certificate (a rotation also starts a new session binding: one full handshake per client
    // per rotation); a listener bound to one IP answers no-SNI clients with that IP's identity.
    let mut builder = ReloadingServerConfig::builder(&identities)
        .local_ip(plan.listen.ip())
        .configure(|c| c.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()]);
    if let Some(trust) = &trust {
        builder = builder.client_trust(trust);
    }
    let configs = builder
        .build()
        .context("cannot build the TLS configuration")?;

    let mut listener = Listener::bind(
        "tls",
        plan.listen,
        limits.max_connections,
        metrics.listener("tls"),
    )
    .with_context(|| format!("cannot listen on {}", plan.listen))?;
    let local = listener.local_addr().context("listener has no address")?;
    observed.ready.store(true, Ordering::SeqCst);
    if let Some(started) = started {
        let _ = started.send(Started {
            local,
            observed: observed.clone(),
        });
    }
    tracing::info!(
        listen = %local,
        identities = plan.identities.len(),
        mutual_tls = trust.is_some(),
        drop_untrusted = plan.drop_untrusted,
        reload = plan.detection.name(),
        max_connections = limits.max_connections,
        handshake_timeout = ?limits.handshake_timeout,
        header_read_timeout = ?limits.header_read_timeout,
        idle_timeout = ?limits.idle_timeout,
        "serving HTTPS"
    );
    let (trust_tx, trust_rx) = tokio::sync::watch::channel(configs.trust_generation());
    configs.subscribe(move |change| {
        if change.trust_changed {
            trust_tx.send_replace(change.trust_generation);
        }
    });
    let http = Arc::new(listen::http_builder(&limits, false));

    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = &mut shutdown => break,
        };
        // The configuration current now: the trust and session cache of this moment.
        let acceptor = TlsAcceptor::from(configs.current());
        let connection = Connection {
            observed: observed.clone(),
            configs: configs.clone(),
            trust_changes: trust_rx.clone(),
            drop_untrusted: plan.drop_untrusted,
            peer: accepted.peer,
            http: http.clone(),
            limits,
            shutdown: stop_rx.clone(),
        };
        tokio::spawn(async move {
            let Accepted { tcp, peer, slot } = accepted;
            let handshake = acceptor.accept(tcp);
            let tls = match tokio::time::timeout(limits.handshake_timeout, handshake).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                    // A TCP health check or port scan: nothing was offered, nothing refused.
                    tracing::debug!(%peer, "connection closed before a TLS handshake: {e}");
                    return;
                }
                Ok(Err(e)) => {
                    connection
                        .observed
                        .metrics
                        .refused(admin::refusal_reason(&e));
                    tracing::info!(%peer, "handshake refused: {e}");
                    return;
                }
                Err(_) => {
                    connection.observed.metrics.refused("timeout");
                    slot.timed_out("handshake");
                    tracing::info!(%peer, "handshake timed out");
                    return;
                }
            };
            connection.observed.metrics.accepted();
            connection.serve(tls, &slot).await;
        });
    }

    let drain = listener.close();
    stop_tx.send_replace(true);
    tracing::info!("shutting down: no new connections, waiting for requests in flight");
    tokio::select! {
        _ = drain.wait() => tracing::info!("all connections closed"),
        _ = tokio::time::sleep(plan.shutdown_timeout) => {
            tracing::warn!("shutdown timeout reached, closing remaining connections");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Which credentials are still missing, and why.
fn missing_credentials(observed: &Observed) -> String {
    let mut out = Vec::new();
    for (status, _) in observed.identities.members() {
        if status.generation == 0 {
            out.push(describe_missing(&status));
        }
    }
    if let Some(t) = &observed.trust {
        let status = t.status();
        if status.generation == 0 {
            out.push(describe_missing(&status));
        }
    }
    out.join("; ")
}

fn describe_missing(status: &hitless::Status) -> String {
    match &status.last_error {
        Some(e) => format!("{}: {}", status.name, e.message),
        None => format!("{}: not loaded", status.name),
    }
}

/// One accepted TLS connection.
struct Connection {
    observed: Arc<Observed>,
    configs: ReloadingServerConfig,
    trust_changes: tokio::sync::watch::Receiver<u64>,
    drop_untrusted: bool,
    peer: SocketAddr,
    http: Arc<auto::Builder<TokioExecutor>>,
    limits: Limits,
    shutdown: tokio::sync::watch::Receiver<bool>,
}

impl Connection {
    async fn serve(
        mut self,
        tls: tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
        slot: &Slot,
    ) {
        let _open = self.observed.metrics.open_connection();
        let peer = self.peer;
        let (_, session) = tls.get_ref();
        let sni = session.server_name().map(str::to_owned);
        // Only the client's leaf is kept per connection (as DER, a copy of bytes rustls holds):
        // it is parsed when a `/` request shows it, not on every accept. Parsing it here cost
        // ~4 µs per connection (x509-parser, a SHA-256, strings): +4 % on a full handshake and
        // +50 % on a TLS 1.2 resumption, for a page most connections never ask for. The whole
        // chain is kept only where `--drop-untrusted` re-verifies it on a trust change.
        let peer_chain = session.peer_certificates().unwrap_or_default();
        let leaf = peer_chain.first().map(|d| d.clone().into_owned());
        let chain: Vec<CertificateDer<'static>> = if self.drop_untrusted {
            peer_chain.iter().map(|d| d.clone().into_owned()).collect()
        } else {
            Vec::new()
        };
        let context = Arc::new(RequestContext {
            leaf,
            client: std::sync::OnceLock::new(),
            sni,
            observed: self.observed.clone(),
        });
        let subject_of = context.clone();
        let service = hyper::service::service_fn(move |req| {
            let response = context.respond(&req);
            std::future::ready(Ok::<_, std::convert::Infallible>(response))
        });
        let served = listen::serve_http(
            &self.http,
            tls,
            service,
            &self.limits,
            slot,
            self.shutdown.clone(),
        );
        // With --drop-untrusted, a trust change re-checks this connection's client certificate;
        // if the new trust refuses it, the connection is dropped (closed).
        let configs = self.configs.clone();
        let drop_untrusted = self.drop_untrusted;
        let untrusted = async {
            if !drop_untrusted || chain.is_empty() {
                return std::future::pending::<rustls::Error>().await;
            }
            loop {
                if self.trust_changes.changed().await.is_err() {
                    return std::future::pending().await;
                }
                if let Err(e) = configs.verify_client(&chain) {
                    return e;
                }
            }
        };
        tokio::select! {
            ended = served => {
                tracing::debug!(%peer, "connection ended: {ended}");
            }
            reason = untrusted => {
                self.observed.metrics.dropped_untrusted();
                tracing::warn!(
                    %peer,
                    client = subject_of.client().map_or("?", |c| c.subject.as_str()),
                    "closing open connection: the new trust refuses its client certificate: {reason}"
                );
            }
        }
    }
}

/// What a request handler knows about its connection.
struct RequestContext {
    /// The client's certificate as it arrived.
    leaf: Option<CertificateDer<'static>>,
    /// `leaf` parsed, on first use.
    client: std::sync::OnceLock<Option<CertInfo>>,
    sni: Option<String>,
    observed: Arc<Observed>,
}

impl RequestContext {
    /// The client certificate's details, parsed the first time they are asked for.
    fn client(&self) -> Option<&CertInfo> {
        self.client
            .get_or_init(|| {
                let der = self.leaf.as_ref()?;
                CertInfo::parse(std::path::Path::new("peer"), 1, der).ok()
            })
            .as_ref()
    }

    fn respond(&self, req: &Request<Incoming>) -> Response<Body> {
        let path = req.uri().path();
        if path == "/" {
            let serving = self.observed.identities.serving(self.sni.as_deref());
            let body = json!({
                "client": self.client().map(|c| json!({
                    "subject": c.subject,
                    "serial": c.serial,
                    "fingerprint": c.fingerprint,
                })),
                "server": serving.as_ref().map(|s| json!({
                    "generation": s.generation,
                    "fingerprint": s.value.leaf().fingerprint,
                    "serial": s.value.leaf().serial,
                    "subject": s.value.leaf().subject,
                })),
            });
            return http::json(StatusCode::OK, &body);
        }
        self.observed
            .respond(path)
            .unwrap_or_else(|| http::text(StatusCode::NOT_FOUND, "not found\n"))
    }
}

/// Reloads every credential on each SIGHUP, whatever the detection mode.
fn spawn_sighup_reload(identities: ServerIdentities, trust: Option<ReloadingTrust>) {
    #[cfg(unix)]
    tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let mut hup = match signal(SignalKind::hangup()) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("cannot listen for SIGHUP: {e}");
                return;
            }
        };
        while hup.recv().await.is_some() {
            tracing::info!("SIGHUP: reloading every credential");
            let identities = identities.clone();
            let trust = trust.clone();
            // reload() may sleep for the quiet period: keep it off the async workers.
            let done = tokio::task::spawn_blocking(move || {
                for result in identities.reload() {
                    match result {
                        Ok(outcome) => tracing::info!("SIGHUP identity reload: {outcome:?}"),
                        Err(e) => tracing::warn!(
                            "SIGHUP identity reload failed, keeping the last good identity: {e}"
                        ),
                    }
                }
                if let Some(trust) = trust {
                    match trust.reload() {
                        Ok(outcome) => tracing::info!("SIGHUP trust reload: {outcome:?}"),
                        Err(e) => tracing::warn!(
                            "SIGHUP trust reload failed, keeping the last good trust: {e}"
                        ),
                    }
                }
            })
            .await;
            if let Err(e) = done {
                tracing::warn!("SIGHUP reload task failed: {e}");
            }
        }
    });
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
