//! One tunnel: bytes copied both ways between the TLS side and the plaintext side until both
//! directions have ended, with half-close forwarded (one side's end of data shuts down the
//! other side's write half, and the other direction keeps flowing), bytes counted as they
//! pass, and an idle timeout when no byte has moved either way.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

/// Buffer of each direction: one TLS record's worth of plaintext.
const BUFFER: usize = 16 * 1024;

/// How a tunnel ended by itself.
#[derive(Debug)]
pub enum Ended {
    /// Both directions reached their end of data: bytes client → target, target → client.
    Done(u64, u64),
    /// No byte moved either way for the idle timeout.
    Idle,
    /// A side failed (reset, TLS error).
    Failed(io::Error),
}

/// When a byte last moved, shared by both directions of a tunnel.
struct Activity {
    start: Instant,
    /// Nanoseconds from `start` to the last read that returned data.
    last: AtomicU64,
}

impl Activity {
    fn touch(&self) {
        let nanos = u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.last.store(nanos, Ordering::Relaxed);
    }

    fn last(&self) -> Instant {
        self.start + Duration::from_nanos(self.last.load(Ordering::Relaxed))
    }
}

/// A stream whose reads are counted in `bytes` and mark activity.
struct Counted<'a, S> {
    inner: &'a mut S,
    bytes: Counter,
    activity: Arc<Activity>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<'_, S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut *this.inner).poll_read(cx, buf);
        let read = buf.filled().len() - before;
        if read > 0 {
            this.bytes.inc_by(read as u64);
            this.activity.touch();
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<'_, S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.get_mut().inner).poll_shutdown(cx)
    }
}

/// Copies between `client` (the side that connected to the proxy) and `target` until both
/// directions end, a side fails, or nothing moves for `idle`. Bytes read from `client` are
/// counted in `up`, bytes read from `target` in `down`, as they pass.
pub async fn run<C, T>(
    client: &mut C,
    target: &mut T,
    up: Counter,
    down: Counter,
    idle: Duration,
) -> Ended
where
    C: AsyncRead + AsyncWrite + Unpin,
    T: AsyncRead + AsyncWrite + Unpin,
{
    let activity = Arc::new(Activity {
        start: Instant::now(),
        last: AtomicU64::new(0),
    });
    let mut a = Counted {
        inner: client,
        bytes: up,
        activity: activity.clone(),
    };
    let mut b = Counted {
        inner: target,
        bytes: down,
        activity: activity.clone(),
    };
    // tokio's copy: on one side's end of data it shuts down the other side's write half
    // (for TLS: close_notify, then the TCP FIN) and keeps copying the other way.
    let copy = tokio::io::copy_bidirectional_with_sizes(&mut a, &mut b, BUFFER, BUFFER);
    tokio::pin!(copy);
    loop {
        let deadline = activity.last() + idle;
        tokio::select! {
            result = &mut copy => {
                return match result {
                    Ok((up, down)) => Ended::Done(up, down),
                    Err(e) => Ended::Failed(e),
                };
            }
            () = tokio::time::sleep_until(deadline) => {
                if Instant::now() >= activity.last() + idle {
                    return Ended::Idle;
                }
            }
        }
    }
}
