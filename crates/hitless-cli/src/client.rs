//! The HTTPS client side shared by `call` and `probe`: where to connect (a [`Target`] parsed
//! from the URL), one TLS connection carrying HTTP/1.1 or HTTP/2 requests ([`Connection`]), and
//! what went wrong when a request got no response ([`Failure`]).
//!
//! It knows nothing about where credentials come from: each connection is made with the
//! `ClientConfig` it is given (for `call`, the one current at that moment, so rotations and
//! trust changes apply to the next connection).

use std::error::Error as StdError;
use std::fmt::Write as _;
use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper::client::conn::{http1, http2};
use hyper::{Request, StatusCode, Uri};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::ClientConfig;
use sha2::{Digest, Sha256};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio_rustls::TlsConnector;

/// The largest response body read; a larger one is a failure (the commands only read small
/// status bodies).
const MAX_BODY: usize = 1 << 20;

/// How long closing a connection (TLS close_notify, TCP FIN) may take before it is abandoned.
const CLOSE_WAIT: Duration = Duration::from_secs(1);

/// Where requests go, parsed once from the URL.
#[derive(Debug, Clone)]
pub struct Target {
    /// The URL as given.
    pub url: String,
    /// Host to connect to: a DNS name or an IP address (without brackets).
    pub host: String,
    /// TCP port (443 if the URL names none).
    pub port: u16,
    /// The name the server certificate must carry; also sent as SNI when it is a DNS name.
    pub server_name: ServerName<'static>,
    /// The `Host` header.
    authority: String,
    /// Path and query of each request.
    path: String,
}

impl Target {
    /// Parses an `https://HOST[:PORT][/PATH]` URL; `server_name` overrides the name the server
    /// certificate is checked against (default: the URL's host).
    pub fn parse(url: &str, server_name: Option<&str>) -> anyhow::Result<Target> {
        let uri: Uri = url
            .parse()
            .with_context(|| format!("{url}: not a valid URL"))?;
        match uri.scheme_str() {
            Some("https") => {}
            Some(other) => bail!("{url}: scheme {other}:// is not supported, use https://"),
            None => bail!("{url}: no scheme, use https://HOST[:PORT][/PATH]"),
        }
        let authority = uri
            .authority()
            .ok_or_else(|| anyhow!("{url}: no host, use https://HOST[:PORT][/PATH]"))?;
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let port = authority.port_u16().unwrap_or(443);
        let name = server_name.unwrap_or(&host);
        let server_name = ServerName::try_from(name.to_string())
            .map_err(|e| anyhow!("{name}: not a valid server name: {e}"))?;
        let path = uri.path_and_query().map_or("/", |p| p.as_str()).to_string();
        let target = Target {
            url: url.to_string(),
            host,
            port,
            server_name,
            authority: authority.as_str().to_string(),
            path,
        };
        // Fail here, once, rather than on every request.
        target
            .request(Protocol::Http1)
            .and_then(|_| target.request(Protocol::Http2))
            .with_context(|| format!("{url}: cannot make a request of it"))?;
        Ok(target)
    }

    /// A `GET` of the target's path: origin-form with a `Host` header for HTTP/1.1, the
    /// absolute URL for HTTP/2 (its `:scheme` and `:authority`).
    fn request(&self, protocol: Protocol) -> Result<Request<Empty<Bytes>>, hyper::http::Error> {
        let builder = match protocol {
            Protocol::Http1 => Request::get(self.path.as_str())
                .header(hyper::header::HOST, self.authority.as_str()),
            Protocol::Http2 => Request::get(format!("https://{}{}", self.authority, self.path))
                .version(hyper::Version::HTTP_2),
        };
        builder
            .header(
                hyper::header::USER_AGENT,
                concat!("hitless/", env!("CARGO_PKG_VERSION")),
            )
            .body(Empty::new())
    }
}

