//! The credential flags every command that loads credentials shares, each set defined once:
//! where an identity comes from ([`IdentityFlags`]), which CAs and CRLs verify the peer
//! ([`ClientTrustFlags`] on a server, `--client-ca`; [`ServerTrustFlags`] on a client, `--ca`),
//! and how changes are noticed ([`ReloadFlags`]). Each converts once to the library's
//! [`IdentitySource`], [`TrustSource`] and [`Detection`].
//!
//! The names are those `serve` and `call` have always used, so a user sees the same words in
//! every command. Paths are made absolute: the watcher compares the paths in file-system
//! notifications with the ones it was given, and a relative path never matches them.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::bail;
use hitless::{Detection, IdentitySource, Password, TrustSource};

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

/// Where an identity (certificate chain + key) comes from.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct IdentityFlags {
    /// One PEM bundle holding certificates and key in any order (what an agent template renders).
    #[arg(long, conflicts_with_all = ["cert", "pkcs12"])]
    pub identity: Option<PathBuf>,
    /// PEM certificate chain (with --key).
    #[arg(long, requires = "key", conflicts_with = "pkcs12")]
    pub cert: Option<PathBuf>,
    /// PEM private key: PKCS#8, PKCS#1 (RSA) or SEC1 (EC) (with --cert).
    #[arg(long, requires = "cert")]
    pub key: Option<PathBuf>,
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
}

impl IdentityFlags {
    /// The identity source these flags name.
    pub fn source(&self) -> anyhow::Result<IdentitySource> {
        let password = match (&self.password_file, &self.password_env) {
            (Some(f), _) => Password::File(absolute(f)),
            (None, Some(e)) => Password::Env(e.clone()),
            (None, None) => Password::None,
        };
        match (&self.identity, &self.cert, &self.key, &self.pkcs12) {
            (Some(bundle), None, None, None) => Ok(IdentitySource::bundle(absolute(bundle))),
            (None, Some(cert), Some(key), None) => {
                Ok(IdentitySource::pair(absolute(cert), absolute(key)))
            }
            (None, None, None, Some(p12)) => Ok(IdentitySource::pkcs12(absolute(p12), password)),
            _ => bail!("give one of --identity BUNDLE, --cert CERT --key KEY, or --pkcs12 FILE"),
        }
    }
}

/// The CAs and CRLs a server verifies client certificates with (mutual TLS).
#[derive(clap::Args, Debug, Clone, Default)]
pub struct ClientTrustFlags {
    /// PEM file of CA certificates trusted for client certificates; every client must present
    /// one. Repeatable; reloaded while running.
    #[arg(long = "client-ca")]
    pub client_ca: Vec<PathBuf>,
    /// CRL file (PEM or DER) applied to client certificates; reloaded while running.
    /// Repeatable.
    #[arg(long = "crl")]
    pub crl: Vec<PathBuf>,
}

impl ClientTrustFlags {
    /// The trust source, or an error naming the missing flag.
    pub fn source(&self) -> anyhow::Result<TrustSource> {
        trust_source(&self.client_ca, &self.crl, "--client-ca")
    }
}

/// The CAs and CRLs a client verifies the server's certificate with.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct ServerTrustFlags {
    /// PEM file of CA certificates trusted for the server's certificate. Repeatable; reloaded
    /// while running.
    #[arg(long = "ca")]
    pub ca: Vec<PathBuf>,
    /// CRL file (PEM or DER) applied to the server's chain. Repeatable; reloaded while running.
    #[arg(long = "crl")]
    pub crl: Vec<PathBuf>,
}

impl ServerTrustFlags {
    /// The trust source, or an error naming the missing flag.
    pub fn source(&self) -> anyhow::Result<TrustSource> {
        trust_source(&self.ca, &self.crl, "--ca")
    }
}

fn trust_source(cas: &[PathBuf], crls: &[PathBuf], flag: &str) -> anyhow::Result<TrustSource> {
    if cas.is_empty() {
        bail!("{flag} is required: the CA bundle that verifies the peer's certificate");
    }
    Ok(TrustSource::cas(cas.iter().map(|p| absolute(p)))
        .with_crls(crls.iter().map(|p| absolute(p))))
}

/// How and when credentials are reloaded.
#[derive(clap::Args, Debug, Clone)]
pub struct ReloadFlags {
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
    /// Use a leaf that is expired or not yet valid instead of refusing it.
    #[arg(long)]
    pub accept_expired: bool,
    /// Raise "expiring soon" when less than this fraction of a certificate's lifetime is left.
    #[arg(long, value_parser = value::fraction, default_value_t = 1.0 / 3.0)]
    pub expiring_soon: f64,
    /// Start before the credentials exist (a sidecar agent has not written yet) and wait this
    /// long for them; /healthz answers 503 meanwhile. 0 = fail at once.
    #[arg(long, value_parser = value::duration, default_value = "0s")]
    pub wait_for_credentials: Duration,
}

impl Default for ReloadFlags {
    fn default() -> Self {
        ReloadFlags {
            reload: ReloadMode::Watch,
            poll_interval: Duration::from_secs(10),
            on_handshake_ttl: Duration::from_secs(1),
            quiet_period: Duration::from_millis(200),
            accept_expired: false,
            expiring_soon: 1.0 / 3.0,
            wait_for_credentials: Duration::ZERO,
        }
    }
}

impl ReloadFlags {
    /// The library's detection mode.
    pub fn detection(&self) -> Detection {
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
}

/// `path` made absolute against the current directory (as given if that fails).
pub fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}
