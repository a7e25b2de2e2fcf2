//! A userspace WAN emulator for the one-machine lab.
//!
//! Every cross-region TCP path in the lab goes through a [`Wan`] link: a listener that accepts
//! connections and forwards them to a target, adding a one-way delay in each direction without
//! throttling bandwidth. Links carry two labels, `from` and `to` (region names, or labels such as
//! `clients@us-east`), and faults are set on regions or region pairs by label: a blackhole makes
//! packets vanish and connections hang, as in a real partition, while a reset closes connections
//! with an RST. Each link publishes its effective fault on a `watch` channel so that a change
//! reaches existing connections immediately.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// A fault applied to a link. Variants are ordered by strength, so the effective fault of a link
/// is the maximum of the faults that apply to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub enum Fault {
    /// Traffic flows, with the link's delay.
    None,
    /// Nothing is delivered in either direction; connections hang until the fault changes.
    Blackhole,
    /// Existing connections are reset and new ones are reset as soon as they are accepted.
    Reset,
}

/// Bytes read from a socket in one go; also the unit queued for delayed delivery.
const CHUNK: usize = 16 * 1024;
/// Chunks in flight per direction. With 16 KiB chunks this lets about 4 MiB be in flight, so
/// the delay does not throttle lab traffic even at the longest emulated round trips.
const QUEUE: usize = 256;

/// The emulator: a set of links and the faults applied to them. Cloning gives another handle to
/// the same emulator.
#[derive(Clone)]
pub struct Wan {
    inner: Arc<Inner>,
}

struct Inner {
    state: Mutex<State>,
    cancel: CancellationToken,
    tasks: TaskTracker,
}

/// Dropping the last handle stops the emulator; otherwise its tasks would outlive every way of
/// controlling them.
impl Drop for Inner {
    fn drop(&mut self) {
        self.cancel.cancel();
        self.tasks.close();
    }
}

#[derive(Default)]
struct State {
    region_faults: HashMap<String, Fault>,
    /// Keyed by the two labels in sorted order, since a pair fault applies in both directions.
    pair_faults: HashMap<(String, String), Fault>,
    links: Vec<Link>,
}

struct Link {
    from: String,
    to: String,
    local: SocketAddr,
    fault: watch::Sender<Fault>,
}

/// A description of one link, as returned by [`Wan::links`].
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct LinkInfo {
    pub from: String,
    pub to: String,
    pub listen: SocketAddr,
    pub fault: Fault,
}

fn pair_key(a: &str, b: &str) -> (String, String) {
    if a <= b {
        (a.to_owned(), b.to_owned())
    } else {
        (b.to_owned(), a.to_owned())
    }
}

impl State {
    fn effective(&self, from: &str, to: &str) -> Fault {
        let region = |r: &str| self.region_faults.get(r).copied().unwrap_or(Fault::None);
        let pair = self
            .pair_faults
            .get(&pair_key(from, to))
            .copied()
            .unwrap_or(Fault::None);
        region(from).max(region(to)).max(pair)
    }

    /// Pushes each link's effective fault to its connections, waking them only on a change.
    fn publish(&self) {
        for link in &self.links {
            let fault = self.effective(&link.from, &link.to);
            link.fault.send_if_modified(|current| {
                let changed = *current != fault;
                *current = fault;
                changed
            });
        }
    }
}

impl Default for Wan {
    fn default() -> Self {
        Self::new()
    }
}