/// A response: its status and body.
#[derive(Debug)]
pub struct Reply {
    /// The HTTP status.
    pub status: StatusCode,
    /// The body (at most 1 MiB).
    pub body: Bytes,
    /// True if this is the first response on its connection: the server accepted the handshake.
    pub first_on_connection: bool,
    /// SHA-256 of the server's leaf certificate on this connection (lowercase hex).
    pub server_fingerprint: Option<String>,
    /// For the first response on a connection: how long the TCP connection and the TLS
    /// handshake took.
    pub handshake: Option<Duration>,
    /// From sending the request (the handshake done) to the response head: the server's
    /// answer time as the client sees it, where a delayed-ACK stall would show.
    pub wait: Duration,
    /// True if the connection's handshake resumed an earlier TLS session.
    pub resumed: bool,
}

/// The HTTP version spoken on a connection (offered by ALPN).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// HTTP/1.1 (ALPN `http/1.1`).
    Http1,
    /// HTTP/2 (ALPN `h2`).
    Http2,
}

impl Protocol {
    /// The ALPN protocol name.
    pub fn alpn(self) -> &'static [u8] {
        match self {
            Protocol::Http1 => b"http/1.1",
            Protocol::Http2 => b"h2",
        }
    }
}

/// The request half of a connection.
enum Sender {
    H1(http1::SendRequest<Empty<Bytes>>),
    H2(http2::SendRequest<Empty<Bytes>>),
}

impl Sender {
    async fn ready(&mut self) -> hyper::Result<()> {
        match self {
            Sender::H1(s) => s.ready().await,
            Sender::H2(s) => s.ready().await,
        }
    }

    fn is_closed(&self) -> bool {
        match self {
            Sender::H1(s) => s.is_closed(),
            Sender::H2(s) => s.is_closed(),
        }
    }

    async fn send(
        &mut self,
        request: Request<Empty<Bytes>>,
    ) -> Result<
        hyper::Response<hyper::body::Incoming>,
        hyper::client::conn::TrySendError<Request<Empty<Bytes>>>,
    > {
        match self {
            Sender::H1(s) => s.try_send_request(request).await,
            Sender::H2(s) => s.try_send_request(request).await,
        }
    }
}

/// One TLS connection to the target carrying HTTP/1.1 requests one at a time, or HTTP/2
/// requests.
pub struct Connection {
    sender: Sender,
    protocol: Protocol,
    /// The task driving the connection; taken once awaited.
    driver: Option<JoinHandle<hyper::Result<()>>>,
    server_fingerprint: Option<String>,
    responses: u64,
    resumed: bool,
    /// TCP connect + TLS handshake time.
    handshake: Duration,
}

/// Opens a TCP connection to the target and completes a TLS handshake with `config`, for
/// HTTP/1.1.
pub async fn connect(target: &Target, config: Arc<ClientConfig>) -> Result<Connection, Failure> {
    connect_as(target, config, Protocol::Http1).await
}

/// Opens a TCP connection to the target, completes a TLS handshake with `config` (whose ALPN
/// list should offer `protocol`) and speaks `protocol` on it; HTTP/2 needs the server to have
/// chosen `h2` by ALPN.
pub async fn connect_as(
    target: &Target,
    config: Arc<ClientConfig>,
    protocol: Protocol,
) -> Result<Connection, Failure> {
    let started = Instant::now();
    let tcp = TcpStream::connect((target.host.as_str(), target.port))
        .await
        .map_err(Failure::Connect)?;
    // Requests are small and latency is measured: do not wait to coalesce segments.
    let _ = tcp.set_nodelay(true);
    let tls = TlsConnector::from(config)
        .connect(target.server_name.clone(), tcp)
        .await
        .map_err(Failure::Handshake)?;
    let handshake = started.elapsed();
    let server_fingerprint = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|chain| chain.first())
        .map(fingerprint);
    let resumed = tls.get_ref().1.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
    let unsent = |error| Failure::Request {
        error,
        first: true,
        unsent: true,
    };
    let (sender, driver) = match protocol {
        Protocol::Http1 => {
            let (sender, connection) = http1::handshake(TokioIo::new(tls)).await.map_err(unsent)?;
            (Sender::H1(sender), tokio::spawn(connection))
        }
        Protocol::Http2 => {
            let alpn = tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
            if alpn.as_deref() != Some(b"h2".as_slice()) {
                return Err(Failure::Protocol(format!(
                    "the server did not choose HTTP/2 by ALPN (it chose {})",
                    alpn.map_or("nothing".into(), |p| String::from_utf8_lossy(&p)
                        .into_owned())
                )));
            }
            let (sender, connection) = http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
                .await
                .map_err(unsent)?;
            (Sender::H2(sender), tokio::spawn(connection))
        }
    };
    Ok(Connection {
        sender,
        protocol,
        driver: Some(driver),
        server_fingerprint,
        responses: 0,
        resumed,
        handshake,
    })
}

