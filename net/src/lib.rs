//! Tokio glue shared by the relay and the fake upstream: the accept loop with its shutdown
//! signal, the one driver of a server session ([`server::serve`]), the TLS accept with its
//! named timeout ([`tls`]), sessions counted per client address ([`admission`]), and writes
//! with a timeout that says so in its error. The SMTP itself is in `smtp-wire`; this crate
//! moves bytes and tasks. [`files`] writes the session files; [`proxy`] reads a load
//! balancer's PROXY protocol header.

pub mod admission;
pub mod files;
pub mod proxy;
pub mod server;
pub mod tls;

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;

/// Prints `text` to standard output and flushes it, ignoring errors: a server must not die
/// because its stdout was closed (piped into `head`, a terminal gone).
pub fn say(text: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes());
    let _ = out.flush();
}

/// Resolves on Ctrl-C (SIGINT) or SIGTERM, whichever comes first: how servers are told to stop
/// by a terminal and by a service manager.
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// A byte stream: TCP, or TLS over TCP.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// Resolves once shutdown was asked for (the watch guard is not held across awaits).
pub async fn stopped(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|stop| *stop).await;
}

/// Accepts connections until shutdown, one task per connection (with `TCP_NODELAY`; the
/// callback gets the shutdown receiver to hand to the session), then waits for the connection
/// tasks to end. Accept errors (EMFILE and the like) pause briefly instead of spinning.
pub async fn accept_loop<F, Fut>(
    listener: TcpListener,
    mut shutdown: watch::Receiver<bool>,
    mut on_connection: F,
) where
    F: FnMut(TcpStream, SocketAddr, watch::Receiver<bool>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let mut tasks = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((tcp, peer)) = accepted else {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                let _ = tcp.set_nodelay(true);
                tasks.spawn(on_connection(tcp, peer, shutdown.clone()));
            }
            _ = stopped(&mut shutdown) => break,
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
        }
    }
    while tasks.join_next().await.is_some() {}
}

/// Writes and flushes `bytes` within `limit`; a timeout is an error of kind `TimedOut` that
/// names the limit.
pub async fn write_all<S: AsyncWrite + Unpin + ?Sized>(
    io: &mut S,
    bytes: &[u8],
    limit: Duration,
) -> std::io::Result<()> {
    match tokio::time::timeout(limit, async {
        io.write_all(bytes).await?;
        io.flush().await
    })
    .await
    {
        Ok(r) => r,
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("write timed out after {}s", limit.as_secs()),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[tokio::test]
    async fn serves_until_shutdown_and_waits_for_connections() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = watch::channel(false);
        let server = tokio::spawn(accept_loop(listener, rx, |mut tcp, _, _| async move {
            let _ = write_all(&mut tcp, b"hello\r\n", Duration::from_secs(1)).await;
        }));
        let mut c = TcpStream::connect(addr).await.unwrap();
        let mut buf = [0u8; 7];
        c.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"hello\r\n");
        tx.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(5), server)
            .await
            .expect("the loop ends on shutdown")
            .unwrap();
    }
}
