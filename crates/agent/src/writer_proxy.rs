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
        });
        Ok((
            WriterProxy {
                shared: shared.clone(),
            },
            ProxyTask { listener, shared },
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
    /// Accepts connections until `stop` fires, then ends every open
    /// connection and returns once their tasks have finished.
    pub async fn run(self, stop: CancellationToken) {
        let ProxyTask { listener, shared } = self;
        let connections = TaskTracker::new();
        loop {
            let accepted = tokio::select! {
                _ = stop.cancelled() => break,
                r = listener.accept() => r,
            };
            match accepted {
                Ok((client, peer)) => {
                    shared.accepted.fetch_add(1, Ordering::Relaxed);
                    let active = ActiveGuard::new(&shared);
                    connections.spawn(serve(shared.clone(), client, peer, stop.clone(), active));
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
        drop(listener);
        connections.close();
        connections.wait().await;
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
    /// The primary could not be reached; the message for the client.
    Unreachable(String),
}

async fn serve(
    shared: Arc<Shared>,
    mut client: TcpStream,
    peer: SocketAddr,
    stop: CancellationToken,
    _active: ActiveGuard,
) {
    let mut current = shared.current.subscribe();
    if let Some(until) = shared.hold_until.get().copied() {
        // Waits for the first target while the hold lasts (generation 0:
        // nothing was set since the bind).
        tokio::select! {
            _ = current.wait_for(|c| c.generation > 0) => {}
            () = tokio::time::sleep_until(until) => {}
            () = stop.cancelled() => return,
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
            refuse(&shared, client, peer, &message, &stop).await;
            return;
        }
    };
    if let Some(until) = made_under.valid_until {
        if tokio::time::Instant::now() >= until {
            let message = format!(
                "tern writer proxy: no writable primary for cluster {}: the lease of epoch {} has not been seen renewed in time (the writer may be cut off; failing closed)",
                shared.cluster, primary.epoch
            );
            refuse(&shared, client, peer, &message, &stop).await;
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
        () = stop.cancelled() => Relay::Stopped,
        r = relay(&mut client, &primary) => r,
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
            refuse(&shared, client, peer, &message, &stop).await;
        }
        ended => {
            drop(client);
            if matches!(ended, Relay::Cut) {
                shared.cut.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(cluster = %shared.cluster, %peer, epoch = primary.epoch, "connection cut: the writer target changed");
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

async fn relay(client: &mut TcpStream, primary: &WriterTarget) -> Relay {
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
    match tokio::io::copy_bidirectional(client, &mut upstream).await {
        Ok((sent, received)) => {
            tracing::debug!(epoch = primary.epoch, sent, received, "connection ended")
        }
        Err(e) => tracing::debug!(epoch = primary.epoch, error = %e, "connection ended"),
    }
    Relay::Done
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
