//! Serving connections: the accept loop, its bound on open connections, the
//! header-read and idle timeouts, and the shutdown deadline.
//!
//! Slow or idle clients cannot exhaust the server: a connection with no
//! request in flight has `header_read_timeout_ms` to send a head (from its
//! first byte, or from being accepted) and `idle_timeout_secs` between
//! requests; at `max_connections`, the oldest such connection is closed to
//! make room, and when every connection is serving a request, new ones wait
//! in the listen backlog. A request in flight is never cut by these.
//!
//! Webhook runs are spawned on a [`Shutdown`] rather than run inside their
//! request, so a caller that hangs up does not cancel an automation half-way;
//! the shutdown deadline is then the only thing that ends them early.

use crate::config::HttpSettings;
use axum::body::Body;
use axum::Router;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use std::collections::BTreeMap;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, Semaphore};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The server's shutdown, shared by its connections, event streams and webhook runs.
#[derive(Clone, Default)]
pub struct Shutdown {
    /// Fired on SIGTERM: no new connections, event streams end.
    stopping: CancellationToken,
    /// Fired at the deadline: whatever still runs is dropped.
    cancelled: CancellationToken,
    /// Connections and webhook runs not over yet.
    tasks: TaskTracker,
}

impl Shutdown {
    /// Runs `work` on its own task, ended early only by the deadline (then `None`).
    pub fn spawn<F>(&self, work: F) -> JoinHandle<Option<F::Output>>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let cancelled = self.cancelled.clone();
        self.tasks.spawn(async move {
            tokio::select! {
                out = work => Some(out),
                _ = cancelled.cancelled() => None,
            }
        })
    }

    /// Resolves once SIGTERM (or SIGINT) has started the shutdown.
    pub async fn stopping(&self) {
        self.stopping.cancelled().await
    }

    /// Starts the shutdown: event streams end and no connection is accepted.
    pub fn begin(&self) {
        self.stopping.cancel();
        self.tasks.close();
    }

    /// Waits up to `grace` for connections and runs to finish, then cancels
    /// the rest and waits for them to be dropped.
    pub async fn finish(&self, grace: Duration) {
        self.tasks.close();
        if tokio::time::timeout(grace, self.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                left = self.tasks.len(),
                "shutdown deadline passed: cancelling requests still running"
            );
            self.cancelled.cancel();
            self.tasks.wait().await;
        }
    }
}

/// How long connections may wait on their client.
#[derive(Clone, Copy)]
struct Timeouts {
    header: Duration,
    idle: Duration,
}

/// Where one connection stands, as its timeouts and eviction see it.
struct Activity {
    /// Requests whose response is not fully sent yet.
    busy: usize,
    /// Whether a request was served: the first head is due sooner than later ones.
    served: bool,
    /// Accepted, or last response sent.
    idle_since: Instant,
    /// First byte of a head not complete yet.
    head_since: Option<Instant>,
    /// Closed to make room for a new connection.
    evicted: bool,
}

/// One open connection.
struct Conn {
    activity: Mutex<Activity>,
    /// Wakes the connection's task to look at its deadline again.
    changed: Notify,
}

impl Conn {
    fn lock(&self) -> MutexGuard<'_, Activity> {
        self.activity.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// When the connection is to be closed, unless a request starts first;
    /// `None` while a request is in flight.
    fn deadline(&self, t: Timeouts) -> Option<Instant> {
        let a = self.lock();
        match (a.busy, a.head_since) {
            (0, Some(since)) => Some(since + t.header),
            (0, None) if !a.served => Some(a.idle_since + t.header),
            (0, None) => Some(a.idle_since + t.idle),
            _ => None,
        }
    }

    fn start_request(self: &Arc<Self>) -> Busy {
        let mut a = self.lock();
        a.busy += 1;
        a.served = true;
        a.head_since = None;
        Busy(self.clone())
    }
}

/// A request in flight on its connection, until its response is sent.
struct Busy(Arc<Conn>);

impl Drop for Busy {
    fn drop(&mut self) {
        let mut a = self.0.lock();
        a.busy -= 1;
        a.idle_since = Instant::now();
        drop(a);
        self.0.changed.notify_one();
    }
}

