//! Listeners and the life of the process: the HTTPS listener that serves the gateway, the
//! plain-HTTP listener that only redirects, the ops listener, the connection cap, TLS
//! reloads on `SIGHUP`, and the bounded drain on shutdown.
//!
//! `serve` takes listeners that are already bound and a shutdown future, so tests bind
//! port 0 and decide when the server stops.

pub mod ops;
pub mod redirect;

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};

use crate::app::App;
use crate::config::{Config, ServerConfig};
use crate::proxy::framing::{self, FramingGuard, FramingReport, FramingScanner, SocketSlot};
use crate::proxy::ConnectionInfo;

/// The listeners, bound before serving so that callers (and tests using port 0) know the
/// addresses.
pub struct Listeners {
    pub https: TcpListener,
    pub http: Option<TcpListener>,
    pub ops: TcpListener,
}

impl Listeners {
    pub async fn bind(config: &Config) -> io::Result<Listeners> {
        let server = &config.server;
        let bind = |addr: SocketAddr, what: &'static str| async move {
            TcpListener::bind(addr).await.map_err(|error| {
                io::Error::new(
                    error.kind(),
                    format!("cannot bind {what} listener {addr}: {error}"),
                )
            })
        };
        Ok(Listeners {
            https: bind(server.https_listen, "https").await?,
            http: match server.http_listen {
                Some(addr) => Some(bind(addr, "http").await?),
                None => None,
            },
            ops: bind(server.ops_listen, "ops").await?,
        })
    }

    pub fn https_addr(&self) -> SocketAddr {
        self.https
            .local_addr()
            .expect("a bound listener has an address")
    }

    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http
            .as_ref()
            .and_then(|listener| listener.local_addr().ok())
    }

    pub fn ops_addr(&self) -> SocketAddr {
        self.ops
            .local_addr()
            .expect("a bound listener has an address")
    }
}

/// How connections are served: hyper's protocol settings and the limits around them, made
/// once from the configuration when serving starts.
struct Connections {
    http1: hyper::server::conn::http1::Builder,
    http2: hyper::server::conn::http2::Builder<TokioExecutor>,
    handshake_timeout: Duration,
    header_read_timeout: Duration,
    max_header_bytes: usize,
}

impl Connections {
    fn new(server: &ServerConfig) -> Connections {
        Connections {
            http1: http1_builder(server),
            http2: http2_builder(server),
            handshake_timeout: server.tls.handshake_timeout,
            header_read_timeout: server.header_read_timeout,
            max_header_bytes: server.max_header_bytes,
        }
    }
}

/// hyper's HTTP/1.1 settings. Parsing stays strict (no lenient header parsing); hyper's own
/// buffer is kept above the configured header limit, so that the framing guard, which
/// refuses a longer head first, decides and the gateway answers with its JSON 431.
fn http1_builder(server: &ServerConfig) -> hyper::server::conn::http1::Builder {
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(server.header_read_timeout)
        .max_buf_size((server.max_header_bytes * 2).max(64 * 1024))
        .keep_alive(true);
    builder
}

fn http2_builder(server: &ServerConfig) -> hyper::server::conn::http2::Builder<TokioExecutor> {
    let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .max_concurrent_streams(server.http2_max_concurrent_streams)
        // Well above the gateway's own limit, so that the gateway answers an oversized
        // list with its JSON 431 rather than h2 with a bare one; h2 holds one header block
        // in decoding at a time per connection, so this bounds that buffer.
        .max_header_list_size(
            u32::try_from((server.max_header_bytes * 8).max(128 * 1024)).unwrap_or(u32::MAX),
        )
        .max_pending_accept_reset_streams(Some(50))
        .max_local_error_reset_streams(Some(256))
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(Duration::from_secs(20));
    builder
}

