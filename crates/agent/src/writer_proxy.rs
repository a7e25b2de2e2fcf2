//! The writer proxy: a TCP endpoint in every region that leads PostgreSQL
//! clients to the primary of the current epoch, wherever that primary runs.
//!
//! The agent tells the proxy where writes go with [`WriterProxy::set_target`]:
//! either a [`WriterTarget`] (the primary's address and the epoch of its
//! lease) or [`Target::Closed`] while no primary may take writes. Each
//! accepted connection is relayed byte for byte to the target current when
//! it was accepted. While the target is closed, or when the primary cannot
//! be reached, the proxy fails closed: it answers the client's startup with
//! a PostgreSQL `FATAL` error (SQLSTATE `57P03`, "cannot connect now") whose
//! message gives the reason, so that psql and drivers show why.
//!
//! A led connection is relayed from its first byte, the client's TLS
//! request included, so TLS runs end to end between the client and the
//! primary (`sslmode=require` works through the proxy). A refused client's
//! TLS request is declined: the refusal is plaintext.
//!
//! **Invariant:** a connection never outlives the epoch it was made under.
//! Every change of target (a new epoch, another address, or closing) ends
//! every connection made under an earlier target, both directions at once,
//! so no client keeps writing to a primary that has lost its lease.
//! [`WriterProxy::retired`] waits until those connections are gone.
//! Epochs only move forward: a target older than one already applied is
//! rejected, so a late or replayed decision cannot lead clients back to a
//! fenced primary.
//!
//! **Invariant:** a connection never outlives the writer's lease as this
//! proxy last saw it renewed. A target can carry a deadline
//! ([`WriterProxy::set_valid_until`], moved forward by the agent each time it
//! sees the lease renewed); once it passes, the proxy refuses new
//! connections and cuts open ones, as for a change of target, so a proxy
//! whose agent is cut off, hung or gone stops leading clients to a primary
//! whose lease may have run out.
//!
//! **Drain.** A proxy given a drain time ([`ProxyTask::with_drain`]) that is
//! told to stop (an agent restarting) stops accepting at once but lets its
//! open sessions go on, under both invariants above, while a successor takes
//! over the listening socket (a supervisor hands the same socket to the next
//! agent). Once a successor answers on the proxy's address, each session is
//! closed at its next idle point: every request answered, no transaction
//! open, nothing half sent (the relay follows the framing of the protocol in
//! both directions, never the content). A client's next query then finds the
//! connection closed before any byte of it was relayed, so reconnecting and
//! sending it again is safe; no query is cut in flight. What is still open
//! when the drain time runs out is cut. Encrypted sessions cannot be
//! followed: they run until they end, their deadline, or the drain time.

use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How long the proxy waits for the primary to accept a connection.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a refused client has to send its startup message.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// The largest startup packet read from a refused client (PostgreSQL's own
/// limit); anything larger is not a PostgreSQL client, and is closed.
pub const MAX_STARTUP_PACKET: usize = 10_000;
/// SQLSTATE `cannot_connect_now`: clients and pools treat it as retryable.
pub const CANNOT_CONNECT_NOW: &str = "57P03";
/// How often a draining proxy asks whether a successor serves its address.
const SUCCESSOR_POLL: Duration = Duration::from_millis(100);
/// How long a draining proxy waits for a successor's answer to one probe:
/// a new proxy holds connections until it first learns the writer.
const SUCCESSOR_ANSWER: Duration = Duration::from_secs(2);
/// Frontend `Terminate`: sent to the primary for a session closed idle, so
/// that its backend ends as for a client that left.
const TERMINATE: [u8; 5] = [b'X', 0, 0, 0, 4];

const SSL_REQUEST: u32 = 80_877_103;
const GSSENC_REQUEST: u32 = 80_877_104;
const CANCEL_REQUEST: u32 = 80_877_102;

/// Where writes go: the primary of `cluster` in `epoch`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WriterTarget {
    pub addr: SocketAddr,
    pub epoch: u64,
    pub cluster: String,
}

/// What the proxy does with a new connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// Relay it to this primary.
    Writable(WriterTarget),
    /// Refuse it with this reason: no primary may take writes now.
    Closed { reason: String },
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Writable(w) => write!(f, "epoch {} at {}", w.epoch, w.addr),
            Target::Closed { reason } => write!(f, "closed ({reason})"),
        }
    }
}

/// Why [`WriterProxy::set_target`] left the target as it was.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TargetRejected {
    /// The offered epoch is older than one the proxy has already applied.
    Stale { offered: u64, applied: u64 },
    /// The offered primary belongs to another cluster than the proxy's.
    OtherCluster { offered: String, proxy: String },
}

impl fmt::Display for TargetRejected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TargetRejected::Stale { offered, applied } => write!(
                f,
                "epoch {offered} is older than epoch {applied}, already applied"
            ),
            TargetRejected::OtherCluster { offered, proxy } => write!(
                f,
                "the target is a primary of cluster {offered}, not of {proxy}"
            ),
        }
    }
}

impl std::error::Error for TargetRejected {}

/// Connection counts since the proxy was bound.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProxyStats {
    /// Client connections accepted.
    pub accepted: u64,
    /// Connections answered with an error instead of a primary: the target
    /// was closed, or the primary could not be reached.
    pub refused: u64,
    /// Of `refused`, those whose primary could not be reached.
    pub unreachable: u64,
    /// Client connections open now.
    pub active: u64,
    /// Connections ended because the target changed.
    pub cut: u64,
    /// Sessions a draining proxy closed at an idle point.
    pub drained: u64,
}