impl Wan {
    pub fn new() -> Wan {
        Wan {
            inner: Arc::new(Inner {
                state: Mutex::new(State::default()),
                cancel: CancellationToken::new(),
                tasks: TaskTracker::new(),
            }),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // The state stays consistent even if a holder panicked: every update is a single insert.
        self.inner
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Listens on `listen` (port 0 allowed), forwards every accepted connection to `target` with
    /// `one_way_delay` added in each direction. `from` and `to` are labels (region names, or e.g.
    /// "clients@us-east") used to select links for faults. Returns the bound address.
    pub async fn add_link(
        &self,
        from: &str,
        to: &str,
        listen: SocketAddr,
        target: SocketAddr,
        one_way_delay: Duration,
    ) -> io::Result<SocketAddr> {
        if self.inner.cancel.is_cancelled() {
            return Err(io::Error::other("the WAN emulator is shut down"));
        }
        let listener = TcpListener::bind(listen).await?;
        let local = listener.local_addr()?;
        let fault = {
            let mut state = self.state();
            let initial = state.effective(from, to);
            let (tx, rx) = watch::channel(initial);
            state.links.push(Link {
                from: from.to_owned(),
                to: to.to_owned(),
                local,
                fault: tx,
            });
            rx
        };
        let link = LinkTask {
            label: format!("{from}->{to}"),
            target,
            delay: one_way_delay,
            fault,
            cancel: self.inner.cancel.clone(),
            tasks: self.inner.tasks.clone(),
        };
        self.inner.tasks.spawn(link.accept_loop(listener));
        tracing::debug!(from, to, %local, %target, ?one_way_delay, "wan link added");
        Ok(local)
    }

    /// Fault on every link with from == region or to == region.
    pub fn set_region_fault(&self, region: &str, fault: Fault) {
        let mut state = self.state();
        if fault == Fault::None {
            state.region_faults.remove(region);
        } else {
            state.region_faults.insert(region.to_owned(), fault);
        }
        state.publish();
        tracing::info!(region, ?fault, "wan region fault set");
    }

    /// Fault on every link between a and b, either direction.
    pub fn set_pair_fault(&self, a: &str, b: &str, fault: Fault) {
        let mut state = self.state();
        let key = pair_key(a, b);
        if fault == Fault::None {
            state.pair_faults.remove(&key);
        } else {
            state.pair_faults.insert(key, fault);
        }
        state.publish();
        tracing::info!(a, b, ?fault, "wan pair fault set");
    }

    /// Clear all faults.
    pub fn heal(&self) {
        let mut state = self.state();
        state.region_faults.clear();
        state.pair_faults.clear();
        state.publish();
        tracing::info!("wan healed");
    }

    /// The effective fault between two labels, whether or not a link joins them.
    pub fn fault_between(&self, from: &str, to: &str) -> Fault {
        self.state().effective(from, to)
    }

    /// Every link added so far, with its current effective fault.
    pub fn links(&self) -> Vec<LinkInfo> {
        self.state()
            .links
            .iter()
            .map(|link| LinkInfo {
                from: link.from.clone(),
                to: link.to.clone(),
                listen: link.local,
                fault: *link.fault.borrow(),
            })
            .collect()
    }

    /// Stop all listeners and close all connections.
    pub fn shutdown(&self) {
        self.inner.cancel.cancel();
        self.inner.tasks.close();
    }

    /// Waits until every listener and connection task has finished after [`Wan::shutdown`].
    pub async fn wait_closed(&self) {
        self.inner.tasks.wait().await;
    }
}

/// What one link's tasks need; cloned into every connection.
#[derive(Clone)]
struct LinkTask {
    label: String,
    target: SocketAddr,
    delay: Duration,
    fault: watch::Receiver<Fault>,
    cancel: CancellationToken,
    tasks: TaskTracker,
}

impl LinkTask {
    async fn accept_loop(self, listener: TcpListener) {
        loop {
            let accepted = tokio::select! {
                _ = self.cancel.cancelled() => return,
                accepted = listener.accept() => accepted,
            };
            match accepted {
                Ok((client, _peer)) => {
                    let conn = self.clone();
                    self.tasks.spawn(conn.connection(client));
                }
                Err(err) => {
                    // Accept errors such as EMFILE are transient; back off briefly rather than
                    // spinning on them.
                    tracing::warn!(link = %self.label, %err, "wan accept failed");
                    tokio::select! {
                        _ = self.cancel.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                    }
                }
            }
        }
    }

    async fn connection(mut self, client: TcpStream) {
        let _ = client.set_nodelay(true);
        let fault = *self.fault.borrow_and_update();
        match fault {
            Fault::Reset => reset(client),
            Fault::Blackhole => self.swallow(client).await,
            Fault::None => {
                let upstream = tokio::select! {
                    _ = self.cancel.cancelled() => return reset(client),
                    upstream = TcpStream::connect(self.target) => upstream,
                };
                match upstream {
                    Ok(upstream) => {
                        let _ = upstream.set_nodelay(true);
                        self.forward(client, upstream).await;
                    }
                    Err(err) => {
                        tracing::debug!(link = %self.label, %err, "wan upstream connect failed");
                        reset(client);
                    }
                }
            }
        }
    }

    /// Holds a connection accepted during a blackhole: it is never connected upstream and gets
    /// no answer. Whatever the client sends is discarded, so the connection cannot carry a
    /// coherent byte stream later; once the fault changes it is reset, and the client retries
    /// on a fresh connection, much as a real client's connection attempt would have timed out.
    async fn swallow(mut self, mut client: TcpStream) {
        let mut buf = vec![0u8; CHUNK];
        loop {
            tokio::select! {
                _ = self.cancel.cancelled() => break,
                changed = self.fault.changed() => {
                    if changed.is_err() || *self.fault.borrow_and_update() != Fault::Blackhole {
                        break;
                    }
                }
                read = client.read(&mut buf) => {
                    if matches!(read, Ok(0) | Err(_)) {
                        // The client gave up; there is nothing left to hold.
                        return;
                    }
                }
            }
        }
        reset(client);
    }

    async fn forward(self, mut client: TcpStream, mut upstream: TcpStream) {
        let reset_both = {
            let (client_read, client_write) = client.split();
            let (upstream_read, upstream_write) = upstream.split();
            let there = pipe(client_read, upstream_write, self.delay, self.fault.clone());
            let back = pipe(upstream_read, client_write, self.delay, self.fault.clone());
            let mut fault = self.fault.clone();
            tokio::select! {
                // Polled first so that a reset wins over a write woken by the same change.
                biased;
                _ = self.cancel.cancelled() => true,
                _ = fault.wait_for(|f| *f == Fault::Reset) => true,
                done = async { tokio::try_join!(there, back) } => done.is_err(),
            }
        };
        if reset_both {
            reset(client);
            reset(upstream);
        }
    }
}

/// Closes a socket with an RST instead of a FIN.
fn reset(stream: TcpStream) {
    let _ = stream.set_zero_linger();
    drop(stream);
}

enum Segment {
    Data(Instant, Bytes),
    Eof(Instant),
}

/// Carries one direction of a connection: a reader stamps each chunk with its delivery time and
/// queues it, a writer delivers it at that time. Keeping the two apart adds latency without
/// limiting throughput. An error in either half ends the connection with a reset.
async fn pipe<R, W>(
    mut reader: R,
    mut writer: W,
    delay: Duration,
    fault: watch::Receiver<Fault>,
) -> io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let (tx, mut rx) = mpsc::channel::<Segment>(QUEUE);
    let read_side = async move {
        let mut buf = BytesMut::with_capacity(CHUNK);
        loop {
            buf.reserve(CHUNK);
            let n = reader.read_buf(&mut (&mut buf).limit(CHUNK)).await?;
            let at = Instant::now() + delay;
            let segment = if n == 0 {
                Segment::Eof(at)
            } else {
                Segment::Data(at, buf.split().freeze())
            };
            let eof = n == 0;
            if tx.send(segment).await.is_err() || eof {
                return Ok::<(), io::Error>(());
            }
        }
    };
    let write_side = async move {
        let mut fault = fault;
        while let Some(segment) = rx.recv().await {
            let at = match &segment {
                Segment::Data(at, _) | Segment::Eof(at) => *at,
            };
            deliverable(&mut fault, at).await;
            match segment {
                Segment::Data(_, bytes) => writer.write_all(&bytes).await?,
                Segment::Eof(_) => {
                    writer.shutdown().await?;
                    break;
                }
            }
        }
        Ok::<(), io::Error>(())
    };
    tokio::try_join!(read_side, write_side).map(|_| ())
}

/// Waits until `at` has passed and the link is not blackholed. Bytes held during a blackhole
/// are delivered when it heals, as TCP retransmission would deliver them.
async fn deliverable(fault: &mut watch::Receiver<Fault>, at: Instant) {
    tokio::time::sleep_until(at).await;
    if fault.wait_for(|f| *f != Fault::Blackhole).await.is_err() {
        // The link is gone, so the connection is being torn down anyway.
        std::future::pending::<()>().await;
    }
}
