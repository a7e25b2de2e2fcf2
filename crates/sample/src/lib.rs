//! tern's sample service: a small HTTP/1.1 payments-and-items app, the stand-in for a
//! team's application that the lab runs in each region and the benchmarks load.
//!
//! The lab starts one process per region (`tern sample-service`, built from [`SampleArgs`] and
//! [`run`]); tests use [`bind`] and [`SampleServer::serve`] in-process. The service answers
//! `/health` from its [`Dependency`] checks (a TCP connect, a file's existence, or a fixed
//! answer), can be forced unhealthy through `POST /admin/health` to drive flapping scenarios,
//! can answer a share of its item and root requests with 500 through `POST /admin/errors`
//! (`{"share": 0.2}`; health and payments are left alone) to degrade a region under a drill,
//! stores items, and creates payments with idempotency keys so the lab's oracle can count lost
//! and double-processed writes. Every response names the region that served it in the
//! `x-served-by` header. State lives in memory and dies with the process, as each region's
//! service is a stand-in for an application in front of its own database.
//!
//! Given a [`PaymentsDb`] (`--db-writer`, `--db-local`), payments live in PostgreSQL instead:
//! `POST /payments` inserts into the `payments` table through the region's writer proxy, keyed
//! by the idempotency key, and answers with the row (`id`, `node` that wrote it,
//! `written_at_ms`), which is what the write oracle checks against the final primary;
//! `GET /payments/{id}` reads the region's own node. Database failures become 503 answers
//! within [`DB_DEADLINE`], never a hang.

use std::collections::HashMap;
use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, CONTENT_TYPE};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use serde_json::{json, Value};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

mod db;

pub use db::{DB_DEADLINE, DB_POOL_SIZE};

/// The PostgreSQL role (and database) payments are kept under.
pub const DB_USER: &str = "postgres";

/// Largest request body accepted by `PUT /items/{id}` and `POST /payments`.
pub const MAX_BODY: usize = 64 * 1024;
/// Time allowed for one dependency check.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(2);
/// Time allowed for a whole `/health` evaluation.
pub const HEALTH_TIMEOUT: Duration = Duration::from_secs(5);
/// Time in-flight requests get to finish once shutdown begins.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

const SERVED_BY: HeaderName = HeaderName::from_static("x-served-by");
const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");
const IDEMPOTENT_REPLAY: HeaderName = HeaderName::from_static("idempotent-replay");

/// How a dependency is checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DependencyCheck {
    /// Healthy if a TCP connection to the address succeeds.
    Tcp(SocketAddr),
    /// Healthy if the path exists.
    File(PathBuf),
    /// A fixed answer.
    Always(bool),
}

/// A dependency reported by `/health`. A failing critical dependency makes the service fail its
/// health check; a failing non-critical one only degrades it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dependency {
    pub name: String,
    pub check: DependencyCheck,
    pub critical: bool,
}

impl Dependency {
    /// Parses "name=tcp:127.0.0.1:5432[,critical]", "name=file:/path[,critical]",
    /// "name=always:ok|fail[,critical]".
    pub fn parse(s: &str) -> Result<Dependency, String> {
        let expected = "expected NAME=tcp:ADDR, NAME=file:PATH or NAME=always:ok|fail, \
                        optionally followed by ,critical";
        let (name, spec) = s
            .split_once('=')
            .ok_or_else(|| format!("dependency {s:?}: missing '='; {expected}"))?;
        if name.is_empty() {
            return Err(format!("dependency {s:?}: empty name; {expected}"));
        }
        let (spec, critical) = match spec.strip_suffix(",critical") {
            Some(rest) => (rest, true),
            None => (spec, false),
        };
        let (kind, value) = spec
            .split_once(':')
            .ok_or_else(|| format!("dependency {s:?}: missing check kind; {expected}"))?;
        let check =
            match kind {
                "tcp" => DependencyCheck::Tcp(value.parse().map_err(|_| {
                    format!("dependency {s:?}: {value:?} is not an IP:PORT address")
                })?),
                "file" if !value.is_empty() => DependencyCheck::File(PathBuf::from(value)),
                "file" => return Err(format!("dependency {s:?}: empty path")),
                "always" => match value {
                    "ok" => DependencyCheck::Always(true),
                    "fail" => DependencyCheck::Always(false),
                    _ => return Err(format!("dependency {s:?}: always takes ok or fail")),
                },
                _ => {
                    return Err(format!(
                        "dependency {s:?}: unknown check kind {kind:?}; {expected}"
                    ))
                }
            };
        Ok(Dependency {
            name: name.to_owned(),
            check,
            critical,
        })
    }
}