/// The current target and the generation it was applied in.
#[derive(Clone, Debug)]
struct Current {
    /// Grows by one on every change of target; connections remember it.
    generation: u64,
    target: Target,
    /// The highest epoch ever applied, kept while the target is closed.
    highest_epoch: u64,
    /// A writable target is usable until then (`None`: no deadline). Moving
    /// it does not change the generation.
    valid_until: Option<tokio::time::Instant>,
}

struct Shared {
    cluster: String,
    local_addr: SocketAddr,
    current: watch::Sender<Current>,
    /// Connections led (or being led) to a primary, by the generation they
    /// were made under.
    live: watch::Sender<BTreeMap<u64, usize>>,
    accepted: AtomicU64,
    refused: AtomicU64,
    unreachable: AtomicU64,
    active: AtomicU64,
    cut: AtomicU64,
    /// Until then, while no target has been set since the proxy was bound,
    /// a new connection waits for the first target instead of being
    /// refused at once (see [`WriterProxy::hold_until_first_target`]).
    hold_until: std::sync::OnceLock<tokio::time::Instant>,
    drained: AtomicU64,
    /// Whether the proxy accepts, drains, or has a successor (see [`Drain`]).
    drain: watch::Sender<Drain>,
}

/// Where a proxy is in its stop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Drain {
    /// Accepting connections.
    Serving,
    /// Not accepting; open sessions go on.
    Draining,
    /// A successor serves the address: open sessions close when idle.
    HandedOver,
}

/// A handle on a bound writer proxy; cheap to clone.
#[derive(Clone)]
pub struct WriterProxy {
    shared: Arc<Shared>,
}

/// The proxy's accept loop, to run until its cancellation token fires.
pub struct ProxyTask {
    listener: TcpListener,
    shared: Arc<Shared>,
    /// How long open sessions may go on once the loop is told to stop.
    drain: Duration,
}

impl WriterProxy {
    /// Binds the proxy of `cluster` on `listen` with a first target.
    /// Connections are accepted once [`ProxyTask::run`] runs.
    pub async fn bind(
        listen: SocketAddr,
        cluster: &str,
        initial: Target,
    ) -> Result<(WriterProxy, ProxyTask)> {
        let listener = TcpListener::bind(listen)
            .await
            .with_context(|| format!("bind the writer proxy on {listen}"))?;
        WriterProxy::bind_on(listener, cluster, initial)
    }

    /// [`WriterProxy::bind`] on a listener bound already (handed over by
    /// the process that started the agent, so that no other process can
    /// take its port in between).
    ///
    /// # Errors
    /// A first target of another cluster, or a listener without an address.
    pub fn bind_on(
        listener: TcpListener,
        cluster: &str,
        initial: Target,
    ) -> Result<(WriterProxy, ProxyTask)> {
        let highest_epoch = match &initial {
            Target::Writable(w) if w.cluster != cluster => {
                return Err(anyhow!(
                    "the writer proxy of cluster {cluster} cannot start with a primary of cluster {}",
                    w.cluster
                ));
            }
            Target::Writable(w) => w.epoch,
            Target::Closed { .. } => 0,
        };
        let local_addr = listener.local_addr()?;
        tracing::info!(%cluster, %local_addr, target = %initial, "writer proxy bound");
        let (current, _) = watch::channel(Current {
            generation: 0,
            target: initial,
            highest_epoch,
            valid_until: None,
        });
        let (live, _) = watch::channel(BTreeMap::new());
        let shared = Arc::new(Shared {
            cluster: cluster.to_string(),
            local_addr,
            current,
            live,
            accepted: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            unreachable: AtomicU64::new(0),
            active: AtomicU64::new(0),
            cut: AtomicU64::new(0),
            hold_until: std::sync::OnceLock::new(),
            drained: AtomicU64::new(0),
            drain: watch::channel(Drain::Serving).0,
        });
        Ok((
            WriterProxy {
                shared: shared.clone(),
            },
            ProxyTask {
                listener,
                shared,
                drain: Duration::ZERO,
            },
        ))
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.shared.local_addr
    }

    pub fn cluster(&self) -> &str {
        &self.shared.cluster
    }

    /// Applies a new target. A target that differs from the current one
    /// ends every connection made under the current one; the same target
    /// again changes nothing. A primary of another cluster, or an epoch
    /// older than one already applied, is rejected and changes nothing.
    /// For up to `hold` from now, a connection that arrives before the
    /// first target is set waits for it (and is then led or refused by it)
    /// instead of being refused at once with the initial target's reason.
    /// An agent that restarts uses this: the clients that connect while it
    /// asks the controllers who the writer is see a short wait, not an
    /// error. Past `hold` the initial target decides, as without it.
    pub fn hold_until_first_target(&self, hold: Duration) {
        let _ = self
            .shared
            .hold_until
            .set(tokio::time::Instant::now() + hold);
    }

    pub fn set_target(&self, target: Target) -> Result<(), TargetRejected> {
        let mut outcome = Ok(None);
        self.shared.current.send_if_modified(|cur| {
            if let Target::Writable(w) = &target {
                if w.cluster != self.shared.cluster {
                    outcome = Err(TargetRejected::OtherCluster {
                        offered: w.cluster.clone(),
                        proxy: self.shared.cluster.clone(),
                    });
                    return false;
                }
                if w.epoch < cur.highest_epoch {
                    outcome = Err(TargetRejected::Stale {
                        offered: w.epoch,
                        applied: cur.highest_epoch,
                    });
                    return false;
                }
                cur.highest_epoch = w.epoch;
            }
            if cur.target == target {
                return false;
            }
            let previous = std::mem::replace(&mut cur.target, target.clone());
            cur.generation += 1;
            cur.valid_until = None;
            outcome = Ok(Some((previous, cur.generation)));
            true
        });
        match outcome {
            Ok(None) => Ok(()),
            Ok(Some((previous, generation))) => {
                let closing: usize = self
                    .shared
                    .live
                    .borrow()
                    .iter()
                    .filter(|(g, _)| **g < generation)
                    .map(|(_, n)| n)
                    .sum();
                tracing::info!(
                    cluster = %self.shared.cluster,
                    from = %previous,
                    to = %target,
                    generation,
                    closing,
                    "writer target changed"
                );
                Ok(())
            }
            Err(e) => {
                tracing::warn!(cluster = %self.shared.cluster, offered = %target, error = %e, "writer target rejected");
                Err(e)
            }
        }
    }

