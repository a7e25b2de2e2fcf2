//! The sample service's payments in PostgreSQL: a small pool of connections to one address
//! (the region's writer proxy, or its own node for reads), each with its statements prepared.
//!
//! Every operation has one deadline, [`DB_DEADLINE`], for everything it does: waiting for a
//! connection, connecting and querying. A connection that failed or ran out of time is dropped
//! and its socket closed, so the next request connects afresh: after the proxy cuts its
//! connections or the node dies, nothing stale is reused.
//!
//! The deadline is the client's, not the server's `statement_timeout`: a commit cancelled while
//! it waits for a synchronous standby is still committed locally and reported as a success
//! (with a warning), which would acknowledge a write the standby never had.

use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio::task::AbortHandle;
use tokio::time::Instant;
use tokio_postgres::{Client, NoTls, Statement};

/// Time allowed for one database operation, connecting included.
pub const DB_DEADLINE: Duration = Duration::from_secs(2);
/// Connections per pool.
pub const DB_POOL_SIZE: usize = 4;

/// The columns every statement returns, in [`payment`]'s order.
macro_rules! columns {
    () => {
        "id, key, amount, node, floor(extract(epoch FROM written_at) * 1000)::bigint, timeline"
    };
}
const INSERT: &str = concat!(
    "INSERT INTO payments (key, amount) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING RETURNING ",
    columns!()
);
const BY_KEY: &str = concat!("SELECT ", columns!(), " FROM payments WHERE key = $1");
const BY_ID: &str = concat!("SELECT ", columns!(), " FROM payments WHERE id = $1");

/// A row of `payments`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Payment {
    pub id: i64,
    pub key: String,
    pub amount: i64,
    pub node: String,
    pub written_at_ms: i64,
    /// The WAL timeline the row was written on.
    pub timeline: String,
}

/// What a create did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Created {
    New(Payment),
    /// The key was already taken; this is the payment that took it.
    Replay(Payment),
}

enum Query<'a> {
    Create { key: &'a str, amount: i64 },
    Get(i64),
}

enum Answer {
    Created(Option<Created>),
    Found(Option<Payment>),
}

/// Connections to one PostgreSQL address.
pub struct PgPool {
    addr: SocketAddr,
    config: tokio_postgres::Config,
    idle: Mutex<Vec<Conn>>,
    permits: Semaphore,
}

struct Conn {
    client: Client,
    insert: Statement,
    by_key: Statement,
    by_id: Statement,
    _task: TaskGuard,
}

/// Ends the connection's task, and so closes its socket, when the connection is dropped.
struct TaskGuard(AbortHandle);

impl Drop for TaskGuard {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl PgPool {
    pub fn new(addr: SocketAddr, application_name: &str) -> PgPool {
        let mut config = tokio_postgres::Config::new();
        config
            .host(addr.ip().to_string())
            .port(addr.port())
            .user(crate::DB_USER)
            .dbname(crate::DB_USER)
            .application_name(application_name)
            .connect_timeout(DB_DEADLINE);
        PgPool {
            addr,
            config,
            idle: Mutex::new(Vec::new()),
            permits: Semaphore::new(DB_POOL_SIZE),
        }
    }

    /// Inserts the payment unless its key is taken, in which case it returns the payment that
    /// took it. `Ok(None)` if the key was taken but its row could not be read back.
    pub async fn create(&self, key: &str, amount: i64) -> Result<Option<Created>, String> {
        match self.run(&Query::Create { key, amount }).await? {
            Answer::Created(created) => Ok(created),
            Answer::Found(_) => Err("a create was answered as a read".into()),
        }
    }

    pub async fn get(&self, id: i64) -> Result<Option<Payment>, String> {
        match self.run(&Query::Get(id)).await? {
            Answer::Found(found) => Ok(found),
            Answer::Created(_) => Err("a read was answered as a create".into()),
        }
    }

