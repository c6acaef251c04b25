//! Where a proxy listens and where it connects: a TCP `HOST:PORT` or a unix socket
//! (`unix:/path`), and the plaintext stream either gives ([`Plain`]).

use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use anyhow::{bail, Context as _};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpStream, UnixListener, UnixStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// A TCP address (`HOST:PORT`, the host a name or an IP) or a unix socket (`unix:/path`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Address {
    /// `HOST:PORT`; `host` without IPv6 brackets.
    Tcp {
        /// A DNS name or an IP address.
        host: String,
        /// The port.
        port: u16,
    },
    /// A unix stream socket.
    Unix(PathBuf),
}

impl Address {
    /// Parses `HOST:PORT`, `[V6]:PORT` or `unix:/path`.
    pub fn parse(text: &str) -> anyhow::Result<Address> {
        if let Some(path) = text.strip_prefix("unix:") {
            if path.is_empty() {
                bail!("{text}: no socket path after unix:");
            }
            return Ok(Address::Unix(PathBuf::from(path)));
        }
        let (host, port) = text
            .rsplit_once(':')
            .with_context(|| format!("{text}: expected HOST:PORT or unix:/path"))?;
        let port: u16 = port
            .parse()
            .with_context(|| format!("{text}: {port:?} is not a port number"))?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            bail!("{text}: no host before the port");
        }
        Ok(Address::Tcp {
            host: host.to_owned(),
            port,
        })
    }

    /// The host, for a TCP address.
    pub fn host(&self) -> Option<&str> {
        match self {
            Address::Tcp { host, .. } => Some(host),
            Address::Unix(_) => None,
        }
    }

    /// Connects, giving up after `timeout` (name resolution included).
    pub async fn connect(&self, timeout: Duration) -> io::Result<Plain> {
        let connect = async {
            match self {
                Address::Tcp { host, port } => {
                    let tcp = TcpStream::connect((host.as_str(), *port)).await?;
                    // Small writes of an interactive protocol must not wait for an ACK.
                    let _ = tcp.set_nodelay(true);
                    Ok(Plain::Tcp(tcp))
                }
                Address::Unix(path) => Ok(Plain::Unix(UnixStream::connect(path).await?)),
            }
        };
        match tokio::time::timeout(timeout, connect).await {
            Ok(result) => result,
            Err(_) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "no connection within {}",
                    humantime::format_duration(timeout)
                ),
            )),
        }
    }
}

impl std::fmt::Display for Address {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Address::Tcp { host, port } if host.contains(':') => write!(f, "[{host}]:{port}"),
            Address::Tcp { host, port } => write!(f, "{host}:{port}"),
            Address::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

/// A plaintext stream: TCP or a unix socket.
pub enum Plain {
    /// TCP.
    Tcp(TcpStream),
    /// A unix socket.
    Unix(UnixStream),
}

impl AsyncRead for Plain {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Plain::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Plain::Unix(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Plain {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Plain::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Plain::Unix(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Plain::Tcp(s) => Pin::new(s).poll_flush(cx),
            Plain::Unix(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Plain::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Plain::Unix(s) => Pin::new(s).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Plain::Tcp(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Plain::Unix(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Plain::Tcp(s) => s.is_write_vectored(),
            Plain::Unix(s) => s.is_write_vectored(),
        }
    }
}

/// A unix-socket listener with a connection limit, like [`crate::listen::Listener`] for TCP:
/// at the limit it stops accepting; accept errors back off.
pub struct UnixAccept {
    listener: UnixListener,
    path: PathBuf,
    slots: Arc<Semaphore>,
    max: u32,
}

impl UnixAccept {
    /// Binds `path`, replacing a stale socket file left by an earlier run (only a socket: any
    /// other file there is an error).
    pub fn bind(path: &std::path::Path, max: u32) -> anyhow::Result<UnixAccept> {
        use std::os::unix::fs::FileTypeExt;
        if let Ok(meta) = std::fs::symlink_metadata(path) {
            if !meta.file_type().is_socket() {
                bail!("{}: exists and is not a socket", path.display());
            }
            std::fs::remove_file(path)
                .with_context(|| format!("{}: cannot remove the old socket", path.display()))?;
        }
        let listener = UnixListener::bind(path)
            .with_context(|| format!("cannot listen on unix:{}", path.display()))?;
        Ok(UnixAccept {
            listener,
            path: path.to_path_buf(),
            slots: Arc::new(Semaphore::new(max as usize)),
            max,
        })
    }

    /// The next connection and its slot.
    pub async fn accept(&mut self) -> (UnixStream, OwnedSemaphorePermit) {
        let permit = match self.slots.clone().acquire_owned().await {
            Ok(p) => p,
            Err(_) => std::future::pending().await,
        };
        let mut wait = Duration::from_millis(5);
        loop {
            match self.listener.accept().await {
                Ok((stream, _)) => return (stream, permit),
                Err(e) => {
                    tracing::warn!(socket = %self.path.display(), retry_in = ?wait, "accept failed: {e}");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(1));
                }
            }
        }
    }

    /// Stops listening; resolves once every connection has closed.
    pub async fn drain(self) {
        let _ = std::fs::remove_file(&self.path);
        let _ = self.slots.acquire_many(self.max).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_parse() {
        assert_eq!(
            Address::parse("127.0.0.1:8080").unwrap(),
            Address::Tcp {
                host: "127.0.0.1".into(),
                port: 8080
            }
        );
        assert_eq!(
            Address::parse("api.internal:8443").unwrap().host(),
            Some("api.internal")
        );
        assert_eq!(
            Address::parse("[::1]:443").unwrap(),
            Address::Tcp {
                host: "::1".into(),
                port: 443
            }
        );
        assert_eq!(
            Address::parse("[::1]:443").unwrap().to_string(),
            "[::1]:443"
        );
        assert_eq!(
            Address::parse("unix:/run/app.sock").unwrap(),
            Address::Unix("/run/app.sock".into())
        );
        for bad in ["unix:", "localhost", ":80", "host:99999", "host:x"] {
            assert!(Address::parse(bad).is_err(), "{bad} was accepted");
        }
    }
}