/// What one sample service instance is.
#[derive(Clone, Debug)]
pub struct SampleConfig {
    pub region: String,
    pub dependencies: Vec<Dependency>,
}

/// Where payments live when they live in PostgreSQL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PaymentsDb {
    /// The region's writer proxy, which speaks the PostgreSQL protocol and leads to the
    /// primary: every payment is written there.
    pub writer: SocketAddr,
    /// The region's own PostgreSQL node: `GET /payments/{id}` reads there.
    pub local: SocketAddr,
}

/// The command-line arguments of `tern sample-service`.
#[derive(Clone, Debug, PartialEq, Eq, clap::Args)]
pub struct SampleArgs {
    /// Address to listen on (IP:PORT; port 0 picks one, printed once bound).
    #[arg(long, value_name = "ADDR")]
    pub listen: SocketAddr,
    /// The region this instance serves (named in every `x-served-by` header).
    #[arg(long, value_name = "NAME", value_parser = non_empty)]
    pub region: String,
    /// A dependency checked by `/health`: NAME=tcp:ADDR, NAME=file:PATH or
    /// NAME=always:ok|fail, optionally followed by ,critical. Repeatable.
    #[arg(long = "dep", visible_alias = "dependency", value_name = "SPEC", value_parser = Dependency::parse)]
    pub dependencies: Vec<Dependency>,
    /// Keep payments in PostgreSQL, written through this address (the
    /// region's writer proxy).
    #[arg(long, value_name = "ADDR")]
    pub db_writer: Option<SocketAddr>,
    /// Read payments from this address (the region's own node; default: the writer).
    #[arg(long, value_name = "ADDR", requires = "db_writer")]
    pub db_local: Option<SocketAddr>,
}

fn non_empty(s: &str) -> Result<String, String> {
    if s.is_empty() {
        Err("must not be empty".into())
    } else {
        Ok(s.to_string())
    }
}

/// `tern sample-service` on its own, for [`SampleArgs::parse`].
#[derive(clap::Parser)]
#[command(name = "tern sample-service", no_binary_name = true)]
struct SampleCli {
    #[command(flatten)]
    args: SampleArgs,
}

impl SampleArgs {
    /// Where payments live: PostgreSQL when `--db-writer` was given.
    pub fn payments_db(&self) -> Option<PaymentsDb> {
        self.db_writer.map(|writer| PaymentsDb {
            writer,
            local: self.db_local.unwrap_or(writer),
        })
    }

    /// Parses the arguments without the program and subcommand names (as
    /// clap does for `tern sample-service`); the error is clap's message,
    /// which names the offending argument.
    pub fn parse<I, S>(args: I) -> Result<SampleArgs, String>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        use clap::Parser as _;
        SampleCli::try_parse_from(args.into_iter().map(Into::into))
            .map(|c| c.args)
            .map_err(|e| e.to_string())
    }
}

/// Runs the sample service until `shutdown` is cancelled. Once bound it prints one line,
/// `listening on ADDR`, to stdout, so a parent that passed port 0 learns the address and knows
/// the service is ready.
pub async fn run(args: SampleArgs, shutdown: CancellationToken) -> io::Result<()> {
    let db = args.payments_db();
    let cfg = SampleConfig {
        region: args.region,
        dependencies: args.dependencies,
    };
    let server = bind_with_database(args.listen, cfg, db).await?;
    println!("listening on {}", server.local_addr());
    server.serve(shutdown).await
}

/// Binds, then serves until `shutdown` is cancelled; returns the bound address through the
/// returned struct so callers (tests) can connect. Payments live in memory.
pub async fn bind(listen: SocketAddr, cfg: SampleConfig) -> io::Result<SampleServer> {
    bind_with_database(listen, cfg, None).await
}

