//! `hitless proxy --config FILE`: several proxies in one process, from TOML.
//!
//! ```toml
//! shutdown_timeout = "10s"          # optional
//!
//! [admin]                           # optional
//! listen = "127.0.0.1:9090"
//! max_connections = 100
//!
//! [reload]                          # optional, for every credential of the file
//! mode = "watch"                    # watch | poll | on-handshake | manual
//! poll_interval = "10s"
//! on_handshake_ttl = "1s"
//! quiet_period = "200ms"
//! accept_expired = false
//! expiring_soon = 0.33
//! wait_for_credentials = "0s"
//!
//! [[proxy]]
//! name = "api-in"                   # unique; labels status and metrics
//! mode = "server"                   # server | client
//! listen = "0.0.0.0:8443"
//! target = "127.0.0.1:8080"         # or "unix:/run/app.sock"
//! identity = "/run/secrets/identity.pem"   # or cert + key, or pkcs12 + password_file/_env
//! client_ca = ["/run/secrets/ca.pem"]       # server; a client has `ca`
//! crl = []
//! allow_cn = ["billing"]            # allow_all, allow_ou, allow_dns, allow_uri
//! proxy_protocol = false
//! drop_untrusted = false
//! # client only: server_name, verify_dns, verify_uri, verify_cn, verify_ou
//! # both: max_connections, connect_timeout, handshake_timeout, idle_timeout
//! ```
//!
//! Each table takes the flags of its mode under the same names (`-` written `_`), and means
//! exactly what the flags mean: a table is turned into the flags' structure and goes the same
//! way. Unknown keys are errors (a misspelt `allow_cn` must not silently admit nobody or,
//! worse, be ignored). Relative paths are relative to the file's directory.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use serde::Deserialize;

use super::endpoint::Address;
use super::{client, server, Common, Plan, Process};
use crate::flags::{ClientTrustFlags, IdentityFlags, ReloadFlags, ReloadMode, ServerTrustFlags};
use crate::value;

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct File {
    shutdown_timeout: Option<String>,
    #[serde(default)]
    admin: Admin,
    #[serde(default)]
    reload: Reload,
    #[serde(default)]
    proxy: Vec<Table>,
}

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct Admin {
    listen: Option<SocketAddr>,
    max_connections: Option<u32>,
}

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct Reload {
    mode: Option<String>,
    poll_interval: Option<String>,
    on_handshake_ttl: Option<String>,
    quiet_period: Option<String>,
    accept_expired: Option<bool>,
    expiring_soon: Option<f64>,
    wait_for_credentials: Option<String>,
}

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct Table {
    name: String,
    mode: String,
    listen: String,
    target: String,
    identity: Option<PathBuf>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    pkcs12: Option<PathBuf>,
    password_file: Option<PathBuf>,
    password_env: Option<String>,
    #[serde(default)]
    client_ca: Vec<PathBuf>,
    #[serde(default)]
    ca: Vec<PathBuf>,
    #[serde(default)]
    crl: Vec<PathBuf>,
    #[serde(default)]
    allow_all: bool,
    #[serde(default)]
    allow_cn: Vec<String>,
    #[serde(default)]
    allow_ou: Vec<String>,
    #[serde(default)]
    allow_dns: Vec<String>,
    #[serde(default)]
    allow_uri: Vec<String>,
    #[serde(default)]
    proxy_protocol: bool,
    #[serde(default)]
    drop_untrusted: bool,
    server_name: Option<String>,
    #[serde(default)]
    verify_dns: Vec<String>,
    #[serde(default)]
    verify_uri: Vec<String>,
    #[serde(default)]
    verify_cn: Vec<String>,
    #[serde(default)]
    verify_ou: Vec<String>,
    max_connections: Option<u32>,
    connect_timeout: Option<String>,
    handshake_timeout: Option<String>,
    idle_timeout: Option<String>,
}

/// Reads and checks `path`.
pub fn load(path: &Path) -> anyhow::Result<Process> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("{}: cannot read the configuration", path.display()))?;
    let base = path.parent().unwrap_or(Path::new("."));
    parse(&text, base).with_context(|| format!("{}", path.display()))
}

