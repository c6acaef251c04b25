//! A tokio-rustls accept step that always uses the current configuration (feature `tokio`).
//!
//! `tokio_rustls::TlsAcceptor::from(configs.current())` fixes the configuration when the TCP
//! connection is accepted. [`TlsAcceptor`] waits for the ClientHello and only then takes
//! [`ReloadingServerConfig::current`], so the CA names of the CertificateRequest, the session
//! cache and the certificate resolver are those of the moment the handshake really starts (the
//! verdict on the client certificate is in any case taken when it is verified). Frameworks that
//! own the accept loop (hyper-util, tonic's `serve_with_incoming`, an axum accept loop) call
//! [`TlsAcceptor::accept`] where they would call tokio-rustls'.

use std::io;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::server::TlsStream;
use tokio_rustls::LazyConfigAcceptor;

use crate::rustls::config::ReloadingServerConfig;

/// Accepts TLS connections with the configuration current when each ClientHello arrives.
///
/// ```no_run
/// # async fn run(configs: hitless::ReloadingServerConfig) -> std::io::Result<()> {
/// let acceptor = hitless::TlsAcceptor::new(configs);
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:8443").await?;
/// loop {
///     let (tcp, _) = listener.accept().await?;
///     tcp.set_nodelay(true)?;
///     let acceptor = acceptor.clone();
///     tokio::spawn(async move {
///         if let Ok(tls) = acceptor.accept(tcp).await {
///             // serve `tls` (hyper, tonic, your protocol)
///             # drop(tls);
///         }
///     });
/// }
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct TlsAcceptor {
    configs: ReloadingServerConfig,
}

impl TlsAcceptor {
    /// An acceptor following `configs`.
    pub fn new(configs: ReloadingServerConfig) -> Self {
        TlsAcceptor { configs }
    }

    /// Reads the ClientHello, takes the current configuration and completes the handshake.
    /// Put a timeout around it: a peer that sends nothing holds it forever.
    pub async fn accept<IO>(&self, stream: IO) -> io::Result<TlsStream<IO>>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        let start = LazyConfigAcceptor::new(rustls::server::Acceptor::default(), stream).await?;
        start.into_stream(self.configs.current()).await
    }

    /// The configurations this acceptor follows.
    pub fn configs(&self) -> &ReloadingServerConfig {
        &self.configs
    }
}

impl From<ReloadingServerConfig> for TlsAcceptor {
    fn from(configs: ReloadingServerConfig) -> Self {
        TlsAcceptor::new(configs)
    }
}
