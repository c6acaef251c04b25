//! The handles an application holds: a reloading identity, built once, cloned freely.
//!
//! A handle ties together a credential's source, its last-known-good snapshot and its detector
//! thread. Cloning a handle is cheap and every clone sees the same snapshot. The detector
//! thread runs as long as any clone (or a resolver made from it) is alive, and is stopped and
//! joined when the last one is dropped.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::crypto::CryptoProvider;
use rustls::sign::CertifiedKey;

use crate::detect::{self, Detection, Detector, Target, DEFAULT_QUIET_PERIOD};
use crate::identity::{default_provider, Identity, Validation};
use crate::reload::{Attempt, Load, Reloading};
use crate::snapshot::{lock, Event, EventCallback, Events, Snapshot, Status};
use crate::source::{files, pem, IdentitySource};
use crate::Error;

/// Reads and validates an identity from its source.
pub(crate) struct IdentityLoader {
    source: IdentitySource,
    rules: Validation,
    /// (path, mode) pairs already warned about, so each is logged once.
    warned_modes: Mutex<HashSet<(PathBuf, u32)>>,
    /// Files already reported as having PEM blocks run together.
    warned_run_together: Mutex<HashSet<PathBuf>>,
}

impl IdentityLoader {
    fn note_run_together(&self, path: &std::path::Path, run_together: bool) {
        if run_together && lock(&self.warned_run_together).insert(path.to_owned()) {
            tracing::warn!(
                file = %path.display(),
                "PEM blocks are run together on one line (a template without newlines between \
                 blocks, e.g. {{{{ .Data.certificate }}}}{{{{ .Data.private_key }}}}); read \
                 correctly, but OpenSSL and other tools will refuse this file: put each block on \
                 its own line in the template"
            );
        }
    }
}

impl Load for IdentityLoader {
    type Value = Identity;

    fn paths(&self) -> Vec<PathBuf> {
        self.source
            .paths()
            .into_iter()
            .map(|p| p.to_path_buf())
            .collect()
    }

    fn load(&self, files: &files::Snapshot) -> Result<Identity, Error> {
        let cert_path = self.source.cert_path();
        let key_path = self.source.key_path();
        let certs = pem::parse(cert_path, files.contents(cert_path))?;
        self.note_run_together(cert_path, certs.run_together);
        let identity = if cert_path == key_path {
            Identity::from_sections(cert_path, &certs, key_path, &certs, &self.rules)?
        } else {
            let keys = pem::parse(key_path, files.contents(key_path))?;
            self.note_run_together(key_path, keys.run_together);
            Identity::from_sections(cert_path, &certs, key_path, &keys, &self.rules)?
        };
        if let Some(mode) = files::loose_key_mode(key_path) {
            if lock(&self.warned_modes).insert((key_path.to_owned(), mode)) {
                tracing::warn!(
                    file = %key_path.display(),
                    mode = format!("{mode:04o}"),
                    "private key file is readable by group or others (mode {mode:04o}); \
                     make it 0600 (an agent template can set perms = \"0600\")"
                );
            }
        }
        Ok(identity)
    }

    fn fingerprint(value: &Identity) -> String {
        value.leaf().fingerprint.clone()
    }

    fn describe(value: &Identity) -> String {
        let leaf = value.leaf();
        format!(
            "identity subject={} serial={} not_after={} key={}",
            leaf.subject,
            leaf.serial,
            crate::identity::rfc3339(leaf.not_after),
            leaf.key_type
        )
    }
}

pub(crate) struct IdentityShared {
    pub(crate) reloading: Arc<Reloading<IdentityLoader>>,
    quiet: Duration,
    _detector: Option<Detector>,
}

/// A server (or client) identity that reloads itself from disk.
///
/// Build it with [`ReloadingIdentity::builder`]; hand [`ReloadingIdentity::resolver`] to rustls.
///
/// ```no_run
/// use std::sync::Arc;
/// use hitless::{IdentitySource, ReloadingIdentity};
///
/// # fn main() -> Result<(), hitless::Error> {
/// let identity = ReloadingIdentity::builder(IdentitySource::pair("server.crt", "server.key")).build()?;
/// let config = rustls::ServerConfig::builder()
///     .with_no_client_auth()
///     .with_cert_resolver(identity.resolver());
/// # let _ = config; Ok(()) }
/// ```
#[derive(Clone)]
pub struct ReloadingIdentity {
    pub(crate) shared: Arc<IdentityShared>,
}

impl std::fmt::Debug for ReloadingIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReloadingIdentity")
            .field("name", &self.shared.reloading.name)
            .field("generation", &self.status().generation)
            .finish()
    }
}

/// Builds a [`ReloadingIdentity`]; see each method for its default.
#[must_use]
pub struct IdentityBuilder {
    source: IdentitySource,
    name: Option<String>,
    detection: Detection,
    quiet: Duration,
    accept_expired: bool,
    provider: Option<Arc<CryptoProvider>>,
    callbacks: Vec<EventCallback>,
    allow_empty: bool,
}

impl IdentityBuilder {
    /// A name for logs, status and events (default: the first file's path).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// How changes are noticed (default [`Detection::Watch`]).
    pub fn detection(mut self, detection: Detection) -> Self {
        self.detection = detection;
        self
    }

