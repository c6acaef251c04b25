//! The accept loop and HTTP connection driver of every listener of the command: the TLS port
//! of `serve`, its admin port, and any later one. Each listener gets, in one place:
//!
//! - **a connection limit** (`--max-connections`, `--admin-max-connections`), per listener, so
//!   that a flood on one port cannot starve another. At the limit the listener *stops
//!   accepting*: new connections wait in the kernel's accept backlog (and, once that is full,
//!   their SYNs are retried by the client's kernel) until a connection closes. Accepting and
//!   closing at once was the alternative: it spends a descriptor and a wake-up per refused
//!   connection and turns a brief burst into client errors, while waiting turns it into a
//!   little latency. The limit is never more than the descriptor limit allows
//!   ([`fit_to_descriptors`]), so the process never reaches `EMFILE` by accepting;
//! - **timeouts**: the TLS handshake (in `serve`), reading a request head (hyper's
//!   `header_read_timeout`, which needs a timer: without `.timer(..)` hyper silently ignores
//!   it), and an idle timeout with no request in flight (both HTTP/1.1 and HTTP/2). A
//!   connection that never completes a first request is closed after the header-read timeout,
//!   whatever protocol it speaks. hyper runs the header-read timer also while an HTTP/1.1
//!   connection waits for its next request, so an idle HTTP/1.1 connection is closed after
//!   the shorter of the two timeouts. A request counts as in flight until its response head
//!   is ready (the bodies served here are complete by then); a connection closed for
//!   idleness is shut down gracefully (HTTP/2 GOAWAY) and dropped one idle period later if
//!   the peer does not finish;
//! - **`TCP_NODELAY`** on every accepted socket: responses are small and follow the TLS
//!   session tickets; with Nagle on, they wait for the client's delayed ACK (~40 ms);
//! - **accept errors that back off** (5 ms doubling to 1 s) and are logged at most once a
//!   second with a count, instead of a line per failed `accept()`.
//!
//! This module knows sockets and HTTP, not TLS or credentials.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::service::Service;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::admin::ListenerMetrics;

/// Default `--max-connections` of the TLS listener.
pub const DEFAULT_MAX_CONNECTIONS: u32 = 10_000;
/// Default `--admin-max-connections`: a scraper and a probe or two.
pub const DEFAULT_ADMIN_MAX_CONNECTIONS: u32 = 100;
/// Default `--handshake-timeout`.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Default `--header-read-timeout`.
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Default `--idle-timeout`.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Descriptors kept for everything but connections: standard streams, the async runtime,
/// the listeners, the file watcher, signal pipes, credential files being read, the log (an
/// idle `serve` holds about 20).
pub const RESERVED_DESCRIPTORS: u64 = 32;

/// Connections the kernel queues while the listener waits for a free slot (capped by
/// `net.core.somaxconn`); std and tokio use 128, which a burst at the limit overflows.
const BACKLOG: u32 = 1024;
/// First wait after a failed `accept()`; doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(5);
/// Longest wait after failed `accept()`s.
const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// At most one log line per this interval for accept errors and for waits at the limit.
const LOG_EVERY: Duration = Duration::from_secs(1);

/// Connection limits and timeouts of `serve`'s listeners.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Connections open at once on the TLS listener (handshakes included).
    pub max_connections: u32,
    /// Connections open at once on the admin listener.
    pub admin_max_connections: u32,
    /// Time a client has to complete the TLS handshake.
    pub handshake_timeout: Duration,
    /// Time a client has to send a complete request head (HTTP/1.1): from the start of the
    /// connection, and, on a kept-alive connection, from the end of the previous response.
    pub header_read_timeout: Duration,
    /// A connection with no request in flight for this long is closed.
    pub idle_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: DEFAULT_MAX_CONNECTIONS,
            admin_max_connections: DEFAULT_ADMIN_MAX_CONNECTIONS,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
        }
    }
}

