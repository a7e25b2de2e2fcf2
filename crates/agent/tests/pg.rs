//! The agent's PostgreSQL adapter against real PostgreSQL servers: roles,
//! replication lag, promotion and fencing.

mod common;

use std::time::Duration;

use common::{bin_dir, run_as, workdir, PgNode};
use tern_pg::{LocalNode, Pg, PgTools, Rejoin, Role, Stopped};

const T: Duration = Duration::from_secs(5);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_reports_its_lag_and_is_promoted() {
    let dir = workdir();
    let primary = PgNode::primary(dir.path(), "primary");
    let standby = PgNode::standby(dir.path(), "standby", &primary);
    let p = Pg::connect(&primary.conninfo(), T).await.unwrap();
    let s = Pg::connect(&standby.conninfo(), T).await.unwrap();

    let (pc, pconn) = tokio_postgres::connect(&primary.conninfo(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(pconn);
    pc.batch_execute("CREATE TABLE t (id int); INSERT INTO t SELECT generate_series(1, 1000)")
        .await
        .unwrap();

    let ps = p.status().await.unwrap();
    assert_eq!(ps.role, Role::Primary);
    assert!(ps.lsn > 0);
    assert!(!ps.read_only);
    // The standby catches up: its replayed position reaches the primary's.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let ss = s.status().await.unwrap();
        assert_eq!(ss.role, Role::Standby);
        if ss.lsn >= ps.lsn {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the standby never caught up: {ss:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The primary sees its standby, and how far behind it is.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let ps = p.status().await.unwrap();
        if ps.lag_bytes == Some(0) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no replication lag reported: {ps:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    s.promote(Duration::from_secs(10)).await.unwrap();
    let ss = s.status().await.unwrap();
    assert_eq!(ss.role, Role::Primary);
    let (sc, sconn) = tokio_postgres::connect(&standby.conninfo(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(sconn);
    let n: i64 = sc
        .query_one("SELECT count(*) FROM t", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1000, "the promoted standby lost rows");
    sc.batch_execute("INSERT INTO t VALUES (1001)")
        .await
        .unwrap();
}

fn local(node: &PgNode) -> LocalNode {
    LocalNode::new(&node.data, &bin_dir(), node.server_args()).with_run_as(run_as())
}

async fn connect(node: &PgNode) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (c, conn) = tokio_postgres::connect(&node.conninfo(), tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    Ok(c)
}

// Broke when the fence was `default_transaction_read_only` and ended
// sessions: a session that asked for `BEGIN READ WRITE` still wrote.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_cannot_ask_its_way_past_the_fence() {
    let dir = workdir();
    let primary = PgNode::primary(dir.path(), "primary");
    let writer = connect(&primary).await.unwrap();
    writer
        .batch_execute("CREATE TABLE t (id int); INSERT INTO t VALUES (1)")
        .await
        .unwrap();
    let node = local(&primary);
    assert!(node.may_accept_writes());
    assert_eq!(
        node.stop(Duration::from_secs(5)).await.unwrap(),
        Stopped::Fast
    );
    assert!(!node.may_accept_writes());
    // The session that was writing asks for a read-write transaction: no.
    assert!(writer
        .batch_execute("BEGIN READ WRITE; INSERT INTO t VALUES (2); COMMIT")
        .await
        .is_err());
    // Nobody gets in to ask.
    assert!(
        connect(&primary).await.is_err(),
        "a fenced node took a session"
    );
    // Started again (the agent does so under a valid lease), it writes.
    node.start(Duration::from_secs(30)).await.unwrap();
    let again = connect(&primary).await.unwrap();
    again
        .batch_execute("BEGIN READ WRITE; INSERT INTO t VALUES (3); COMMIT")
        .await
        .unwrap();
    let n: i64 = again
        .query_one("SELECT count(*) FROM t", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 2, "a write got past the fence");
    node.stop(Duration::from_secs(5)).await.unwrap();
}

// Broke when a failed fence was not escalated: a server that does not stop
// (here frozen with SIGSTOP, as a hung host would be) is killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fence_escalates_until_nothing_of_the_server_runs() {
    let dir = workdir();
    let primary = PgNode::primary(dir.path(), "primary");
    let writer = connect(&primary).await.unwrap();
    writer
        .batch_execute("CREATE TABLE t (id int)")
        .await
        .unwrap();
    let node = local(&primary);
    let pid = node.postmaster().expect("a postmaster");
    // SAFETY: signalling the test's own server.
    unsafe {
        libc::kill(pid, libc::SIGSTOP);
    }
    let how = node.stop(Duration::from_millis(300)).await.unwrap();
    assert_eq!(how, Stopped::Killed);
    assert!(!node.is_running());
    assert!(!tern_pg::local::alive(pid));
    assert!(writer
        .batch_execute("BEGIN READ WRITE; INSERT INTO t VALUES (1); COMMIT")
        .await
        .is_err());
}

/// After a failover the old primary crashes with writes the new primary
/// never saw; it rejoins as a standby of the new primary (pg_rewind), so
/// that failback is possible, and follows the new primary's history.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_old_primary_rejoins_as_a_standby_of_the_new_one() {
    let dir = workdir();
    let mut old = PgNode::primary(dir.path(), "old");
    let new = PgNode::standby(dir.path(), "new", &old);
    let sql = |node: &PgNode| {
        let conninfo = node.conninfo();
        async move {
            let (c, conn) = tokio_postgres::connect(&conninfo, tokio_postgres::NoTls)
                .await
                .unwrap();
            tokio::spawn(conn);
            c
        }
    };
    sql(&old)
        .await
        .batch_execute("CREATE TABLE t (id int); INSERT INTO t VALUES (1)")
        .await
        .unwrap();
    let s = Pg::connect(&new.conninfo(), T).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while sql(&new)
        .await
        .query_one("SELECT count(*) FROM t", &[])
        .await
        .is_err()
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "table never replicated"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    s.promote(Duration::from_secs(10)).await.unwrap();
    // The old primary takes one more write nobody else sees, then crashes.
    sql(&old)
        .await
        .batch_execute("INSERT INTO t VALUES (99)")
        .await
        .unwrap();
    old.kill();
    sql(&new)
        .await
        .batch_execute("INSERT INTO t VALUES (2)")
        .await
        .unwrap();

    let tools = PgTools {
        bin_dir: bin_dir(),
        run_as: run_as(),
    };
    let report = tools
        .rejoin(&old.data, &new.conninfo(), Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(report.how, Rejoin::Rewind);
    // What the old primary alone had is reported and kept, not destroyed.
    assert!(report.diverged_at.is_some(), "{report:?}");
    assert!(
        !report.diverged_transactions.is_empty(),
        "the write only the old primary took is not reported: {report:?}"
    );
    let kept = report.kept.clone().expect("the diverged WAL is kept");
    let dump = std::fs::read_to_string(kept.join("waldump.txt")).unwrap();
    assert!(dump.contains("INSERT"), "{dump}");
    old.start();
    let o = Pg::connect(&old.conninfo(), T).await.unwrap();
    assert_eq!(o.status().await.unwrap().role, Role::Standby);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let ids: Vec<i32> = sql(&old)
            .await
            .query("SELECT id FROM t ORDER BY id", &[])
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        if ids == [1, 2] {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the rejoined node does not follow the new primary: {ids:?}; log: {}",
            std::fs::read_to_string(old.data.with_extension("log")).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// Broke when a failed pg_rewind deleted the old primary's data directory
// before the base backup: it is moved aside instead, and kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_rewind_keeps_the_old_data_directory() {
    let dir = workdir();
    // Without data checksums or wal_log_hints, pg_rewind refuses.
    let mut old = PgNode::primary_with(dir.path(), "old", false);
    let new = PgNode::standby(dir.path(), "new", &old);
    let c = connect(&old).await.unwrap();
    c.batch_execute("CREATE TABLE t (id int); INSERT INTO t VALUES (1)")
        .await
        .unwrap();
    let s = Pg::connect(&new.conninfo(), T).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while s.status().await.unwrap().lsn
        < Pg::connect(&old.conninfo(), T)
            .await
            .unwrap()
            .status()
            .await
            .unwrap()
            .lsn
    {
        assert!(tokio::time::Instant::now() < deadline, "never replicated");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    s.promote(Duration::from_secs(10)).await.unwrap();
    c.batch_execute("INSERT INTO t VALUES (99)").await.unwrap();
    old.kill();
    let tools = PgTools {
        bin_dir: bin_dir(),
        run_as: run_as(),
    };
    let report = tools
        .rejoin(&old.data, &new.conninfo(), Duration::from_secs(60))
        .await
        .unwrap();
    let Rejoin::BaseBackup { kept_at, .. } = &report.how else {
        panic!("pg_rewind should have failed: {report:?}")
    };
    assert!(
        kept_at.join("PG_VERSION").exists() && kept_at.join("pg_wal").exists(),
        "the old data directory is gone: {report:?}"
    );
    old.start();
    let o = Pg::connect(&old.conninfo(), T).await.unwrap();
    assert_eq!(o.status().await.unwrap().role, Role::Standby);
}

/// initdb's rules admit every role over the unix socket and from 127.0.0.1:
/// with the writer proxies at 127.0.0.2 both are side doors past the proxy,
/// and the check names them from the server's own parse of the file. Once
/// the file admits `app` only from the proxy and rejects it everywhere
/// else, nothing is named, and the application role is refused directly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_hba_rules_that_let_the_application_past_the_writer_proxy_are_named() {
    let dir = workdir();
    let node = PgNode::primary(dir.path(), "primary");
    let pg = Pg::connect(&node.conninfo(), T).await.unwrap();
    let roles = vec!["app".to_string()];
    let proxies: Vec<ipnet::IpNet> = vec!["127.0.0.2/32".parse().unwrap()];

    let problems = tern_pg::side_doors(&pg.hba_rules().await.unwrap(), &roles, &proxies);
    assert!(
        problems.iter().any(|p| p.contains("unix socket")),
        "{problems:#?}"
    );
    assert!(
        problems.iter().any(|p| p.contains("from 127.0.0.1/32")),
        "{problems:#?}"
    );

    std::fs::write(
        node.data.join("pg_hba.conf"),
        "local all postgres trust\n\
         local all all reject\n\
         host all postgres 127.0.0.1/32 trust\n\
         host all app 127.0.0.2/32 trust\n\
         host all all 0.0.0.0/0 reject\n\
         host replication all 127.0.0.1/32 trust\n",
    )
    .unwrap();
    let rules = pg.hba_rules().await.unwrap();
    assert!(rules.iter().all(|r| r.error.is_none()), "{rules:#?}");
    let problems = tern_pg::side_doors(&rules, &roles, &proxies);
    assert!(problems.is_empty(), "{problems:#?}");

    pg_execute(&node, "CREATE ROLE app LOGIN; SELECT pg_reload_conf()").await;
    let direct = node.conninfo().replace("user=postgres", "user=app");
    let refused = tokio_postgres::connect(&direct, tokio_postgres::NoTls).await;
    assert!(refused.is_err(), "the application role connected directly");
}

async fn pg_execute(node: &PgNode, sql: &str) {
    let (c, conn) = tokio_postgres::connect(&node.conninfo(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    c.batch_execute(sql).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_reaches_its_own_node_over_its_unix_socket() {
    let dir = workdir();
    let mut node = PgNode::primary(dir.path(), "east");
    let text = format!(
        "[[region]]\nname = \"east\"\n[[region]]\nname = \"west\"\n\
         [service.api]\npolicy = \"failover\"\n\
         [[service.api.backend]]\nregion = \"east\"\nurl = \"http://127.0.0.1:9\"\n\
         [database.payments]\n\
         [[database.payments.node]]\nregion = \"east\"\naddr = \"127.0.0.1:{}\"\ndata_dir = {:?}\nbin_dir = {:?}\n\
         [[database.payments.node]]\nregion = \"west\"\naddr = \"127.0.0.1:9\"\n",
        node.port,
        node.data.display().to_string(),
        bin_dir().display().to_string(),
    );
    let cfg = tern_core::config::Config::from_toml("agent.toml", &text).unwrap();
    let conninfo = tern_agent::db::conninfo(&cfg.databases[0], "east").unwrap();
    let sockets = node.data.with_extension("sock");
    assert!(
        conninfo.contains(&format!("host='{}'", sockets.display())),
        "{conninfo}"
    );
    let (client, connection) = tokio_postgres::connect(&conninfo, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    // The server sees a local connection: no client address.
    let row = client
        .query_one(
            "SELECT client_addr IS NULL FROM pg_stat_activity WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .unwrap();
    assert!(row.get::<_, bool>(0));
    drop(client);

    // A stopped server has no socket: TCP at its address, which then refuses.
    node.kill();
    let conninfo = tern_agent::db::conninfo(&cfg.databases[0], "east").unwrap();
    assert!(
        conninfo.contains(&format!("host='127.0.0.1' port={}", node.port)),
        "{conninfo}"
    );
}

/// A node that asks for a SCRAM password: the agent finds it in the
/// password file the configuration names, as libpq would, and without a
/// matching line the server refuses it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_logs_in_with_a_password_from_the_password_file() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = workdir();
    let node = PgNode::primary(dir.path(), "east");
    pg_execute(
        &node,
        "SET password_encryption = 'scram-sha-256'; CREATE ROLE tern LOGIN SUPERUSER PASSWORD 'pa:ss''w'",
    )
    .await;
    std::fs::write(
        node.data.join("pg_hba.conf"),
        "local all postgres trust\n\
         local all tern scram-sha-256\n\
         host all postgres 127.0.0.1/32 trust\n\
         host all tern 127.0.0.1/32 scram-sha-256\n\
         host replication all 127.0.0.1/32 trust\n",
    )
    .unwrap();
    pg_execute(&node, "SELECT pg_reload_conf()").await;
    let passfile = dir.path().join("pgpass");
    let config = |passfile: &std::path::Path| {
        let text = format!(
            "[[region]]\nname = \"east\"\n[[region]]\nname = \"west\"\n\
             [service.api]\npolicy = \"failover\"\n\
             [[service.api.backend]]\nregion = \"east\"\nurl = \"http://127.0.0.1:9\"\n\
             [database.payments]\nuser = \"tern\"\npassfile = {:?}\n\
             [[database.payments.node]]\nregion = \"east\"\naddr = \"127.0.0.1:{}\"\ndata_dir = {:?}\nbin_dir = {:?}\n\
             [[database.payments.node]]\nregion = \"west\"\naddr = \"127.0.0.1:9\"\n",
            passfile.display().to_string(),
            node.port,
            node.data.display().to_string(),
            bin_dir().display().to_string(),
        );
        tern_core::config::Config::from_toml("agent.toml", &text).unwrap()
    };
    // Over the socket, which the file names as localhost.
    std::fs::write(
        &passfile,
        format!("localhost:{}:postgres:tern:pa\\:ss'w\n", node.port),
    )
    .unwrap();
    std::fs::set_permissions(&passfile, std::fs::Permissions::from_mode(0o600)).unwrap();
    let cfg = config(&passfile);
    let conninfo = tern_agent::db::conninfo(&cfg.databases[0], "east").unwrap();
    let pg = Pg::connect(&conninfo, T)
        .await
        .expect("logged in with the file's password");
    assert_eq!(pg.status().await.unwrap().role, Role::Primary);

    // No line for this server: no password, and SCRAM refuses the agent.
    std::fs::write(&passfile, "otherhost:5432:*:tern:nope\n").unwrap();
    let conninfo = tern_agent::db::conninfo(&cfg.databases[0], "east").unwrap();
    let refused = Pg::connect(&conninfo, T).await;
    assert!(refused.is_err(), "connected without a password");
}