    pub fn target(&self) -> Target {
        self.shared.current.borrow().target.clone()
    }

    /// Sets how long the current target may be used, when it is the
    /// primary of `epoch`: past `until`, new connections are refused and
    /// open ones cut (the generation stays, so moving the deadline forward
    /// cuts nothing). Answers whether it applied.
    pub fn set_valid_until(&self, epoch: u64, until: tokio::time::Instant) -> bool {
        self.shared
            .current
            .send_if_modified(|cur| match &cur.target {
                Target::Writable(w) if w.epoch == epoch && cur.valid_until != Some(until) => {
                    cur.valid_until = Some(until);
                    true
                }
                _ => false,
            })
    }

    /// The current target's deadline, if it has one.
    pub fn valid_until(&self) -> Option<tokio::time::Instant> {
        self.shared.current.borrow().valid_until
    }

    pub fn stats(&self) -> ProxyStats {
        let s = &self.shared;
        ProxyStats {
            accepted: s.accepted.load(Ordering::Relaxed),
            refused: s.refused.load(Ordering::Relaxed),
            unreachable: s.unreachable.load(Ordering::Relaxed),
            active: s.active.load(Ordering::Relaxed),
            cut: s.cut.load(Ordering::Relaxed),
            drained: s.drained.load(Ordering::Relaxed),
        }
    }

    /// Resolves once no connection made under an earlier target remains:
    /// from then on every byte relayed goes to the current target.
    pub async fn retired(&self) {
        let mut current = self.shared.current.subscribe();
        let mut live = self.shared.live.subscribe();
        loop {
            let generation = current.borrow_and_update().generation;
            if live.borrow_and_update().keys().all(|g| *g == generation) {
                return;
            }
            // Both senders live in `self.shared`, so neither wait can fail.
            tokio::select! {
                _ = current.changed() => {}
                _ = live.changed() => {}
            }
        }
    }
}

impl ProxyTask {
    /// Lets open sessions go on for up to `drain` once the loop is told to
    /// stop (see the module's **Drain**); without it, stopping cuts them.
    pub fn with_drain(mut self, drain: Duration) -> ProxyTask {
        self.drain = drain;
        self
    }

    /// Accepts connections until `stop` fires, then stops accepting, drains
    /// open sessions for the drain time (none by default), ends what is
    /// left, and returns once every connection's task has finished.
    pub async fn run(self, stop: CancellationToken) {
        let ProxyTask {
            listener,
            shared,
            drain,
        } = self;
        let connections = TaskTracker::new();
        // Ends every connection at once: after the drain, or at the stop.
        let cut = CancellationToken::new();
        loop {
            let accepted = tokio::select! {
                _ = stop.cancelled() => break,
                r = listener.accept() => r,
            };
            match accepted {
                Ok((client, peer)) => {
                    shared.accepted.fetch_add(1, Ordering::Relaxed);
                    let active = ActiveGuard::new(&shared);
                    connections.spawn(serve(shared.clone(), client, peer, cut.clone(), active));
                }
                Err(e) => {
                    // Out of file descriptors, most likely: let some close.
                    tracing::warn!(cluster = %shared.cluster, error = %e, "writer proxy cannot accept");
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                    }
                }
            }
        }
        // Connections not accepted yet stay queued in the socket for the
        // next proxy when the supervisor holds a copy of it.
        drop(listener);
        connections.close();
        if !drain.is_zero() && !connections.is_empty() {
            drain_sessions(&shared, &connections, drain).await;
        }
        cut.cancel();
        connections.wait().await;
    }
}

/// Lets the open sessions go on until a successor answers on the proxy's
/// address, then has each close at its next idle point; returns when none
/// is left or `drain` has passed.
async fn drain_sessions(shared: &Shared, connections: &TaskTracker, drain: Duration) {
    let deadline = tokio::time::Instant::now() + drain;
    shared.drain.send_replace(Drain::Draining);
    tracing::info!(
        cluster = %shared.cluster,
        sessions = shared.active.load(Ordering::Relaxed),
        ?drain,
        "writer proxy draining: no new connections; open sessions go on until a successor serves the address"
    );
    let handed_over = tokio::select! {
        () = connections.wait() => return,
        () = tokio::time::sleep_until(deadline) => false,
        () = successor(shared.local_addr) => true,
    };
    if handed_over {
        shared.drain.send_replace(Drain::HandedOver);
        tracing::info!(
            cluster = %shared.cluster,
            sessions = shared.active.load(Ordering::Relaxed),
            "a successor serves the writer proxy's address: open sessions close when idle"
        );
        tokio::select! {
            () = connections.wait() => return,
            () = tokio::time::sleep_until(deadline) => {}
        }
    }
    tracing::warn!(
        cluster = %shared.cluster,
        sessions = shared.active.load(Ordering::Relaxed),
        handed_over,
        "writer proxy drain time over: cutting the sessions still open"
    );
}

/// Resolves once another proxy answers on `addr`: this one no longer
/// accepts there, so an answer to an SSLRequest (`S` or `N`, which a new
/// proxy gives only once it has learned its first target or stopped
/// waiting for it) comes from a successor given the same socket.
async fn successor(addr: SocketAddr) {
    loop {
        let probe = async {
            let mut s = TcpStream::connect(addr).await.ok()?;
            let mut request = 8u32.to_be_bytes().to_vec();
            request.extend_from_slice(&SSL_REQUEST.to_be_bytes());
            s.write_all(&request).await.ok()?;
            s.read_u8().await.ok()
        };
        if let Ok(Some(_)) = tokio::time::timeout(SUCCESSOR_ANSWER, probe).await {
            return;
        }
        tokio::time::sleep(SUCCESSOR_POLL).await;
    }
}