impl Limits {
    /// These limits with the connection counts lowered to what `descriptors` (the soft
    /// `RLIMIT_NOFILE`) allows, and a warning logged if they had to be.
    pub fn fitted(mut self, descriptors: Option<u64>, with_admin: bool) -> Limits {
        let Some(descriptors) = descriptors else {
            return self;
        };
        let admin = with_admin.then_some(self.admin_max_connections);
        let (tls, fitted_admin) = fit_to_descriptors(self.max_connections, admin, descriptors);
        if tls != self.max_connections || fitted_admin != admin {
            tracing::warn!(
                descriptor_limit = descriptors,
                reserved = RESERVED_DESCRIPTORS,
                max_connections = tls,
                asked = self.max_connections,
                admin_max_connections = fitted_admin,
                admin_asked = admin,
                "connection limits lowered to fit the descriptor limit (RLIMIT_NOFILE); raise it \
                 (ulimit -n, systemd LimitNOFILE=) to allow more"
            );
        }
        self.max_connections = tls;
        if let Some(a) = fitted_admin {
            self.admin_max_connections = a;
        }
        self
    }
}

/// The connection limits `(tls, admin)` lowered, if needed, so that both listeners full
/// still leave [`RESERVED_DESCRIPTORS`] of `descriptors` free. When they must shrink, the
/// admin listener keeps at most an eighth of what is left (at least one), the TLS listener
/// the rest (at least one).
pub fn fit_to_descriptors(tls: u32, admin: Option<u32>, descriptors: u64) -> (u32, Option<u32>) {
    let budget = descriptors.saturating_sub(RESERVED_DESCRIPTORS);
    let wanted = u64::from(tls) + admin.map_or(0, u64::from);
    if wanted <= budget {
        return (tls, admin);
    }
    let admin = admin.map(|a| {
        let share = u32::try_from((budget / 8).max(1)).unwrap_or(u32::MAX);
        a.min(share)
    });
    let rest = budget.saturating_sub(admin.map_or(0, u64::from)).max(1);
    let tls = tls.min(u32::try_from(rest).unwrap_or(u32::MAX));
    (tls, admin)
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit (a server's connections are
/// descriptors, and the usual soft default of 1024 is far below what the hard limit allows).
/// Returns the soft limit in force afterwards, `None` if it cannot be read.
pub fn raise_descriptor_limit() -> Option<u64> {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(soft) => {
            tracing::debug!(
                soft,
                "descriptor limit (RLIMIT_NOFILE) raised to the hard limit"
            );
            Some(soft)
        }
        Err(e) => {
            tracing::debug!("cannot raise the descriptor limit (RLIMIT_NOFILE): {e}");
            descriptor_limit()
        }
    }
}

/// The soft `RLIMIT_NOFILE` in force, `None` if it cannot be read.
pub fn descriptor_limit() -> Option<u64> {
    rlimit::Resource::NOFILE.get().ok().map(|(soft, _)| soft)
}

/// A bound TCP listener with a connection limit; see the module comment.
pub struct Listener {
    name: &'static str,
    tcp: TcpListener,
    slots: Arc<Semaphore>,
    max: u32,
    metrics: ListenerMetrics,
    errors: AcceptErrors,
    at_limit: Throttle,
}

/// An accepted connection, with its slot under the listener's limit.
pub struct Accepted {
    /// The socket (`TCP_NODELAY` set).
    pub tcp: TcpStream,
    /// The client's address.
    pub peer: SocketAddr,
    /// Frees the slot when dropped: keep it for as long as the connection lives.
    pub slot: Slot,
}

/// One connection's place under a listener's limit.
pub struct Slot {
    _permit: OwnedSemaphorePermit,
    metrics: ListenerMetrics,
}

impl Slot {
    /// Counts a connection closed by a timeout (`handshake`, `header_read`, `idle`).
    pub fn timed_out(&self, which: &str) {
        self.metrics.timed_out(which);
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.metrics.open.dec();
    }
}

impl Listener {
    /// Binds `addr` (from within the async runtime); `name` (`tls`, `admin`) labels its log
    /// lines and metrics.
    pub fn bind(
        name: &'static str,
        addr: SocketAddr,
        max_connections: u32,
        metrics: ListenerMetrics,
    ) -> std::io::Result<Listener> {
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        // As std and tokio do: a restarted server can bind while old connections linger.
        #[cfg(unix)]
        socket.set_reuseaddr(true)?;
        socket.bind(addr)?;
        let tcp = socket.listen(BACKLOG)?;
        // A semaphore holds at most MAX_PERMITS (far above any descriptor limit).
        let max_connections =
            max_connections.min(u32::try_from(Semaphore::MAX_PERMITS).unwrap_or(u32::MAX));
        metrics.max.set(i64::from(max_connections));
        Ok(Listener {
            name,
            tcp,
            slots: Arc::new(Semaphore::new(max_connections as usize)),
            max: max_connections,
            metrics,
            errors: AcceptErrors::default(),
            at_limit: Throttle::default(),
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.tcp.local_addr()
    }

    /// The next connection, once a slot is free. Never fails: accept errors (out of
    /// descriptors, a connection reset before it was accepted) are retried after a backoff.
    /// Cancel-safe (nothing is lost if the future is dropped).
    pub async fn accept(&mut self) -> Accepted {
        let permit = match self.slots.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                self.metrics.limit_reached.inc();
                if let Some(more) = self.at_limit.hit(Instant::now()) {
                    tracing::warn!(
                        listener = self.name,
                        max_connections = self.max,
                        times = more + 1,
                        "connection limit reached: new connections wait in the kernel's backlog \
                         until one closes"
                    );
                }
                match self.slots.clone().acquire_owned().await {
                    Ok(permit) => permit,
                    // The semaphore is never closed.
                    Err(_) => std::future::pending().await,
                }
            }
        };
        loop {
            match self.tcp.accept().await {
                Ok((tcp, peer)) => {
                    if let Some(errors) = self.errors.succeeded() {
                        tracing::info!(listener = self.name, errors, "accepting again");
                    }
                    // Small responses after the handshake must not wait for an ACK (Nagle).
                    if let Err(e) = tcp.set_nodelay(true) {
                        tracing::debug!(listener = self.name, %peer, "cannot set TCP_NODELAY: {e}");
                    }
                    self.metrics.open.inc();
                    return Accepted {
                        tcp,
                        peer,
                        slot: Slot {
                            _permit: permit,
                            metrics: self.metrics.clone(),
                        },
                    };
                }
                Err(e) => {
                    self.metrics.accept_errors.inc();
                    let (wait, log) = self.errors.failed(Instant::now());
                    if let Some(count) = log {
                        tracing::warn!(
                            listener = self.name,
                            errors = count,
                            retry_in = ?wait,
                            "accept failed: {e}"
                        );
                    }
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }

    /// Stops listening (new connections are refused) and returns what waits for the
    /// connections still open.
    pub fn close(self) -> Drain {
        Drain {
            slots: self.slots,
            max: self.max,
        }
    }
}

/// Waits for a closed listener's connections to end.
pub struct Drain {
    slots: Arc<Semaphore>,
    max: u32,
}

impl Drain {
    /// Resolves once every connection of the listener has closed.
    pub async fn wait(self) {
        let _ = self.slots.acquire_many(self.max).await;
    }
}

/// Backoff and log throttling of failed `accept()`s.
#[derive(Debug, Default)]
struct AcceptErrors {
    /// Wait after the next failure; zero after a success.
    backoff: Duration,
    /// Failures since the last success.
    since_ok: u64,
    log: Throttle,
}

impl AcceptErrors {
    /// A failure at `now`: how long to wait before the next `accept()`, and `Some(count)` if
    /// a line is to be logged now (count = failures since the last line, this one included).
    fn failed(&mut self, now: Instant) -> (Duration, Option<u64>) {
        self.since_ok += 1;
        self.backoff = if self.backoff.is_zero() {
            FIRST_BACKOFF
        } else {
            (self.backoff * 2).min(MAX_BACKOFF)
        };
        (self.backoff, self.log.hit(now).map(|more| more + 1))
    }

    /// A success: `Some(failures)` if it ends a run of failures.
    fn succeeded(&mut self) -> Option<u64> {
        self.backoff = Duration::ZERO;
        self.log = Throttle::default();
        let failures = std::mem::take(&mut self.since_ok);
        (failures > 0).then_some(failures)
    }
}

/// Allows one log line per [`LOG_EVERY`] and counts the ones it held back.
#[derive(Debug, Default)]
struct Throttle {
    last: Option<Instant>,
    held_back: u64,
}

impl Throttle {
    /// An event at `now`: `Some(held back since the last line)` if a line may be logged.
    fn hit(&mut self, now: Instant) -> Option<u64> {
        match self.last {
            Some(last) if now.saturating_duration_since(last) < LOG_EVERY => {
                self.held_back += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.held_back))
            }
        }
    }
}

/// An HTTP/1.1 + HTTP/2 (or, with `http1_only`, HTTP/1.1) connection builder with hyper's
/// timer and the header-read timeout of `limits`.
pub fn http_builder(limits: &Limits, http1_only: bool) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // Without a timer hyper ignores header_read_timeout (and h2 keep-alive) silently.
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    builder.http2().timer(TokioTimer::new());
    if http1_only {
        builder.http1_only()
    } else {
        builder
    }
}

/// How a connection served by [`serve_http`] ended.
#[derive(Debug)]
pub enum Ended {
    /// The client closed it, or it closed after a graceful shutdown.
    Closed,
    /// It failed (the reason), e.g. a malformed request or a reset.
    Failed(String),
    /// No complete request head within the header-read timeout.
    HeaderReadTimeout,
    /// No request in flight for the idle timeout.
    IdleTimeout,
    /// The server is shutting down.
    Shutdown,
}

impl std::fmt::Display for Ended {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Ended::Closed => f.write_str("closed"),
            Ended::Failed(reason) => write!(f, "failed: {reason}"),
            Ended::HeaderReadTimeout => f.write_str("closed: no complete request head in time"),
            Ended::IdleTimeout => f.write_str("closed: idle"),
            Ended::Shutdown => f.write_str("closed: shutting down"),
        }
    }
}

