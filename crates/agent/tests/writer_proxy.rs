//! The writer proxy against real PostgreSQL servers: clients reach the
//! primary of the current epoch through it, lose their connection when the
//! epoch changes, and are refused with a PostgreSQL error while no primary
//! may take writes.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{bin_dir, chown, workdir, PgNode};
use tern_agent::writer_proxy::{Target, WriterProxy, WriterTarget};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, NoTls};
use tokio_util::sync::CancellationToken;

const CLUSTER: &str = "orders";
const T: Duration = Duration::from_secs(10);

/// A running proxy; stops when dropped.
struct Proxy {
    handle: WriterProxy,
    stop: CancellationToken,
}

impl Proxy {
    async fn start(initial: Target) -> Proxy {
        let (handle, task) = WriterProxy::bind(([127, 0, 0, 1], 0).into(), CLUSTER, initial)
            .await
            .unwrap();
        let stop = CancellationToken::new();
        tokio::spawn(task.run(stop.clone()));
        Proxy { handle, stop }
    }

    fn conninfo(&self) -> String {
        format!(
            "host=127.0.0.1 port={} user=postgres dbname=postgres connect_timeout=5",
            self.handle.local_addr().port()
        )
    }

    async fn connect(&self) -> Result<Client, tokio_postgres::Error> {
        let (client, connection) = tokio_postgres::connect(&self.conninfo(), NoTls).await?;
        tokio::spawn(connection);
        Ok(client)
    }

