//! tern's edge: the HTTP front door of a region.
//!
//! An [`Edge`] binds a client listener and an admin listener, then serves:
//! [`proxy`] routes each request to a backend chosen by the service's policy
//! (through `tern_core::routing`), retries safely on another region, and
//! feeds outcomes to passive outlier detection; [`probe`] runs the active
//! health checks; [`admin`] serves `/status`, `/metrics` and `/ready`.
//! [`state::EdgeState`] is the shared view all three read and update.
//! With a `[dns]` table the edge also answers DNS for its zones ([`dns`]),
//! from the same health state. With `[edge.tls]` it also serves HTTPS
//! ([`tls`]: certificates by SNI, reloaded without a restart) on a second
//! listener, and backends may be `https://`.
//! Shutdown follows one contract: a cancellation token makes the edge
//! unready, then stops accepting, the edge reports `Draining`, in-flight
//! requests get the configured grace time, then everything is joined. When
//! clients still connect directly after the unready delay, the edge first
//! hands its address over: it lets go of its admin address and keeps
//! accepting until a new edge listens beside it (SO_REUSEPORT); it then
//! serves what was queued in its listeners before closing them, and a
//! connection it accepted gets to send its first request.

pub mod admin;
pub mod dns;
pub mod follow;
pub mod guardrail;
pub mod metrics;
pub mod probe;
pub mod proxy;
pub mod service;
pub mod state;
pub mod tls;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tern_core::config::Config;
use tern_proto::lifecycle::Tasks;
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::{oneshot, watch};
use tokio_util::sync::CancellationToken;

use crate::state::EdgeState;

/// How long probes, the follower and the admin API get to stop once client
/// traffic has drained.
const BACKGROUND_GRACE: Duration = Duration::from_secs(5);

/// Lifecycle of an edge, published on a watch channel so that tests and the
/// admin endpoint wait for a phase instead of sleeping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Starting,
    /// Accepting and ready.
    Serving,
    /// Shutting down: `/ready` answers 503 while the listeners still accept
    /// for `edge.unready_delay`, so that a balancer in front leaves first.
    Unready,
    /// The listeners are closed; requests in flight finish.
    Draining,
    Stopped,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Starting => "starting",
            Phase::Serving => "serving",
            Phase::Unready => "unready",
            Phase::Draining => "draining",
            Phase::Stopped => "stopped",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EdgeError {
    #[error("the configuration has no [edge] table")]
    NoEdgeSettings,
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    /// A certificate, key or CA file cannot be used (a configuration
    /// error: `tern edge` exits 78).
    #[error("TLS: {0}")]
    Tls(String),
    /// The control-plane certificate or CA cannot be used (a
    /// configuration error: `tern edge` exits 78).
    #[error("control-plane TLS: {0}")]
    ControlTls(tern_proto::tls::TlsError),
}

pub struct Edge {
    state: Arc<EdgeState>,
    /// The controllers to follow, when the configuration names them.
    controllers: Option<tern_proto::ControllerClient>,
    /// The edge's control-plane certificate, reloaded while it runs.
    control_tls: Option<tern_proto::tls::ControlPlaneTls>,
    /// One listening socket per worker, all bound to the same address with
    /// SO_REUSEPORT so that the kernel spreads connections across workers.
    listeners: Vec<std::net::TcpListener>,
    local_addr: SocketAddr,
    /// The HTTPS listeners (one per worker, like `listeners`) and what
    /// accepts their handshakes.
    tls: Option<(Vec<std::net::TcpListener>, tokio_rustls::TlsAcceptor)>,
    tls_addr: Option<SocketAddr>,
    admin: Option<TcpListener>,
    dns: Option<dns::DnsServer>,
    phase: watch::Sender<Phase>,
}

