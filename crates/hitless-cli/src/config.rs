//! The TOML configuration of `hitless serve`: listeners, identities, client trust and reload
//! settings, in one file (documented in `docs/config.md`, example in `examples/hitless.toml`).
//!
//! This module owns the file's schema, its validation and the conversion into the library's
//! types ([`IdentitySource`], [`TrustSource`], [`Detection`]). It reads the configuration file
//! and, when asked, checks that the files it names exist; it never reads or parses credentials
//! (that is the library's job, with its own errors).
//!
//! Every error names the file, the line when known, and the TOML key
//! (`identity[1].key`, `reload.poll_interval`), so a person can fix it without guessing. A
//! configuration is refused as a whole: all problems found are reported at once.
//!
//! Relative paths are relative to the directory of the configuration file, not to the working
//! directory, so a configuration and its credentials can move together.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hitless::{Detection, IdentitySource, MemberOptions, Password, TrustSource};
use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::Deserialize;

/// The whole configuration file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// `[[listener]]`: where to accept connections.
    #[serde(default, rename = "listener")]
    pub listeners: Vec<Listener>,
    /// `[[identity]]`: the server identities, in selection order.
    #[serde(default, rename = "identity")]
    pub identities: Vec<IdentityConfig>,
    /// `[client_trust]`: CAs and CRLs for client certificates (mutual TLS); absent = no client
    /// authentication.
    #[serde(default)]
    pub client_trust: Option<ClientTrust>,
    /// `[reload]`: how changes are noticed and what is accepted.
    #[serde(default)]
    pub reload: ReloadConfig,
    /// Where the configuration was read from (for errors and relative paths).
    #[serde(skip)]
    origin: Origin,
}

/// The file a configuration came from and its text (to turn keys into line numbers).
#[derive(Debug, Clone, Default)]
struct Origin {
    file: PathBuf,
    text: String,
}

/// `[[listener]]`: one TLS listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Listener {
    /// `listen`: address of the HTTPS listener, `IP:PORT`.
    #[serde(deserialize_with = "socket_addr")]
    pub listen: SocketAddr,
    /// `admin`: optional plain-HTTP listener for `/status`, `/metrics` and `/healthz`.
    #[serde(default, deserialize_with = "opt_socket_addr")]
    pub admin: Option<SocketAddr>,
    /// `drop_untrusted`: close open connections whose client the new trust refuses.
    #[serde(default)]
    pub drop_untrusted: bool,
    /// `max_connections`: connections open at once on the TLS listener.
    #[serde(default)]
    pub max_connections: Option<u32>,
    /// `admin_max_connections`: connections open at once on the admin listener.
    #[serde(default)]
    pub admin_max_connections: Option<u32>,
    /// `handshake_timeout`: time a client has to complete the TLS handshake.
    #[serde(default, deserialize_with = "opt_duration")]
    pub handshake_timeout: Option<Duration>,
    /// `header_read_timeout`: time a client has to send a complete request head.
    #[serde(default, deserialize_with = "opt_duration")]
    pub header_read_timeout: Option<Duration>,
    /// `idle_timeout`: a connection with no request in flight this long is closed.
    #[serde(default, deserialize_with = "opt_duration")]
    pub idle_timeout: Option<Duration>,
}

impl Listener {
    /// The connection limits and timeouts this listener sets, defaults for the rest.
    pub fn limits(&self) -> crate::listen::Limits {
        let d = crate::listen::Limits::default();
        crate::listen::Limits {
            max_connections: self.max_connections.unwrap_or(d.max_connections),
            admin_max_connections: self
                .admin_max_connections
                .unwrap_or(d.admin_max_connections),
            handshake_timeout: self.handshake_timeout.unwrap_or(d.handshake_timeout),
            header_read_timeout: self.header_read_timeout.unwrap_or(d.header_read_timeout),
            idle_timeout: self.idle_timeout.unwrap_or(d.idle_timeout),
        }
    }
}

/// `[[identity]]`: one server identity, in exactly one of three forms.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityConfig {
    /// `name`: for logs and status (default: the certificate file's path).
    #[serde(default)]
    pub name: Option<String>,
    /// `cert`: PEM certificate chain (with `key`).
    #[serde(default)]
    pub cert: Option<PathBuf>,
    /// `key`: PEM private key (with `cert`).
    #[serde(default)]
    pub key: Option<PathBuf>,
    /// `bundle`: one PEM file holding certificates and key.
    #[serde(default)]
    pub bundle: Option<PathBuf>,
    /// `pkcs12`: a PKCS#12 keystore.
    #[serde(default)]
    pub pkcs12: Option<PathBuf>,
    /// `password_file`: the PKCS#12 password, in a file.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// `password_env`: the PKCS#12 password, in an environment variable.
    #[serde(default)]
    pub password_env: Option<String>,
    /// `names`: serve this identity for these names instead of its certificate's DNS names.
    #[serde(default)]
    pub names: Option<Vec<String>>,
    /// `default`: the identity for clients without SNI or with an unknown name.
    #[serde(default)]
    pub default: bool,
}