/// Serves until `shutdown` resolves, then stops accepting, lets in-flight requests finish
/// for at most the drain timeout, and returns.
pub async fn serve(
    app: App,
    listeners: Listeners,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let app = Arc::new(app);
    let drain = Arc::new(Drain::new());
    let (stop_ops, ops_stopped) = watch::channel(false);
    let ops = tokio::spawn(ops::serve(listeners.ops, app.clone(), ops_stopped.clone()));
    let mail_worker = app
        .mail_worker
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .take();
    let mail = mail_worker.map(|worker| tokio::spawn(worker.run(ops_stopped)));
    let reload = tokio::spawn(reload_on_sighup(app.clone()));
    let revocations = {
        let auth = app.auth.clone();
        tokio::spawn(async move { auth.follow_revocations().await })
    };
    let policy_watch = app
        .policy_watch
        .then(|| tokio::spawn(app.policy.clone().watch()));

    let connection_slots = Arc::new(Semaphore::new(app.server.max_connections));
    let workers = crate::workers::Workers::start(app.worker_threads)?;
    let connections = Arc::new(Connections::new(&app.server));
    let (stop_accepting, accepting_stopped) = watch::channel(false);
    let https = accept_https(
        listeners.https,
        app.clone(),
        connections,
        drain.clone(),
        connection_slots,
        &workers,
        accepting_stopped.clone(),
    );
    let http = async {
        if let Some(listener) = listeners.http {
            redirect::serve(listener, app.clone(), drain.clone(), accepting_stopped).await;
        }
    };
    {
        let accepting = async { tokio::join!(https, http) };
        let mut accepting = std::pin::pin!(accepting);
        // The accept loops run until told to stop; `ended` guards against polling them
        // again should they ever end first.
        let mut ended = false;
        tokio::select! {
            _ = accepting.as_mut() => ended = true,
            () = shutdown => {}
        }
        // Balancers polling /readyz see 503 from here on, and open connections start to
        // drain. Accepting goes on for the drain delay, so that a balancer takes this
        // instance out before its listener closes; what arrives meanwhile is served one
        // request and closed, like a connection taken from the queue below.
        app.draining.store(true, Ordering::SeqCst);
        drain.begin();
        if !ended && !app.server.drain_delay.is_zero() {
            tokio::select! {
                _ = accepting.as_mut() => ended = true,
                () = tokio::time::sleep(app.server.drain_delay) => {}
            }
        }
        // The accept loops take what the kernel has already queued, then close their
        // listeners: from then on new connections are refused (a balancer retries those
        // elsewhere), and none that the kernel completed is reset unserved.
        let _ = stop_accepting.send(true);
        if !ended {
            accepting.await;
        }
    }
    tracing::info!(
        drain_timeout_s = app.server.drain_timeout.as_secs_f64(),
        "shutting down: draining connections"
    );
    let drain_deadline = tokio::time::Instant::now() + app.server.drain_timeout;
    if tokio::time::timeout_at(drain_deadline, drain.finish())
        .await
        .is_err()
    {
        tracing::warn!("drain timeout reached with requests still in flight; closing them");
    }
    // Answered requests may still be writing what their answer promised (a reset token).
    if tokio::time::timeout_at(drain_deadline, app.auth.after_answer_settled())
        .await
        .is_err()
    {
        tracing::warn!("drain timeout reached with work after an answer still running");
    }
    reload.abort();
    revocations.abort();
    if let Some(watch) = policy_watch {
        watch.abort();
    }
    drop(workers);
    let _ = stop_ops.send(true);
    let _ = ops.await;
    if let Some(mail) = mail {
        let _ = mail.await;
    }
    Ok(())
}