/// Serves HTTP with `service` on `io` until the client closes, a timeout closes the
/// connection, or `shutdown` turns true (then requests in flight finish first: graceful).
pub async fn serve_http<I, S, B>(
    builder: &auto::Builder<TokioExecutor>,
    io: I,
    service: S,
    limits: &Limits,
    slot: &Slot,
    mut shutdown: watch::Receiver<bool>,
) -> Ended
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    S: Service<Request<Incoming>, Response = Response<B>> + Send + Sync + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let activity = Arc::new(Activity::new());
    let tracked = Tracked {
        inner: service,
        activity: activity.clone(),
    };
    let conn = builder.serve_connection(TokioIo::new(io), tracked);
    tokio::pin!(conn);
    // Set once a graceful shutdown has been started: why, and when to give up waiting.
    let mut closing: Option<(Ended, Instant)> = None;
    loop {
        let wake = match &closing {
            Some((_, give_up)) => *give_up,
            None => activity.deadline(limits),
        };
        let shutting_down = async {
            if closing.is_some() {
                std::future::pending::<()>().await;
            }
            stopped(&mut shutdown).await;
        };
        tokio::select! {
            result = conn.as_mut() => {
                if let Some((why, _)) = closing {
                    return why;
                }
                return match result {
                    Ok(()) => Ended::Closed,
                    Err(e) if is_header_timeout(&*e) => {
                        slot.timed_out("header_read");
                        Ended::HeaderReadTimeout
                    }
                    Err(e) => Ended::Failed(crate::client::chain(&*e)),
                };
            }
            () = shutting_down => {
                conn.as_mut().graceful_shutdown();
                // serve's --shutdown-timeout bounds this wait.
                closing = Some((Ended::Shutdown, Instant::now() + crate::value::MAX_DURATION));
            }
            () = tokio::time::sleep_until(wake) => {
                if let Some((why, _)) = closing {
                    return why;
                }
                if let Some(why) = activity.expired(limits) {
                    slot.timed_out(match why {
                        Ended::HeaderReadTimeout => "header_read",
                        _ => "idle",
                    });
                    conn.as_mut().graceful_shutdown();
                    // Nothing is in flight: closing is quick; a peer that does not read what
                    // is left to send gets another idle period, then the connection is dropped.
                    closing = Some((why, Instant::now() + limits.idle_timeout));
                }
            }
        }
    }
}