fn parse(text: &str, base: &Path) -> anyhow::Result<Process> {
    let file: File = toml::from_str(text).context("not a valid proxy configuration")?;
    if file.proxy.is_empty() {
        bail!("no [[proxy]] table: nothing to run");
    }
    let reload = reload_flags(&file.reload).context("[reload]")?;
    let mut names = BTreeSet::new();
    let mut proxies = Vec::new();
    for (i, table) in file.proxy.iter().enumerate() {
        let what = format!("[[proxy]] #{} ({:?})", i + 1, table.name);
        if table.name.is_empty() {
            bail!("{what}: name must not be empty");
        }
        if !names.insert(table.name.clone()) {
            bail!("{what}: the name is used twice");
        }
        proxies.push(plan(table, &reload, base).with_context(|| what.clone())?);
    }
    let shutdown_timeout = match &file.shutdown_timeout {
        Some(d) => parse_duration(d, "shutdown_timeout", false)?,
        None => Duration::from_secs(10),
    };
    if file.admin.max_connections == Some(0) {
        bail!("[admin] max_connections: must be at least 1");
    }
    Ok(Process {
        proxies,
        admin_listen: file.admin.listen,
        admin_max_connections: file.admin.max_connections,
        shutdown_timeout,
    })
}

fn parse_duration(text: &str, key: &str, positive: bool) -> anyhow::Result<Duration> {
    let parsed = if positive {
        value::positive_duration(text)
    } else {
        value::duration(text)
    };
    parsed.map_err(|e| anyhow::anyhow!("{key} = {text:?}: {e}"))
}

fn reload_flags(r: &Reload) -> anyhow::Result<ReloadFlags> {
    let mut flags = ReloadFlags::default();
    if let Some(mode) = &r.mode {
        flags.reload = match mode.as_str() {
            "watch" => ReloadMode::Watch,
            "poll" => ReloadMode::Poll,
            "on-handshake" => ReloadMode::OnHandshake,
            "manual" => ReloadMode::Manual,
            other => bail!("mode = {other:?}: expected watch, poll, on-handshake or manual"),
        };
    }
    if let Some(d) = &r.poll_interval {
        flags.poll_interval = parse_duration(d, "poll_interval", true)?;
    }
    if let Some(d) = &r.on_handshake_ttl {
        flags.on_handshake_ttl = parse_duration(d, "on_handshake_ttl", false)?;
    }
    if let Some(d) = &r.quiet_period {
        flags.quiet_period = parse_duration(d, "quiet_period", false)?;
    }
    if let Some(d) = &r.wait_for_credentials {
        flags.wait_for_credentials = parse_duration(d, "wait_for_credentials", false)?;
    }
    if let Some(a) = r.accept_expired {
        flags.accept_expired = a;
    }
    if let Some(f) = r.expiring_soon {
        flags.expiring_soon = value::fraction(&f.to_string())
            .map_err(|e| anyhow::anyhow!("expiring_soon = {f}: {e}"))?;
    }
    Ok(flags)
}

