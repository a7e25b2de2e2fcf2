//! The agent's PostgreSQL adapter against real PostgreSQL servers: roles,
//! replication lag, promotion and fencing.

mod common;

use std::time::Duration;

use common::{bin_dir, run_as, workdir, PgNode};
use tern_pg::{Pg, PgTools, Rejoin, Role};

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fenced_primary_takes_no_new_writes() {
    let dir = workdir();
    let primary = PgNode::primary(dir.path(), "primary");
    let connect = || async {
        let (c, conn) = tokio_postgres::connect(&primary.conninfo(), tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        c
    };
    let writer = connect().await;
    writer
        .batch_execute("CREATE TABLE t (id int); INSERT INTO t VALUES (1)")
        .await
        .unwrap();

    let agent = Pg::connect(&primary.conninfo(), T).await.unwrap();
    let ended = agent.fence().await.unwrap();
    assert!(ended >= 1, "the open write session was not ended");
    // The session that was writing is gone...
    assert!(writer
        .batch_execute("INSERT INTO t VALUES (2)")
        .await
        .is_err());
    // ...and a new one cannot write.
    let late = connect().await;
    let err = late
        .batch_execute("INSERT INTO t VALUES (3)")
        .await
        .expect_err("a fenced primary accepted a write");
    assert_eq!(
        err.code(),
        Some(&tokio_postgres::error::SqlState::READ_ONLY_SQL_TRANSACTION),
        "{err}"
    );
    assert!(agent.status().await.unwrap().read_only);
    let n: i64 = late
        .query_one("SELECT count(*) FROM t", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1);

    agent.unfence().await.unwrap();
    let again = connect().await;
    again
        .batch_execute("INSERT INTO t VALUES (4)")
        .await
        .unwrap();
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
    let how = tools
        .rejoin(&old.data, &new.conninfo(), Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(how, Rejoin::Rewind);
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