/// A service that marks each request in flight (for the idle timeout) until its response
/// head is ready.
struct Tracked<S> {
    inner: S,
    activity: Arc<Activity>,
}

impl<S, B> Service<Request<Incoming>> for Tracked<S>
where
    S: Service<Request<Incoming>, Response = Response<B>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        let active = self.activity.begin();
        let response = self.inner.call(req);
        Box::pin(async move {
            let response = response.await;
            drop(active);
            response
        })
    }
}

/// Resolves once `shutdown` turns true; never if its sender is dropped without saying so.
pub async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    if shutdown.wait_for(|stop| *stop).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Is this (a chain around) hyper's header-read timeout?
fn is_header_timeout(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(error);
    while let Some(e) = next {
        if e.downcast_ref::<hyper::Error>()
            .is_some_and(hyper::Error::is_timeout)
        {
            return true;
        }
        next = e.source();
    }
    false
}

/// What a connection is doing, for its timeouts: requests in flight, requests seen, and
/// when the last one began or ended.
struct Activity {
    start: Instant,
    in_flight: AtomicUsize,
    requests: AtomicU64,
    /// Nanoseconds from `start` to the last request start or end.
    last_change: AtomicU64,
}

/// Marks a request in flight until dropped.
struct Active(Arc<Activity>);