/// `[client_trust]`: what client certificates must chain to, and what is revoked.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientTrust {
    /// `ca`: PEM files of CA certificates (a string or a list).
    #[serde(default, deserialize_with = "one_or_many")]
    pub ca: Vec<PathBuf>,
    /// `crl`: CRL files, PEM or DER (a string or a list).
    #[serde(default, deserialize_with = "one_or_many")]
    pub crl: Vec<PathBuf>,
    /// `pkcs12`: PKCS#12 trust stores, e.g. a Java `truststore.p12`.
    #[serde(default)]
    pub pkcs12: Vec<TrustStore>,
}

/// One PKCS#12 trust store of `[client_trust]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrustStore {
    /// `path`: the keystore.
    pub path: PathBuf,
    /// `password_file`: its password, in a file.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// `password_env`: its password, in an environment variable.
    #[serde(default)]
    pub password_env: Option<String>,
}

/// `[reload]`: change detection and acceptance.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReloadConfig {
    /// `mode`: how changes are noticed.
    #[serde(default)]
    pub mode: Mode,
    /// `poll_interval`: time between two checks in `poll` mode.
    #[serde(default = "default_poll_interval", deserialize_with = "duration")]
    pub poll_interval: Duration,
    /// `quiet_period`: how long an inconsistent read waits before a retry.
    #[serde(default = "default_quiet_period", deserialize_with = "duration")]
    pub quiet_period: Duration,
    /// `on_handshake_ttl`: minimum time between two checks in `on-handshake` mode.
    #[serde(default = "default_on_handshake_ttl", deserialize_with = "duration")]
    pub on_handshake_ttl: Duration,
    /// `accept_expired`: serve a leaf outside its validity period instead of refusing it.
    #[serde(default)]
    pub accept_expired: bool,
    /// `wait_for_credentials`: if more than zero, start before the files exist and wait this
    /// long for them.
    #[serde(default, deserialize_with = "duration")]
    pub wait_for_credentials: Duration,
    /// `expiring_soon`: fraction of the lifetime left that raises "expiring soon".
    #[serde(default = "default_expiring_soon")]
    pub expiring_soon: f64,
}

impl Default for ReloadConfig {
    fn default() -> Self {
        ReloadConfig {
            mode: Mode::default(),
            poll_interval: default_poll_interval(),
            quiet_period: default_quiet_period(),
            on_handshake_ttl: default_on_handshake_ttl(),
            accept_expired: false,
            wait_for_credentials: Duration::ZERO,
            expiring_soon: default_expiring_soon(),
        }
    }
}

fn default_poll_interval() -> Duration {
    hitless::Detection::DEFAULT_POLL_INTERVAL
}

fn default_quiet_period() -> Duration {
    hitless::Detection::DEFAULT_QUIET_PERIOD
}

fn default_on_handshake_ttl() -> Duration {
    hitless::Detection::DEFAULT_ON_HANDSHAKE_TTL
}

/// The library's default: one third of the lifetime, when agents renew.
fn default_expiring_soon() -> f64 {
    hitless::Status::DEFAULT_EXPIRING_SOON
}

/// `reload.mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// File-system notifications.
    #[default]
    Watch,
    /// Compare file identities every `poll_interval`.
    Poll,
    /// Inline check on a handshake, at most once per `on_handshake_ttl`.
    OnHandshake,
    /// Only on SIGHUP.
    Manual,
}

/// A configuration that cannot be used, with every reason found.
#[derive(Debug)]
pub enum ConfigError {
    /// The file could not be read.
    Read {
        /// The configuration file.
        file: PathBuf,
        /// What the operating system said.
        error: std::io::Error,
    },
    /// The file was read but is not a valid configuration.
    Invalid {
        /// The configuration file.
        file: PathBuf,
        /// Each problem, in file order where known.
        problems: Vec<Problem>,
    },
}

/// One problem of a configuration: the key it is about, where, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The TOML key, e.g. `identity[1].key` (`None` for a syntax error outside any key).
    pub key: Option<String>,
    /// Line in the file, from 1, when known.
    pub line: Option<usize>,
    /// What is wrong and, where it helps, what to do.
    pub reason: String,
}

impl ConfigError {
    /// The problems found (empty for a file that could not be read).
    #[cfg(test)]
    pub fn problems(&self) -> &[Problem] {
        match self {
            ConfigError::Read { .. } => &[],
            ConfigError::Invalid { problems, .. } => problems,
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::Read { file, error } => {
                write!(f, "{}: cannot read: {error}", file.display())
            }
            ConfigError::Invalid { file, problems } => {
                if problems.len() > 1 {
                    writeln!(f, "{}: {} problems:", file.display(), problems.len())?;
                }
                for (i, p) in problems.iter().enumerate() {
                    if i > 0 {
                        writeln!(f)?;
                    }
                    write!(f, "{}", file.display())?;
                    if let Some(line) = p.line {
                        write!(f, ":{line}")?;
                    }
                    if let Some(key) = &p.key {
                        write!(f, ": {key}")?;
                    }
                    write!(f, ": {}", p.reason)?;
                }
                Ok(())
            }
        }
    }
}

