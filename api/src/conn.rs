//! The HTTP API's listeners, plain and HTTPS: a cap on connections and, per connection, an
//! idle timeout (no request in progress and no byte of the next one) and a header timeout
//! (the headers of a request that has begun must be complete in time; a TLS handshake too),
//! which `axum::serve` does not have.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::Router;
use hyper::body::Incoming;
use hyper::service::Service as _;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use kenko_config::HttpConfig;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use kenko_broker::accept::AcceptBackoff;

/// The connection limits of `[http]`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    header: Duration,
    idle: Duration,
    max_connections: usize,
}

impl From<&HttpConfig> for Limits {
    fn from(config: &HttpConfig) -> Limits {
        Limits {
            header: Duration::from_millis(config.header_read_timeout_ms),
            idle: Duration::from_millis(config.idle_timeout_ms),
            max_connections: config.max_connections,
        }
    }
}

/// Accepts connections until `shutdown`, at most `max_connections` at once: the others
/// wait in the listen backlog, which costs the hub no descriptor.
/// With `tls`, each connection is HTTPS.
pub(crate) async fn accept_loop(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    tls: Option<TlsAcceptor>,
    shutdown: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let mut backoff = AcceptBackoff::new("HTTP");
    loop {
        let permit = tokio::select! {
            permit = slots.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
            _ = shutdown.cancelled() => break,
        };
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.cancelled() => break,
        };
        match accepted {
            Ok((stream, peer)) => {
                backoff.accepted();
                let conn = open(
                    stream,
                    peer,
                    app.clone(),
                    limits,
                    tls.clone(),
                    shutdown.clone(),
                );
                tokio::spawn(hold(permit, conn));
            }
            Err(e) => backoff.failed(&e, &shutdown).await,
        }
    }
}

async fn hold(_permit: OwnedSemaphorePermit, conn: impl std::future::Future<Output = ()>) {
    conn.await;
}

/// Whether a request came over HTTPS, in its extensions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Secure(pub bool);

/// Serves one accepted connection, after its TLS handshake when `tls` is set; a handshake
/// not done within the header timeout closes it.
async fn open(
    stream: TcpStream,
    peer: SocketAddr,
    app: Router,
    limits: Limits,
    tls: Option<TlsAcceptor>,
    shutdown: CancellationToken,
) {
    let _ = stream.set_nodelay(true);
    let Some(tls) = tls else {
        return serve_connection(stream, peer, Secure(false), app, limits, shutdown).await;
    };
    match tokio::time::timeout(limits.header, tls.accept(stream)).await {
        Ok(Ok(stream)) => {
            serve_connection(stream, peer, Secure(true), app, limits, shutdown).await;
        }
        Ok(Err(e)) => debug!(%peer, error = %e, "HTTPS handshake failed"),
        Err(_) => debug!(%peer, "HTTPS connection closed: handshake not complete in time"),
    }
}

/// What the watchdog of one connection needs to know.
struct Activity {
    /// Requests being answered.
    in_flight: AtomicUsize,
    /// Bytes of a request arrived while none was in progress: the header timeout runs.
    reading: AtomicBool,
    /// When the present phase (idle, or reading headers) began, in ms since `epoch`.
    since_ms: AtomicU64,
    epoch: Instant,
    /// Wakes the watchdog when the phase changes.
    changed: Notify,
}

impl Activity {
    fn new() -> Activity {
        Activity {
            in_flight: AtomicUsize::new(0),
            reading: AtomicBool::new(false),
            since_ms: AtomicU64::new(0),
            epoch: Instant::now(),
            changed: Notify::new(),
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn begin_phase(&self, reading: bool) {
        self.since_ms.store(self.now_ms(), Ordering::Relaxed);
        self.reading.store(reading, Ordering::Relaxed);
        self.changed.notify_one();
    }

    fn bytes_read(&self) {
        let idle = self.in_flight.load(Ordering::Relaxed) == 0;
        if idle && !self.reading.load(Ordering::Relaxed) {
            self.begin_phase(true);
        }
    }

    fn request_started(&self) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.reading.store(false, Ordering::Relaxed);
        self.changed.notify_one();
    }

    fn request_done(&self) {
        if self.in_flight.fetch_sub(1, Ordering::Relaxed) == 1 {
            self.begin_phase(false);
        }
    }

    /// When the connection is to be closed if nothing changes, and whether it is reading
    /// headers then; `None` while a request is being answered.
    fn deadline(&self, limits: Limits) -> Option<(Instant, bool)> {
        if self.in_flight.load(Ordering::Relaxed) > 0 {
            return None;
        }
        let reading = self.reading.load(Ordering::Relaxed);
        let allowed = if reading { limits.header } else { limits.idle };
        let since = Duration::from_millis(self.since_ms.load(Ordering::Relaxed));
        Some((self.epoch + since + allowed, reading))
    }
}

/// A stream (TCP, or TLS over TCP) that tells its [`Activity`] when bytes arrive.
struct Watched<S> {
    stream: S,
    activity: Arc<Activity>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.stream).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.bytes_read();
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// Serves one connection until it ends, times out, or the hub stops.
async fn serve_connection<S>(
    stream: S,
    peer: SocketAddr,
    secure: Secure,
    app: Router,
    limits: Limits,
    shutdown: CancellationToken,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let activity = Arc::new(Activity::new());
    let io = TokioIo::new(Watched {
        stream,
        activity: activity.clone(),
    });
    let tower = TowerToHyperService::new(app);
    let counted = activity.clone();
    let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
        // Handlers learn the client's address (login limits per source) from this.
        request.extensions_mut().insert(ConnectInfo(peer));
        // Session cookies are marked Secure when the request came over HTTPS.
        request.extensions_mut().insert(secure);
        counted.request_started();
        let answer = tower.call(request);
        let counted = counted.clone();
        async move {
            let response = answer.await;
            counted.request_done();
            response
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    // hyper's own header timer runs from when a connection awaits a request, idle time
    // included; the watchdog below keeps the two apart, so hyper's is only a backstop.
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.idle + limits.header);
    let conn = builder.serve_connection(io, service);
    tokio::pin!(conn);
    let mut closing = false;
    loop {
        let deadline = activity.deadline(limits);
        let wake = deadline.map_or_else(|| Instant::now() + limits.idle, |(at, _)| at);
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    debug!(%peer, error = %e, "HTTP connection ended");
                }
                return;
            }
            _ = activity.changed.notified() => {}
            _ = tokio::time::sleep_until(wake) => {
                // Dropping the connection closes it: an idle one has nothing to finish, and
                // one sending its headers slowly would make a graceful close wait for them.
                match activity.deadline(limits) {
                    Some((at, true)) if at <= Instant::now() => {
                        debug!(%peer, "HTTP connection closed: request headers not complete in time");
                        return;
                    }
                    Some((at, false)) if at <= Instant::now() => {
                        debug!(%peer, "HTTP connection closed: idle");
                        return;
                    }
                    _ => {}
                }
            }
            _ = shutdown.cancelled(), if !closing => {
                closing = true;
                conn.as_mut().graceful_shutdown();
            }
        }
    }
}