impl Drop for Active {
    fn drop(&mut self) {
        self.0.touch();
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Activity {
    fn new() -> Activity {
        Activity {
            start: Instant::now(),
            in_flight: AtomicUsize::new(0),
            requests: AtomicU64::new(0),
            last_change: AtomicU64::new(0),
        }
    }

    fn begin(self: &Arc<Self>) -> Active {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.requests.fetch_add(1, Ordering::AcqRel);
        self.touch();
        Active(self.clone())
    }

    fn touch(&self) {
        let nanos = u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.last_change.store(nanos, Ordering::Release);
    }

    /// When to look again: the first request's deadline, the end of the idle period, or
    /// (with a request in flight) one idle period from now.
    fn deadline(&self, limits: &Limits) -> Instant {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return Instant::now() + limits.idle_timeout;
        }
        if self.requests.load(Ordering::Acquire) == 0 {
            return self.start + limits.header_read_timeout.min(limits.idle_timeout);
        }
        let last = Duration::from_nanos(self.last_change.load(Ordering::Acquire));
        self.start + last + limits.idle_timeout
    }

    /// Why the connection must close now, if it must.
    fn expired(&self, limits: &Limits) -> Option<Ended> {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return None;
        }
        let now = Instant::now();
        if self.requests.load(Ordering::Acquire) == 0 {
            return (now >= self.start + limits.header_read_timeout.min(limits.idle_timeout))
                .then_some(Ended::HeaderReadTimeout);
        }
        let last = Duration::from_nanos(self.last_change.load(Ordering::Acquire));
        (now >= self.start + last + limits.idle_timeout).then_some(Ended::IdleTimeout)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_fit_the_descriptor_limit() {
        // Plenty of descriptors: unchanged.
        assert_eq!(
            fit_to_descriptors(10_000, Some(100), 1_048_576),
            (10_000, Some(100))
        );
        assert_eq!(fit_to_descriptors(10_000, None, 20_000), (10_000, None));
        // 128 descriptors: 96 for connections, the admin listener gets an eighth.
        assert_eq!(fit_to_descriptors(10_000, Some(100), 128), (84, Some(12)));
        assert_eq!(fit_to_descriptors(10_000, None, 128), (96, None));
        // A small admin limit is kept as asked.
        assert_eq!(fit_to_descriptors(10_000, Some(4), 128), (92, Some(4)));
        // Absurdly low limits still leave one connection each.
        assert_eq!(fit_to_descriptors(10_000, Some(100), 10), (1, Some(1)));
        // Exactly fitting is not lowered.
        assert_eq!(fit_to_descriptors(86, Some(10), 128), (86, Some(10)));
    }

    #[test]
    fn accept_errors_back_off_and_log_once_a_second() {
        let t0 = Instant::now();
        let mut errors = AcceptErrors::default();
        let mut waits = Vec::new();
        let mut logged = Vec::new();
        // 20 failures in 0.95 s, then one at 1.2 s.
        for i in 0..20u64 {
            let (wait, log) = errors.failed(t0 + Duration::from_millis(i * 50));
            waits.push(wait);
            logged.extend(log);
        }
        assert_eq!(waits[0], FIRST_BACKOFF);
        assert_eq!(waits[1], FIRST_BACKOFF * 2);
        assert_eq!(*waits.last().unwrap(), MAX_BACKOFF, "{waits:?}");
        assert!(waits.windows(2).all(|w| w[0] <= w[1]), "{waits:?}");
        assert_eq!(logged, [1], "one line in the first second");
        let (_, log) = errors.failed(t0 + Duration::from_millis(1200));
        assert_eq!(
            log,
            Some(20),
            "the next line counts the 19 held back and itself"
        );
        assert_eq!(errors.succeeded(), Some(21));
        assert_eq!(errors.succeeded(), None);
        let (wait, log) = errors.failed(t0 + Duration::from_millis(1300));
        assert_eq!(
            (wait, log),
            (FIRST_BACKOFF, Some(1)),
            "a success resets both"
        );
    }

    /// A slot outside any listener, for driving [`serve_http`] directly.
    fn test_slot() -> Slot {
        let permit = Arc::new(Semaphore::new(1))
            .try_acquire_owned()
            .expect("one permit");
        Slot {
            _permit: permit,
            metrics: crate::admin::Metrics::new().listener("test"),
        }
    }

    fn short_limits() -> Limits {
        Limits {
            header_read_timeout: Duration::from_millis(300),
            idle_timeout: Duration::from_millis(600),
            ..Limits::default()
        }
    }

    /// Serves `/` on one end of an in-memory pipe; returns the other end and how the server
    /// side ended.
    fn serve_pipe(limits: Limits) -> (tokio::io::DuplexStream, tokio::task::JoinHandle<Ended>) {
        let (client, server) = tokio::io::duplex(64 * 1024);
        let ended = tokio::spawn(async move {
            let builder = http_builder(&limits, false);
            let (_tx, rx) = watch::channel(false);
            let service = hyper::service::service_fn(|_req| {
                std::future::ready(Ok::<_, std::convert::Infallible>(crate::http::text(
                    hyper::StatusCode::OK,
                    "ok\n",
                )))
            });
            serve_http(&builder, server, service, &limits, &test_slot(), rx).await
        });
        (client, ended)
    }

    async fn ended_within(ended: tokio::task::JoinHandle<Ended>) -> Ended {
        tokio::time::timeout(Duration::from_secs(20), ended)
            .await
            .expect("the server side never closed the connection")
            .expect("server task")
    }

    fn get() -> Request<http_body_util::Empty<bytes::Bytes>> {
        Request::get("http://localhost/")
            .body(http_body_util::Empty::new())
            .expect("request")
    }

    #[tokio::test]
    async fn a_connection_that_sends_nothing_is_closed_after_the_header_read_timeout() {
        let (_client, ended) = serve_pipe(short_limits());
        let ended = ended_within(ended).await;
        assert!(matches!(ended, Ended::HeaderReadTimeout), "{ended:?}");
    }

    #[tokio::test]
    async fn a_half_sent_request_head_is_closed_after_the_header_read_timeout() {
        use tokio::io::AsyncWriteExt;
        let (mut client, ended) = serve_pipe(short_limits());
        client
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n")
            .await
            .expect("write");
        let ended = ended_within(ended).await;
        assert!(matches!(ended, Ended::HeaderReadTimeout), "{ended:?}");
        // A partial HTTP/2 preface stalls the protocol detection instead: closed all the same.
        let (mut client, ended) = serve_pipe(short_limits());
        client
            .write_all(b"PRI * HTTP/2.0\r\n")
            .await
            .expect("write");
        let ended = ended_within(ended).await;
        assert!(matches!(ended, Ended::HeaderReadTimeout), "{ended:?}");
    }

    #[tokio::test]
    async fn an_idle_http2_connection_is_closed_after_the_idle_timeout() {
        let (client, ended) = serve_pipe(short_limits());
        let (mut sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(client))
                .await
                .expect("h2 handshake");
        let driver = tokio::spawn(conn);
        let response = sender.send_request(get()).await.expect("response");
        assert_eq!(response.status(), hyper::StatusCode::OK);
        drop(response);
        let ended = ended_within(ended).await;
        assert!(matches!(ended, Ended::IdleTimeout), "{ended:?}");
        // The server said goodbye (GOAWAY) rather than vanishing.
        let closed = tokio::time::timeout(Duration::from_secs(20), driver).await;
        assert!(matches!(closed, Ok(Ok(Ok(())))), "{closed:?}");
    }

    #[tokio::test]
    async fn an_idle_http1_connection_is_closed_by_the_header_read_timeout() {
        let (client, ended) = serve_pipe(short_limits());
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(client))
            .await
            .expect("h1 handshake");
        tokio::spawn(conn);
        let response = sender.send_request(get()).await.expect("response");
        assert_eq!(response.status(), hyper::StatusCode::OK);
        drop(response);
        // hyper times the wait for the next request head like a slow head.
        let ended = ended_within(ended).await;
        assert!(matches!(ended, Ended::HeaderReadTimeout), "{ended:?}");
    }

    #[tokio::test]
    async fn the_limit_holds_connections_back_until_one_closes() {
        let metrics = crate::admin::Metrics::new().listener("test");
        let mut listener =
            Listener::bind("test", "127.0.0.1:0".parse().unwrap(), 2, metrics).unwrap();
        let addr = listener.local_addr().unwrap();
        let mut clients = Vec::new();
        for _ in 0..3 {
            clients.push(TcpStream::connect(addr).await.unwrap());
        }
        let first = listener.accept().await;
        assert!(first.tcp.nodelay().unwrap(), "TCP_NODELAY not set");
        let _second = listener.accept().await;
        // The third waits for a slot, not for the client (it has connected).
        assert!(
            tokio::time::timeout(Duration::from_millis(300), listener.accept())
                .await
                .is_err(),
            "a third connection was accepted over the limit of 2"
        );
        drop(first);
        tokio::time::timeout(Duration::from_secs(10), listener.accept())
            .await
            .expect("a slot was freed: the third connection is accepted");
    }
}