    /// Runs one query under [`DB_DEADLINE`]. A connection that turns out to be closed (a
    /// pooled one found closed, or one the writer proxy cut under the query, as when its agent
    /// restarts) is replaced once: both queries are idempotent (a create is keyed).
    async fn run(&self, query: &Query<'_>) -> Result<Answer, String> {
        let deadline = Instant::now() + DB_DEADLINE;
        let outcome = tokio::time::timeout_at(deadline, async {
            let _permit = self
                .permits
                .acquire()
                .await
                .map_err(|_| "the connection pool is closed".to_string())?;
            let (conn, reused) = match self.take_idle() {
                Some(conn) => (conn, true),
                None => (self.connect().await?, false),
            };
            match execute(&conn, query).await {
                Ok(answer) => {
                    self.put_back(conn);
                    Ok(answer)
                }
                Err(err) if err.is_closed() || conn.client.is_closed() => {
                    tracing::debug!(%err, reused, addr = %self.addr, "connection was closed; reconnecting");
                    drop(conn);
                    let conn = self.connect().await?;
                    let answer = execute(&conn, query).await.map_err(|e| self.reason(&e))?;
                    self.put_back(conn);
                    Ok(answer)
                }
                Err(err) => {
                    // An error the server reported leaves the session usable.
                    if err.as_db_error().is_some() {
                        self.put_back(conn);
                    }
                    Err(self.reason(&err))
                }
            }
        })
        .await;
        outcome.unwrap_or_else(|_| {
            Err(format!(
                "database at {} did not answer within {DB_DEADLINE:?}",
                self.addr
            ))
        })
    }

    fn take_idle(&self) -> Option<Conn> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        while let Some(conn) = idle.pop() {
            if !conn.client.is_closed() {
                return Some(conn);
            }
        }
        None
    }

    fn put_back(&self, conn: Conn) {
        if !conn.client.is_closed() {
            self.idle
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(conn);
        }
    }

    async fn connect(&self) -> Result<Conn, String> {
        let (client, connection) = self
            .config
            .connect(NoTls)
            .await
            .map_err(|e| format!("database at {}: {}", self.addr, short(&e)))?;
        let task = TaskGuard(
            tokio::spawn(async move {
                if let Err(err) = connection.await {
                    tracing::debug!(%err, "sample service database connection ended");
                }
            })
            .abort_handle(),
        );
        // Prepared together: one round trip through the WAN instead of three.
        let (insert, by_key, by_id) = tokio::try_join!(
            client.prepare(INSERT),
            client.prepare(BY_KEY),
            client.prepare(BY_ID),
        )
        .map_err(|e| self.reason(&e))?;
        Ok(Conn {
            client,
            insert,
            by_key,
            by_id,
            _task: task,
        })
    }

    fn reason(&self, err: &tokio_postgres::Error) -> String {
        format!("database at {}: {}", self.addr, short(err))
    }
}

async fn execute(conn: &Conn, query: &Query<'_>) -> Result<Answer, tokio_postgres::Error> {
    match query {
        Query::Create { key, amount } => {
            if let Some(row) = conn.client.query_opt(&conn.insert, &[key, amount]).await? {
                return Ok(Answer::Created(Some(Created::New(payment(&row)?))));
            }
            let existing = conn.client.query_opt(&conn.by_key, &[key]).await?;
            Ok(Answer::Created(match existing {
                Some(row) => Some(Created::Replay(payment(&row)?)),
                None => None,
            }))
        }
        Query::Get(id) => {
            let row = conn.client.query_opt(&conn.by_id, &[id]).await?;
            Ok(Answer::Found(row.as_ref().map(payment).transpose()?))
        }
    }
}

fn payment(row: &tokio_postgres::Row) -> Result<Payment, tokio_postgres::Error> {
    Ok(Payment {
        id: row.try_get(0)?,
        key: row.try_get(1)?,
        amount: row.try_get(2)?,
        node: row.try_get(3)?,
        written_at_ms: row.try_get(4)?,
        timeline: row.try_get(5)?,
    })
}

/// The server's SQLSTATE and message when it sent one, else the client's error.
fn short(err: &tokio_postgres::Error) -> String {
    match err.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None => err.to_string(),
    }
}
