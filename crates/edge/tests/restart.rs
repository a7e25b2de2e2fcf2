//! An edge restarted on the same addresses, as a rolling upgrade (and
//! `tern lab`'s rolling restart) does it: the stopping edge answers not
//! ready, then lets go of its admin address; the new edge binds its client
//! listeners beside the old one's (SO_REUSEPORT), then the admin address;
//! the old edge closes its listeners only then, serving what was queued in
//! them, and finishes the requests it accepted.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{backend_toml, edge_toml, Backend, Mode, RunningEdge};
use tern_edge::Phase;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const T: Duration = Duration::from_secs(10);

fn service(a: &Backend) -> String {
    format!(
        "[service.api]\npolicy = \"failover\"\n{}",
        backend_toml("api", "a", a.addr, "")
    )
}

/// One request on a connection of its own, as a client does whose edge
/// answers `Connection: close`: the answer's status line, or the error.
async fn one_request(addr: SocketAddr) -> Result<String, String> {
    let exchange = async {
        let mut s = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        s.write_all(b"GET / HTTP/1.1\r\nHost: api.test\r\nConnection: close\r\n\r\n")
            .await
            .map_err(|e| e.to_string())?;
        let mut answer = Vec::new();
        s.read_to_end(&mut answer)
            .await
            .map_err(|e| e.to_string())?;
        let text = String::from_utf8_lossy(&answer).into_owned();
        Ok::<_, String>(text.lines().next().unwrap_or("no answer").to_string())
    };
    tokio::time::timeout(T, exchange)
        .await
        .unwrap_or_else(|_| Err("no answer in time".into()))
}

/// Sends requests one after another until `done`: how many were answered
/// 200, and every other outcome.
async fn load(addr: SocketAddr, done: Arc<AtomicBool>) -> (usize, Vec<String>) {
    let (mut ok, mut failed) = (0, Vec::new());
    while !done.load(Ordering::Relaxed) {
        match one_request(addr).await {
            Ok(line) if line.starts_with("HTTP/1.1 200") => ok += 1,
            other => failed.push(format!("{other:?}")),
        }
    }
    (ok, failed)
}

// Broke when an edge restart refused the connections made between the old
// edge closing its listeners and the new one binding (and reset those
// queued in the old listeners): the lab's clients saw their own region's
// edge fail, left it for another region's, and failed when that one
// restarted in turn.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edge_restart_on_the_same_addresses_refuses_no_connection() {
    let a = Backend::start("a", Mode::Ok).await;
    let toml = |listen: &str, admin: &str| {
        edge_toml(
            &format!(
                "listen = \"{listen}\"\nadmin = \"{admin}\"\nworkers = 2\nunready_delay = \"300ms\""
            ),
            &service(&a),
        )
    };
    let mut old = RunningEdge::start(&toml("127.0.0.1:0", "127.0.0.1:0")).await;
    let (addr, admin) = (old.addr, old.admin);
    let done = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..4)
        .map(|_| tokio::spawn(load(addr, done.clone())))
        .collect();
    tokio::time::sleep(Duration::from_millis(200)).await;

    old.stop.cancel();
    // The supervisor starts the next edge once the old one has let go of
    // its admin address.
    tokio::time::timeout(T, async {
        while TcpStream::connect(admin).await.is_ok() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the stopping edge kept its admin address");
    let phase_at_handover = *old.phase.borrow();
    let new = RunningEdge::start(&toml(&addr.to_string(), &admin.to_string())).await;
    tokio::time::timeout(T, old.phase.wait_for(|p| *p == Phase::Stopped))
        .await
        .expect("the old edge did not stop")
        .unwrap();
    tokio::time::timeout(T, old.task)
        .await
        .expect("the old edge did not end")
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    done.store(true, Ordering::Relaxed);
    let mut answered = 0;
    for c in clients {
        let (ok, failed) = c.await.unwrap();
        assert!(
            failed.is_empty(),
            "requests failed across the restart: {failed:?}"
        );
        answered += ok;
    }
    assert!(answered > 20, "only {answered} requests answered");
    assert_eq!(
        phase_at_handover,
        Phase::Unready,
        "the old edge closed its listeners before a successor listened"
    );
    // The new edge serves the address on its own now.
    assert!(one_request(addr)
        .await
        .is_ok_and(|l| l.starts_with("HTTP/1.1 200")));
    new.stop.cancel();
    new.task.await.unwrap();
}

// Broke when the edge's drain closed at once the connections it had
// accepted but not yet read a request from: their clients had sent one and
// got no answer.
#[tokio::test]
async fn a_connection_accepted_as_the_edge_stops_still_gets_its_answer() {
    let a = Backend::start("a", Mode::Ok).await;
    let mut edge = RunningEdge::start(&edge_toml("unready_delay = \"0s\"", &service(&a))).await;
    let mut conn = TcpStream::connect(edge.addr).await.unwrap();
    // Accepted by a worker by now, its request not sent yet.
    tokio::time::sleep(Duration::from_millis(100)).await;
    edge.stop.cancel();
    tokio::time::timeout(T, edge.phase.wait_for(|p| *p == Phase::Draining))
        .await
        .expect("the edge did not drain")
        .unwrap();
    conn.write_all(b"GET / HTTP/1.1\r\nHost: api.test\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(T, conn.read_to_end(&mut answer))
        .await
        .expect("no answer")
        .expect("the connection was reset");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("connection: close"),
        "{answer}"
    );
    edge.task.await.unwrap();
}