    /// Waits until no connection of an earlier target is open.
    async fn retired(&self) {
        tokio::time::timeout(T, self.handle.retired())
            .await
            .expect("connections of the old target still open");
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn writable(node: &PgNode, epoch: u64) -> Target {
    Target::Writable(WriterTarget {
        addr: SocketAddr::from(([127, 0, 0, 1], node.port)),
        epoch,
        cluster: CLUSTER.into(),
    })
}

fn closed(reason: &str) -> Target {
    Target::Closed {
        reason: reason.into(),
    }
}

async fn server_port(client: &Client) -> Result<u16, tokio_postgres::Error> {
    let port: String = client
        .query_one("SELECT current_setting('port')", &[])
        .await?
        .get(0);
    Ok(port.parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_writes_and_reads_on_the_primary_through_the_proxy() {
    let dir = workdir();
    let primary = PgNode::primary(dir.path(), "primary");
    let proxy = Proxy::start(writable(&primary, 1)).await;

    let client = proxy.connect().await.unwrap();
    client
        .batch_execute("CREATE TABLE t (id int); INSERT INTO t SELECT generate_series(1, 100)")
        .await
        .unwrap();
    let n: i64 = client
        .query_one("SELECT count(*) FROM t", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 100);
    assert_eq!(server_port(&client).await.unwrap(), primary.port);

    // The rows are on the primary itself, not somewhere in between.
    let (direct, connection) = tokio_postgres::connect(&primary.conninfo(), NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    let n: i64 = direct
        .query_one("SELECT count(*) FROM t", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 100);

    let stats = proxy.handle.stats();
    assert_eq!((stats.accepted, stats.active, stats.refused), (1, 1, 0));
    drop(client);
    tokio::time::timeout(T, async {
        while proxy.handle.stats().active > 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the proxied connection stayed open after the client left");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_epoch_cuts_old_connections_and_leads_new_ones_to_the_new_primary() {
    let dir = workdir();
    let a = PgNode::primary(dir.path(), "a");
    let b = PgNode::primary(dir.path(), "b");
    let proxy = Proxy::start(writable(&a, 1)).await;

    let old = proxy.connect().await.unwrap();
    assert_eq!(server_port(&old).await.unwrap(), a.port);
    old.batch_execute("CREATE TABLE t (id int)").await.unwrap();

    proxy.handle.set_target(writable(&b, 2)).unwrap();
    proxy.retired().await;
    assert_eq!(proxy.handle.stats().cut, 1);
    let err = old
        .batch_execute("INSERT INTO t VALUES (1)")
        .await
        .expect_err("a connection outlived its epoch");
    assert!(err.code().is_none(), "not a connection error: {err}");

    let new = proxy.connect().await.unwrap();
    assert_eq!(server_port(&new).await.unwrap(), b.port);
    // The table made through the proxy in epoch 1 is on the old server only.
    assert_eq!(
        new.batch_execute("INSERT INTO t VALUES (1)")
            .await
            .unwrap_err()
            .code(),
        Some(&SqlState::UNDEFINED_TABLE)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unchanged_target_keeps_its_connections() {
    let dir = workdir();
    let primary = PgNode::primary(dir.path(), "primary");
    let proxy = Proxy::start(writable(&primary, 3)).await;

    let client = proxy.connect().await.unwrap();
    client
        .batch_execute("CREATE TABLE t (id int)")
        .await
        .unwrap();
    proxy.handle.set_target(writable(&primary, 3)).unwrap();
    proxy.retired().await;
    client
        .batch_execute("INSERT INTO t VALUES (1)")
        .await
        .expect("a connection was cut although the target did not change");
    let stats = proxy.handle.stats();
    assert_eq!((stats.cut, stats.active), (0, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_the_target_cuts_connections_and_refuses_new_ones_with_the_reason() {
    let dir = workdir();
    let primary = PgNode::primary(dir.path(), "primary");
    let proxy = Proxy::start(writable(&primary, 1)).await;
    let client = proxy.connect().await.unwrap();
    server_port(&client).await.unwrap();

    proxy
        .handle
        .set_target(closed("failover to eu-west in progress"))
        .unwrap();
    proxy.retired().await;
    assert!(server_port(&client).await.is_err());

    let err = proxy
        .connect()
        .await
        .expect_err("connected while the target is closed");
    assert_eq!(err.code(), Some(&SqlState::CANNOT_CONNECT_NOW), "{err:?}");
    let message = &err.as_db_error().unwrap().message();
    assert!(
        message.contains("no writable primary for cluster orders: failover to eu-west in progress"),
        "{message}"
    );
    let stats = proxy.handle.stats();
    assert_eq!((stats.accepted, stats.refused, stats.cut), (2, 1, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ssl_request_is_declined_then_the_startup_gets_an_error_response() {
    let proxy = Proxy::start(closed("no quorum")).await;
    let mut stream = tokio::net::TcpStream::connect(proxy.handle.local_addr())
        .await
        .unwrap();
    stream.write_all(&8u32.to_be_bytes()).await.unwrap();
    stream
        .write_all(&80_877_103u32.to_be_bytes())
        .await
        .unwrap();
    assert_eq!(stream.read_u8().await.unwrap(), b'N');

    let mut startup = 196_608u32.to_be_bytes().to_vec();
    startup.extend_from_slice(b"user\0postgres\0database\0postgres\0\0");
    stream
        .write_all(&(startup.len() as u32 + 4).to_be_bytes())
        .await
        .unwrap();
    stream.write_all(&startup).await.unwrap();

    let mut reply = Vec::new();
    tokio::time::timeout(T, stream.read_to_end(&mut reply))
        .await
        .expect("the proxy did not close the refused connection")
        .unwrap();
    assert_eq!(reply[0], b'E', "{reply:?}");
    let length = u32::from_be_bytes(reply[1..5].try_into().unwrap()) as usize;
    assert_eq!(length + 1, reply.len(), "one ErrorResponse, then the end");
    let fields: Vec<&[u8]> = reply[5..reply.len() - 1]
        .split(|b| *b == 0)
        .filter(|f| !f.is_empty())
        .collect();
    assert!(fields.contains(&b"SFATAL".as_slice()), "{fields:?}");
    assert!(fields.contains(&b"C57P03".as_slice()), "{fields:?}");
    assert!(
        fields.contains(
            &b"Mtern writer proxy: no writable primary for cluster orders: no quorum".as_slice()
        ),
        "{fields:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_prints_why_the_proxy_refused_it() {
    let proxy = Proxy::start(closed("the primary's lease expired")).await;
    let port = proxy.handle.local_addr().port().to_string();
    // psql asks for TLS first (sslmode=prefer), which the proxy declines.
    let out = tokio::time::timeout(
        T,
        tokio::process::Command::new(bin_dir().join("psql"))
            .args(["-X", "-h", "127.0.0.1", "-p", &port, "-U", "postgres"])
            .args(["-d", "postgres", "-c", "SELECT 1"])
            .env("PGSSLMODE", "prefer")
            .env("PGCONNECT_TIMEOUT", "5")
            .env("LC_ALL", "C")
            .output(),
    )
    .await
    .expect("psql did not finish")
    .expect("run psql (install the postgresql-client package)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains(
            "FATAL:  tern writer proxy: no writable primary for cluster orders: the primary's lease expired"
        ),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_primary_is_answered_with_an_error() {
    // A port nobody listens on: bound without listening (connections to it
    // are refused) and held for the whole test, so no other process takes it.
    let held = tokio::net::TcpSocket::new_v4().unwrap();
    held.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let gone = held.local_addr().unwrap();
    let proxy = Proxy::start(Target::Writable(WriterTarget {
        addr: gone,
        epoch: 7,
        cluster: CLUSTER.into(),
    }))
    .await;
    let err = proxy
        .connect()
        .await
        .expect_err("connected to a primary that is not there");
    assert_eq!(err.code(), Some(&SqlState::CANNOT_CONNECT_NOW), "{err:?}");
    let message = err.as_db_error().unwrap().message();
    assert!(
        message.contains(&format!(
            "the primary of cluster orders (epoch 7, {gone}) cannot be reached"
        )),
        "{message}"
    );
    let stats = proxy.handle.stats();
    assert_eq!((stats.refused, stats.unreachable), (1, 1));
}

// Broke when the proxy's target ignored the lease's expiry: a proxy whose
// agent stopped hearing of renewals kept relaying to the old writer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_past_its_lease_cuts_connections_and_refuses_new_ones() {
    let dir = workdir();
    let primary = PgNode::primary(dir.path(), "primary");
    let proxy = Proxy::start(writable(&primary, 3)).await;
    let until = tokio::time::Instant::now() + Duration::from_millis(800);
    assert!(proxy.handle.set_valid_until(3, until));
    // Another epoch's deadline does not apply.
    assert!(!proxy
        .handle
        .set_valid_until(2, until + Duration::from_secs(60)));
    let client = proxy.connect().await.unwrap();
    server_port(&client).await.unwrap();
    // Moving the deadline forward keeps the connection.
    let later = tokio::time::Instant::now() + Duration::from_millis(1200);
    assert!(proxy.handle.set_valid_until(3, later));
    // The old deadline passes: that the connection survives it is what is
    // asserted, so this waits for the time itself.
    tokio::time::sleep_until(until + Duration::from_millis(100)).await;
    server_port(&client)
        .await
        .expect("a deadline moved forward cut the connection");
    // Then nobody renews it: the connection is cut, not before the new
    // deadline, and new ones are refused.
    tokio::time::timeout(T, async {
        while proxy.handle.stats().cut == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("a connection outlived the writer's lease");
    assert!(
        tokio::time::Instant::now() >= later,
        "the connection was cut before its deadline"
    );
    assert!(
        server_port(&client).await.is_err(),
        "a cut connection still answered"
    );
    let err = proxy
        .connect()
        .await
        .expect_err("connected past the writer's lease");
    assert_eq!(err.code(), Some(&SqlState::CANNOT_CONNECT_NOW), "{err:?}");
    assert!(
        err.as_db_error()
            .unwrap()
            .message()
            .contains("not been seen renewed"),
        "{err:?}"
    );
}

/// psql through the proxy with `sslmode`, on `node`'s database: its
/// standard output, or its error.
async fn psql(port: u16, sslmode: &str, sql: &str) -> Result<String, String> {
    let out = tokio::time::timeout(
        T,
        tokio::process::Command::new(bin_dir().join("psql"))
            .args(["-X", "-A", "-t", "-h", "127.0.0.1", "-p", &port.to_string()])
            .args(["-U", "postgres", "-d", "postgres", "-c", sql])
            .env("PGSSLMODE", sslmode)
            .env("PGCONNECT_TIMEOUT", "5")
            .env("LC_ALL", "C")
            .output(),
    )
    .await
    .expect("psql did not finish")
    .expect("run psql (install the postgresql-client package)");
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_from_the_client_reaches_the_primary_through_the_proxy() {
    let dir = workdir();
    let node = PgNode::primary(dir.path(), "east");
    // The server's certificate (self-signed), owned by the server's user.
    let (cert, key) = (node.data.join("server.crt"), node.data.join("server.key"));
    let made = std::process::Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        ])
        .args(["-subj", "/CN=east.db"])
        .args(["-addext", "subjectAltName=DNS:east.db,IP:127.0.0.1"])
        .args(["-addext", "basicConstraints=critical,CA:FALSE"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("run openssl");
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    chown(&cert);
    chown(&key);
    let (admin, connection) = tokio_postgres::connect(&node.conninfo(), NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    admin
        .batch_execute("ALTER SYSTEM SET ssl = on")
        .await
        .unwrap();
    admin
        .query_one("SELECT pg_reload_conf()", &[])
        .await
        .unwrap();

    let proxy = Proxy::start(writable(&node, 1)).await;
    let port = proxy.handle.local_addr().port();
    // The reload is the server's to finish: wait until it speaks TLS.
    let deadline = tokio::time::Instant::now() + T;
    let ssl = loop {
        match psql(
            port,
            "require",
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
        )
        .await
        {
            Ok(ssl) => break ssl,
            Err(e) => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "no TLS through the proxy: {e}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    // The session is encrypted end to end: the server says so of it.
    assert_eq!(ssl, "t");
    assert_eq!(
        psql(
            port,
            "disable",
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"
        )
        .await,
        Ok("f".to_string())
    );

    // tokio-postgres over rustls, verifying the server's certificate (its
    // own CA here) through the proxy: the proxy relays the TLS bytes.
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::pem::PemObject::pem_file_iter(&cert).unwrap() {
        let c: rustls::pki_types::CertificateDer<'static> = c.unwrap();
        roots.add(c).unwrap();
    }
    #[allow(deprecated)]
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tls = tokio_postgres_rustls::MakeRustlsConnect::new(config);
    let (client, connection) = tokio_postgres::connect(
        &format!("host=127.0.0.1 port={port} user=postgres dbname=postgres sslmode=require"),
        tls,
    )
    .await
    .expect("tokio-postgres over TLS through the proxy");
    tokio::spawn(connection);
    let row = client
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .unwrap();
    assert!(
        row.get::<_, bool>(0),
        "the server sees the session encrypted"
    );
}
