//! Tests of the WAN emulator against a loopback echo server: delay, bandwidth, blackhole,
//! reset, fault scoping by region and pair, half-close and shutdown.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tern_lab::wan::{Fault, Wan};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::{timeout, Instant};

const DELAY: Duration = Duration::from_millis(20);
/// How long a read must stay silent to count as hanging; many times the link's round trip.
const HANG: Duration = Duration::from_millis(300);
/// An upper bound for things that must happen promptly, generous for a loaded machine.
const PROMPT: Duration = Duration::from_secs(2);

fn any_port() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

/// Starts an echo server that shuts its write side when the client does. Each connection's
/// end is reported on the returned channel, with the error if it ended in one.
async fn echo_server() -> (SocketAddr, mpsc::UnboundedReceiver<io::Result<()>>) {
    let listener = TcpListener::bind(any_port()).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let result = async {
                    let (mut r, mut w) = stream.split();
                    tokio::io::copy(&mut r, &mut w).await?;
                    w.shutdown().await
                }
                .await;
                let _ = tx.send(result);
            });
        }
    });
    (addr, rx)
}

async fn link(wan: &Wan, from: &str, to: &str, target: SocketAddr) -> SocketAddr {
    wan.add_link(from, to, any_port(), target, DELAY)
        .await
        .unwrap()
}

/// Sends `msg` and reads the same number of bytes back.
async fn round_trip(stream: &mut TcpStream, msg: &[u8]) -> io::Result<Vec<u8>> {
    stream.write_all(msg).await?;
    let mut buf = vec![0u8; msg.len()];
    stream.read_exact(&mut buf).await?;
    Ok(buf)
}

async fn connected(addr: SocketAddr) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let echoed = timeout(PROMPT, round_trip(&mut stream, b"hello"))
        .await
        .expect("round trip through a healthy link timed out")
        .unwrap();
    assert_eq!(echoed, b"hello");
    stream
}

/// Asserts that nothing at all arrives on `stream` for [`HANG`].
async fn assert_hangs(stream: &mut TcpStream) {
    let mut buf = [0u8; 16];
    if let Ok(read) = timeout(HANG, stream.read(&mut buf)).await {
        panic!("expected the connection to hang, got {read:?}");
    }
}

/// Asserts that the connection is closed (EOF or error) promptly.
async fn assert_closed(stream: &mut TcpStream) {
    let mut buf = [0u8; 16];
    match timeout(PROMPT, stream.read(&mut buf)).await {
        Err(_) => panic!("the connection was not closed"),
        Ok(Ok(n)) if n > 0 => panic!("expected the connection closed, read {n} bytes"),
        Ok(_) => {}
    }
}

#[tokio::test]
async fn round_trip_pays_the_delay_both_ways() {
    let (echo, _) = echo_server().await;
    let wan = Wan::new();
    let addr = link(&wan, "clients@r1", "r2", echo).await;
    let mut stream = connected(addr).await;

    let started = Instant::now();
    let echoed = round_trip(&mut stream, b"ping").await.unwrap();
    let rtt = started.elapsed();
    assert_eq!(echoed, b"ping");
    assert!(
        rtt >= 2 * DELAY,
        "round trip {rtt:?} is shorter than twice the delay"
    );
    assert!(
        rtt < 2 * DELAY + Duration::from_millis(500),
        "round trip {rtt:?} is far too long"
    );
}

#[tokio::test]
async fn delay_does_not_throttle_bandwidth() {
    let (echo, _) = echo_server().await;
    let wan = Wan::new();
    let addr = link(&wan, "r1", "r2", echo).await;
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut r, mut w) = stream.into_split();

    // 4 MiB is at least 256 chunks each way; paying the delay per chunk would take over 10 s.
    let data: Vec<u8> = (0..4 * 1024 * 1024).map(|i| (i % 251) as u8).collect();
    let expected = data.clone();
    let started = Instant::now();
    let writer = tokio::spawn(async move {
        w.write_all(&data).await.unwrap();
        w.shutdown().await.unwrap();
    });
    let mut echoed = Vec::new();
    timeout(Duration::from_secs(5), r.read_to_end(&mut echoed))
        .await
        .expect("bulk transfer timed out")
        .unwrap();
    writer.await.unwrap();
    assert!(echoed == expected, "echoed bytes differ from sent bytes");
    let took = started.elapsed();
    assert!(took < Duration::from_secs(3), "4 MiB took {took:?}");
}

#[tokio::test]
async fn blackhole_hangs_connections_and_heal_resumes_existing_ones() {
    let (echo, _) = echo_server().await;
    let wan = Wan::new();
    let addr = link(&wan, "r1", "r2", echo).await;
    let mut existing = connected(addr).await;

    wan.set_pair_fault("r1", "r2", Fault::Blackhole);
    existing.write_all(b"held").await.unwrap();
    assert_hangs(&mut existing).await;

    let mut fresh = TcpStream::connect(addr).await.unwrap();
    fresh.write_all(b"lost").await.unwrap();
    assert_hangs(&mut fresh).await;

    wan.heal();
    let mut buf = [0u8; 4];
    timeout(PROMPT, existing.read_exact(&mut buf))
        .await
        .expect("the existing connection did not resume after heal")
        .unwrap();
    assert_eq!(&buf, b"held");
    // A connection accepted during the blackhole lost its bytes, so it is closed on heal.
    assert_closed(&mut fresh).await;
    connected(addr).await;
}