impl Edge {
    /// Binds the listeners; nothing is served until [`Edge::run`].
    pub async fn bind(config: &Config) -> Result<Edge, EdgeError> {
        let settings = config.edge.clone().ok_or(EdgeError::NoEdgeSettings)?;
        let workers = settings.workers.unwrap_or_else(|| {
            std::thread::available_parallelism().map_or(1, |n| n.get().min(64) as u32)
        });
        let bind_err = |source| EdgeError::Bind {
            addr: settings.listen,
            source,
        };
        // The first socket resolves port 0; the others join it.
        let first = reuseport_listener(settings.listen).map_err(bind_err)?;
        let local_addr = first.local_addr().map_err(bind_err)?;
        let mut listeners = vec![first];
        for _ in 1..workers {
            listeners.push(reuseport_listener(local_addr).map_err(bind_err)?);
        }
        let certificates = match &settings.tls {
            Some(t) => Some(Arc::new(
                tls::Certificates::new(t.clone()).map_err(|e| EdgeError::Tls(e.to_string()))?,
            )),
            None => None,
        };
        let (tls, tls_addr) = match (&settings.tls, &certificates) {
            (Some(t), Some(certs)) => {
                let tls_err = |source| EdgeError::Bind {
                    addr: t.listen,
                    source,
                };
                let first = reuseport_listener(t.listen).map_err(tls_err)?;
                let addr = first.local_addr().map_err(tls_err)?;
                certs.set_bound(addr);
                let mut all = vec![first];
                for _ in 1..workers {
                    all.push(reuseport_listener(addr).map_err(tls_err)?);
                }
                let config =
                    tls::server_config(certs.clone()).map_err(|e| EdgeError::Tls(e.to_string()))?;
                (
                    Some((all, tokio_rustls::TlsAcceptor::from(config))),
                    Some(addr),
                )
            }
            _ => (None, None),
        };
        let admin = match settings.admin {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .map_err(|source| EdgeError::Bind { addr, source })?,
            ),
            None => None,
        };
        let dns = match &config.dns {
            Some(d) => {
                let dns_workers = d.workers.map_or(workers as usize, |w| w as usize);
                Some(
                    dns::DnsServer::bind(d.listen, dns_workers).map_err(|source| {
                        EdgeError::Bind {
                            addr: d.listen,
                            source,
                        }
                    })?,
                )
            }
            None => None,
        };
        let (phase, _) = watch::channel(Phase::Starting);
        let mut state = EdgeState::new(config, settings);
        state.tls = certificates;
        // Every https:// backend's CA and client certificate, checked once.
        proxy::Upstreams::new(
            &state,
            state.settings.try_timeout,
            state.settings.max_response_headers,
        )
        .map_err(EdgeError::Tls)?;
        let state = Arc::new(state);
        // The last committed table first, so that a restart without
        // controllers serves as before (static stability).
        if let Some(path) = &state.settings.routing_state {
            follow::load(&state, path);
        }
        // Mutual TLS toward the controllers, as this region's edge.
        let control_tls = match config.controller.as_ref().and_then(|c| c.tls.as_ref()) {
            Some(t) => Some(
                tern_proto::tls::ControlPlaneTls::load(
                    t,
                    tern_core::auth::Principal::new(
                        tern_core::auth::Role::Edge,
                        &state.settings.region,
                    ),
                    None,
                )
                .map_err(EdgeError::ControlTls)?,
            ),
            None => None,
        };
        let controllers = config.controller.as_ref().map(|c| {
            tern_proto::ControllerClient::with_tls(
                c.nodes.iter().map(|n| n.addr).collect(),
                c.rpc_timeout.max(Duration::from_millis(500)),
                control_tls.as_ref().map(|t| t.client_config()),
            )
        });
        Ok(Edge {
            state,
            controllers,
            control_tls,
            listeners,
            local_addr,
            tls,
            tls_addr,
            admin,
            dns,
            phase,
        })
    }

    /// The HTTPS listener's address, with `[edge.tls]`.
    pub fn tls_addr(&self) -> Option<SocketAddr> {
        self.tls_addr
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin
            .as_ref()
            .map(|l| l.local_addr().expect("bound listener has an address"))
    }

    /// The DNS server's address (UDP and TCP), when the configuration has zones.
    pub fn dns_addr(&self) -> Option<SocketAddr> {
        self.dns.as_ref().map(|d| d.local_addr())
    }

    pub fn phase(&self) -> watch::Receiver<Phase> {
        self.phase.subscribe()
    }

    pub fn state(&self) -> Arc<EdgeState> {
        self.state.clone()
    }

    /// Serves until `shutdown` is cancelled, then drains.
    ///
    /// Client traffic is served by one worker thread per listener, each with
    /// its own single-threaded runtime and its own pool of backend
    /// connections: a request and its upstream call never cross threads, as
    /// in HAProxy's or Envoy's threading model. Health probes and the admin
    /// API run on the caller's runtime.
    pub async fn run(self, shutdown: CancellationToken) {
        let Edge {
            state,
            controllers,
            control_tls,
            listeners,
            local_addr,
            tls,
            tls_addr: _,
            admin,
            dns,
            phase,
        } = self;
        let settings = state.settings.clone();
        // Probes, the controllers' follower and the admin API outlive the
        // drain of client traffic: their token is cancelled only after it.
        let mut tasks = Tasks::new(&CancellationToken::new());
        let background = tasks.token();
        probe::spawn_probes(state.clone(), &mut tasks);
        dns::probe::spawn_probes(state.clone(), &mut tasks);
        if let Some(dns) = dns {
            // DNS stops with client traffic, before the drain of HTTP requests.
            tasks.spawn("dns server", dns.run(state.clone(), shutdown.clone()));
        }
        if let Some(client) = controllers {
            tasks.spawn(
                "guardrail reports",
                follow::report_guardrails(state.clone(), client.clone(), background.clone()),
            );
            let path = state.settings.routing_state.clone();
            tasks.spawn(
                "routing follower",
                follow::follow(state.clone(), client, path, background.clone()),
            );
        }
        if let Some(t) = &control_tls {
            t.spawn_watch(background.clone());
        }
        if let Some(certs) = state.tls.clone() {
            tasks.spawn(
                "certificate reload",
                tls::reload_loop(certs, background.clone()),
            );
        }
        // The admin API has a token of its own: a stopping edge lets go of
        // its address before the others (see the successor below).
        let admin_stop = background.child_token();
        let admin_addr = admin.as_ref().and_then(|l| l.local_addr().ok());
        let (admin_gone, admin_closed) = oneshot::channel::<()>();
        if let Some(admin) = admin {
            let state = state.clone();
            let phase = phase.subscribe();
            let stop = admin_stop.clone();
            tasks.spawn("admin api", async move {
                admin::serve(admin, state, phase, stop).await;
                // Its listener is closed once `serve` has returned.
                let _ = admin_gone.send(());
            });
        }

        // Workers stop accepting on their own token, cancelled only after
        // the edge has been seen not ready for `unready_delay`.
        let close_listeners = CancellationToken::new();
        // Client connections accepted, by every worker.
        let accepted = Arc::new(AtomicU64::new(0));
        let mut closed = Vec::new();
        let mut drained = Vec::new();
        let (mut tls_listeners, acceptor) = match tls {
            Some((l, a)) => (l.into_iter().map(Some).collect(), Some(a)),
            None => (Vec::new(), None),
        };
        for (i, listener) in listeners.into_iter().enumerate() {
            let tls = tls_listeners
                .get_mut(i)
                .and_then(Option::take)
                .zip(acceptor.clone());
            let (closed_tx, closed_rx) = oneshot::channel();
            let (drained_tx, drained_rx) = oneshot::channel();
            let worker = Worker {
                state: state.clone(),
                listener,
                tls,
                accepted: accepted.clone(),
                shutdown: close_listeners.clone(),
                closed: closed_tx,
                drained: drained_tx,
            };
            let spawned = std::thread::Builder::new()
                .name(format!("tern-edge-{i}"))
                .spawn(move || worker.run());
            if let Err(e) = spawned {
                tracing::error!(error = %e, "cannot start an edge worker thread");
                continue;
            }
            closed.push(closed_rx);
            drained.push(drained_rx);
        }
        phase.send_replace(Phase::Serving);
        tracing::info!(listen = %local_addr, workers = closed.len(), region = %state.region, "edge serving");

        shutdown.cancelled().await;
        // Not ready first, listeners still open: a balancer in front that
        // polls /ready moves traffic away before connections are refused.
        state
            .closing
            .store(true, std::sync::atomic::Ordering::Relaxed);
        phase.send_replace(Phase::Unready);
        tracing::info!(delay = ?settings.unready_delay, "edge unready; listeners close after the delay");
        let before = accepted.load(Ordering::Relaxed);
        tokio::time::sleep(settings.unready_delay).await;
        // Clients still connecting after the unready delay reach this edge
        // directly (no balancer in front moved them away): closing now would
        // refuse them. A restart hands the address over instead: the admin
        // address, the one a successor cannot share, is let go of; a new
        // edge binds its client listeners beside these (SO_REUSEPORT), then
        // the admin address. Until it does, these listeners keep accepting.
        // A plain stop waits for no one past the bound.
        let direct = accepted.load(Ordering::Relaxed) > before;
        if let Some(addr) = admin_addr.filter(|_| direct && !settings.unready_delay.is_zero()) {
            let wait = settings.unready_delay.max(settings.shutdown_grace);
            admin_stop.cancel();
            let _ = admin_closed.await;
            tracing::info!(
                ?wait,
                "edge released its admin address; listeners close once a successor listens"
            );
            let found = tokio::time::timeout(wait, successor(addr)).await.is_ok();
            tracing::info!(successor = found, "edge closing its listeners");
        }
        close_listeners.cancel();
        // Draining is announced only once no worker accepts any more.
        for rx in closed {
            let _ = rx.await;
        }
        phase.send_replace(Phase::Draining);
        tracing::info!(grace = ?settings.shutdown_grace, "edge draining");
        for rx in drained {
            let _ = rx.await;
        }
        tasks.shutdown(BACKGROUND_GRACE).await;
        phase.send_replace(Phase::Stopped);
    }
}