/// [`bind`], with payments in PostgreSQL when `db` is given. Connections are made on demand,
/// so the databases need not be up yet.
pub async fn bind_with_database(
    listen: SocketAddr,
    cfg: SampleConfig,
    db: Option<PaymentsDb>,
) -> io::Result<SampleServer> {
    let listener = TcpListener::bind(listen).await?;
    let local_addr = listener.local_addr()?;
    let served_by = HeaderValue::from_str(&cfg.region).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("region {:?} cannot be sent in a header", cfg.region),
        )
    })?;
    Ok(SampleServer {
        listener,
        local_addr,
        app: Arc::new(App {
            served_by,
            forced_unhealthy: AtomicBool::new(false),
            error_per_mille: std::sync::atomic::AtomicU32::new(0),
            store: Mutex::new(Store::default()),
            db: db.map(|db| {
                let name = format!("tern-sample-{}", cfg.region);
                let writer = Arc::new(db::PgPool::new(db.writer, &name));
                let local = if db.local == db.writer {
                    writer.clone()
                } else {
                    Arc::new(db::PgPool::new(db.local, &name))
                };
                Db { writer, local }
            }),
            cfg,
        }),
    })
}

/// A bound sample service, not yet serving.
pub struct SampleServer {
    listener: TcpListener,
    local_addr: SocketAddr,
    app: Arc<App>,
}

impl SampleServer {
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Serves HTTP/1.1 (and HTTP/2 with prior knowledge) until `shutdown` is cancelled, then
    /// stops accepting, lets in-flight requests finish for up to [`SHUTDOWN_GRACE`] and drops
    /// whatever remains.
    pub async fn serve(self, shutdown: CancellationToken) -> io::Result<()> {
        let builder = auto::Builder::new(TokioExecutor::new());
        let graceful = GracefulShutdown::new();
        let mut connections = JoinSet::new();
        tracing::info!(region = %self.app.cfg.region, addr = %self.local_addr, "sample service serving");
        loop {
            // Reap finished connections so the set does not grow with every client.
            while connections.try_join_next().is_some() {}
            let accepted = tokio::select! {
                _ = shutdown.cancelled() => break,
                accepted = self.listener.accept() => accepted,
            };
            let stream = match accepted {
                Ok((stream, _)) => stream,
                Err(err) => {
                    // Usually fd exhaustion; back off instead of spinning.
                    tracing::warn!(%err, "sample service accept failed");
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep(Duration::from_millis(50)) => continue,
                    }
                }
            };
            let _ = stream.set_nodelay(true);
            let app = self.app.clone();
            let service = service_fn(move |req| {
                let app = app.clone();
                async move { Ok::<_, Infallible>(app.handle(req).await) }
            });
            let conn = builder
                .serve_connection(TokioIo::new(stream), service)
                .into_owned();
            let conn = graceful.watch(conn);
            connections.spawn(async move {
                if let Err(err) = conn.await {
                    tracing::debug!(%err, "sample service connection ended with an error");
                }
            });
        }
        drop(self.listener);
        if tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown())
            .await
            .is_err()
        {
            tracing::warn!(
                remaining = connections.len(),
                "sample service grace period over; dropping connections"
            );
        }
        connections.shutdown().await;
        Ok(())
    }
}

struct App {
    cfg: SampleConfig,
    served_by: HeaderValue,
    forced_unhealthy: AtomicBool,
    /// Per mille of item and root requests answered with an injected 500.
    error_per_mille: std::sync::atomic::AtomicU32,
    store: Mutex<Store>,
    /// Payments in PostgreSQL instead of `store`.
    db: Option<Db>,
}

struct Db {
    writer: Arc<db::PgPool>,
    local: Arc<db::PgPool>,
}

#[derive(Default)]
struct Store {
    items: HashMap<String, String>,
    next_payment: u64,
    payments: HashMap<String, Value>,
    /// The first response given for each idempotency key, replayed verbatim.
    by_key: HashMap<String, Value>,
}

type Reply = Response<Full<Bytes>>;

impl App {
    fn store(&self) -> MutexGuard<'_, Store> {
        // Every update leaves the maps consistent, so a panic elsewhere cannot corrupt them.
        self.store
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn reply(&self, status: StatusCode, body: Value) -> Reply {
        let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
        *response.status_mut() = status;
        let headers = response.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        headers.insert(SERVED_BY, self.served_by.clone());
        response
    }

