//! One driver for a server session, shared by the relay and the fake upstream: the loop that
//! hands the client's bytes to a [`ServerConnection`], lets the session answer the events
//! they make, writes what it queued, waits for more (each wait bounded, the read buffer
//! small between commands and large inside DATA), upgrades to TLS on STARTTLS and stops on
//! shutdown. What each server does with the events (forward them upstream, or answer as a
//! persona with scripted faults) is its [`Session`]'s business; how a connection is run is
//! this one's.

use std::future::Future;
use std::time::Duration;

use smtp_wire::{Reply, ServerConnection};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

use crate::Io;

/// What a session does after handling the input buffered so far.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Next {
    /// Wait for more input.
    Continue,
    /// Write what is queued and close the connection politely (after the reply to QUIT).
    Close,
    /// Write what is queued and end without a word more (a fault that drops the connection,
    /// a session that stalled until shutdown).
    End,
    /// Write what is queued (the 220 to STARTTLS), then the TLS handshake.
    StartTls,
}

/// The connection's outgoing side as a session sees it: replies queued, written when the
/// driver is done with the input or when the session must write now (before a delay).
pub struct Wire<'a> {
    io: &'a mut Box<dyn Io>,
    out: &'a mut Vec<u8>,
    shutdown: &'a mut watch::Receiver<bool>,
    write_timeout: Duration,
}

impl Wire<'_> {
    /// Queues a reply.
    pub fn queue(&mut self, reply: &Reply) {
        reply.encode(self.out);
    }

    /// Writes what is queued, within the write timeout.
    pub async fn flush(&mut self) -> std::io::Result<()> {
        flush(self.io, self.out, self.write_timeout).await
    }

    /// Resolves once the server is shutting down (a stalled session waits for it).
    pub async fn stopped(&mut self) {
        crate::stopped(self.shutdown).await;
    }
}

async fn flush(io: &mut Box<dyn Io>, out: &mut Vec<u8>, limit: Duration) -> std::io::Result<()> {
    if out.is_empty() {
        return Ok(());
    }
    let written = crate::write_all(io, out, limit).await;
    // Given back: a session waiting for its client keeps no reply buffer either.
    *out = Vec::new();
    written
}

/// How the driver reads and writes.
#[derive(Clone, Copy, Debug)]
pub struct DriveConfig {
    /// The longest a write to the client may take.
    pub write_timeout: Duration,
    /// Read buffer between commands (an idle session costs little) and inside DATA (fewer
    /// reads, fewer wake-ups).
    pub read_small: usize,
    pub read_large: usize,
}

/// A server session: the policy behind a [`ServerConnection`].
pub trait Session: Send {
    /// The session's protocol machine, which the driver feeds.
    fn conn(&mut self) -> &mut ServerConnection;

    /// The greeting: queued (or written at once) on `wire`.
    fn greet(&mut self, wire: &mut Wire<'_>) -> impl Future<Output = std::io::Result<Next>> + Send;

    /// Handles every event the buffered input makes, queueing replies on `wire`.
    fn process(
        &mut self,
        wire: &mut Wire<'_>,
    ) -> impl Future<Output = std::io::Result<Next>> + Send;

    /// The TLS handshake after the 220 to STARTTLS: the secured stream, or `None` when it
    /// failed (the session ends; the session said why).
    fn start_tls(&mut self, io: Box<dyn Io>) -> impl Future<Output = Option<Box<dyn Io>>> + Send;

    /// How long to wait for the client's next bytes.
    fn wait(&mut self) -> Duration;

    /// The wait ran out: the last reply (the session notes and logs what it wants).
    fn timed_out(&mut self) -> Reply;

    /// `n` octets came (before the connection gets them).
    fn received(&mut self, _n: usize) {}

    /// The client closed its side.
    fn client_closed(&mut self) {}

    /// Whether a shutdown ends the session now (the relay lets a message inside DATA finish).
    fn stops_on_shutdown(&mut self) -> bool {
        true
    }

    /// The reply when the server shuts down under the session.
    fn shutting_down(&mut self) -> Reply {
        self.conn().shutdown_reply()
    }
}

/// A read of at most `size` octets into `buf` (which holds nothing unread) that gives the
/// buffer back while it waits: a session waiting for its client keeps no read buffer. The
/// read that found nothing registered the task's waker with the socket (or the TLS stream
/// under it); when the wake comes, a fresh buffer is taken and the read made again: no more
/// system calls than a plain read.
struct ReadLazily<'a> {
    io: &'a mut Box<dyn Io>,
    buf: &'a mut Vec<u8>,
    size: usize,
}

