//! The PROXY protocol on a listener behind a load balancer: the header read (within a time
//! limit, bounded by the protocol's own maximum), the client's address taken from it, and the
//! bytes that came after it in the same read (an implicit-TLS client's hello) handed to the
//! session first. Whether the peer may send a header at all is the caller's decision.

use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use smtp_wire::proxy::{self, Parsed, ProxyError, ProxyHeader};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

/// A connection whose first bytes were read ahead: they are read again first.
pub struct Rewind<S> {
    ahead: Vec<u8>,
    at: usize,
    inner: S,
}

impl<S> Rewind<S> {
    pub fn new(inner: S, ahead: Vec<u8>) -> Rewind<S> {
        Rewind {
            ahead,
            at: 0,
            inner,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Rewind<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        if this.at < this.ahead.len() {
            let n = (this.ahead.len() - this.at).min(buf.remaining());
            buf.put_slice(&this.ahead[this.at..this.at + n]);
            this.at += n;
            if this.at == this.ahead.len() {
                this.ahead = Vec::new();
                this.at = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Rewind<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Why no header was had.
#[derive(Debug)]
pub enum HeaderError {
    /// The bytes are not a header (or a broken one).
    Bad(ProxyError),
    /// The connection closed before the header was whole.
    Closed,
    /// Not whole within the limit.
    TimedOut(Duration),
    Io(std::io::Error),
}

impl std::fmt::Display for HeaderError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HeaderError::Bad(e) => e.fmt(f),
            HeaderError::Closed => f.write_str("closed before its PROXY header was complete"),
            HeaderError::TimedOut(limit) => write!(
                f,
                "no complete PROXY header within {}s",
                limit.as_secs_f64()
            ),
            HeaderError::Io(e) => write!(f, "reading the PROXY header: {e}"),
        }
    }
}

impl std::error::Error for HeaderError {}

/// Reads the PROXY header at the start of `io` within `limit`. Gives the connection (the
/// bytes read past the header come first) and the client's address: the header's source,
/// or `peer` for a header without one (a balancer's health check, `UNKNOWN`).
pub async fn read_header<S: AsyncRead + Unpin>(
    mut io: S,
    peer: SocketAddr,
    limit: Duration,
) -> Result<(Rewind<S>, SocketAddr), HeaderError> {
    let mut buf: Vec<u8> = Vec::with_capacity(256);
    let read = tokio::time::timeout(limit, async {
        loop {
            // Never more than the longest header plus one read's worth.
            if buf.len() >= proxy::V2_MAX {
                return Err(HeaderError::Bad(ProxyError::TooLong(proxy::V2_MAX)));
            }
            buf.reserve(256);
            let n = io.read_buf(&mut buf).await.map_err(HeaderError::Io)?;
            if n == 0 {
                return Err(HeaderError::Closed);
            }
            match proxy::parse(&buf) {
                Ok(Parsed::NeedMore) => continue,
                Ok(Parsed::Header { header, len }) => return Ok((header, len)),
                Err(e) => return Err(HeaderError::Bad(e)),
            }
        }
    })
    .await;
    let (header, len) = match read {
        Ok(r) => r?,
        Err(_) => return Err(HeaderError::TimedOut(limit)),
    };
    let client = match header {
        ProxyHeader::Proxied { source, .. } => source,
        ProxyHeader::Local => peer,
    };
    buf.drain(..len);
    Ok((Rewind::new(io, buf), client))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn the_header_gives_the_client_and_the_bytes_after_it_stay() {
        let (mut balancer, relay) = tokio::io::duplex(4096);
        let source: SocketAddr = "203.0.113.7:40000".parse().unwrap();
        let header = proxy::encode_v2(&ProxyHeader::Proxied {
            source,
            destination: "10.0.0.2:25".parse().unwrap(),
        });
        // The header and the client's first bytes in one write, as a TLS client's hello.
        balancer
            .write_all(&[header.as_slice(), b"\x16\x03\x01hello"].concat())
            .await
            .unwrap();
        let peer = "127.0.0.1:5555".parse().unwrap();
        let (mut io, client) = read_header(relay, peer, Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(client, source);
        let mut first = [0u8; 8];
        io.read_exact(&mut first).await.unwrap();
        assert_eq!(&first, b"\x16\x03\x01hello");
        // Then the connection itself.
        balancer.write_all(b"more").await.unwrap();
        let mut more = [0u8; 4];
        io.read_exact(&mut more).await.unwrap();
        assert_eq!(&more, b"more");
    }

    #[tokio::test]
    async fn a_header_in_pieces_an_unknown_one_and_failures() {
        let peer: SocketAddr = "127.0.0.1:5555".parse().unwrap();
        let (mut balancer, relay) = tokio::io::duplex(4096);
        let task = tokio::spawn(read_header(relay, peer, Duration::from_secs(5)));
        for piece in [
            b"PROXY TCP4 198.51".as_slice(),
            b".100.1 10.0.0.1 4",
            b"0000 25\r\n",
        ] {
            balancer.write_all(piece).await.unwrap();
            tokio::task::yield_now().await;
        }
        let (_, client) = task.await.unwrap().unwrap();
        assert_eq!(client, "198.51.100.1:40000".parse().unwrap());

        let (mut balancer, relay) = tokio::io::duplex(4096);
        balancer.write_all(b"PROXY UNKNOWN\r\n").await.unwrap();
        let (_, client) = read_header(relay, peer, Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(
            client, peer,
            "no address in the header: the connection's own"
        );

        let (mut balancer, relay) = tokio::io::duplex(4096);
        balancer
            .write_all(b"EHLO client.example\r\n")
            .await
            .unwrap();
        let e = read_header(relay, peer, Duration::from_secs(5))
            .await
            .err()
            .unwrap();
        assert!(matches!(e, HeaderError::Bad(ProxyError::NotProxy)), "{e}");

        let (mut balancer, relay) = tokio::io::duplex(4096);
        balancer.write_all(b"PROXY TCP4 1.2.3.4").await.unwrap();
        drop(balancer);
        let e = read_header(relay, peer, Duration::from_secs(5))
            .await
            .err()
            .unwrap();
        assert!(matches!(e, HeaderError::Closed), "{e}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_header_that_never_ends_times_out() {
        let peer: SocketAddr = "127.0.0.1:5555".parse().unwrap();
        let (mut balancer, relay) = tokio::io::duplex(4096);
        balancer.write_all(b"PROXY TCP4 1.2.3.4").await.unwrap();
        let e = read_header(relay, peer, Duration::from_secs(3))
            .await
            .err()
            .unwrap();
        assert!(matches!(e, HeaderError::TimedOut(_)), "{e}");
        assert_eq!(e.to_string(), "no complete PROXY header within 3s");
    }
}