    /// A database that cannot take the request now (a failover, a fenced
    /// primary): 503 with `Retry-After`, the sign of a live service declining
    /// on purpose, which the edge does not count against the region.
    fn db_unavailable(&self, message: impl Into<String>) -> Reply {
        let mut reply = self.error(StatusCode::SERVICE_UNAVAILABLE, message);
        reply
            .headers_mut()
            .insert(http::header::RETRY_AFTER, HeaderValue::from_static("1"));
        reply
    }

    fn error(&self, status: StatusCode, message: impl Into<String>) -> Reply {
        self.reply(
            status,
            json!({"error": message.into(), "region": self.cfg.region}),
        )
    }

    async fn handle(&self, req: Request<Incoming>) -> Reply {
        let path = req.uri().path().to_owned();
        let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        let method = req.method().clone();
        let degradable = matches!(segments.as_slice(), [""] | ["items", _]);
        let per_mille = self.error_per_mille.load(Ordering::Relaxed);
        if degradable && per_mille > 0 && fastrand::u32(0..1000) < per_mille {
            return self.error(StatusCode::INTERNAL_SERVER_ERROR, "injected error");
        }
        match (&method, segments.as_slice()) {
            (&Method::POST, ["admin", "errors"]) => self.inject_errors(req).await,
            (&Method::GET, [""]) => self.reply(
                StatusCode::OK,
                json!({"service": "sample", "region": self.cfg.region}),
            ),
            (&Method::GET, ["health"]) => self.health().await,
            (&Method::POST, ["admin", "health"]) => self.force_health(req).await,
            (&Method::GET, ["items", id]) if !id.is_empty() => self.get_item(id),
            (&Method::PUT, ["items", id]) if !id.is_empty() => {
                let id = id.to_string();
                self.put_item(id, req).await
            }
            (&Method::POST, ["payments"]) => self.create_payment(req).await,
            (&Method::GET, ["payments", id]) if !id.is_empty() => match &self.db {
                Some(db) => self.get_db_payment(db, id).await,
                None => self.get_payment(id),
            },
            (_, [""] | ["health"] | ["admin", "health"] | ["payments"]) => {
                self.not_allowed(&method, &path)
            }
            (_, ["items" | "payments", id]) if !id.is_empty() => self.not_allowed(&method, &path),
            _ => self.error(StatusCode::NOT_FOUND, format!("no route for {path}")),
        }
    }

    fn not_allowed(&self, method: &Method, path: &str) -> Reply {
        self.error(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("{method} is not allowed on {path}"),
        )
    }

    async fn health(&self) -> Reply {
        let deadline = Instant::now() + HEALTH_TIMEOUT;
        let checks: Vec<_> = self
            .cfg
            .dependencies
            .iter()
            .map(|dep| tokio::spawn(check(dep.check.clone())))
            .collect();
        let mut reports = Vec::with_capacity(checks.len());
        let mut critical_failed = false;
        let mut any_failed = false;
        for (dep, task) in self.cfg.dependencies.iter().zip(checks) {
            let abort = task.abort_handle();
            let (ok, detail, elapsed) = match tokio::time::timeout_at(deadline, task).await {
                Ok(Ok(outcome)) => outcome,
                Ok(Err(err)) => (false, format!("check crashed: {err}"), Duration::ZERO),
                Err(_) => {
                    abort.abort();
                    (
                        false,
                        "health evaluation timed out".to_owned(),
                        HEALTH_TIMEOUT,
                    )
                }
            };
            any_failed |= !ok;
            critical_failed |= !ok && dep.critical;
            reports.push(json!({
                "name": dep.name,
                "critical": dep.critical,
                "ok": ok,
                "detail": detail,
                "elapsed_ms": elapsed.as_millis() as u64,
            }));
        }
        let forced = self.forced_unhealthy.load(Ordering::SeqCst);
        let (status, code) = if forced || critical_failed {
            ("failing", StatusCode::SERVICE_UNAVAILABLE)
        } else if any_failed {
            ("degraded", StatusCode::OK)
        } else {
            ("ok", StatusCode::OK)
        };
        self.reply(
            code,
            json!({
                "status": status,
                "region": self.cfg.region,
                "forced_unhealthy": forced,
                "dependencies": reports,
            }),
        )
    }

