//! The edge's authoritative DNS server.
//!
//! [`authority::Authority`] holds the compiled zones and answers one query
//! (bytes in, bytes out). [`DnsServer`] carries queries to it:
//! - UDP, the hot path: one thread per worker, each blocking on its own
//!   SO_REUSEPORT socket bound to the same address, answering in place
//!   without a task or a channel per packet (as the HTTP edge's workers do for
//!   connections), from a per-worker [`cache::AnswerCache`] of encoded answers
//!   that is used only while the health they were computed from holds;
//! - TCP, for truncated answers and zone tooling: hickory-server's `Server`
//!   (framing, pipelining, idle timeouts) with a handler that calls the same
//!   `respond`.
//!
//! [`probe`] runs the targets' own health checks; targets that follow a
//! service backend read the HTTP path's health trackers directly.

pub mod authority;
pub mod cache;
pub mod probe;
mod udp;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::ResponseCode;
use hickory_proto::op::{Header, HeaderCounts, Message, MessageType, Metadata, OpCode};
use hickory_server::net::runtime::Time;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;
use socket2::{Domain, Protocol, Socket, Type};
use tokio_util::sync::CancellationToken;

use crate::state::EdgeState;
use authority::Transport;

/// Close a TCP client that sends no query for this long.
const TCP_IDLE: Duration = Duration::from_secs(10);
/// How often a blocked UDP worker wakes up to look for shutdown.
const UDP_WAKE: Duration = Duration::from_millis(100);

pub struct DnsServer {
    udp: Vec<std::net::UdpSocket>,
    tcp: tokio::net::TcpListener,
    local_addr: SocketAddr,
}

impl DnsServer {
    /// Binds `workers` UDP sockets and one TCP listener on `addr` (port 0
    /// picks one port for all of them).
    pub fn bind(addr: SocketAddr, workers: usize) -> std::io::Result<DnsServer> {
        let mut first = reuseport_udp(addr)?;
        let mut local_addr = first.local_addr()?;
        // TCP takes the port UDP got; when `addr` asked for any port, a TCP
        // clash on that port is retried with a fresh UDP port.
        let mut attempt = 0;
        let tcp = loop {
            match std::net::TcpListener::bind(local_addr) {
                Ok(t) => break t,
                Err(e) if addr.port() != 0 || attempt >= 8 => return Err(e),
                Err(_) => {
                    attempt += 1;
                    first = reuseport_udp(addr)?;
                    local_addr = first.local_addr()?;
                }
            }
        };
        tcp.set_nonblocking(true)?;
        let mut udp = vec![first];
        for _ in 1..workers.max(1) {
            udp.push(reuseport_udp(local_addr)?);
        }
        Ok(DnsServer {
            udp,
            tcp: tokio::net::TcpListener::from_std(tcp)?,
            local_addr,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Serves until `shutdown` is cancelled; returns once every worker stopped.
    pub async fn run(self, state: Arc<EdgeState>, shutdown: CancellationToken) {
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for (i, socket) in self.udp.into_iter().enumerate() {
            let state = state.clone();
            let stop = stop.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("tern-dns-{i}"))
                .spawn(move || udp_worker(socket, state, stop));
            match spawned {
                Ok(t) => threads.push(t),
                Err(e) => tracing::error!(error = %e, "cannot start a DNS worker thread"),
            }
        }
        let mut tcp = hickory_server::Server::new(TcpHandler {
            state: state.clone(),
        });
        tcp.register_listener(self.tcp, TCP_IDLE, 64);
        tracing::info!(listen = %self.local_addr, udp_workers = threads.len(), "dns serving");
        shutdown.cancelled().await;
        stop.store(true, Ordering::Relaxed);
        if let Err(e) = tcp.shutdown_gracefully().await {
            tracing::debug!(error = %e, "dns tcp server stopped with an error");
        }
        let _ = tokio::task::spawn_blocking(move || {
            for t in threads {
                let _ = t.join();
            }
        })
        .await;
    }
}

fn reuseport_udp(addr: SocketAddr) -> std::io::Result<std::net::UdpSocket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    // Bursts of queries queue in the kernel rather than being dropped.
    let _ = socket.set_recv_buffer_size(4 << 20);
    socket.bind(&addr.into())?;
    socket.set_read_timeout(Some(UDP_WAKE))?;
    Ok(socket.into())
}

/// One thread answering queries from its own socket until `stop`, a batch
/// of waiting queries at a time.
fn udp_worker(socket: std::net::UdpSocket, state: Arc<EdgeState>, stop: Arc<AtomicBool>) {
    let Some(authority) = state.dns.as_ref() else {
        return;
    };
    let mut batch = udp::Batch::new();
    // Answer buffers are reused from batch to batch; `used` of them are live.
    let mut answers: Vec<(Vec<u8>, SocketAddr)> = Vec::with_capacity(udp::BATCH);
    let unspecified = SocketAddr::from(([0, 0, 0, 0], 0));
    let mut cache = cache::AnswerCache::default();
    while !stop.load(Ordering::Relaxed) {
        let n = match batch.receive(&socket) {
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock
                        | std::io::ErrorKind::TimedOut
                        | std::io::ErrorKind::Interrupted
                ) =>
            {
                continue
            }
            Err(e) => {
                // ICMP errors from earlier sends surface here; keep serving.
                tracing::debug!(error = %e, "dns udp receive failed");
                continue;
            }
        };
        let mut used = 0;
        for i in 0..n {
            let Some((query, src)) = batch.get(i) else {
                continue;
            };
            if answers.len() == used {
                answers.push((Vec::with_capacity(512), unspecified));
            }
            let (buf, to) = &mut answers[used];
            if cache.respond_into(authority, &state.services, query, src, buf) {
                *to = src;
                used += 1;
            }
        }
        udp::send_all(&socket, &answers[..used]);
        cache.flush_counts(authority);
    }
}

/// hickory-server's TCP front end, answering through [`authority::Authority::respond`].
struct TcpHandler {
    state: Arc<EdgeState>,
}

#[async_trait::async_trait]
impl RequestHandler for TcpHandler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        mut response_handle: R,
    ) -> ResponseInfo {
        let fallback = |code: ResponseCode| {
            let mut metadata =
                Metadata::new(request.metadata.id, MessageType::Response, OpCode::Query);
            metadata.response_code = code;
            ResponseInfo::from(Header {
                metadata,
                counts: HeaderCounts::default(),
            })
        };
        let Some(authority) = self.state.dns.as_ref() else {
            return fallback(ResponseCode::Refused);
        };
        let Some(bytes) = authority.respond(
            &self.state.services,
            request.as_slice(),
            request.src(),
            Transport::Tcp,
        ) else {
            return fallback(ResponseCode::FormErr);
        };
        // The answer was built as wire bytes for UDP and TCP alike; hickory's
        // TCP framing takes it as a message.
        let Ok(message) = Message::from_vec(&bytes) else {
            return fallback(ResponseCode::ServFail);
        };
        let builder = MessageResponseBuilder::new(&request.queries, message.edns.as_ref());
        let response = builder.build(
            message.metadata,
            message.answers.iter(),
            message.authorities.iter(),
            std::iter::empty(),
            message.additionals.iter(),
        );
        match response_handle.send_response(response).await {
            Ok(info) => info,
            Err(e) => {
                tracing::debug!(error = %e, "dns tcp send failed");
                fallback(ResponseCode::ServFail)
            }
        }
    }
}