fn plan(t: &Table, reload: &ReloadFlags, base: &Path) -> anyhow::Result<Plan> {
    let at = |p: &PathBuf| base.join(p);
    let all = |v: &[PathBuf]| v.iter().map(at).collect::<Vec<_>>();
    let identity = IdentityFlags {
        identity: t.identity.as_ref().map(at),
        cert: t.cert.as_ref().map(at),
        key: t.key.as_ref().map(at),
        pkcs12: t.pkcs12.as_ref().map(at),
        password_file: t.password_file.as_ref().map(at),
        password_env: t.password_env.clone(),
    };
    let mut common = Common {
        max_connections: t.max_connections,
        ..Common::default()
    };
    if t.max_connections == Some(0) {
        bail!("max_connections: must be at least 1");
    }
    if let Some(d) = &t.connect_timeout {
        common.connect_timeout = parse_duration(d, "connect_timeout", true)?;
    }
    if let Some(d) = &t.handshake_timeout {
        common.handshake_timeout = parse_duration(d, "handshake_timeout", true)?;
    }
    if let Some(d) = &t.idle_timeout {
        common.idle_timeout = parse_duration(d, "idle_timeout", true)?;
    }
    let target = Address::parse(&t.target).context("target")?;
    let refuse = |present: bool, key: &str, mode: &str| -> anyhow::Result<()> {
        if present {
            bail!("{key} is not a key of mode = \"{mode}\"");
        }
        Ok(())
    };
    match t.mode.as_str() {
        "server" => {
            refuse(!t.ca.is_empty(), "ca (use client_ca)", "server")?;
            refuse(t.server_name.is_some(), "server_name", "server")?;
            refuse(
                !(t.verify_dns.is_empty()
                    && t.verify_uri.is_empty()
                    && t.verify_cn.is_empty()
                    && t.verify_ou.is_empty()),
                "verify_*",
                "server",
            )?;
            let listen: SocketAddr = t
                .listen
                .parse()
                .with_context(|| format!("listen = {:?}: expected IP:PORT", t.listen))?;
            Ok(Plan::Server(
                server::Args {
                    listen,
                    target,
                    identity,
                    trust: ClientTrustFlags {
                        client_ca: all(&t.client_ca),
                        crl: all(&t.crl),
                    },
                    reload: reload.clone(),
                    allow_all: t.allow_all,
                    allow_cn: t.allow_cn.clone(),
                    allow_ou: t.allow_ou.clone(),
                    allow_dns: t.allow_dns.clone(),
                    allow_uri: t.allow_uri.clone(),
                    proxy_protocol: t.proxy_protocol,
                    drop_untrusted: t.drop_untrusted,
                    common,
                },
                Some(t.name.clone()),
            ))
        }
        "client" => {
            refuse(!t.client_ca.is_empty(), "client_ca (use ca)", "client")?;
            refuse(
                t.allow_all
                    || !(t.allow_cn.is_empty()
                        && t.allow_ou.is_empty()
                        && t.allow_dns.is_empty()
                        && t.allow_uri.is_empty()),
                "allow_*",
                "client",
            )?;
            refuse(t.proxy_protocol, "proxy_protocol", "client")?;
            refuse(t.drop_untrusted, "drop_untrusted", "client")?;
            Ok(Plan::Client(
                client::Args {
                    listen: Address::parse(&t.listen).context("listen")?,
                    target,
                    identity,
                    trust: ServerTrustFlags {
                        ca: all(&t.ca),
                        crl: all(&t.crl),
                    },
                    reload: reload.clone(),
                    server_name: t.server_name.clone(),
                    verify_dns: t.verify_dns.clone(),
                    verify_uri: t.verify_uri.clone(),
                    verify_cn: t.verify_cn.clone(),
                    verify_ou: t.verify_ou.clone(),
                    common,
                },
                Some(t.name.clone()),
            ))
        }
        other => bail!("mode = {other:?}: expected \"server\" or \"client\""),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TWO: &str = r#"
        shutdown_timeout = "3s"
        [admin]
        listen = "127.0.0.1:9090"
        [reload]
        mode = "poll"
        poll_interval = "2s"
        [[proxy]]
        name = "in"
        mode = "server"
        listen = "0.0.0.0:8443"
        target = "unix:/run/app.sock"
        identity = "tls/identity.pem"
        client_ca = ["tls/ca.pem"]
        allow_uri = ["spiffe://example.org/*"]
        idle_timeout = "5m"
        [[proxy]]
        name = "out"
        mode = "client"
        listen = "127.0.0.1:8080"
        target = "api.internal:8443"
        cert = "/abs/tls.crt"
        key = "/abs/tls.key"
        ca = ["/abs/ca.pem"]
        verify_dns = ["api.internal"]
    "#;

    #[test]
    fn two_proxies_become_the_flags_of_their_modes() {
        let p = parse(TWO, Path::new("/etc/hitless")).unwrap();
        assert_eq!(p.shutdown_timeout, Duration::from_secs(3));
        assert_eq!(p.admin_listen, Some("127.0.0.1:9090".parse().unwrap()));
        assert_eq!(p.proxies.len(), 2);
        let Plan::Server(s, Some(name)) = &p.proxies[0] else {
            panic!("first is a server")
        };
        assert_eq!(name, "in");
        assert_eq!(
            s.identity.identity.as_deref(),
            Some(Path::new("/etc/hitless/tls/identity.pem"))
        );
        assert_eq!(
            s.trust.client_ca,
            [PathBuf::from("/etc/hitless/tls/ca.pem")]
        );
        assert_eq!(s.target, Address::Unix("/run/app.sock".into()));
        assert_eq!(s.common.idle_timeout, Duration::from_secs(300));
        assert_eq!(s.reload.reload, ReloadMode::Poll);
        assert_eq!(s.reload.poll_interval, Duration::from_secs(2));
        let Plan::Client(c, Some(_)) = &p.proxies[1] else {
            panic!("second is a client")
        };
        assert_eq!(c.identity.cert.as_deref(), Some(Path::new("/abs/tls.crt")));
        assert_eq!(c.verify_dns, ["api.internal"]);
    }

    #[test]
    fn mistakes_are_refused_with_the_table_and_key() {
        let cases = [
            (TWO.replace("allow_uri", "allow_url"), "allow_url"),
            (TWO.replace("name = \"out\"", "name = \"in\""), "used twice"),
            (
                TWO.replace("mode = \"client\"", "mode = \"sidecar\""),
                "sidecar",
            ),
            (
                TWO.replace("idle_timeout = \"5m\"", "idle_timeout = \"0s\""),
                "idle_timeout",
            ),
            (
                TWO.replace("verify_dns = [\"api.internal\"]", "allow_all = true"),
                "allow_*",
            ),
            (
                TWO.replace("mode = \"poll\"", "mode = \"sometimes\""),
                "sometimes",
            ),
            ("[admin]\n".into(), "no [[proxy]]"),
        ];
        for (text, needle) in cases {
            let err = parse(&text, Path::new("/")).expect_err(needle);
            let message = format!("{err:#}");
            assert!(message.contains(needle), "{needle}: {message}");
        }
    }
}
