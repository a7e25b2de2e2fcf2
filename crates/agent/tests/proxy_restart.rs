//! An agent restart as a supervisor with a socket unit runs it, against a
//! real PostgreSQL server: the stopping agent's writer proxy stops
//! accepting and drains its sessions while the next agent's proxy, given the
//! same listening socket, takes the new connections.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{workdir, PgNode};
use tern_agent::writer_proxy::{Target, WriterProxy, WriterTarget};
use tokio::time::Instant;
use tokio_postgres::{Client, NoTls};
use tokio_util::sync::CancellationToken;

const CLUSTER: &str = "orders";
const T: Duration = Duration::from_secs(10);
/// The stopping proxy's drain time: far more than the test needs, so that
/// sessions ended by it would show as a slow stop.
const DRAIN: Duration = Duration::from_secs(8);

fn writable(node: &PgNode) -> Target {
    Target::Writable(WriterTarget {
        addr: SocketAddr::from(([127, 0, 0, 1], node.port)),
        epoch: 1,
        cluster: CLUSTER.into(),
    })
}

/// A proxy serving a copy of the supervisor's socket `held`, running until
/// `stop`, with `drain` to drain on the way out.
fn proxy_on(
    held: &std::net::TcpListener,
    initial: Target,
    drain: Duration,
    stop: &CancellationToken,
) -> (WriterProxy, tokio::task::JoinHandle<()>) {
    let copy = held.try_clone().unwrap();
    copy.set_nonblocking(true).unwrap();
    let listener = tokio::net::TcpListener::from_std(copy).unwrap();
    let (proxy, task) = WriterProxy::bind_on(listener, CLUSTER, initial).unwrap();
    let run = tokio::spawn(task.with_drain(drain).run(stop.clone()));
    (proxy, run)
}

async fn connect(addr: SocketAddr) -> Result<Client, tokio_postgres::Error> {
    let conninfo = format!(
        "host=127.0.0.1 port={} user=postgres dbname=postgres connect_timeout=5",
        addr.port()
    );
    let (client, connection) = tokio_postgres::connect(&conninfo, NoTls).await?;
    tokio::spawn(connection);
    Ok(client)
}