impl Connection {
    /// True if the handshake resumed an earlier session (no certificates were exchanged).
    pub fn resumed(&self) -> bool {
        self.resumed
    }

    /// False once the server (or an error) has closed the connection.
    pub fn is_open(&self) -> bool {
        !self.sender.is_closed()
    }

    /// Sends `GET` and reads the whole response.
    pub async fn get(&mut self, target: &Target) -> Result<Reply, Failure> {
        let first = self.responses == 0;
        let request = target
            .request(self.protocol)
            .map_err(|e| Failure::Body(e.to_string()))?;
        if let Err(error) = self.sender.ready().await {
            return Err(Failure::Request {
                error: self.why_closed(error).await,
                first,
                unsent: true,
            });
        }
        let sent = Instant::now();
        let response = match self.sender.send(request).await {
            Ok(response) => response,
            Err(mut e) => {
                let unsent = e.take_message().is_some();
                return Err(Failure::Request {
                    error: self.why_closed(e.into_error()).await,
                    first,
                    unsent,
                });
            }
        };
        let wait = sent.elapsed();
        self.responses += 1;
        let status = response.status();
        let body = Limited::new(response.into_body(), MAX_BODY)
            .collect()
            .await
            .map_err(|e| Failure::Body(chain(&*e)))?
            .to_bytes();
        Ok(Reply {
            status,
            body,
            first_on_connection: first,
            server_fingerprint: self.server_fingerprint.clone(),
            handshake: first.then_some(self.handshake),
            wait,
            resumed: self.resumed,
        })
    }

    /// A request error that only says the connection is gone ("channel closed") is replaced
    /// by the error that ended the connection, if there is one: with TLS 1.3 that is where the
    /// server's alert refusing the client certificate is.
    async fn why_closed(&mut self, error: hyper::Error) -> hyper::Error {
        if !(error.is_closed() || error.is_canceled()) {
            return error;
        }
        let Some(mut driver) = self.driver.take() else {
            return error;
        };
        match tokio::time::timeout(CLOSE_WAIT, &mut driver).await {
            Ok(Ok(Err(cause))) => cause,
            Ok(_) => error,
            Err(_) => {
                driver.abort();
                error
            }
        }
    }

    /// Closes the connection politely (TLS close_notify), waiting at most a second.
    pub async fn close(self) {
        let Connection { sender, driver, .. } = self;
        // With no sender left, the idle HTTP/1 connection shuts its transport down.
        drop(sender);
        let Some(mut driver) = driver else {
            return;
        };
        match tokio::time::timeout(CLOSE_WAIT, &mut driver).await {
            Ok(Ok(Err(e))) => tracing::debug!("connection ended with an error: {e}"),
            Ok(_) => {}
            Err(_) => driver.abort(),
        }
    }
}