async fn accept_https(
    listener: TcpListener,
    app: Arc<App>,
    connections: Arc<Connections>,
    drain: Arc<Drain>,
    slots: Arc<Semaphore>,
    workers: &crate::workers::Workers,
    mut stop: watch::Receiver<bool>,
) {
    let admit = |stream: TcpStream, peer: SocketAddr| {
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            app.metrics.connection_rejected();
            drop(stream);
            return;
        };
        // The socket moves to a worker's own event loop: deregister it from this one.
        let Ok(stream) = stream.into_std() else {
            return;
        };
        // Taken here, before the handshake, so that a drain waits for this connection too.
        let ticket = drain.ticket();
        let app = app.clone();
        let connections = connections.clone();
        workers.spawn(async move {
            app.metrics.connection_opened();
            if let Ok(stream) = TcpStream::from_std(stream) {
                serve_https_connection(stream, peer, &app, &connections, ticket).await;
            }
            app.metrics.connection_closed();
            drop(slot);
        });
    };
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stop.wait_for(|stop| *stop) => break,
        };
        match accepted {
            Ok((stream, peer)) => admit(stream, peer),
            Err(error) => {
                // Running out of file descriptors must not end the accept loop.
                tracing::warn!(%error, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    while let Some((stream, peer)) = queued_connection(&listener).await {
        admit(stream, peer);
    }
}

/// A connection the kernel has already completed and queued on `listener`, without waiting
/// for one. Closing a listener resets every queued connection, which the client sees as a
/// failed request after a successful connect (and a balancer cannot retry elsewhere).
pub(crate) async fn queued_connection(listener: &TcpListener) -> Option<(TcpStream, SocketAddr)> {
    std::future::poll_fn(|context| match listener.poll_accept(context) {
        std::task::Poll::Ready(Ok(accepted)) => std::task::Poll::Ready(Some(accepted)),
        std::task::Poll::Ready(Err(_)) | std::task::Poll::Pending => std::task::Poll::Ready(None),
    })
    .await
}

async fn serve_https_connection(
    stream: TcpStream,
    peer: SocketAddr,
    app: &App,
    connections: &Connections,
    mut ticket: DrainTicket,
) {
    let _ = stream.set_nodelay(true);
    let acceptor = app.tls.acceptor();
    // Boxed, here and for HTTP/2 in `serve_tls`: a connection's task is as large as the largest
    // future it awaits inline, and an idle HTTP/1 connection (the common case) would
    // otherwise carry room for a handshake and an HTTP/2 connection for its whole life.
    let handshake = Box::pin(acceptor.accept(stream));
    let mut tls = match tokio::time::timeout(connections.handshake_timeout, handshake).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(error)) => {
            app.metrics.tls_handshake_failed();
            tracing::debug!(%peer, %error, "TLS handshake failed");
            return;
        }
        Err(_elapsed) => {
            app.metrics.tls_handshake_failed();
            tracing::debug!(%peer, "TLS handshake timed out");
            return;
        }
    };
    let is_h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
    if !is_h2 && !ticket.accepted_while_draining() {
        // Once built, an HTTP/1 connection holds hyper's buffers (8 KiB to write from the
        // start, 8 KiB to read from its first read) for its whole life; until the client
        // sends something, it costs only the TLS state. The wait is bounded
        // like the head hyper would wait for, and ends the connection when the drain begins.
        let first_bytes =
            tokio::time::timeout(connections.header_read_timeout, first_bytes(&mut tls));
        tokio::select! {
            waited = first_bytes => if !matches!(waited, Ok(Ok(()))) {
                return;
            },
            () = ticket.draining() => return,
        }
    }
    // Boxed, so that a connection waiting for its first bytes holds only the TLS state: the
    // serving future below is several kilobytes (each move of the TLS stream into the
    // framing guard and into hyper's connection keeps a copy's room in it).
    Box::pin(serve_tls(tls, is_h2, peer, app, connections, ticket)).await;
}

/// Serves a connection whose handshake is done: HTTP/2 or HTTP/1 as ALPN chose, with the
/// framing guard in front of hyper, then closes the socket gracefully.
async fn serve_tls(
    tls: tokio_rustls::server::TlsStream<TcpStream>,
    is_h2: bool,
    peer: SocketAddr,
    app: &App,
    connections: &Connections,
    ticket: DrainTicket,
) {
    let gateway = app.gateway.clone();
    let report = Arc::new(FramingReport::default());
    let scanner = if is_h2 {
        FramingScanner::opaque(report.clone())
    } else {
        FramingScanner::new(connections.max_header_bytes, report.clone())
    };
    let socket: SocketSlot<_> = Arc::default();
    // On the heap: moved into the guard and into hyper's connection, the TLS state (over a
    // kilobyte) would otherwise leave a copy's room in this future at each move.
    let io = FramingGuard::new(Box::new(tls), scanner, socket.clone());
    let service = service_fn(move |request| {
        let gateway = gateway.clone();
        let info = ConnectionInfo {
            peer,
            refused: if is_h2 { None } else { report.next_request() },
        };
        async move { Ok::<_, Infallible>(gateway.handle(request, info).await) }
    });
    // The protocol is known from ALPN, so hyper's own connection types serve it directly:
    // hyper-util's automatic one first waits, with no timeout, for bytes to tell the
    // versions apart, which a client sending nothing (or a head the guard holds) never gives.
    let io = TokioIo::new(io);
    let outcome = if is_h2 {
        // A GOAWAY that still serves every stream the client has already sent, so a
        // connection accepted during the drain is shut down at once without loss.
        let connection = connections.http2.serve_connection(io, service);
        Box::pin(ticket.watch(connection, |connection| connection.graceful_shutdown())).await
    } else if ticket.accepted_while_draining() {
        // Asking an HTTP/1 connection that has not been read yet to shut down closes it
        // unanswered; instead it serves one request and closes.
        let mut http1 = connections.http1.clone();
        http1.keep_alive(false);
        let connection = http1.serve_connection(io, service).with_upgrades();
        ticket.hold(connection).await
    } else {
        let connection = connections
            .http1
            .serve_connection(io, service)
            .with_upgrades();
        ticket
            .watch(connection, |connection| connection.graceful_shutdown())
            .await
    };
    if let Err(error) = outcome {
        tracing::debug!(%peer, %error, "connection ended with an error");
    }
    // hyper is done with the socket (unless a tunnel holds it): close it gracefully.
    let socket = socket
        .lock()
        .unwrap_or_else(|poison| poison.into_inner())
        .take();
    if let Some(tls) = socket {
        framing::linger((*tls).into_inner().0).await;
    }
}

