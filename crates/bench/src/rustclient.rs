//! A second, small load generator for the requests part: blocking threads, plain rustls (not
//! hitless), one new connection per request (`GET /healthz`, `Connection: close`), resuming
//! sessions. It exists for what Go's client cannot do: resume TLS 1.2 with **session IDs**
//! (Go resumes TLS 1.2 only with tickets), and it needs no Go toolchain, so CI's smoke test can
//! run the part's Rust pieces (baseline, `hitless serve`, the resumption safety check).
//!
//! Each worker has its own session store, so the session a connection offers was stored by
//! an earlier connection of the same worker (TLS 1.2: the last full handshake's session ID;
//! TLS 1.3: the newest ticket, from the previous connection).

use std::collections::{BTreeMap, BTreeSet};
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rustls::client::{Resumption, Tls12Resumption};
use rustls::{ClientConfig, ClientConnection, HandshakeKind, RootCertStore, StreamOwned};

use crate::common::{server_name, Pki};

/// One request as the client saw it (the resumption safety check reads these).
#[derive(Debug, Clone)]
pub struct Event {
    /// Worker index (each worker has its own session store).
    pub worker: usize,
    /// Unix time in nanoseconds when the connection was started.
    pub start_ns: i64,
    /// Unix time in nanoseconds when the response had been read.
    pub end_ns: i64,
    /// Whether the TLS handshake resumed a session.
    pub resumed: bool,
    /// Whether the request succeeded.
    pub ok: bool,
    /// A short hash of the server leaf the session carries.
    pub leaf: String,
}

/// What one load-generator run (Go or Rust) reported.
#[derive(Debug, Clone, Default)]
pub struct Run {
    /// Successful requests.
    pub requests: u64,
    /// Failed requests.
    pub errors: u64,
    /// Successful requests whose handshake resumed a session.
    pub resumed: u64,
    /// Seconds the workers ran.
    pub elapsed_s: f64,
    /// Latency of every successful request, microseconds.
    pub lat_us: Vec<u64>,
    /// Negotiated TLS versions and their counts.
    pub versions: BTreeMap<String, u64>,
    /// HTTP versions and their counts.
    pub protocols: BTreeMap<String, u64>,
    /// Distinct server leaves seen.
    pub leaves: u64,
    /// The first few errors.
    pub first_errors: Vec<String>,
    /// Every request, when asked for.
    pub events: Vec<Event>,
}

/// The TLS version and resumption mechanism to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resume {
    /// TLS 1.2 only, resuming with session IDs (never tickets).
    Tls12SessionIds,
    /// TLS 1.3 only, resuming with tickets.
    Tls13Tickets,
}

fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64)
}

fn config(pki: &Pki, resume: Resume) -> Result<Arc<ClientConfig>, String> {
    let mut roots = RootCertStore::empty();
    roots
        .add(pki.server_ca.rustls_cert())
        .map_err(|e| e.to_string())?;
    let versions: &[&'static rustls::SupportedProtocolVersion] = match resume {
        Resume::Tls12SessionIds => &[&rustls::version::TLS12],
        Resume::Tls13Tickets => &[&rustls::version::TLS13],
    };
    let mut c = ClientConfig::builder_with_provider(crate::provider())
        .with_protocol_versions(versions)
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_client_auth_cert(pki.client_leaf.rustls_chain(), pki.client_leaf.rustls_key())
        .map_err(|e| e.to_string())?;
    c.resumption =
        Resumption::in_memory_sessions(32).tls12_resumption(Tls12Resumption::SessionIdOnly);
    c.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(c))
}

struct Reply {
    resumed: bool,
    version: String,
    leaf: String,
}

/// One connection, one `GET /healthz`, the whole answer read; it must be `200` with body
/// `ok\n`.
fn request(addr: SocketAddr, config: &Arc<ClientConfig>) -> Result<Reply, String> {
    let sock = TcpStream::connect(addr).map_err(|e| format!("connect: {e}"))?;
    sock.set_nodelay(true).map_err(|e| e.to_string())?;
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    sock.set_write_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    let conn = ClientConnection::new(config.clone(), server_name()).map_err(|e| e.to_string())?;
    let mut tls = StreamOwned::new(conn, sock);
    tls.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .map_err(|e| format!("write: {e}"))?;
    let mut got = Vec::with_capacity(256);
    let mut buf = [0u8; 1024];
    loop {
        match tls.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            // A peer that closes without close_notify after a complete answer.
            Err(e) if e.kind() == ErrorKind::UnexpectedEof => break,
            Err(e) => return Err(format!("read: {e}")),
        }
        if got.len() > 64 * 1024 {
            return Err("answer larger than 64 KiB".into());
        }
    }
    if !got.starts_with(b"HTTP/1.1 200") || !got.ends_with(b"\r\n\r\nok\n") {
        return Err(format!(
            "unexpected answer {:?}",
            String::from_utf8_lossy(&got[..got.len().min(120)])
        ));
    }
    let c = &tls.conn;
    Ok(Reply {
        resumed: c.handshake_kind() == Some(HandshakeKind::Resumed),
        version: match c.protocol_version() {
            Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3".into(),
            Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2".into(),
            other => format!("{other:?}"),
        },
        leaf: c
            .peer_certificates()
            .and_then(|p| p.first())
            .map(|d| hitless_test_pki::sha256_hex(d.as_ref())[..16].to_string())
            .unwrap_or_default(),
    })
}