/// Why a request got no (readable) response.
#[derive(Debug)]
pub enum Failure {
    /// The TCP connection could not be made.
    Connect(io::Error),
    /// The TLS handshake failed: the server refused it (an alert, a closed connection) or this
    /// client did (the server's certificate is not trusted).
    Handshake(io::Error),
    /// The request was not answered.
    Request {
        /// What hyper said.
        error: hyper::Error,
        /// True if no response had been received on this connection yet: with TLS 1.3 the
        /// server's verdict on the client certificate arrives here, after the client's side
        /// of the handshake is complete.
        first: bool,
        /// True if the request was never written (the connection was already closed).
        unsent: bool,
    },
    /// The response body could not be read.
    Body(String),
    /// The server does not speak the protocol asked for (no `h2` by ALPN).
    Protocol(String),
    /// No outcome within the time limit.
    Timeout,
}

impl Failure {
    /// The rustls error behind this failure, if there is one.
    pub fn tls_error(&self) -> Option<&rustls::Error> {
        match self {
            Failure::Handshake(e) => find_rustls_error(e),
            Failure::Request { error, .. } => find_rustls_error(error),
            _ => None,
        }
    }

    /// True if the request was never written, so it may be retried on a new connection.
    pub fn unsent(&self) -> bool {
        matches!(self, Failure::Request { unsent: true, .. })
    }

    /// A short reason to group failures by, e.g. `connect`, `handshake: alert
    /// CertificateRequired`, `request: connection closed before message completed`, `timeout`.
    pub fn reason(&self) -> String {
        match self {
            Failure::Connect(_) => "connect".into(),
            Failure::Handshake(e) => match find_rustls_error(e) {
                Some(tls) => format!("handshake: {}", tls_kind(tls)),
                None => format!("handshake: {}", io_kind(e)),
            },
            Failure::Request { error, first, .. } => match (find_rustls_error(error), first) {
                // TLS 1.3: the server refused the client certificate after the client's half of
                // the handshake; it is a handshake failure all the same.
                (Some(tls), true) => format!("handshake: {}", tls_kind(tls)),
                (Some(tls), false) => format!("tls: {}", tls_kind(tls)),
                (None, _) => format!("request: {error}"),
            },
            Failure::Body(_) => "body".into(),
            Failure::Protocol(_) => "protocol: no h2".into(),
            Failure::Timeout => "timeout".into(),
        }
    }

    /// Everything known about the failure, with the chain of causes.
    pub fn detail(&self) -> String {
        match self {
            Failure::Connect(e) => format!("connect: {}", chain(e)),
            Failure::Handshake(e) => format!("TLS handshake: {}", chain(e)),
            Failure::Request { error, .. } => format!("request: {}", chain(error)),
            Failure::Body(e) => format!("response body: {e}"),
            Failure::Protocol(e) => format!("protocol: {e}"),
            Failure::Timeout => "no response within the time limit".into(),
        }
    }

    /// True if the *server* turned the client away: it sent an alert, or closed the connection
    /// during the handshake or before the first response. False when this client gave up (the
    /// server certificate is not trusted, no TCP connection, a timeout), and when the server
    /// answered something that is not HTTP (that is no refusal, it is another protocol).
    pub fn refused_by_server(&self) -> bool {
        match self {
            Failure::Request { error, .. } if error.is_parse() || error.is_parse_status() => false,
            Failure::Handshake(_) | Failure::Request { first: true, .. } => {
                match self.tls_error() {
                    Some(rustls::Error::AlertReceived(_)) => true,
                    Some(_) => false,
                    None => true,
                }
            }
            _ => false,
        }
    }
}