#[tokio::test]
async fn reset_closes_existing_connections_on_both_sides_and_refuses_new_ones() {
    let (echo, mut ends) = echo_server().await;
    let wan = Wan::new();
    let addr = link(&wan, "r1", "r2", echo).await;
    let mut existing = connected(addr).await;

    wan.set_region_fault("r2", Fault::Reset);
    assert_closed(&mut existing).await;
    let upstream_end = timeout(PROMPT, ends.recv())
        .await
        .expect("the upstream side was not closed")
        .unwrap();
    assert_eq!(
        upstream_end.map_err(|e| e.kind()),
        Err(io::ErrorKind::ConnectionReset),
        "the upstream side should see an RST"
    );

    // The kernel completes the handshake before the emulator resets, so the failure shows on
    // the first read or write rather than on connect.
    if let Ok(mut fresh) = TcpStream::connect(addr).await {
        assert_closed(&mut fresh).await;
    }
    wan.heal();
    connected(addr).await;
}

#[tokio::test]
async fn region_fault_only_touches_links_labelled_with_that_region() {
    let (echo, _) = echo_server().await;
    let wan = Wan::new();
    let clients = link(&wan, "clients@r1", "r2", echo).await;
    let inner = link(&wan, "r1", "r3", echo).await;
    let inbound = link(&wan, "r3", "r1", echo).await;
    let mut existing = connected(inner).await;

    wan.set_region_fault("r1", Fault::Blackhole);
    connected(clients).await;
    existing.write_all(b"x").await.unwrap();
    assert_hangs(&mut existing).await;
    let mut fresh = TcpStream::connect(inbound).await.unwrap();
    fresh.write_all(b"x").await.unwrap();
    assert_hangs(&mut fresh).await;
}

#[tokio::test]
async fn pair_fault_applies_in_both_directions_and_only_to_that_pair() {
    let (echo, _) = echo_server().await;
    let wan = Wan::new();
    let forward = link(&wan, "r1", "r2", echo).await;
    let backward = link(&wan, "r2", "r1", echo).await;
    let other = link(&wan, "r1", "r3", echo).await;

    wan.set_pair_fault("r2", "r1", Fault::Blackhole);
    for addr in [forward, backward] {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(b"x").await.unwrap();
        assert_hangs(&mut stream).await;
    }
    connected(other).await;
}

#[tokio::test]
async fn faults_combine_by_strength_and_heal_clears_them() {
    let wan = Wan::new();
    wan.set_pair_fault("r1", "r2", Fault::Blackhole);
    wan.set_region_fault("r2", Fault::Reset);
    assert_eq!(wan.fault_between("r1", "r2"), Fault::Reset);
    assert_eq!(wan.fault_between("r3", "r2"), Fault::Reset);
    assert_eq!(wan.fault_between("r1", "r3"), Fault::None);

    wan.set_region_fault("r2", Fault::None);
    assert_eq!(wan.fault_between("r2", "r1"), Fault::Blackhole);
    assert_eq!(wan.fault_between("r3", "r2"), Fault::None);

    wan.set_region_fault("r1", Fault::Blackhole);
    wan.heal();
    assert_eq!(wan.fault_between("r1", "r2"), Fault::None);
    assert_eq!(wan.fault_between("r1", "r3"), Fault::None);
}

#[tokio::test]
async fn half_close_propagates_after_queued_data() {
    let (echo, mut ends) = echo_server().await;
    let wan = Wan::new();
    let addr = link(&wan, "r1", "r2", echo).await;
    let mut stream = TcpStream::connect(addr).await.unwrap();

    stream.write_all(b"last words").await.unwrap();
    stream.shutdown().await.unwrap();
    // The echo server closes its side only after reading EOF, so reaching EOF here means the
    // half-close crossed the link in both directions, behind the data.
    let mut echoed = Vec::new();
    timeout(PROMPT, stream.read_to_end(&mut echoed))
        .await
        .expect("EOF did not come back")
        .unwrap();
    assert_eq!(echoed, b"last words");
    let upstream_end = timeout(PROMPT, ends.recv()).await.unwrap().unwrap();
    assert!(upstream_end.is_ok(), "upstream ended with {upstream_end:?}");
}

#[tokio::test]
async fn failed_upstream_connect_resets_the_client() {
    let closed = {
        let listener = TcpListener::bind(any_port()).await.unwrap();
        listener.local_addr().unwrap()
    };
    let wan = Wan::new();
    let addr = link(&wan, "r1", "r2", closed).await;
    let mut stream = TcpStream::connect(addr).await.unwrap();
    assert_closed(&mut stream).await;
}

#[tokio::test]
async fn shutdown_closes_listeners_and_connections() {
    let (echo, _) = echo_server().await;
    let wan = Wan::new();
    let addr = link(&wan, "r1", "r2", echo).await;
    let mut existing = connected(addr).await;

    wan.shutdown();
    timeout(PROMPT, wan.wait_closed())
        .await
        .expect("wan tasks did not finish");
    assert_closed(&mut existing).await;
    assert!(TcpStream::connect(addr).await.is_err());
    assert!(wan
        .add_link("r1", "r2", any_port(), echo, DELAY)
        .await
        .is_err());
}

#[tokio::test]
async fn dropping_the_last_handle_stops_the_emulator() {
    let (echo, _) = echo_server().await;
    let wan = Wan::new();
    let addr = link(&wan, "r1", "r2", echo).await;
    let mut existing = connected(addr).await;

    drop(wan);
    assert_closed(&mut existing).await;
    // The listener closes from its own task; retry until connections are refused.
    timeout(PROMPT, async {
        while TcpStream::connect(addr).await.is_ok() {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the link still accepts connections after the last handle was dropped");
}