/// Resolves once something listens on `addr` again: the edge that
/// succeeds this one (it binds its admin address after its client
/// listeners).
async fn successor(addr: SocketAddr) {
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn reuseport_listener(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.set_reuseport(true)?;
    socket.set_nodelay(true)?;
    socket.bind(addr)?;
    socket.listen(1024)?.into_std()
}

/// One thread serving client connections from its own listener.
struct Worker {
    state: Arc<EdgeState>,
    listener: std::net::TcpListener,
    /// Counts the client connections it accepts.
    accepted: Arc<AtomicU64>,
    /// This worker's HTTPS listener and the handshake it runs.
    tls: Option<(std::net::TcpListener, tokio_rustls::TlsAcceptor)>,
    shutdown: CancellationToken,
    /// Signalled once the listener is closed.
    closed: oneshot::Sender<()>,
    /// Signalled once in-flight requests finished or the grace time ran out.
    drained: oneshot::Sender<()>,
}

impl Worker {
    fn run(self) {
        let runtime = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "cannot start an edge worker runtime");
                return;
            }
        };
        runtime.block_on(self.serve());
    }

    async fn serve(self) {
        let Worker {
            state,
            listener,
            tls,
            accepted: accepted_count,
            shutdown,
            closed,
            drained,
        } = self;
        let settings = state.settings.clone();
        let listener = match TcpListener::from_std(listener) {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(error = %e, "cannot register the listener");
                return;
            }
        };
        let (tls_listener, acceptor) = match tls {
            Some((l, a)) => match TcpListener::from_std(l) {
                Ok(l) => (Some(l), Some(a)),
                Err(e) => {
                    tracing::error!(error = %e, "cannot register the HTTPS listener");
                    return;
                }
            },
            None => (None, None),
        };
        // Checked at bind; an error here is a file changed since.
        let client = match proxy::Upstreams::new(
            &state,
            settings.try_timeout,
            settings.max_response_headers,
        ) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "cannot build the clients toward backends");
                return;
            }
        };
        let mut builder = auto::Builder::new(TokioExecutor::new());
        // hyper refuses buffer limits under 8 KiB.
        builder
            .http1()
            .keep_alive(true)
            .timer(TokioTimer::new())
            .header_read_timeout(settings.client_timeout)
            .max_buf_size((settings.max_header as usize).max(8192));
        // hyper parses up to 100 header lines on the stack; a limit set at
        // all (even 100) moves that to the heap for every request.
        if settings.max_request_headers != 100 {
            builder.http1().max_headers(settings.max_request_headers);
        }
        builder
            .http2()
            .max_header_list_size(settings.max_header.min(u64::from(u32::MAX)) as u32);
        let conns = Connections {
            state,
            client,
            builder,
            acceptor,
            closing: CancellationToken::new(),
            tracker: tokio_util::task::TaskTracker::new(),
        };

        loop {
            let (accepted, secure) = tokio::select! {
                _ = shutdown.cancelled() => break,
                a = listener.accept() => (a, false),
                a = async {
                    match &tls_listener {
                        Some(l) => l.accept().await,
                        None => std::future::pending().await,
                    }
                } => (a, true),
            };
            let (stream, remote) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Usually EMFILE: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                    continue;
                }
            };
            accepted_count.fetch_add(1, Ordering::Relaxed);
            conns.serve(stream, remote, secure);
        }
        // Connections the kernel completed but nobody accepted yet would be
        // reset when the listener closes: they are accepted and served first.
        let mut queued = 0;
        for (l, secure) in [(Some(listener), false), (tls_listener, true)] {
            if let Some(l) = l {
                queued += accept_queued(l, |stream, remote| conns.serve(stream, remote, secure));
            }
        }
        if queued > 0 {
            tracing::debug!(queued, "served the connections queued at close");
        }
        let _ = closed.send(());
        conns.closing.cancel();
        conns.tracker.close();
        if tokio::time::timeout(settings.shutdown_grace, conns.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!("grace time over; closing remaining connections");
        }
        let _ = drained.send(());
    }
}