impl std::error::Error for ConfigError {}

/// The largest configuration file read (10,000 identities take about 2 MiB): `/dev/zero`, a
/// named pipe or a runaway file is refused at once rather than read without end.
const MAX_CONFIG_SIZE: u64 = 16 * 1024 * 1024;

impl Config {
    /// Reads, parses and validates `file`; with `check_files`, also that every file it names
    /// exists and every password variable is set (what `serve --check` does).
    pub fn load(file: &Path, check_files: bool) -> Result<Config, ConfigError> {
        let text =
            crate::files::read_text(file, MAX_CONFIG_SIZE).map_err(|error| ConfigError::Read {
                file: file.to_owned(),
                error,
            })?;
        let config = Config::parse(file, &text)?;
        config.validate(check_files)?;
        Ok(config)
    }

    /// Parses `text` (read from `file`, named in errors; relative paths are resolved against its
    /// directory). Checks the schema only; see [`Config::validate`] for the rest.
    pub fn parse(file: &Path, text: &str) -> Result<Config, ConfigError> {
        let mut config: Config = toml::from_str(text).map_err(|e| {
            let line = e.span().map(|s| line_of(text, s.start));
            let key = e.span().and_then(|s| key_at(text, s.start));
            ConfigError::Invalid {
                file: file.to_owned(),
                problems: vec![Problem {
                    key,
                    line,
                    reason: e.message().trim_end().to_string(),
                }],
            }
        })?;
        config.origin = Origin {
            file: file.to_owned(),
            text: text.to_owned(),
        };
        config.resolve_relative_paths();
        Ok(config)
    }