/// Counts a client connection as active while it lives.
struct ActiveGuard(Arc<Shared>);

impl ActiveGuard {
    fn new(shared: &Arc<Shared>) -> ActiveGuard {
        shared.active.fetch_add(1, Ordering::Relaxed);
        ActiveGuard(shared.clone())
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Records a connection under the generation it was made in while it lives.
struct LiveGuard<'a> {
    shared: &'a Shared,
    generation: u64,
}

impl<'a> LiveGuard<'a> {
    fn new(shared: &'a Shared, generation: u64) -> LiveGuard<'a> {
        shared
            .live
            .send_modify(|m| *m.entry(generation).or_default() += 1);
        LiveGuard { shared, generation }
    }
}

impl Drop for LiveGuard<'_> {
    fn drop(&mut self) {
        self.shared.live.send_modify(|m| {
            if let Some(n) = m.get_mut(&self.generation) {
                *n -= 1;
                if *n == 0 {
                    m.remove(&self.generation);
                }
            }
        });
    }
}

/// How a relayed connection ended.
enum Relay {
    Done,
    /// The target changed: the connection was cut.
    Cut,
    Stopped,
    /// Closed idle while the proxy drained.
    Drained,
    /// The primary could not be reached; the message for the client.
    Unreachable(String),
}

async fn serve(
    shared: Arc<Shared>,
    mut client: TcpStream,
    peer: SocketAddr,
    cut: CancellationToken,
    _active: ActiveGuard,
) {
    let mut current = shared.current.subscribe();
    if let Some(until) = shared.hold_until.get().copied() {
        // Waits for the first target while the hold lasts (generation 0:
        // nothing was set since the bind).
        tokio::select! {
            _ = current.wait_for(|c| c.generation > 0) => {}
            () = tokio::time::sleep_until(until) => {}
            () = cut.cancelled() => return,
        }
    }
    let made_under = current.borrow_and_update().clone();
    let primary = match made_under.target {
        Target::Writable(w) => w,
        Target::Closed { reason } => {
            let message = format!(
                "tern writer proxy: no writable primary for cluster {}: {reason}",
                shared.cluster
            );
            refuse(&shared, client, peer, &message, &cut).await;
            return;
        }
    };
    if let Some(until) = made_under.valid_until {
        if tokio::time::Instant::now() >= until {
            let message = format!(
                "tern writer proxy: no writable primary for cluster {}: the lease of epoch {} has not been seen renewed in time (the writer may be cut off; failing closed)",
                shared.cluster, primary.epoch
            );
            refuse(&shared, client, peer, &message, &cut).await;
            return;
        }
    }
    let generation = made_under.generation;
    let live = LiveGuard::new(&shared, generation);
    // A change between the snapshot above and the registration is still
    // seen here: `wait_for` looks at the current value first, and the
    // biased select looks at it before relaying a single byte.
    let ended = tokio::select! {
        biased;
        () = target_invalid(&mut current, generation) => Relay::Cut,
        () = cut.cancelled() => Relay::Stopped,
        r = relay(&mut client, &primary, shared.drain.subscribe()) => r,
    };
    // Dropping the relay closed the primary's side. The client socket was
    // only borrowed, so that it is still there to refuse when the primary
    // cannot be reached; otherwise it closes (and a cut is counted) before
    // the connection stops counting as live, so `retired` never returns
    // while it is open.
    match ended {
        Relay::Unreachable(message) => {
            drop(live);
            shared.unreachable.fetch_add(1, Ordering::Relaxed);
            refuse(&shared, client, peer, &message, &cut).await;
        }
        ended => {
            drop(client);
            match ended {
                Relay::Cut => {
                    shared.cut.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(cluster = %shared.cluster, %peer, epoch = primary.epoch, "connection cut: the writer target changed");
                }
                Relay::Drained => {
                    shared.drained.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(cluster = %shared.cluster, %peer, epoch = primary.epoch, "session closed idle: the proxy drains");
                }
                _ => {}
            }
            drop(live);
        }
    }
}

/// Resolves once the target a connection was made under is no longer
/// usable: the generation changed, or its deadline passed.
async fn target_invalid(current: &mut watch::Receiver<Current>, generation: u64) {
    loop {
        let (changed, until) = {
            let c = current.borrow_and_update();
            (c.generation != generation, c.valid_until)
        };
        if changed || until.is_some_and(|u| tokio::time::Instant::now() >= u) {
            return;
        }
        // The sender lives as long as the shared state this task holds, so
        // an error (sender gone) cannot happen; treating it as a change is
        // safe.
        match until {
            Some(u) => tokio::select! {
                r = current.changed() => if r.is_err() { return },
                () = tokio::time::sleep_until(u) => {}
            },
            None => {
                if current.changed().await.is_err() {
                    return;
                }
            }
        }
    }
}

async fn relay(
    client: &mut TcpStream,
    primary: &WriterTarget,
    mut drain: watch::Receiver<Drain>,
) -> Relay {
    let mut upstream =
        match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(primary.addr)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Relay::Unreachable(unreachable_message(primary, &e.to_string())),
            Err(_) => {
                let why = format!("no answer within {} ms", CONNECT_TIMEOUT.as_millis());
                return Relay::Unreachable(unreachable_message(primary, &why));
            }
        };
    // PostgreSQL's protocol is chatty and latency-bound.
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    let session = std::sync::Mutex::new(Session::default());
    let (mut from_client, mut to_client) = client.split();
    let (mut from_primary, mut to_primary) = upstream.split();
    let ended = {
        let up = pump_up(&mut from_client, &mut to_primary, &session);
        let down = pump_down(&mut from_primary, &mut to_client, &session);
        tokio::pin!(up, down);
        let (mut up_done, mut down_done, mut close_at_idle) = (false, false, false);
        // Both directions run in this one task, so the session's lock is
        // never contended; it is taken between awaits only.
        loop {
            tokio::select! {
                r = &mut up, if !up_done => match r {
                    Ok(()) => up_done = true,
                    Err(e) => break Err(e),
                },
                r = &mut down, if !down_done => match r {
                    Ok(Pumped::Eof) => down_done = true,
                    Ok(Pumped::Idle) => break Ok(true),
                    Err(e) => break Err(e),
                },
                _ = drain.wait_for(|d| *d == Drain::HandedOver), if !close_at_idle => {
                    close_at_idle = true;
                    let mut s = session.lock().unwrap_or_else(|p| p.into_inner());
                    s.close_at_idle = true;
                    if s.idle() {
                        s.closing = true;
                        break Ok(true);
                    }
                }
            }
            if up_done && down_done {
                break Ok(false);
            }
        }
    };
    let s = session.into_inner().unwrap_or_else(|p| p.into_inner());
    match ended {
        Ok(true) => {
            // Idle: the primary's backend is told the client left.
            let _ = tokio::time::timeout(Duration::from_millis(200), async {
                to_primary.write_all(&TERMINATE).await?;
                to_primary.shutdown().await
            })
            .await;
            tracing::debug!(
                epoch = primary.epoch,
                sent = s.sent,
                received = s.received,
                "session closed idle"
            );
            Relay::Drained
        }
        Ok(false) => {
            tracing::debug!(
                epoch = primary.epoch,
                sent = s.sent,
                received = s.received,
                "connection ended"
            );
            Relay::Done
        }
        Err(e) => {
            tracing::debug!(epoch = primary.epoch, error = %e, "connection ended");
            Relay::Done
        }
    }
}