/// Accepts, without waiting, every connection queued on `listener`, hands
/// each to `serve`, then closes the listener; answers how many there were.
fn accept_queued(
    listener: TcpListener,
    mut serve: impl FnMut(tokio::net::TcpStream, SocketAddr),
) -> usize {
    // The readiness tokio caches may be stale: ask the socket itself.
    let Ok(listener) = listener.into_std() else {
        return 0;
    };
    let mut n = 0;
    loop {
        match listener.accept() {
            Ok((stream, remote)) => {
                let stream = stream
                    .set_nonblocking(true)
                    .and_then(|()| tokio::net::TcpStream::from_std(stream));
                if let Ok(stream) = stream {
                    serve(stream, remote);
                    n += 1;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            // WouldBlock: nothing left (or the socket failed; nothing to serve).
            Err(_) => return n,
        }
    }
}

/// Drives a client connection (`$conn`, a hyper-util connection); once
/// `$closing` fires, lets it finish the request in hand and closes it
/// (HTTP/1.1 without keep-alive, HTTP/2 with GOAWAY). A connection that has
/// not sent its first request yet (`$asked` not notified: accepted just
/// before the listeners closed) first gets up to `$timeout` to send it:
/// closing it unread would drop a request its client already sent.
///
/// A macro, not a generic function: the connection's future does not prove
/// `Send` for every lifetime through a generic bound (rustc's inference of
/// higher-ranked bounds in spawned futures).
macro_rules! serve_until_closed {
    ($conn:expr, $asked:expr, $closing:expr, $timeout:expr) => {{
        let mut conn = std::pin::pin!($conn);
        let ended = tokio::select! {
            r = conn.as_mut() => Some(r),
            () = $closing.cancelled() => None,
        };
        let ended = match ended {
            Some(r) => Some(r),
            None => tokio::select! {
                r = conn.as_mut() => Some(r),
                () = $asked.notified() => None,
                () = tokio::time::sleep($timeout) => None,
            },
        };
        let result = match ended {
            Some(r) => r,
            None => {
                conn.as_mut().graceful_shutdown();
                conn.await
            }
        };
        if let Err(e) = result {
            tracing::debug!(error = %e, "client connection ended with an error");
        }
    }};
}

/// The client connections of one worker: how each is served, and the
/// shutdown that ends them.
struct Connections {
    state: Arc<EdgeState>,
    client: proxy::Upstreams,
    builder: auto::Builder<TokioExecutor>,
    acceptor: Option<tokio_rustls::TlsAcceptor>,
    /// Cancelled once the listeners are closed: each connection finishes
    /// the request in hand and closes.
    closing: CancellationToken,
    tracker: tokio_util::task::TaskTracker,
}

impl Connections {
    /// Serves one accepted connection in a task of its own.
    fn serve(&self, stream: tokio::net::TcpStream, remote: SocketAddr, secure: bool) {
        let _ = stream.set_nodelay(true);
        let state = self.state.clone();
        let client = self.client.clone();
        let conn_facts = proxy::ClientConn { remote, secure };
        // Woken by the connection's first request (see `serve_until_closed`).
        let asked = Arc::new(tokio::sync::Notify::new());
        let asked_by_request = asked.clone();
        let svc = service_fn(move |req| {
            let state = state.clone();
            let client = client.clone();
            asked_by_request.notify_one();
            // Boxed so that an idle connection holds a pointer, not the
            // whole request future, between requests.
            Box::pin(async move {
                let http1 = req.version() == http::Version::HTTP_11;
                let mut resp = proxy::handle(state.clone(), client, req, conn_facts).await;
                if http1 && state.closing.load(std::sync::atomic::Ordering::Relaxed) {
                    // Shutting down: the client's next request goes
                    // on a new connection (HTTP/2 is told by GOAWAY).
                    resp.headers_mut().insert(
                        http::header::CONNECTION,
                        http::HeaderValue::from_static("close"),
                    );
                }
                Ok::<_, Infallible>(resp)
            })
        });
        let builder = self.builder.clone();
        let closing = self.closing.clone();
        let timeout = self.state.settings.client_timeout;
        match (&self.acceptor, secure) {
            (Some(acceptor), true) => {
                // The handshake runs in the connection's task, bounded
                // like a request head, so a slow client holds no worker.
                let acceptor = acceptor.clone();
                self.tracker.spawn(async move {
                    let tls = match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
                        Ok(Ok(s)) => s,
                        Ok(Err(e)) => {
                            tracing::debug!(error = %e, %remote, "TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            tracing::debug!(%remote, "TLS handshake timed out");
                            return;
                        }
                    };
                    let conn = builder
                        .serve_connection(TokioIo::new(tls), svc)
                        .into_owned();
                    serve_until_closed!(conn, asked, closing, timeout);
                });
            }
            _ => {
                self.tracker.spawn(async move {
                    let conn = builder
                        .serve_connection(TokioIo::new(stream), svc)
                        .into_owned();
                    serve_until_closed!(conn, asked, closing, timeout);
                });
            }
        }
    }
}