/// A socket that tells its connection when a new head starts arriving.
struct Watched {
    io: TcpStream,
    conn: Arc<Conn>,
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.io).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            let mut a = self.conn.lock();
            if a.busy == 0 && a.head_since.is_none() {
                a.head_since = Some(Instant::now());
                drop(a);
                self.conn.changed.notify_one();
            }
        }
        polled
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

/// The open connections, oldest first, so the oldest idle one can make room.
#[derive(Default)]
struct Registry {
    conns: Mutex<BTreeMap<u64, Arc<Conn>>>,
}

impl Registry {
    fn lock(&self) -> MutexGuard<'_, BTreeMap<u64, Arc<Conn>>> {
        self.conns.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Closes the oldest connection with no request in flight, if any.
    fn evict_one(&self) {
        for conn in self.lock().values() {
            let mut a = conn.lock();
            if a.busy == 0 && !a.evicted {
                a.evicted = true;
                drop(a);
                conn.changed.notify_one();
                return;
            }
        }
    }
}

/// Serves `app` on `listener` until the shutdown begins; the connections
/// still open then are left to [`Shutdown::finish`].
pub async fn serve(listener: TcpListener, app: Router, http: &HttpSettings, shutdown: &Shutdown) {
    let timeouts = Timeouts {
        header: Duration::from_millis(http.header_read_timeout_ms),
        idle: Duration::from_secs(http.idle_timeout_secs),
    };
    let permits = Arc::new(Semaphore::new(http.max_connections));
    let registry = Arc::new(Registry::default());
    let mut builder = hyper::server::conn::http1::Builder::new();
    // The timeouts above replace hyper's, which cannot tell idle from slow.
    builder.header_read_timeout(None);
    let builder = Arc::new(builder);
    let mut next = 0u64;
    loop {
        let permit = match permits.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                registry.evict_one();
                tokio::select! {
                    permit = permits.clone().acquire_owned() => match permit {
                        Ok(permit) => permit,
                        Err(_) => return,
                    },
                    _ = shutdown.stopping() => return,
                }
            }
        };
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors or a connection reset before it was
                    // accepted: pause rather than spin.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.stopping() => return,
        };
        let _ = stream.set_nodelay(true);
        next += 1;
        let id = next;
        let conn = Arc::new(Conn {
            activity: Mutex::new(Activity {
                busy: 0,
                served: false,
                idle_since: Instant::now(),
                head_since: None,
                evicted: false,
            }),
            changed: Notify::new(),
        });
        registry.lock().insert(id, conn.clone());
        let (app, builder, registry, stopping) = (
            app.clone(),
            builder.clone(),
            registry.clone(),
            shutdown.clone(),
        );
        shutdown.spawn(async move {
            connection(stream, conn, app, &builder, timeouts, &stopping).await;
            registry.lock().remove(&id);
            drop(permit);
        });
    }
}

/// Serves one connection until it ends, times out, is evicted, or the
/// shutdown closes it after its request in flight.
async fn connection(
    stream: TcpStream,
    conn: Arc<Conn>,
    app: Router,
    builder: &hyper::server::conn::http1::Builder,
    timeouts: Timeouts,
    shutdown: &Shutdown,
) {
    let io = TokioIo::new(Watched {
        io: stream,
        conn: conn.clone(),
    });
    let requests = conn.clone();
    let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
        let busy = requests.start_request();
        let app = app.clone();
        async move {
            let response = tower::ServiceExt::oneshot(app, request.map(Body::new)).await;
            // The request counts as in flight until its body is sent (or dropped).
            response.map(|r| {
                r.map(|body| {
                    Body::new(body.map_frame(move |frame| {
                        let _ = &busy;
                        frame
                    }))
                })
            })
        }
    });
    let served = builder.serve_connection(io, service);
    tokio::pin!(served);
    let mut closing = false;
    loop {
        let deadline = conn.deadline(timeouts);
        let expired = async {
            match deadline {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = served.as_mut() => return,
            _ = conn.changed.notified() => {}
            _ = expired => {}
            _ = shutdown.stopping(), if !closing => {
                closing = true;
                served.as_mut().graceful_shutdown();
            }
        }
        let evicted = {
            let a = conn.lock();
            a.evicted && a.busy == 0
        };
        if evicted {
            return;
        }
        if conn
            .deadline(timeouts)
            .is_some_and(|at| at <= Instant::now())
        {
            return;
        }
    }
}