/// How the primary's side of a session ended.
enum Pumped {
    /// The primary closed it.
    Eof,
    /// The proxy drains and the session became idle: it is to be closed.
    Idle,
}

const RELAY_BUFFER: usize = 8 * 1024;

/// Relays the client's bytes to the primary, noting each message; stops
/// relaying once the session is closing (nothing more reaches the primary).
async fn pump_up(
    from: &mut tokio::net::tcp::ReadHalf<'_>,
    to: &mut tokio::net::tcp::WriteHalf<'_>,
    session: &std::sync::Mutex<Session>,
) -> io::Result<()> {
    let mut buf = vec![0; RELAY_BUFFER];
    loop {
        let n = from.read(&mut buf).await?;
        if n == 0 {
            return to.shutdown().await;
        }
        {
            let mut s = session.lock().unwrap_or_else(|p| p.into_inner());
            if s.closing {
                return Ok(());
            }
            s.client_sent(&buf[..n]);
        }
        to.write_all(&buf[..n]).await?;
    }
}

/// Relays the primary's bytes to the client, noting each message; answers
/// [`Pumped::Idle`] once the session may be closed.
async fn pump_down(
    from: &mut tokio::net::tcp::ReadHalf<'_>,
    to: &mut tokio::net::tcp::WriteHalf<'_>,
    session: &std::sync::Mutex<Session>,
) -> io::Result<Pumped> {
    let mut buf = vec![0; RELAY_BUFFER];
    loop {
        let n = from.read(&mut buf).await?;
        if n == 0 {
            to.shutdown().await?;
            return Ok(Pumped::Eof);
        }
        to.write_all(&buf[..n]).await?;
        let mut s = session.lock().unwrap_or_else(|p| p.into_inner());
        s.primary_sent(&buf[..n]);
        if s.close_at_idle && s.idle() {
            s.closing = true;
            return Ok(Pumped::Idle);
        }
    }
}

/// What the relay knows of a session from the framing of PostgreSQL's
/// protocol (version 3) in both directions: enough to tell when it is idle,
/// never what it says.
#[derive(Default)]
struct Session {
    client: Framer,
    primary: Framer,
    /// The client's StartupMessage went through: its messages are typed.
    started: bool,
    /// The client asked for encryption and the primary's one-byte answer
    /// has not come yet.
    answer_due: bool,
    /// ReadyForQuery messages the primary still owes: one for the startup,
    /// one per Query, FunctionCall and Sync.
    owed: u64,
    /// Extended-query messages sent since the last Sync.
    batch_open: bool,
    /// The transaction status of the last ReadyForQuery (`I`: none open).
    status: u8,
    /// The framing is not followed (TLS or GSSAPI, a cancel request, or
    /// not protocol 3): never idle.
    opaque: bool,
    /// The proxy drains: close at the next idle point.
    close_at_idle: bool,
    /// Decided to close: nothing more of the client's is relayed.
    closing: bool,
    sent: u64,
    received: u64,
}

impl Session {
    /// Idle: every request answered, no transaction open, no message half
    /// sent either way. Closing now loses nothing the client sent.
    fn idle(&self) -> bool {
        !self.opaque
            && self.started
            && !self.answer_due
            && self.owed == 0
            && self.status == b'I'
            && !self.batch_open
            && self.client.at_boundary()
            && self.primary.at_boundary()
    }