/// Inserts keyed rows one after another, as a pooled application does: a
/// connection found closed is replaced and the statement sent again (a
/// keyed insert may be repeated). Answers the keys acknowledged and every
/// other error.
async fn write_until(
    addr: SocketAddr,
    writer: usize,
    done: Arc<AtomicBool>,
) -> (Vec<String>, Vec<String>) {
    let mut client = connect(addr).await.unwrap();
    let (mut acked, mut errors) = (Vec::new(), Vec::new());
    let mut n = 0;
    while !done.load(Ordering::Relaxed) {
        n += 1;
        let key = format!("w{writer}-{n}");
        let insert = "INSERT INTO t VALUES ($1) ON CONFLICT DO NOTHING";
        let mut result = client.execute(insert, &[&key]).await;
        if matches!(&result, Err(e) if e.is_closed()) || client.is_closed() {
            match connect(addr).await {
                Ok(c) => client = c,
                Err(e) => {
                    errors.push(format!("{key}: reconnect: {e}"));
                    continue;
                }
            }
            result = client.execute(insert, &[&key]).await;
        }
        match result {
            Ok(_) => acked.push(key),
            Err(e) => errors.push(format!("{key}: {e}")),
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    (acked, errors)
}

// Broke when a stopping agent's writer proxy cut every session at once: the
// queries in flight on them failed, and the clients' new connections waited
// for the next agent, longer than the application in front would wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_restart_with_the_proxy_socket_handed_over_fails_no_session_in_flight() {
    let dir = workdir();
    let primary = PgNode::primary(dir.path(), "primary");
    let (direct, connection) = tokio_postgres::connect(&primary.conninfo(), NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    direct
        .batch_execute("CREATE TABLE t (key text PRIMARY KEY)")
        .await
        .unwrap();

    // The supervisor binds the socket and keeps a copy across the restart.
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = held.local_addr().unwrap();
    let stop_old = CancellationToken::new();
    let (old, old_run) = proxy_on(&held, writable(&primary), DRAIN, &stop_old);
    assert!(old.set_valid_until(1, Instant::now() + Duration::from_secs(60)));

    // A transaction open across the restart, and writers all along.
    let in_flight = connect(addr).await.unwrap();
    in_flight
        .batch_execute("BEGIN; INSERT INTO t VALUES ('in-flight 1')")
        .await
        .unwrap();
    let done = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..4)
        .map(|w| tokio::spawn(write_until(addr, w, done.clone())))
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;

    // The old agent is told to stop: no successor yet, its sessions go on.
    let stopped_at = Instant::now();
    stop_old.cancel();
    tokio::time::sleep(Duration::from_millis(300)).await;
    in_flight
        .batch_execute("INSERT INTO t VALUES ('in-flight 2')")
        .await
        .expect("a draining proxy cut a transaction in flight");

    // The next agent starts on the same socket and learns the writer.
    let stop_new = CancellationToken::new();
    let initial = Target::Closed {
        reason: "the agent has not heard from the controllers yet".into(),
    };
    let (new, new_run) = proxy_on(&held, initial, Duration::ZERO, &stop_new);
    new.hold_until_first_target(Duration::from_millis(1500));
    tokio::time::sleep(Duration::from_millis(200)).await;
    new.set_target(writable(&primary)).unwrap();
    assert!(new.set_valid_until(1, Instant::now() + Duration::from_secs(60)));

    // The transaction still ends on the old proxy; then every old session
    // closes at its next idle point and the old proxy ends, long before its
    // drain time.
    in_flight
        .batch_execute("COMMIT")
        .await
        .expect("the transaction in flight was cut by the restart");
    tokio::time::timeout(T, old_run)
        .await
        .expect("the old proxy did not end")
        .unwrap();
    assert!(
        stopped_at.elapsed() < DRAIN,
        "the old proxy's sessions were cut at the end of its drain time, not closed idle"
    );
    let stats = old.stats();
    assert_eq!(
        (stats.drained, stats.cut, stats.active),
        (5, 0, 0),
        "{stats:?}"
    );
    assert!(in_flight.is_closed() || in_flight.simple_query("SELECT 1").await.is_err());

    // The writers carried on through the new proxy; none saw an error.
    tokio::time::sleep(Duration::from_millis(300)).await;
    done.store(true, Ordering::Relaxed);
    let mut acked = Vec::new();
    for w in writers {
        let (keys, errors) = w.await.unwrap();
        assert!(
            errors.is_empty(),
            "writes failed across the restart: {errors:?}"
        );
        acked.extend(keys);
    }
    assert!(new.stats().accepted >= 4, "{:?}", new.stats());
    acked.extend(["in-flight 1".to_string(), "in-flight 2".to_string()]);
    for key in &acked {
        let n: i64 = direct
            .query_one("SELECT count(*) FROM t WHERE key = $1", &[key])
            .await
            .unwrap()
            .get(0);
        assert_eq!(n, 1, "acknowledged row {key}");
    }
    stop_new.cancel();
    new_run.await.unwrap();
}

// The drain gives sessions time, never a lease: a stopping agent no longer
// renews it, and its sessions end by the deadline it last saw.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_proxy_still_cuts_its_sessions_at_the_lease_deadline() {
    let dir = workdir();
    let primary = PgNode::primary(dir.path(), "primary");
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = held.local_addr().unwrap();
    let stop = CancellationToken::new();
    let (proxy, run) = proxy_on(&held, writable(&primary), DRAIN, &stop);
    let until = Instant::now() + Duration::from_millis(800);
    assert!(proxy.set_valid_until(1, until));
    let client = connect(addr).await.unwrap();
    client.batch_execute("BEGIN").await.unwrap();
    stop.cancel();
    // No successor: the session would wait for one for the whole drain.
    tokio::time::timeout(T, run)
        .await
        .expect("the proxy did not end")
        .unwrap();
    assert!(Instant::now() >= until, "cut before the lease deadline");
    assert!(
        until.elapsed() < Duration::from_secs(2),
        "a session outlived the writer's lease by {:?}",
        until.elapsed()
    );
    assert_eq!(proxy.stats().cut, 1, "{:?}", proxy.stats());
    assert!(client.simple_query("SELECT 1").await.is_err());
}