    /// Checks what the schema cannot: at least one identity, each in exactly one form, password
    /// settings only with PKCS#12, at most one default, sensible reload values; with
    /// `check_files`, that every file named exists and every password variable is set.
    ///
    /// With `reload.wait_for_credentials` above zero, credential files may be missing at start
    /// (a sidecar agent has not written them yet), so they are not checked.
    pub fn validate(&self, check_files: bool) -> Result<(), ConfigError> {
        let mut problems = Vec::new();
        let mut report = |path: KeyPath, reason: String| problems.push((path, reason));

        if self.identities.is_empty() {
            report(
                KeyPath::root("identity"),
                "none given: add at least one [[identity]] (cert + key, bundle, or pkcs12)".into(),
            );
        }
        let mut default: Option<usize> = None;
        let mut names: HashMap<&str, usize> = HashMap::new();
        for (i, id) in self.identities.iter().enumerate() {
            let at = KeyPath::root("identity").index(i);
            let mut forms = Vec::new();
            if id.cert.is_some() || id.key.is_some() {
                forms.push(if id.cert.is_some() { "cert" } else { "key" });
            }
            if id.bundle.is_some() {
                forms.push("bundle");
            }
            if id.pkcs12.is_some() {
                forms.push("pkcs12");
            }
            match forms.as_slice() {
                [] => report(
                    at.clone(),
                    "no credential: give cert + key, bundle, or pkcs12".into(),
                ),
                [_] => {}
                [first, rest @ ..] => {
                    for second in rest {
                        report(
                            at.key(second),
                            format!(
                                "cannot be combined with {}: give exactly one of cert + key, \
                                 bundle, pkcs12",
                                at.key(first)
                            ),
                        );
                    }
                }
            }
            match (&id.cert, &id.key) {
                (Some(_), None) => report(at.key("cert"), format!("needs {}", at.key("key"))),
                (None, Some(_)) => report(at.key("key"), format!("needs {}", at.key("cert"))),
                _ => {}
            }
            if id.pkcs12.is_none() {
                for (field, set) in [
                    ("password_file", id.password_file.is_some()),
                    ("password_env", id.password_env.is_some()),
                ] {
                    if set {
                        report(at.key(field), "only applies to a pkcs12 identity".into());
                    }
                }
            } else if id.password_file.is_some() && id.password_env.is_some() {
                report(
                    at.key("password_env"),
                    format!("give {} or password_env, not both", at.key("password_file")),
                );
            }
            if let Some(list) = &id.names {
                if list.is_empty() {
                    report(
                        at.key("names"),
                        "empty list: leave it out to use the certificate's DNS names".into(),
                    );
                }
                for (j, name) in list.iter().enumerate() {
                    if name.trim().is_empty() {
                        report(at.key("names").index(j), "empty name".into());
                    }
                }
            }
            if let Some(name) = &id.name {
                if let Some(first) = names.insert(name, i) {
                    report(
                        at.key("name"),
                        format!("{name:?} is already the name of identity[{first}]"),
                    );
                }
            }
            if id.default {
                match default {
                    Some(first) => report(
                        at.key("default"),
                        format!(
                            "only one identity may be the default, and identity[{first}] already is"
                        ),
                    ),
                    None => default = Some(i),
                }
            }
        }

        if let Some(trust) = &self.client_trust {
            let at = KeyPath::root("client_trust");
            if trust.ca.is_empty() && trust.pkcs12.is_empty() {
                report(
                    at.key("ca"),
                    "no CA: give ca (PEM files) or pkcs12 (trust stores), or remove [client_trust]"
                        .into(),
                );
            }
            for (i, store) in trust.pkcs12.iter().enumerate() {
                if store.password_file.is_some() && store.password_env.is_some() {
                    report(
                        at.key("pkcs12").index(i).key("password_env"),
                        "give password_file or password_env, not both".into(),
                    );
                }
            }
        }

        // Two listeners on one address would fail only when serve binds the second one.
        let mut addresses: HashMap<SocketAddr, KeyPath> = HashMap::new();
        for (i, listener) in self.listeners.iter().enumerate() {
            let at = KeyPath::root("listener").index(i);
            for (field, addr) in [("listen", Some(listener.listen)), ("admin", listener.admin)] {
                let Some(addr) = addr.filter(|a| a.port() != 0) else {
                    continue;
                };
                if let Some(first) = addresses.insert(addr, at.key(field)) {
                    report(at.key(field), format!("{addr} is already used by {first}"));
                }
            }
        }

        for (i, listener) in self.listeners.iter().enumerate() {
            let at = KeyPath::root("listener").index(i);
            for (field, count) in [
                ("max_connections", listener.max_connections),
                ("admin_max_connections", listener.admin_max_connections),
            ] {
                if count == Some(0) {
                    report(at.key(field), "must be at least 1".into());
                }
            }
            for (field, timeout) in [
                ("handshake_timeout", listener.handshake_timeout),
                ("header_read_timeout", listener.header_read_timeout),
                ("idle_timeout", listener.idle_timeout),
            ] {
                if let Some(Err(reason)) = timeout.map(crate::value::check_positive) {
                    report(at.key(field), reason);
                }
            }
        }

        let reload = KeyPath::root("reload");
        // The command line refuses --poll-interval 0s whatever the mode, with this same check.
        if self.reload.mode == Mode::Poll {
            if let Err(reason) = crate::value::check_positive(self.reload.poll_interval) {
                report(
                    reload.key("poll_interval"),
                    format!("{reason} in poll mode"),
                );
            }
        }
        if let Err(reason) = crate::value::check_fraction(self.reload.expiring_soon) {
            report(reload.key("expiring_soon"), reason);
        }

        if check_files {
            // A sidecar-fed service starts before its agent has written anything.
            let waiting = !self.reload.wait_for_credentials.is_zero();
            let files = if waiting { Vec::new() } else { self.files() };
            for (path, file) in files {
                match std::fs::metadata(file) {
                    Ok(m) if m.is_dir() => report(
                        path,
                        format!("{}: is a directory, not a file", file.display()),
                    ),
                    Ok(_) => {}
                    Err(e) => report(path, format!("{}: {e}", file.display())),
                }
            }
            for (path, name) in self.password_variables() {
                if std::env::var_os(name).is_none() {
                    report(path, format!("environment variable {name} is not set"));
                }
            }
        }

        if problems.is_empty() {
            return Ok(());
        }
        let doc = toml::de::DeTable::parse(&self.origin.text).ok();
        let mut problems: Vec<Problem> = problems
            .into_iter()
            .map(|(path, reason)| Problem {
                line: doc
                    .as_ref()
                    .and_then(|d| path.span_in(d.get_ref()))
                    .map(|offset| line_of(&self.origin.text, offset)),
                key: Some(path.to_string()),
                reason,
            })
            .collect();
        problems.sort_by_key(|p| p.line.unwrap_or(usize::MAX));
        Err(ConfigError::Invalid {
            file: self.origin.file.clone(),
            problems,
        })
    }

    /// Every file the configuration names, with its key.
    fn files(&self) -> Vec<(KeyPath, &Path)> {
        let mut out = Vec::new();
        for (i, id) in self.identities.iter().enumerate() {
            let at = KeyPath::root("identity").index(i);
            for (field, file) in [
                ("cert", &id.cert),
                ("key", &id.key),
                ("bundle", &id.bundle),
                ("pkcs12", &id.pkcs12),
                ("password_file", &id.password_file),
            ] {
                if let Some(file) = file {
                    out.push((at.key(field), file.as_path()));
                }
            }
        }
        if let Some(trust) = &self.client_trust {
            let at = KeyPath::root("client_trust");
            for (field, files) in [("ca", &trust.ca), ("crl", &trust.crl)] {
                for (i, file) in files.iter().enumerate() {
                    out.push((at.key(field).index(i), file.as_path()));
                }
            }
            for (i, store) in trust.pkcs12.iter().enumerate() {
                let at = at.key("pkcs12").index(i);
                out.push((at.key("path"), store.path.as_path()));
                if let Some(file) = &store.password_file {
                    out.push((at.key("password_file"), file.as_path()));
                }
            }
        }
        out
    }