/// Resolves once the client has sent something after its handshake (or closed), so that
/// the connection is built only when there is a request to read: bytes the handshake's
/// last read already brought, or bytes waiting on the socket.
async fn first_bytes(tls: &mut tokio_rustls::server::TlsStream<TcpStream>) -> io::Result<()> {
    use tokio::io::AsyncWriteExt;
    // What the handshake left to send (TLS 1.3 session tickets) goes before the wait.
    tls.flush().await?;
    let (socket, connection) = tls.get_mut();
    match connection.process_new_packets() {
        // A record that does not decrypt is reported by the first read: let hyper read it.
        Err(_) => return Ok(()),
        Ok(state) if state.plaintext_bytes_to_read() > 0 || state.peer_has_closed() => {
            return Ok(())
        }
        Ok(_) => {}
    }
    // A peek, not `readable()`: readiness left over from the handshake's last read would
    // end the wait at once.
    socket.peek(&mut [0u8; 1]).await.map(drop)
}

/// Tells open connections to finish their requests and close, and waits until they have.
pub(crate) struct Drain {
    draining: watch::Sender<bool>,
}

/// One connection's place in the drain: the drain waits until every ticket is dropped.
pub(crate) struct DrainTicket {
    draining: watch::Receiver<bool>,
}

impl Drain {
    fn new() -> Drain {
        Drain {
            draining: watch::channel(false).0,
        }
    }

    /// A ticket for a connection just accepted.
    pub(crate) fn ticket(&self) -> DrainTicket {
        DrainTicket {
            draining: self.draining.subscribe(),
        }
    }

    /// Starts draining: open connections finish what they are serving and close, and those
    /// accepted from now on serve one request.
    fn begin(&self) {
        self.draining.send_replace(true);
    }

    /// Starts draining (if not yet begun) and resolves once every ticket has been dropped.
    async fn finish(&self) {
        self.begin();
        self.draining.closed().await;
    }
}

impl DrainTicket {
    /// Whether the drain had already begun when this connection was accepted (it came out
    /// of the listener's queue on the way down).
    pub(crate) fn accepted_while_draining(&self) -> bool {
        *self.draining.borrow()
    }

    /// Resolves when the drain begins (at once if it has).
    pub(crate) async fn draining(&mut self) {
        let _ = self.draining.wait_for(|draining| *draining).await;
    }

    /// Serves `connection` until it ends; once draining starts (or if it already has),
    /// `shutdown` asks it to finish what is in flight and close.
    pub(crate) async fn watch<C: Future>(
        mut self,
        connection: C,
        shutdown: impl FnOnce(Pin<&mut C>),
    ) -> C::Output {
        let mut connection = std::pin::pin!(connection);
        tokio::select! {
            output = connection.as_mut() => return output,
            () = self.draining() => shutdown(connection.as_mut()),
        }
        connection.await
    }

    /// Serves `connection` until it ends, holding the drain until then.
    pub(crate) async fn hold<C: Future>(self, connection: C) -> C::Output {
        let output = connection.await;
        drop(self);
        output
    }
}

async fn reload_on_sighup(app: Arc<App>) {
    let Ok(mut hangups) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
    else {
        tracing::warn!("cannot listen for SIGHUP; reloads need a restart");
        return;
    };
    while hangups.recv().await.is_some() {
        tracing::info!("SIGHUP received: reloading");
        app.reload();
    }
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut terminate = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
    let mut interrupt = signal(SignalKind::interrupt()).expect("installing a SIGINT handler");
    tokio::select! {
        _ = terminate.recv() => tracing::info!("SIGTERM received"),
        _ = interrupt.recv() => tracing::info!("SIGINT received"),
    }
}