    /// `POST /admin/errors {"share": F}`: answer that share (0.0 to 1.0)
    /// of item and root requests with 500 from now on.
    async fn inject_errors(&self, req: Request<Incoming>) -> Reply {
        let body = match self.read_body(req).await {
            Ok(body) => body,
            Err(reply) => return reply,
        };
        let share = serde_json::from_slice::<Value>(&body)
            .ok()
            .and_then(|v| v.get("share").and_then(Value::as_f64))
            .filter(|s| (0.0..=1.0).contains(s));
        let Some(share) = share else {
            return self.error(
                StatusCode::BAD_REQUEST,
                r#"expected a JSON body {"share": F} with F from 0.0 to 1.0"#,
            );
        };
        self.error_per_mille
            .store((share * 1000.0).round() as u32, Ordering::Relaxed);
        tracing::info!(region = %self.cfg.region, share, "sample service injects errors");
        self.reply(
            StatusCode::OK,
            json!({"share": share, "region": self.cfg.region}),
        )
    }

    async fn force_health(&self, req: Request<Incoming>) -> Reply {
        let body = match self.read_body(req).await {
            Ok(body) => body,
            Err(reply) => return reply,
        };
        let healthy = serde_json::from_slice::<Value>(&body)
            .ok()
            .and_then(|v| v.get("healthy").and_then(Value::as_bool));
        let Some(healthy) = healthy else {
            return self.error(
                StatusCode::BAD_REQUEST,
                r#"expected a JSON body {"healthy": true|false}"#,
            );
        };
        self.forced_unhealthy.store(!healthy, Ordering::SeqCst);
        tracing::info!(region = %self.cfg.region, healthy, "sample service health forced");
        self.reply(
            StatusCode::OK,
            json!({"healthy": healthy, "region": self.cfg.region}),
        )
    }

    fn get_item(&self, id: &str) -> Reply {
        let value = self.store().items.get(id).cloned();
        self.reply(
            StatusCode::OK,
            json!({"id": id, "value": value, "region": self.cfg.region}),
        )
    }

    async fn put_item(&self, id: String, req: Request<Incoming>) -> Reply {
        let body = match self.read_body(req).await {
            Ok(body) => body,
            Err(reply) => return reply,
        };
        let Ok(value) = String::from_utf8(body.to_vec()) else {
            return self.error(StatusCode::BAD_REQUEST, "item values must be UTF-8");
        };
        self.store().items.insert(id.clone(), value);
        self.reply(
            StatusCode::OK,
            json!({"id": id, "stored": true, "region": self.cfg.region}),
        )
    }

    async fn create_payment(&self, req: Request<Incoming>) -> Reply {
        let key = match req.headers().get(IDEMPOTENCY_KEY).map(|v| v.to_str()) {
            None => None,
            Some(Ok(key)) if !key.is_empty() => Some(key.to_owned()),
            Some(_) => {
                return self.error(
                    StatusCode::BAD_REQUEST,
                    "Idempotency-Key must be non-empty visible ASCII",
                )
            }
        };
        let body = match self.read_body(req).await {
            Ok(body) => body,
            Err(reply) => return reply,
        };
        if let Some(db) = &self.db {
            return self.create_db_payment(db, key, &body).await;
        }
        let payload = if body.is_empty() {
            Value::Null
        } else {
            match serde_json::from_slice::<Value>(&body) {
                Ok(payload) => payload,
                Err(err) => {
                    return self.error(StatusCode::BAD_REQUEST, format!("body is not JSON: {err}"))
                }
            }
        };
        // Lookup and insert happen under one lock, so concurrent requests with the same key
        // create a single payment.
        let (response, replay) = {
            let mut store = self.store();
            match key.as_ref().and_then(|k| store.by_key.get(k)) {
                Some(first) => (first.clone(), true),
                None => {
                    store.next_payment += 1;
                    let id = format!("{}-{}", self.cfg.region, store.next_payment);
                    let response = json!({"id": id, "region": self.cfg.region, "key": key});
                    let mut payment = response.clone();
                    payment["payload"] = payload;
                    store.payments.insert(id, payment);
                    if let Some(key) = key {
                        store.by_key.insert(key, response.clone());
                    }
                    (response, false)
                }
            }
        };
        let mut reply = self.reply(StatusCode::CREATED, response);
        if replay {
            reply
                .headers_mut()
                .insert(IDEMPOTENT_REPLAY, HeaderValue::from_static("true"));
        }
        reply
    }