    fn client_sent(&mut self, bytes: &[u8]) {
        self.sent += bytes.len() as u64;
        let mut rest = bytes;
        while !self.opaque && !rest.is_empty() {
            let typed = self.started;
            match self.client.feed(&mut rest, typed) {
                Framed::Partial => {}
                Framed::Invalid => self.opaque = true,
                Framed::Untyped { length, code } => match code {
                    SSL_REQUEST | GSSENC_REQUEST if length == 8 => self.answer_due = true,
                    c if c >> 16 == 3 => {
                        self.started = true;
                        self.owed += 1;
                    }
                    // A cancel request, or another protocol.
                    _ => self.opaque = true,
                },
                Framed::Typed { kind, .. } => match kind {
                    b'Q' | b'F' => self.owed += 1,
                    b'S' => {
                        self.owed += 1;
                        self.batch_open = false;
                    }
                    // Parse, Bind, Execute, Describe, Close, Flush.
                    b'P' | b'B' | b'E' | b'D' | b'C' | b'H' => self.batch_open = true,
                    _ => {}
                },
            }
        }
    }

    fn primary_sent(&mut self, bytes: &[u8]) {
        self.received += bytes.len() as u64;
        let mut rest = bytes;
        if self.answer_due && !self.opaque {
            if let Some((&answer, tail)) = rest.split_first() {
                self.answer_due = false;
                rest = tail;
                // `N`: declined, the startup follows in clear; `S` or `G`:
                // the session is encrypted from here.
                if answer != b'N' {
                    self.opaque = true;
                }
            }
        }
        while !self.opaque && !rest.is_empty() {
            match self.primary.feed(&mut rest, true) {
                Framed::Partial => {}
                Framed::Typed { kind: b'Z', first } => {
                    self.owed = self.owed.saturating_sub(1);
                    self.status = first.unwrap_or(0);
                }
                Framed::Typed { .. } => {}
                Framed::Invalid | Framed::Untyped { .. } => self.opaque = true,
            }
        }
    }
}

/// Follows message boundaries in one direction of a session without
/// keeping any message: a header (`type, length` or, before the startup,
/// `length, code`), then the length's worth of body, skipped.
#[derive(Default)]
struct Framer {
    head: [u8; 8],
    /// Header bytes of the current message seen so far.
    have: usize,
    /// Body bytes of the current message still to come.
    left: usize,
    /// The current message's type (typed messages).
    kind: u8,
    /// The current message's first body byte, once seen.
    first: Option<u8>,
}

/// What [`Framer::feed`] found.
enum Framed {
    /// The bytes ended inside a message.
    Partial,
    /// A typed message ended: its type and first body byte.
    Typed { kind: u8, first: Option<u8> },
    /// A startup-phase packet ended: its length and code.
    Untyped { length: usize, code: u32 },
    /// A length no PostgreSQL message has.
    Invalid,
}

impl Framer {
    fn at_boundary(&self) -> bool {
        self.have == 0 && self.left == 0
    }

    /// Consumes bytes from `rest` up to the end of the current message.
    fn feed(&mut self, rest: &mut &[u8], typed: bool) -> Framed {
        let head_len = if typed { 5 } else { 8 };
        if self.left == 0 {
            let take = (head_len - self.have).min(rest.len());
            self.head[self.have..self.have + take].copy_from_slice(&rest[..take]);
            self.have += take;
            *rest = &rest[take..];
            if self.have < head_len {
                return Framed::Partial;
            }
            let at = usize::from(typed);
            let length =
                u32::from_be_bytes(self.head[at..at + 4].try_into().expect("4 bytes")) as usize;
            // The length counts itself, not the type; untyped, the code too.
            let counted = if typed { 4 } else { 8 };
            if length < counted || length > 1 << 30 {
                return Framed::Invalid;
            }
            self.kind = self.head[0];
            self.first = None;
            self.left = length - counted;
            if self.left == 0 {
                return self.finish(typed);
            }
        }
        if self.left > 0 && !rest.is_empty() {
            if self.first.is_none() {
                self.first = Some(rest[0]);
            }
            let take = self.left.min(rest.len());
            self.left -= take;
            *rest = &rest[take..];
            if self.left == 0 {
                return self.finish(typed);
            }
        }
        Framed::Partial
    }

    fn finish(&mut self, typed: bool) -> Framed {
        self.have = 0;
        if typed {
            Framed::Typed {
                kind: self.kind,
                first: self.first,
            }
        } else {
            Framed::Untyped {
                length: u32::from_be_bytes(self.head[0..4].try_into().expect("4 bytes")) as usize,
                code: u32::from_be_bytes(self.head[4..8].try_into().expect("4 bytes")),
            }
        }
    }
}

fn unreachable_message(primary: &WriterTarget, why: &str) -> String {
    format!(
        "tern writer proxy: the primary of cluster {} (epoch {}, {}) cannot be reached: {why}",
        primary.cluster, primary.epoch, primary.addr
    )
}

async fn refuse(
    shared: &Shared,
    mut client: TcpStream,
    peer: SocketAddr,
    message: &str,
    stop: &CancellationToken,
) {
    shared.refused.fetch_add(1, Ordering::Relaxed);
    tracing::debug!(cluster = %shared.cluster, %peer, %message, "connection refused");
    tokio::select! {
        _ = stop.cancelled() => {}
        r = tokio::time::timeout(HANDSHAKE_TIMEOUT, answer_with_error(&mut client, message)) => {
            match r {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "refused client left before the answer"),
                Err(_) => tracing::debug!(%peer, "refused client sent no startup message in time"),
            }
        }
    }
}