    /// Every password environment variable the configuration names, with its key.
    fn password_variables(&self) -> Vec<(KeyPath, &str)> {
        let mut out = Vec::new();
        for (i, id) in self.identities.iter().enumerate() {
            if let Some(name) = &id.password_env {
                out.push((
                    KeyPath::root("identity").index(i).key("password_env"),
                    name.as_str(),
                ));
            }
        }
        if let Some(trust) = &self.client_trust {
            for (i, store) in trust.pkcs12.iter().enumerate() {
                if let Some(name) = &store.password_env {
                    out.push((
                        KeyPath::root("client_trust")
                            .key("pkcs12")
                            .index(i)
                            .key("password_env"),
                        name.as_str(),
                    ));
                }
            }
        }
        out
    }

    fn resolve_relative_paths(&mut self) {
        let base = self
            .origin
            .file
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        for id in &mut self.identities {
            for p in [
                &mut id.cert,
                &mut id.key,
                &mut id.bundle,
                &mut id.pkcs12,
                &mut id.password_file,
            ]
            .into_iter()
            .flatten()
            {
                fix(p);
            }
        }
        if let Some(trust) = &mut self.client_trust {
            trust
                .ca
                .iter_mut()
                .chain(trust.crl.iter_mut())
                .for_each(fix);
            for store in &mut trust.pkcs12 {
                fix(&mut store.path);
                if let Some(p) = &mut store.password_file {
                    fix(p);
                }
            }
        }
    }

    /// The identities as the library takes them, in selection order. Call after
    /// [`Config::validate`]; an identity in no valid form is skipped.
    pub fn identity_sources(&self) -> Vec<(IdentitySource, MemberOptions)> {
        self.identities
            .iter()
            .filter_map(|id| {
                let source = match (&id.cert, &id.key, &id.bundle, &id.pkcs12) {
                    (Some(cert), Some(key), None, None) => IdentitySource::pair(cert, key),
                    (None, None, Some(bundle), None) => IdentitySource::bundle(bundle),
                    (None, None, None, Some(p12)) => {
                        IdentitySource::pkcs12(p12, password(&id.password_file, &id.password_env))
                    }
                    _ => return None,
                };
                let mut options = MemberOptions::default().default_identity(id.default);
                options.name.clone_from(&id.name);
                options.names.clone_from(&id.names);
                Some((source, options))
            })
            .collect()
    }

    /// The client trust, if `[client_trust]` is present.
    pub fn trust_source(&self) -> Option<TrustSource> {
        let trust = self.client_trust.as_ref()?;
        let mut source =
            TrustSource::cas(trust.ca.iter().cloned()).with_crls(trust.crl.iter().cloned());
        for store in &trust.pkcs12 {
            source = source.with_pkcs12(
                store.path.clone(),
                password(&store.password_file, &store.password_env),
            );
        }
        Some(source)
    }

    /// How changes are noticed.
    pub fn detection(&self) -> Detection {
        match self.reload.mode {
            Mode::Watch => Detection::Watch,
            Mode::Poll => Detection::Poll {
                interval: self.reload.poll_interval,
            },
            Mode::OnHandshake => Detection::OnHandshake {
                ttl: self.reload.on_handshake_ttl,
            },
            Mode::Manual => Detection::Manual,
        }
    }
}

fn password(file: &Option<PathBuf>, env: &Option<String>) -> Password {
    match (file, env) {
        (Some(file), _) => Password::File(file.clone()),
        (None, Some(name)) => Password::Env(name.clone()),
        (None, None) => Password::None,
    }
}

/// A TOML key path such as `identity[1].key`: each key, with its array index if it has one.
#[derive(Debug, Clone, PartialEq, Eq)]
struct KeyPath(Vec<(String, Option<usize>)>);

impl KeyPath {
    fn root(key: &str) -> KeyPath {
        KeyPath(vec![(key.to_string(), None)])
    }

    fn key(&self, key: &str) -> KeyPath {
        let mut p = self.clone();
        p.0.push((key.to_string(), None));
        p
    }

    fn index(&self, i: usize) -> KeyPath {
        let mut p = self.clone();
        if let Some((_, index)) = p.0.last_mut() {
            *index = Some(i);
        }
        p
    }

    /// The offset in the source of the deepest part of this path that the document holds.
    fn span_in(&self, doc: &toml::de::DeTable<'_>) -> Option<usize> {
        let mut table = doc;
        let mut found = None;
        for (key, index) in &self.0 {
            let (k, v) = table.get_key_value(key.as_str())?;
            found = Some(k.span().start);
            let mut value = v;
            if let Some(i) = index {
                let Some(item) = value.get_ref().as_array().and_then(|a| a.get(*i)) else {
                    return found;
                };
                // An array of tables: the element's span is its `[[header]]`.
                found = Some(item.span().start);
                value = item;
            }
            match value.get_ref().as_table() {
                Some(t) => table = t,
                None => return found,
            }
        }
        found
    }
}