    /// `POST /payments` with PostgreSQL: insert unless the key is taken; a taken key answers
    /// with the payment that took it (200, `idempotent-replay: true`).
    async fn create_db_payment(&self, db: &Db, key: Option<String>, body: &[u8]) -> Reply {
        let Some(key) = key else {
            return self.error(
                StatusCode::BAD_REQUEST,
                "payments need an Idempotency-Key header",
            );
        };
        let amount = serde_json::from_slice::<Value>(body)
            .ok()
            .and_then(|v| v.get("amount").and_then(Value::as_i64));
        let Some(amount) = amount else {
            return self.error(
                StatusCode::BAD_REQUEST,
                r#"expected a JSON body with an integer amount, {"amount": 42}"#,
            );
        };
        match db.writer.create(&key, amount).await {
            Ok(Some(db::Created::New(payment))) => {
                self.reply(StatusCode::CREATED, self.payment_json(&payment))
            }
            Ok(Some(db::Created::Replay(payment))) => {
                let mut reply = self.reply(StatusCode::OK, self.payment_json(&payment));
                reply
                    .headers_mut()
                    .insert(IDEMPOTENT_REPLAY, HeaderValue::from_static("true"));
                reply
            }
            Ok(None) => {
                self.db_unavailable(format!("payment {key} is taken but could not be read back"))
            }
            Err(reason) => self.db_unavailable(reason),
        }
    }

    /// `GET /payments/{id}` with PostgreSQL, from the region's own node.
    async fn get_db_payment(&self, db: &Db, id: &str) -> Reply {
        let Ok(number) = id.parse::<i64>() else {
            return self.error(StatusCode::NOT_FOUND, format!("no payment {id}"));
        };
        match db.local.get(number).await {
            Ok(Some(payment)) => self.reply(StatusCode::OK, self.payment_json(&payment)),
            Ok(None) => self.error(StatusCode::NOT_FOUND, format!("no payment {id}")),
            Err(reason) => self.db_unavailable(reason),
        }
    }

    fn payment_json(&self, p: &db::Payment) -> Value {
        json!({
            "id": p.id,
            "key": p.key,
            "amount": p.amount,
            "node": p.node,
            "timeline": p.timeline,
            "written_at_ms": p.written_at_ms,
            "region": self.cfg.region,
        })
    }

    fn get_payment(&self, id: &str) -> Reply {
        let payment = self.store().payments.get(id).cloned();
        match payment {
            Some(payment) => self.reply(StatusCode::OK, payment),
            None => self.error(StatusCode::NOT_FOUND, format!("no payment {id}")),
        }
    }

    async fn read_body(&self, req: Request<Incoming>) -> Result<Bytes, Reply> {
        match Limited::new(req.into_body(), MAX_BODY).collect().await {
            Ok(collected) => Ok(collected.to_bytes()),
            Err(err) if err.downcast_ref::<LengthLimitError>().is_some() => Err(self.error(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("body larger than {MAX_BODY} bytes"),
            )),
            Err(err) => Err(self.error(
                StatusCode::BAD_REQUEST,
                format!("could not read body: {err}"),
            )),
        }
    }
}

/// Runs one dependency check; returns whether it passed, a detail and how long it took.
async fn check(check: DependencyCheck) -> (bool, String, Duration) {
    let started = Instant::now();
    let outcome = tokio::time::timeout(CHECK_TIMEOUT, async {
        match &check {
            DependencyCheck::Tcp(addr) => match TcpStream::connect(addr).await {
                Ok(_) => (true, format!("connected to {addr}")),
                Err(err) => (false, format!("connect to {addr}: {err}")),
            },
            DependencyCheck::File(path) => match tokio::fs::try_exists(path).await {
                Ok(true) => (true, format!("{} exists", path.display())),
                Ok(false) => (false, format!("{} does not exist", path.display())),
                Err(err) => (false, format!("{}: {err}", path.display())),
            },
            DependencyCheck::Always(ok) => (*ok, if *ok { "ok" } else { "fail" }.to_owned()),
        }
    })
    .await;
    let (ok, detail) =
        outcome.unwrap_or_else(|_| (false, format!("timed out after {CHECK_TIMEOUT:?}")));
    (ok, detail, started.elapsed())
}