/// Finds a `rustls::Error` in an error's chain of causes, looking inside `io::Error`s (whose
/// `source()` skips the error they wrap).
fn find_rustls_error<'a>(error: &'a (dyn StdError + 'static)) -> Option<&'a rustls::Error> {
    let mut next: Option<&'a (dyn StdError + 'static)> = Some(error);
    while let Some(e) = next {
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        if let Some(inner) = e.downcast_ref::<io::Error>().and_then(|io| io.get_ref()) {
            let inner: &(dyn StdError + 'static) = inner;
            if let Some(tls) = inner.downcast_ref::<rustls::Error>() {
                return Some(tls);
            }
            next = inner.source();
            continue;
        }
        next = e.source();
    }
    None
}

/// A short name for a rustls error: `alert CertificateRequired`, `invalid certificate:
/// UnknownIssuer`, ... (details such as times are left out so that failures group).
pub fn tls_kind(error: &rustls::Error) -> String {
    match error {
        rustls::Error::AlertReceived(alert) => format!("alert {alert:?}"),
        rustls::Error::InvalidCertificate(e) => {
            format!("invalid certificate: {}", short_debug(&format!("{e:?}")))
        }
        other => short_debug(&format!("{other:?}")),
    }
}

/// The variant name of a `Debug` string, without struct fields, at most 80 characters.
fn short_debug(s: &str) -> String {
    let s = s.split(" {").next().unwrap_or(s);
    s.chars().take(80).collect()
}

/// A short name for an I/O error that carries no rustls error.
fn io_kind(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::UnexpectedEof => "connection closed by the server".into(),
        io::ErrorKind::ConnectionReset => "connection reset by the server".into(),
        kind => format!("{kind:?}"),
    }
}

/// An error and its causes, `: `-separated, each said once.
pub fn chain(error: &(dyn StdError + 'static)) -> String {
    let mut out = error.to_string();
    let mut last = out.clone();
    let mut next = error.source();
    while let Some(e) = next {
        let s = e.to_string();
        if !last.contains(&s) {
            let _ = write!(out, ": {s}");
        }
        last = s;
        next = e.source();
    }
    // io::Error's source() skips the error it wraps; say it if it was not said yet.
    if let Some(tls) = find_rustls_error(error) {
        let s = tls.to_string();
        if !out.contains(&s) {
            let _ = write!(out, ": {s}");
        }
    }
    out
}

/// SHA-256 of a DER certificate, lowercase hex (as `hitless serve` reports fingerprints).
pub fn fingerprint(der: &CertificateDer<'_>) -> String {
    Sha256::digest(der.as_ref())
        .iter()
        .fold(String::with_capacity(64), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_urls() {
        let t = Target::parse("https://localhost:8443/status?x=1", None).unwrap();
        assert_eq!((t.host.as_str(), t.port), ("localhost", 8443));
        assert_eq!(t.path, "/status?x=1");
        assert_eq!(t.authority, "localhost:8443");

        let t = Target::parse("https://127.0.0.1", Some("localhost")).unwrap();
        assert_eq!(
            (t.host.as_str(), t.port, t.path.as_str()),
            ("127.0.0.1", 443, "/")
        );
        assert_eq!(t.server_name, ServerName::try_from("localhost").unwrap());

        let t = Target::parse("https://[::1]:9/", None).unwrap();
        assert_eq!(t.host, "::1");
        assert!(matches!(t.server_name, ServerName::IpAddress(_)));
    }

    #[test]
    fn refuses_other_urls() {
        for url in [
            "http://localhost/",
            "localhost:8443",
            "https:///x",
            "not a url",
        ] {
            assert!(Target::parse(url, None).is_err(), "{url} was accepted");
        }
    }

    #[test]
    fn finds_rustls_errors_inside_io_errors() {
        let tls = rustls::Error::AlertReceived(rustls::AlertDescription::CertificateRequired);
        let io = io::Error::new(io::ErrorKind::InvalidData, tls);
        let failure = Failure::Handshake(io);
        assert_eq!(failure.reason(), "handshake: alert CertificateRequired");
        assert!(failure.refused_by_server());
        assert!(
            failure.detail().contains("CertificateRequired"),
            "{}",
            failure.detail()
        );

        let local = io::Error::new(
            io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer),
        );
        let failure = Failure::Handshake(local);
        assert_eq!(
            failure.reason(),
            "handshake: invalid certificate: UnknownIssuer"
        );
        assert!(!failure.refused_by_server());
    }

    #[test]
    fn short_debug_drops_fields() {
        assert_eq!(
            short_debug("ExpiredContext { time: UnixTime(1), not_after: UnixTime(0) }"),
            "ExpiredContext"
        );
    }
}