impl fmt::Display for KeyPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (n, (key, index)) in self.0.iter().enumerate() {
            if n > 0 {
                f.write_str(".")?;
            }
            f.write_str(key)?;
            if let Some(i) = index {
                write!(f, "[{i}]")?;
            }
        }
        Ok(())
    }
}

/// Line number (from 1) of a byte offset.
fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|b| **b == b'\n')
        .count()
        + 1
}

/// The key path (`listener[0].listne`) of whatever sits at `offset` in the document.
fn key_at(text: &str, offset: usize) -> Option<String> {
    use toml::de::DeValue;
    fn find(value: &DeValue<'_>, offset: usize, path: &mut String) -> bool {
        let contains = |span: std::ops::Range<usize>| span.start <= offset && offset < span.end;
        match value {
            DeValue::Table(table) => {
                for (k, v) in table.iter() {
                    let len = path.len();
                    if !path.is_empty() {
                        path.push('.');
                    }
                    path.push_str(k.get_ref());
                    if contains(k.span()) || contains(v.span()) {
                        find(v.get_ref(), offset, path);
                        return true;
                    }
                    if find(v.get_ref(), offset, path) {
                        return true;
                    }
                    path.truncate(len);
                }
                false
            }
            DeValue::Array(array) => {
                for (i, v) in array.iter().enumerate() {
                    let len = path.len();
                    path.push_str(&format!("[{i}]"));
                    if find(v.get_ref(), offset, path) {
                        return true;
                    }
                    if contains(v.span()) {
                        return true;
                    }
                    path.truncate(len);
                }
                false
            }
            _ => false,
        }
    }
    let doc = toml::de::DeTable::parse(text).ok()?;
    let mut path = String::new();
    let root = DeValue::Table(doc.into_inner());
    (find(&root, offset, &mut path) && !path.is_empty()).then_some(path)
}

/// A humantime duration string such as `10s`, `200ms`, `1h 30m`, bounded as the flags are
/// ([`crate::value::duration`]).
fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(d)?;
    crate::value::duration(&text)
        .map_err(|e| de::Error::custom(format!("invalid duration {text:?}: {e}")))
}

fn opt_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    duration(d).map(Some)
}

fn parse_addr<E: de::Error>(text: &str) -> Result<SocketAddr, E> {
    text.parse().map_err(|e| {
        E::custom(format!(
            "invalid address {text:?}: {e}; expected IP:PORT such as \"127.0.0.1:8443\" or \"[::1]:8443\""
        ))
    })
}

fn socket_addr<'de, D: Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
    parse_addr(&String::deserialize(d)?)
}

fn opt_socket_addr<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SocketAddr>, D::Error> {
    parse_addr(&String::deserialize(d)?).map(Some)
}