/// Declines encryption requests, reads the client's startup message, and
/// answers it with a `FATAL` error carrying `message`. Unbounded input is
/// not read: a packet over [`MAX_STARTUP_PACKET`] is an error, and the
/// caller closes the connection.
pub async fn answer_with_error<S>(client: &mut S, message: &str) -> io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    // A client may ask for GSSAPI encryption, then TLS, before starting up.
    for _ in 0..3 {
        let (length, code) = read_startup_packet(client).await?;
        match code {
            SSL_REQUEST | GSSENC_REQUEST if length == 8 => {
                client.write_all(b"N").await?;
                client.flush().await?;
            }
            // Nothing runs here that could be cancelled.
            CANCEL_REQUEST if length == 16 => return Ok(()),
            _ => {
                client
                    .write_all(&error_response(CANNOT_CONNECT_NOW, message))
                    .await?;
                client.shutdown().await?;
                return Ok(());
            }
        }
    }
    Err(io::Error::new(
        io::ErrorKind::InvalidData,
        "too many encryption requests",
    ))
}

/// Reads one untyped startup-phase packet (length, then a 32-bit code and
/// the rest) and returns its length and code.
async fn read_startup_packet<S: AsyncRead + Unpin>(client: &mut S) -> io::Result<(usize, u32)> {
    let length = client.read_u32().await? as usize;
    if !(8..=MAX_STARTUP_PACKET).contains(&length) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("a startup packet of {length} bytes"),
        ));
    }
    let code = client.read_u32().await?;
    let mut rest = vec![0; length - 8];
    client.read_exact(&mut rest).await?;
    Ok((length, code))
}

/// A protocol-3 `ErrorResponse` of severity `FATAL`.
pub fn error_response(sqlstate: &str, message: &str) -> Vec<u8> {
    let mut body = Vec::with_capacity(message.len() + 32);
    for (field, value) in [
        (b'S', "FATAL"),
        (b'V', "FATAL"),
        (b'C', sqlstate),
        (b'M', message),
    ] {
        body.push(field);
        // Fields are NUL-terminated strings: a NUL inside would end one early.
        body.extend(value.bytes().filter(|b| *b != 0));
        body.push(0);
    }
    body.push(0);
    let mut packet = Vec::with_capacity(body.len() + 5);
    packet.push(b'E');
    packet.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
    packet.extend_from_slice(&body);
    packet
}

#[cfg(test)]
mod tests {
    use super::*;

    fn writable(port: u16, epoch: u64) -> Target {
        Target::Writable(WriterTarget {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            epoch,
            cluster: "orders".into(),
        })
    }

    fn startup_message() -> Vec<u8> {
        let mut body = 196_608u32.to_be_bytes().to_vec();
        body.extend_from_slice(b"user\0postgres\0\0");
        let mut packet = ((body.len() + 4) as u32).to_be_bytes().to_vec();
        packet.extend(body);
        packet
    }

    #[test]
    fn an_error_response_is_well_formed() {
        let packet = error_response("57P03", "no\0primary");
        assert_eq!(packet[0], b'E');
        let length = u32::from_be_bytes(packet[1..5].try_into().unwrap()) as usize;
        assert_eq!(length, packet.len() - 1);
        assert_eq!(
            &packet[5..],
            b"SFATAL\0VFATAL\0C57P03\0Mnoprimary\0\0".as_slice()
        );
    }