/// Runs `workers` threads for `duration` (each request also bounded by 10 s timeouts); with a
/// non-zero `pace`, a worker starts its requests at least `pace` apart.
pub fn run(
    addr: SocketAddr,
    pki: &Pki,
    resume: Resume,
    workers: usize,
    duration: Duration,
    pace: Duration,
    events: bool,
) -> Result<Run, String> {
    let configs = (0..workers)
        .map(|_| config(pki, resume))
        .collect::<Result<Vec<_>, _>>()?;
    let started = Instant::now();
    let deadline = started + duration;
    let per_worker: Vec<(Run, BTreeSet<String>)> = std::thread::scope(|s| {
        let handles: Vec<_> = configs
            .iter()
            .enumerate()
            .map(|(w, config)| {
                s.spawn(move || {
                    let mut r = Run::default();
                    let mut leaves = BTreeSet::new();
                    while Instant::now() < deadline {
                        let t0 = Instant::now();
                        let start_ns = now_ns();
                        let result = request(addr, config);
                        let lat = t0.elapsed();
                        let mut ev = Event {
                            worker: w,
                            start_ns,
                            end_ns: now_ns(),
                            resumed: false,
                            ok: false,
                            leaf: String::new(),
                        };
                        match result {
                            Ok(reply) => {
                                r.requests += 1;
                                r.lat_us.push(lat.as_micros() as u64);
                                *r.versions.entry(reply.version).or_default() += 1;
                                *r.protocols.entry("HTTP/1.1".into()).or_default() += 1;
                                if reply.resumed {
                                    r.resumed += 1;
                                }
                                leaves.insert(reply.leaf.clone());
                                ev.ok = true;
                                ev.resumed = reply.resumed;
                                ev.leaf = reply.leaf;
                            }
                            Err(e) => {
                                r.errors += 1;
                                if r.first_errors.len() < 3 {
                                    r.first_errors.push(e);
                                }
                            }
                        }
                        if events {
                            r.events.push(ev);
                        }
                        let rest = pace.saturating_sub(t0.elapsed());
                        if !rest.is_zero() && Instant::now() + rest < deadline {
                            std::thread::sleep(rest);
                        }
                    }
                    (r, leaves)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_default())
            .collect()
    });
    let mut total = Run {
        elapsed_s: started.elapsed().as_secs_f64(),
        ..Run::default()
    };
    let mut leaves = BTreeSet::new();
    for (r, l) in per_worker {
        total.requests += r.requests;
        total.errors += r.errors;
        total.resumed += r.resumed;
        total.lat_us.extend(r.lat_us);
        for (k, v) in r.versions {
            *total.versions.entry(k).or_default() += v;
        }
        for (k, v) in r.protocols {
            *total.protocols.entry(k).or_default() += v;
        }
        total.first_errors.extend(r.first_errors);
        total.events.extend(r.events);
        leaves.extend(l);
    }
    total.first_errors.truncate(5);
    total.leaves = leaves.len() as u64;
    Ok(total)
}

/// Parses the Go load generator's JSON document.
pub fn parse_go(doc: &serde_json::Value) -> Result<Run, String> {
    let n = |k: &str| doc[k].as_u64().unwrap_or(0);
    let map = |k: &str| -> BTreeMap<String, u64> {
        doc[k]
            .as_object()
            .map(|o| {
                o.iter()
                    .map(|(k, v)| (k.clone(), v.as_u64().unwrap_or(0)))
                    .collect()
            })
            .unwrap_or_default()
    };
    if doc["requests"].as_u64().is_none() {
        return Err(format!("load generator output without \"requests\": {doc}"));
    }
    let events = doc["events"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|e| {
                    Some(Event {
                        worker: e[0].as_u64()? as usize,
                        start_ns: e[1].as_i64()?,
                        end_ns: e[2].as_i64()?,
                        resumed: e[3].as_bool()?,
                        ok: e[4].as_bool()?,
                        leaf: e[5].as_str()?.to_string(),
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    Ok(Run {
        requests: n("requests"),
        errors: n("errors"),
        resumed: n("resumed"),
        elapsed_s: doc["elapsed_s"].as_f64().unwrap_or(0.0),
        lat_us: doc["lat_us"]
            .as_array()
            .map(|a| a.iter().filter_map(|v| v.as_u64()).collect())
            .unwrap_or_default(),
        versions: map("versions"),
        protocols: map("protocols"),
        leaves: n("leaves"),
        first_errors: doc["first_errors"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default(),
        events,
    })
}