/// A path or a list of paths.
fn one_or_many<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<PathBuf>, D::Error> {
    struct OneOrMany;
    impl<'de> Visitor<'de> for OneOrMany {
        type Value = Vec<PathBuf>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a path or a list of paths")
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
            Ok(vec![PathBuf::from(v)])
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let mut out = Vec::new();
            while let Some(p) = seq.next_element::<PathBuf>()? {
                out.push(p);
            }
            Ok(out)
        }
    }
    d.deserialize_any(OneOrMany)
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "/etc/hitless/hitless.toml";

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(Path::new(FILE), text)
    }

    /// Parses and validates (without file checks); the one problem expected.
    fn problem(text: &str) -> (Problem, String) {
        let err = match parse(text) {
            Err(e) => e,
            Ok(config) => config.validate(false).expect_err("configuration accepted"),
        };
        let shown = err.to_string();
        assert!(
            shown.contains(FILE),
            "message does not name the file: {shown}"
        );
        match err.problems() {
            [one] => (one.clone(), shown),
            many => panic!("expected one problem, got {many:?}"),
        }
    }

    const PAIR: &str = "[[identity]]\ncert = \"a.crt\"\nkey = \"a.key\"\n";

    #[test]
    fn unknown_key_is_named_with_its_table_and_line() {
        let (p, shown) = problem(&format!(
            "[[listener]]\nlisten = \"127.0.0.1:8443\"\n\n[[listener]]\nlistne = \"127.0.0.1:9443\"\n{PAIR}"
        ));
        assert_eq!(p.key.as_deref(), Some("listener[1].listne"), "{shown}");
        assert_eq!(p.line, Some(5));
        assert!(p.reason.contains("unknown field `listne`"), "{shown}");
        assert!(
            p.reason.contains("`listen`"),
            "no hint of the right key: {shown}"
        );
        assert!(
            shown.starts_with(&format!("{FILE}:5: listener[1].listne: ")),
            "{shown}"
        );
    }

    #[test]
    fn unknown_table_is_named() {
        let (p, shown) = problem(&format!("{PAIR}[relaod]\nmode = \"poll\"\n"));
        assert_eq!(p.key.as_deref(), Some("relaod"), "{shown}");
        assert_eq!(p.line, Some(4));
    }

    #[test]
    fn bad_duration_names_the_key_and_the_value() {
        let (p, shown) = problem(&format!(
            "{PAIR}\n[reload]\nmode = \"poll\"\npoll_interval = \"10 parsecs\"\n"
        ));
        assert_eq!(p.key.as_deref(), Some("reload.poll_interval"), "{shown}");
        assert_eq!(p.line, Some(7));
        assert!(
            p.reason.contains("invalid duration \"10 parsecs\""),
            "{shown}"
        );
    }

    #[test]
    fn bad_mode_and_bad_address_name_the_key() {
        let (p, shown) = problem(&format!("{PAIR}[reload]\nmode = \"inotify\"\n"));
        assert_eq!(p.key.as_deref(), Some("reload.mode"), "{shown}");
        assert!(
            p.reason.contains("on-handshake"),
            "valid modes not listed: {shown}"
        );

        let (p, shown) = problem(&format!("[[listener]]\nlisten = \"localhost\"\n{PAIR}"));
        assert_eq!(p.key.as_deref(), Some("listener[0].listen"), "{shown}");
        assert!(
            p.reason.contains("invalid address \"localhost\""),
            "{shown}"
        );
    }

    #[test]
    fn missing_file_names_the_key_and_the_file() {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join("a.crt"), "x").expect("write");
        std::fs::write(dir.path().join("a.key"), "x").expect("write");
        std::fs::write(dir.path().join("b.crt"), "x").expect("write");
        let file = dir.path().join("hitless.toml");
        let text = format!("{PAIR}\n[[identity]]\ncert = \"b.crt\"\nkey = \"b.key\"\n");
        std::fs::write(&file, &text).expect("write");

        let config = Config::load(&file, false).expect("valid without file checks");
        let err = config.validate(true).expect_err("b.key is missing");
        let shown = err.to_string();
        let [p] = err.problems() else {
            panic!("expected one problem: {shown}")
        };
        assert_eq!(p.key.as_deref(), Some("identity[1].key"), "{shown}");
        assert_eq!(p.line, Some(7));
        let missing = dir.path().join("b.key");
        assert!(
            p.reason.contains(&missing.display().to_string()),
            "relative path not resolved against the file's directory: {shown}"
        );
        assert!(shown.contains(&file.display().to_string()), "{shown}");

        // A sidecar-fed service may start before its files exist.
        let waiting = format!("{text}[reload]\nwait_for_credentials = \"30s\"\n");
        std::fs::write(&file, waiting).expect("write");
        Config::load(&file, true).expect("files are not required when waiting for them");
    }

    #[test]
    fn no_identity_is_refused() {
        let (p, shown) = problem("[[listener]]\nlisten = \"127.0.0.1:8443\"\n");
        assert_eq!(p.key.as_deref(), Some("identity"), "{shown}");
        assert!(p.reason.contains("at least one"), "{shown}");
    }

    #[test]
    fn two_forms_in_one_identity_are_refused() {
        let (p, shown) =
            problem("[[identity]]\ncert = \"a.crt\"\nkey = \"a.key\"\nbundle = \"a.pem\"\n");
        assert_eq!(p.key.as_deref(), Some("identity[0].bundle"), "{shown}");
        assert_eq!(p.line, Some(4));
        assert!(p.reason.contains("identity[0].cert"), "{shown}");

        let (p, shown) = problem("[[identity]]\ncert = \"a.crt\"\n");
        assert_eq!(p.key.as_deref(), Some("identity[0].cert"), "{shown}");
        assert!(p.reason.contains("needs identity[0].key"), "{shown}");

        let (p, shown) = problem("[[identity]]\nname = \"x\"\n");
        assert_eq!(p.key.as_deref(), Some("identity[0]"), "{shown}");
        assert_eq!(p.line, Some(1));
    }

    #[test]
    fn password_settings_only_with_pkcs12_and_not_both() {
        let (p, shown) = problem(&format!("{PAIR}password_env = \"P\"\n"));
        assert_eq!(
            p.key.as_deref(),
            Some("identity[0].password_env"),
            "{shown}"
        );
        assert!(p.reason.contains("pkcs12"), "{shown}");

        let (p, shown) = problem(
            "[[identity]]\npkcs12 = \"a.p12\"\npassword_file = \"p\"\npassword_env = \"P\"\n",
        );
        assert_eq!(
            p.key.as_deref(),
            Some("identity[0].password_env"),
            "{shown}"
        );
        assert!(p.reason.contains("not both"), "{shown}");
    }

    #[test]
    fn two_defaults_are_refused() {
        let (p, shown) = problem(&format!(
            "{PAIR}default = true\n[[identity]]\nbundle = \"b.pem\"\ndefault = true\n"
        ));
        assert_eq!(p.key.as_deref(), Some("identity[1].default"), "{shown}");
        assert_eq!(p.line, Some(7));
        assert!(p.reason.contains("identity[0] already is"), "{shown}");
    }

    #[test]
    fn one_address_cannot_serve_two_listeners() {
        let (p, shown) = problem(&format!(
            "[[listener]]\nlisten = \"127.0.0.1:8443\"\nadmin = \"127.0.0.1:9090\"\n\
             [[listener]]\nlisten = \"127.0.0.1:9090\"\n{PAIR}"
        ));
        assert_eq!(p.key.as_deref(), Some("listener[1].listen"), "{shown}");
        assert!(p.reason.contains("listener[0].admin"), "{shown}");
    }

    #[test]
    fn reload_values_are_checked() {
        let (p, shown) = problem(&format!("{PAIR}[reload]\nexpiring_soon = 33.0\n"));
        assert_eq!(p.key.as_deref(), Some("reload.expiring_soon"), "{shown}");
        let (p, shown) = problem(&format!(
            "{PAIR}[reload]\nmode = \"poll\"\npoll_interval = \"0s\"\n"
        ));
        assert_eq!(p.key.as_deref(), Some("reload.poll_interval"), "{shown}");
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let err =
            parse("[[identity]]\ncert = \"a\"\ndefault = true\n[[identity]]\ndefault = true\n")
                .expect("schema is fine")
                .validate(false)
                .expect_err("invalid");
        let keys: Vec<_> = err
            .problems()
            .iter()
            .filter_map(|p| p.key.clone())
            .collect();
        assert_eq!(
            keys,
            ["identity[0].cert", "identity[1]", "identity[1].default"],
            "{err}"
        );
        assert!(err.to_string().contains("3 problems"), "{err}");
    }

    #[test]
    fn syntax_error_names_the_line() {
        let err = parse("[[identity]]\ncert = \"a.crt\nkey = 1\n").expect_err("bad TOML");
        let [p] = err.problems() else { panic!("{err}") };
        assert_eq!(p.line, Some(2), "{err}");
    }

    #[test]
    fn example_parses_and_converts() {
        let text = include_str!("../../../examples/hitless.toml");
        let config = parse(text).expect("examples/hitless.toml parses");
        config
            .validate(false)
            .expect("examples/hitless.toml is valid");

        assert_eq!(config.listeners.len(), 1);
        assert_eq!(
            config.listeners[0].listen,
            "127.0.0.1:8443".parse().expect("addr")
        );
        let sources = config.identity_sources();
        assert_eq!(sources.len(), 2);
        assert_eq!(
            sources[0].0,
            IdentitySource::pair("/etc/tls/api.crt", "/etc/tls/api.key")
        );
        assert_eq!(sources[0].1.name.as_deref(), Some("api"));
        assert!(sources[0].1.default);
        assert_eq!(
            sources[1].0,
            IdentitySource::bundle("/run/secrets/legacy.pem")
        );
        assert!(!sources[1].1.default);
        let trust = config.trust_source().expect("client trust");
        assert_eq!(trust.ca_files, [PathBuf::from("/etc/tls/clients-ca.pem")]);
        assert_eq!(trust.crl_files, [PathBuf::from("/etc/tls/clients.crl")]);
        assert_eq!(config.detection(), Detection::Watch);
        assert_eq!(config.reload.quiet_period, Duration::from_millis(200));
        assert!((config.reload.expiring_soon - 0.33).abs() < 1e-9);
    }

    #[test]
    fn pkcs12_forms_and_single_paths_convert() {
        let text = "[[identity]]\npkcs12 = \"id.p12\"\npassword_env = \"ID_PASS\"\n\
                    names = [\"a.test\"]\n\
                    [client_trust]\nca = \"ca.pem\"\n\
                    pkcs12 = [{ path = \"trust.p12\", password_file = \"trust.pass\" }]\n\
                    [reload]\nmode = \"on-handshake\"\non_handshake_ttl = \"5s\"\n";
        let config = parse(text).expect("parses");
        config.validate(false).expect("valid");
        let (source, options) = &config.identity_sources()[0];
        assert_eq!(
            *source,
            IdentitySource::pkcs12("/etc/hitless/id.p12", Password::Env("ID_PASS".into()))
        );
        assert_eq!(options.names, Some(vec!["a.test".to_string()]));
        let trust = config.trust_source().expect("trust");
        assert_eq!(trust.ca_files, [PathBuf::from("/etc/hitless/ca.pem")]);
        assert_eq!(
            trust.pkcs12_files,
            [(
                PathBuf::from("/etc/hitless/trust.p12"),
                Password::File("/etc/hitless/trust.pass".into())
            )]
        );
        assert_eq!(
            config.detection(),
            Detection::OnHandshake {
                ttl: Duration::from_secs(5)
            }
        );

        let err = parse(
            "[[identity]]\npkcs12 = \"id.p12\"\npassword_env = \"HITLESS_TEST_UNSET_VARIABLE\"\n",
        )
        .expect("parses")
        .validate(true)
        .expect_err("variable unset and file missing");
        let keys: Vec<_> = err
            .problems()
            .iter()
            .filter_map(|p| p.key.clone())
            .collect();
        assert_eq!(
            keys,
            ["identity[0].pkcs12", "identity[0].password_env"],
            "{err}"
        );
    }
}