    #[tokio::test]
    async fn an_ssl_request_is_declined_then_the_startup_is_refused() {
        let (mut client, mut proxy) = tokio::io::duplex(1024);
        let answer = tokio::spawn(async move { answer_with_error(&mut proxy, "closed").await });
        client.write_all(&8u32.to_be_bytes()).await.unwrap();
        client.write_all(&SSL_REQUEST.to_be_bytes()).await.unwrap();
        assert_eq!(client.read_u8().await.unwrap(), b'N');
        client.write_all(&startup_message()).await.unwrap();
        let mut reply = Vec::new();
        client.read_to_end(&mut reply).await.unwrap();
        assert_eq!(reply, error_response(CANNOT_CONNECT_NOW, "closed"));
        answer.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn an_oversized_startup_packet_gets_no_answer() {
        let (mut client, mut proxy) = tokio::io::duplex(1024);
        let answer = tokio::spawn(async move { answer_with_error(&mut proxy, "closed").await });
        client.write_all(&1_000_000u32.to_be_bytes()).await.unwrap();
        assert!(answer.await.unwrap().is_err());
        let mut reply = Vec::new();
        client.read_to_end(&mut reply).await.unwrap();
        assert!(reply.is_empty(), "{reply:?}");
    }

    /// A typed protocol message.
    fn msg(kind: u8, body: &[u8]) -> Vec<u8> {
        let mut m = vec![kind];
        m.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
        m.extend_from_slice(body);
        m
    }

    fn ready(status: u8) -> Vec<u8> {
        msg(b'Z', &[status])
    }

    /// The server's answer to a startup: authentication ok, a parameter,
    /// the backend key, ready.
    fn startup_answer() -> Vec<u8> {
        let mut m = msg(b'R', &0u32.to_be_bytes());
        m.extend(msg(b'S', b"server_version\x0015\x00"));
        m.extend(msg(b'K', &[0; 8]));
        m.extend(ready(b'I'));
        m
    }

    fn started() -> Session {
        let mut s = Session::default();
        s.client_sent(&startup_message());
        assert!(!s.idle(), "idle before the server answered the startup");
        s.primary_sent(&startup_answer());
        assert!(s.idle());
        s
    }

    #[test]
    fn a_session_is_idle_only_between_transactions() {
        let mut s = started();
        s.client_sent(&msg(b'Q', b"BEGIN\x00"));
        assert!(!s.idle(), "a query in flight");
        s.primary_sent(&msg(b'C', b"BEGIN\x00"));
        assert!(!s.idle(), "its ReadyForQuery has not come");
        s.primary_sent(&ready(b'T'));
        assert!(!s.idle(), "a transaction is open");
        s.client_sent(&msg(b'Q', b"COMMIT\x00"));
        s.primary_sent(&msg(b'C', b"COMMIT\x00"));
        s.primary_sent(&ready(b'I'));
        assert!(s.idle());
        // A failed transaction is still open.
        s.client_sent(&msg(b'Q', b"BEGIN; SELECT 1/0\x00"));
        s.primary_sent(&ready(b'E'));
        assert!(!s.idle());
    }

    #[test]
    fn pipelined_requests_keep_a_session_busy_until_the_last_answer() {
        let mut s = started();
        // Extended protocol: nothing is owed before the Sync, but the
        // batch is open.
        let mut batch = msg(b'P', b"\x00INSERT\x00\x00\x00");
        batch.extend(msg(b'B', b"\x00\x00\x00\x00\x00\x00\x00\x00"));
        batch.extend(msg(b'E', b"\x00\x00\x00\x00\x00"));
        s.client_sent(&batch);
        assert!(!s.idle(), "a batch without its Sync");
        s.client_sent(&msg(b'S', b""));
        s.client_sent(&msg(b'Q', b"SELECT 1\x00"));
        s.primary_sent(&msg(b'1', b""));
        s.primary_sent(&ready(b'I'));
        assert!(!s.idle(), "the second request is unanswered");
        s.primary_sent(&ready(b'I'));
        assert!(s.idle());
    }

    #[test]
    fn message_boundaries_are_followed_across_any_split() {
        let mut client = startup_message();
        client.extend(msg(b'Q', b"SELECT 1\x00"));
        let mut server = startup_answer();
        server.extend(msg(b'T', &[0; 20]));
        server.extend(msg(b'D', &[0; 11]));
        server.extend(msg(b'C', b"SELECT 1\x00"));
        server.extend(ready(b'I'));
        for chunk in [1, 2, 3, 5, 7, 64] {
            let mut s = Session::default();
            // The startup, then its answer, then the query and its answer.
            let (startup, query) = client.split_at(startup_message().len());
            let (welcome, answer) = server.split_at(startup_answer().len());
            for c in startup.chunks(chunk) {
                s.client_sent(c);
            }
            for c in welcome.chunks(chunk) {
                s.primary_sent(c);
            }
            assert!(s.idle(), "chunks of {chunk}");
            for c in query.chunks(chunk) {
                s.client_sent(c);
                assert!(!s.idle(), "chunks of {chunk}");
            }
            let pieces: Vec<&[u8]> = answer.chunks(chunk).collect();
            for (i, c) in pieces.iter().enumerate() {
                s.primary_sent(c);
                assert_eq!(
                    s.idle(),
                    i + 1 == pieces.len(),
                    "chunks of {chunk}, piece {i}"
                );
            }
        }
    }

    #[test]
    fn an_encrypted_or_unknown_session_is_never_idle() {
        let ssl = [8u32.to_be_bytes(), SSL_REQUEST.to_be_bytes()].concat();
        // TLS accepted: the rest is opaque.
        let mut s = Session::default();
        s.client_sent(&ssl);
        s.primary_sent(b"S");
        s.client_sent(&startup_message());
        s.primary_sent(&startup_answer());
        assert!(!s.idle());
        // TLS declined: the startup follows in clear.
        let mut s = Session::default();
        s.client_sent(&ssl);
        s.primary_sent(b"N");
        s.client_sent(&startup_message());
        s.primary_sent(&startup_answer());
        assert!(s.idle());
        // A cancel request, or something that is not PostgreSQL.
        for first in [
            [
                16u32.to_be_bytes(),
                CANCEL_REQUEST.to_be_bytes(),
                [0; 4],
                [0; 4],
            ]
            .concat(),
            b"GET / HTTP/1.1\r\n\r\n".to_vec(),
        ] {
            let mut s = Session::default();
            s.client_sent(&first);
            s.primary_sent(&startup_answer());
            assert!(!s.idle());
        }
    }

    #[tokio::test]
    async fn targets_only_move_forward_and_stay_in_their_cluster() {
        let (proxy, _task) =
            WriterProxy::bind(([127, 0, 0, 1], 0).into(), "orders", writable(1, 5))
                .await
                .unwrap();
        assert_eq!(
            proxy.set_target(writable(2, 4)),
            Err(TargetRejected::Stale {
                offered: 4,
                applied: 5
            })
        );
        let other = Target::Writable(WriterTarget {
            addr: SocketAddr::from(([127, 0, 0, 1], 3)),
            epoch: 6,
            cluster: "billing".into(),
        });
        assert!(matches!(
            proxy.set_target(other),
            Err(TargetRejected::OtherCluster { .. })
        ));
        assert_eq!(proxy.target(), writable(1, 5));
        // Closing keeps the highest epoch: an older primary stays refused.
        proxy
            .set_target(Target::Closed {
                reason: "failover".into(),
            })
            .unwrap();
        assert!(proxy.set_target(writable(2, 4)).is_err());
        proxy.set_target(writable(2, 6)).unwrap();
        assert_eq!(proxy.target(), writable(2, 6));
    }

    #[tokio::test]
    async fn the_same_target_again_is_no_change() {
        let (proxy, _task) =
            WriterProxy::bind(([127, 0, 0, 1], 0).into(), "orders", writable(1, 5))
                .await
                .unwrap();
        let before = proxy.shared.current.borrow().generation;
        proxy.set_target(writable(1, 5)).unwrap();
        assert_eq!(proxy.shared.current.borrow().generation, before);
        proxy.set_target(writable(2, 5)).unwrap();
        assert_eq!(proxy.shared.current.borrow().generation, before + 1);
    }

    #[tokio::test]
    async fn a_proxy_does_not_start_on_another_clusters_primary() {
        let initial = Target::Writable(WriterTarget {
            addr: SocketAddr::from(([127, 0, 0, 1], 1)),
            epoch: 1,
            cluster: "billing".into(),
        });
        assert!(
            WriterProxy::bind(([127, 0, 0, 1], 0).into(), "orders", initial)
                .await
                .is_err()
        );
    }
}