impl Future for ReadLazily<'_> {
    type Output = std::io::Result<usize>;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        let this = self.get_mut();
        this.buf.resize(this.size, 0);
        let mut read = tokio::io::ReadBuf::new(&mut this.buf[..]);
        let polled = std::pin::Pin::new(&mut **this.io).poll_read(cx, &mut read);
        let n = read.filled().len();
        match polled {
            std::task::Poll::Ready(Ok(())) => {
                this.buf.truncate(n);
                std::task::Poll::Ready(Ok(n))
            }
            std::task::Poll::Ready(Err(e)) => {
                this.buf.clear();
                std::task::Poll::Ready(Err(e))
            }
            std::task::Poll::Pending => {
                *this.buf = Vec::new();
                std::task::Poll::Pending
            }
        }
    }
}

/// Runs `session` on `io` until it ends: closed by either side, timed out, shut down, or
/// failed (the error is the I/O error that ended it).
pub async fn serve<S: Session>(
    session: &mut S,
    mut io: Box<dyn Io>,
    mut shutdown: watch::Receiver<bool>,
    config: DriveConfig,
) -> std::io::Result<()> {
    let mut out = Vec::new();
    let mut buf: Vec<u8> = Vec::new();
    macro_rules! wire {
        () => {
            Wire {
                io: &mut io,
                out: &mut out,
                shutdown: &mut shutdown,
                write_timeout: config.write_timeout,
            }
        };
    }
    // The session's own futures (greeting, processing, TLS) are boxed: they live on the heap
    // only while they run, so that an idle session's task holds the driver's state alone.
    let mut next = Box::pin(session.greet(&mut wire!())).await?;
    loop {
        if next == Next::Continue {
            next = Box::pin(session.process(&mut wire!())).await?;
        }
        flush(&mut io, &mut out, config.write_timeout).await?;
        match next {
            Next::Continue => {}
            Next::Close => {
                let _ = io.shutdown().await;
                return Ok(());
            }
            Next::End => return Ok(()),
            Next::StartTls => {
                let Some(secured) = Box::pin(session.start_tls(io)).await else {
                    return Ok(());
                };
                io = secured;
                next = Next::Continue;
                continue;
            }
        }
        let in_data = session.conn().in_data();
        let wait = session.wait();
        let stops = session.stops_on_shutdown();
        // Inside DATA, a large buffer kept from read to read; between commands a small one,
        // given back while the client is silent (an idle session costs its size less).
        let read = async {
            if in_data {
                buf.reserve(config.read_large);
                io.read_buf(&mut buf).await
            } else {
                ReadLazily {
                    io: &mut io,
                    buf: &mut buf,
                    size: config.read_small,
                }
                .await
            }
        };
        tokio::select! {
            read = tokio::time::timeout(wait, read) => match read {
                Err(_) => {
                    session.timed_out().encode(&mut out);
                    return flush(&mut io, &mut out, config.write_timeout).await;
                }
                Ok(Ok(0)) => {
                    session.client_closed();
                    return Ok(());
                }
                Ok(Ok(n)) => {
                    session.received(n);
                    session.conn().receive(&buf);
                    buf.clear();
                }
                Ok(Err(e)) => return Err(e),
            },
            _ = crate::stopped(&mut shutdown), if stops => {
                session.shutting_down().encode(&mut out);
                return flush(&mut io, &mut out, config.write_timeout).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    /// A read that finds nothing gives its buffer back while it waits (an idle session holds
    /// none) and still completes when the client writes: the wake came through.
    #[tokio::test]
    async fn a_waiting_read_holds_no_buffer() {
        let (client, server) = tokio::io::duplex(4096);
        let mut io: Box<dyn Io> = Box::new(server);
        let mut client = client;
        let mut buf = Vec::new();
        let mut read = Box::pin(ReadLazily {
            io: &mut io,
            buf: &mut buf,
            size: 512,
        });
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        assert!(read.as_mut().poll(&mut cx).is_pending());
        assert_eq!(read.buf.capacity(), 0, "no buffer held while waiting");
        client.write_all(b"EHLO client.example\r\n").await.unwrap();
        let n = read.await.unwrap();
        assert_eq!(&buf[..n], b"EHLO client.example\r\n");
        assert_eq!(buf.len(), n);
    }
}