    /// How long an inconsistent read (a writer still busy) waits before it is retried and, if
    /// it still fails, reported (default 200 ms).
    pub fn quiet_period(mut self, quiet: Duration) -> Self {
        self.quiet = quiet;
        self
    }

    /// Accept a leaf that is expired or not yet valid (default: refuse it, keep the last good
    /// one). Peers will refuse such a certificate; this exists for tests and odd clocks.
    pub fn accept_expired(mut self, accept: bool) -> Self {
        self.accept_expired = accept;
        self
    }

    /// The rustls crypto provider used to load keys (default: the process default, else
    /// aws-lc-rs).
    pub fn crypto_provider(mut self, provider: Arc<CryptoProvider>) -> Self {
        self.provider = Some(provider);
        self
    }

    /// Calls `callback` on every [`Event`] (from the detector thread: keep it short).
    pub fn on_event(mut self, callback: impl Fn(&Event) + Send + Sync + 'static) -> Self {
        self.callbacks.push(Arc::new(callback));
        self
    }

    /// Start even if the first load fails (a sidecar agent has not written yet): the identity
    /// resolves nothing, so handshakes fail, until the first good write (default: `build`
    /// fails with the file and the reason).
    pub fn allow_empty_start(mut self, allow: bool) -> Self {
        self.allow_empty = allow;
        self
    }

    /// Loads the identity once (failing with the file and the reason if it is not good, unless
    /// [`allow_empty_start`](Self::allow_empty_start)), then starts change detection.
    pub fn build(self) -> Result<ReloadingIdentity, Error> {
        let name = self
            .name
            .unwrap_or_else(|| self.source.cert_path().display().to_string());
        let events = Events::default();
        for c in self.callbacks {
            events.subscribe(c);
        }
        let loader = IdentityLoader {
            source: self.source,
            rules: Validation {
                accept_expired: self.accept_expired,
                provider: self.provider.unwrap_or_else(default_provider),
            },
            warned_modes: Mutex::default(),
            warned_run_together: Mutex::default(),
        };
        let reloading = Arc::new(Reloading::new(
            name.clone(),
            loader,
            self.detection.name().to_string(),
            events,
        ));
        if let Attempt::Failed { error, .. } = reloading.attempt(true) {
            if !self.allow_empty {
                return Err(error);
            }
        }
        let target: Arc<dyn Target> = reloading.clone();
        let detector = detect::spawn(
            self.detection,
            self.quiet,
            vec![Arc::downgrade(&target)],
            format!("hitless-detect {name}"),
        )?;
        Ok(ReloadingIdentity {
            shared: Arc::new(IdentityShared {
                reloading,
                quiet: self.quiet,
                _detector: detector,
            }),
        })
    }
}

/// The outcome of a manual reload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Reload {
    /// The files hold what is already served.
    Unchanged,
    /// A new value is served, with this generation.
    Reloaded {
        /// The new generation.
        generation: u64,
    },
}

impl ReloadingIdentity {
    /// Starts building an identity read from `source`.
    pub fn builder(source: IdentitySource) -> IdentityBuilder {
        IdentityBuilder {
            source,
            name: None,
            detection: Detection::default(),
            quiet: DEFAULT_QUIET_PERIOD,
            accept_expired: false,
            provider: None,
            callbacks: Vec::new(),
            allow_empty: false,
        }
    }

    /// The identity being served now, with its generation and load time (`None` only when
    /// started with [`IdentityBuilder::allow_empty_start`] and nothing good was written yet).
    pub fn current(&self) -> Option<Arc<Snapshot<Identity>>> {
        self.shared.reloading.current.load_full()
    }

    /// The rustls chain and key being served now: one atomic load and an `Arc` clone.
    pub fn certified_key(&self) -> Option<Arc<CertifiedKey>> {
        self.shared
            .reloading
            .current
            .load()
            .as_ref()
            .map(|s| s.value.certified_key().clone())
    }

    /// Generation, load time, last check and last error.
    pub fn status(&self) -> Status {
        self.shared.reloading.status()
    }

    /// Reads the files now. A read that fails is retried once after the quiet period (a
    /// writer may be between two files) before the error is recorded and returned; the last
    /// good identity keeps being served either way.
    pub fn reload(&self) -> Result<Reload, Error> {
        let r = &self.shared.reloading;
        let mut outcome = r.attempt(false);
        if let Attempt::Failed { .. } = outcome {
            std::thread::sleep(self.shared.quiet);
            outcome = r.attempt(true);
        }
        match outcome {
            Attempt::Unchanged => Ok(Reload::Unchanged),
            Attempt::Reloaded(generation) => Ok(Reload::Reloaded { generation }),
            Attempt::Failed { error, .. } => Err(error),
        }
    }

    /// Calls `callback` on every later [`Event`].
    pub fn subscribe(&self, callback: impl Fn(&Event) + Send + Sync + 'static) {
        self.shared.reloading.events.subscribe(Arc::new(callback));
    }

    /// A rustls server certificate resolver serving this identity.
    pub fn resolver(&self) -> Arc<crate::rustls::IdentityResolver> {
        Arc::new(crate::rustls::IdentityResolver::new(self.clone()))
    }
}
