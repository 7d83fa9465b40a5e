//! The server side of a TLS handshake, within a configured time that the error names.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};

/// A handshake that did not complete.
#[derive(Debug)]
pub enum AcceptError {
    /// Not done within the configured time (the relay's `tls_handshake_timeout_secs`).
    TimedOut(Duration),
    /// It failed: what rustls or the socket said.
    Failed(std::io::Error),
}

impl std::fmt::Display for AcceptError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AcceptError::TimedOut(limit) => {
                write!(f, "TLS handshake timed out after {}s", limit.as_secs())
            }
            AcceptError::Failed(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for AcceptError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            AcceptError::Failed(e) => Some(e),
            AcceptError::TimedOut(_) => None,
        }
    }
}

/// Completes the server side of a handshake on `io` within `limit`.
pub async fn accept<IO: AsyncRead + AsyncWrite + Unpin>(
    config: Arc<rustls::ServerConfig>,
    io: IO,
    limit: Duration,
) -> Result<tokio_rustls::server::TlsStream<IO>, AcceptError> {
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    match tokio::time::timeout(limit, acceptor.accept(io)).await {
        Ok(Ok(stream)) => Ok(stream),
        Ok(Err(e)) => Err(AcceptError::Failed(e)),
        Err(_) => Err(AcceptError::TimedOut(limit)),
    }
}
