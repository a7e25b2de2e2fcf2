//! The lab's PostgreSQL servers: a primary made with `initdb`, streaming standbys made with
//! `pg_basebackup`, each a direct child process of the lab so that killing it is a real crash.
//!
//! A [`PgServer`] is one node: a data directory, the address it listens on and the name it goes
//! by (its region, also its `cluster_name`, which the sample service's rows record as `node`).
//! Settings every node shares live in `postgresql.conf`; a node's identity (address, port,
//! socket directory, `cluster_name`) is given on the command line by [`PgServer::start`],
//! because base backups and `pg_rewind` copy the configuration files from another node.
//!
//! PostgreSQL refuses to run as root, so when the lab runs as root every directory is handed
//! to the `postgres` user and every binary runs as that user.

use std::ffi::CString;
use std::io::Write as _;
use std::net::SocketAddr;
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use tokio_postgres::{Client, NoTls};

use crate::db_report::Row;

/// The sample service's table. `node` is the name of the server that wrote the row,
/// `timeline` the WAL timeline it wrote on (the first 8 hex digits of its current WAL file's
/// name: with `node`, which incarnation of a writer took it) and `written_at` that server's
/// clock at the write.
pub const SCHEMA: &str = "\
CREATE TABLE IF NOT EXISTS payments (
    id bigserial PRIMARY KEY,
    key text UNIQUE NOT NULL,
    amount bigint NOT NULL,
    node text NOT NULL DEFAULT current_setting('cluster_name'),
    timeline text NOT NULL DEFAULT substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8),
    written_at timestamptz NOT NULL DEFAULT clock_timestamp()
)";

/// How long a starting server gets to accept connections (a standby may replay WAL first).
pub const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a fast shutdown gets before the server is killed.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(30);
/// How long `initdb` and `pg_basebackup` get.
pub const TOOL_TIMEOUT: Duration = Duration::from_secs(120);
/// How many ports a new server tries: PostgreSQL cannot be handed a bound socket, so the free
/// port chosen for it may be taken by another process before the server binds it.
pub const PORT_ATTEMPTS: u32 = 5;
/// The database user and database every lab connection uses.
pub const USER: &str = "postgres";

/// Settings every node shares, appended to `postgresql.conf` by [`PgServer::init_primary`].
/// The short replication timeouts make a dead or cut-off peer noticed in seconds, as the lab's
/// faults need, rather than after the default minute.
const SHARED_CONF: &str = "
# tern lab: settings every node shares. A node's own address, port, socket
# directory and cluster_name are given on its command line.
wal_level = replica
max_wal_senders = 10
max_replication_slots = 10
wal_keep_size = '256MB'
hot_standby = on
wal_log_hints = on
wal_sender_timeout = '5s'
wal_receiver_timeout = '5s'
wal_retrieve_retry_interval = '500ms'
";

/// Client authentication: every loopback address, for sessions and replication alike.
const HBA: &str = "
# tern lab: every loopback address may connect and replicate.
host all all 127.0.0.0/8 trust
host replication all 127.0.0.0/8 trust
";

/// The directory of the PostgreSQL server binaries: `TERN_PG_BIN` if set, else the directory of
/// the `initdb` found on `PATH` (symlinks resolved), else the newest
/// `/usr/lib/postgresql/*/bin`. Only directories that also hold `postgres` and
/// `pg_basebackup` count.
pub fn pg_bin_dir() -> Option<PathBuf> {
    let complete = |dir: &Path| {
        ["initdb", "postgres", "pg_basebackup"]
            .iter()
            .all(|b| dir.join(b).is_file())
    };
    if let Some(dir) = std::env::var_os("TERN_PG_BIN").map(PathBuf::from) {
        return complete(&dir).then_some(dir);
    }
    let on_path = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join("initdb"))
            .filter(|initdb| initdb.is_file())
            .filter_map(|initdb| std::fs::canonicalize(initdb).ok())
            .filter_map(|initdb| initdb.parent().map(Path::to_path_buf))
            .find(|dir| complete(dir))
    });
    if on_path.is_some() {
        return on_path;
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            complete(&bin).then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin)
}

/// The connection string for the lab's database on the server (or proxy) at `addr`.
pub fn conninfo_for(addr: SocketAddr) -> String {
    format!(
        "host={} port={} user={USER} dbname={USER} connect_timeout=5",
        addr.ip(),
        addr.port()
    )
}

/// Connects within `timeout`; the connection runs on a task of the current runtime and ends
/// when the client is dropped.
pub async fn connect(conninfo: &str, timeout: Duration) -> Result<Client> {
    let (client, connection) =
        tokio::time::timeout(timeout, tokio_postgres::connect(conninfo, NoTls))
            .await
            .map_err(|_| anyhow!("no connection to PostgreSQL ({conninfo}) within {timeout:?}"))?
            .with_context(|| format!("connect to PostgreSQL ({conninfo})"))?;
    tokio::spawn(async move {
        if let Err(err) = connection.await {
            tracing::debug!(%err, "PostgreSQL connection ended");
        }
    });
    Ok(client)
}

/// Creates the `payments` table ([`SCHEMA`]) if it does not exist. The commit does not wait
/// for a synchronous standby (`synchronous_commit = local`), so the schema can be made before
/// the standby exists; a standby made afterwards copies it, one already streaming receives it.
pub async fn create_schema(conninfo: &str) -> Result<()> {
    let client = connect(conninfo, Duration::from_secs(10)).await?;
    let sql = format!("SET synchronous_commit = local; {SCHEMA}");
    tokio::time::timeout(Duration::from_secs(30), client.batch_execute(&sql))
        .await
        .map_err(|_| anyhow!("create the payments table: no answer within 30 s"))?
        .context("create the payments table")
}

/// Every row of `payments`, by id: what the write oracle compares with the clients' records.
pub async fn read_payments(conninfo: &str) -> Result<Vec<Row>> {
    let client = connect(conninfo, Duration::from_secs(10)).await?;
    let rows = tokio::time::timeout(
        Duration::from_secs(30),
        client.query(
            "SELECT id, key, node, floor(extract(epoch FROM written_at) * 1000)::bigint \
             FROM payments ORDER BY id",
            &[],
        ),
    )
    .await
    .map_err(|_| anyhow!("read the payments: no answer within 30 s"))?
    .context("read the payments")?;
    rows.iter()
        .map(|r| {
            Ok(Row {
                id: r.try_get(0)?,
                key: r.try_get(1)?,
                node: r.try_get(2)?,
                written_at_ms: r.try_get(3)?,
            })
        })
        .collect::<Result<_, tokio_postgres::Error>>()
        .context("read the payments")
}

/// One PostgreSQL server of the lab.
pub struct PgServer {
    /// The node's name (its region); also its `cluster_name`.
    pub name: String,
    /// The data directory. Its socket directory and log file sit beside it
    /// (`<data>.sock`, `<data>.log`), outside what base backups and `pg_rewind` copy.
    pub data: PathBuf,
    /// Where the server listens. A new server's port (0 for any) is settled by its first
    /// [`PgServer::start`], which moves to another free port should the chosen one be taken
    /// before the server binds it: read this after the first start. From then on the address
    /// stays, since others have been given it.
    pub listen: SocketAddr,
    /// The directory of the PostgreSQL binaries.
    pub bin: PathBuf,
    /// uid and gid the binaries run as (the `postgres` user when the lab runs as root).
    run_as: Option<(u32, u32)>,
    /// The server process, found through its data directory whoever started
    /// it (the lab, or later the region's agent, which fences the node by
    /// stopping it and starts it again).
    node: tern_pg::LocalNode,
    /// The server has run: its address is settled.
    started: bool,
}

impl PgServer {
    /// A new primary in `dir` (created if missing, which must otherwise be empty), not yet
    /// started. With `sync_standby`, commits wait until the standby whose `application_name`
    /// it is has flushed them (`synchronous_standby_names`); without, replication is
    /// asynchronous.
    pub async fn init_primary(
        bin: &Path,
        dir: &Path,
        name: &str,
        listen: SocketAddr,
        sync_standby: Option<&str>,
    ) -> Result<PgServer> {
        let server = PgServer::prepare(bin, dir, name, listen)?;
        let data = server.data.display().to_string();
        server
            .run_tool(
                "initdb",
                &[
                    "-D",
                    &data,
                    "-U",
                    USER,
                    "--auth=trust",
                    "--encoding=UTF8",
                    "--no-sync",
                    "--data-checksums",
                    "--no-instructions",
                ],
            )
            .await?;
        let sync = sync_standby.map_or(String::new(), quote_name);
        server.append(
            "postgresql.conf",
            &format!(
                "{SHARED_CONF}synchronous_standby_names = {}\n",
                conf_string(&sync)
            ),
        )?;
        server.append("pg_hba.conf", HBA)?;
        Ok(server)
    }

    /// A new streaming standby in `dir` (created if missing, which must otherwise be empty),
    /// not yet started: a base backup from the server at `primary` (in the lab, the WAN
    /// emulator's address for it), then [`PgServer::configure_standby`].
    pub async fn standby_from(
        bin: &Path,
        dir: &Path,
        name: &str,
        listen: SocketAddr,
        primary: SocketAddr,
        application_name: &str,
    ) -> Result<PgServer> {
        let server = PgServer::prepare(bin, dir, name, listen)?;
        let data = server.data.display().to_string();
        let source = format!("host={} port={} user={USER}", primary.ip(), primary.port());
        server
            .run_tool(
                "pg_basebackup",
                &[
                    "-d",
                    &source,
                    "-D",
                    &data,
                    "-X",
                    "stream",
                    "-c",
                    "fast",
                    "--no-sync",
                ],
            )
            .await?;
        server.configure_standby(primary, application_name)?;
        Ok(server)
    }

    /// Makes the (stopped) node a standby that streams from `primary` under
    /// `application_name`: writes `standby.signal`, and `primary_conninfo` plus an empty
    /// `synchronous_standby_names` to `postgresql.auto.conf`, so that after a promotion this
    /// node does not wait for a standby that is not there. Later lines of that file win, so
    /// this also overrides what `pg_rewind --write-recovery-conf` wrote.
    pub fn configure_standby(&self, primary: SocketAddr, application_name: &str) -> Result<()> {
        let conninfo = format!(
            "host={} port={} user={USER} application_name={}",
            primary.ip(),
            primary.port(),
            conninfo_value(application_name)
        );
        self.append(
            "postgresql.auto.conf",
            &format!(
                "primary_conninfo = {}\nsynchronous_standby_names = ''\n",
                conf_string(&conninfo)
            ),
        )?;
        self.append("standby.signal", "")
    }

    /// The arguments after `postgres -D <data>` that give this node its identity (port,
    /// address, socket directory, `cluster_name`); the region's agent starts the node with the
    /// same ones.
    pub fn server_args(&self) -> Vec<String> {
        server_args(&self.name, self.listen, &self.socket_dir())
    }

    /// Starts `postgres -D <data>` in a process group of its own and waits until it accepts
    /// connections (within [`START_TIMEOUT`]). The server dies with the lab, or more exactly
    /// with the thread that started it (`PR_SET_PDEATHSIG`): call this from a runtime worker,
    /// not from a short-lived blocking thread.
    ///
    /// The first start settles the port (see [`PgServer::listen`]): a free one when it is 0,
    /// and another free one, up to [`PORT_ATTEMPTS`] in all, each time the server exits
    /// because another process took its port first. A later start keeps the address.
    pub async fn start(&mut self) -> Result<()> {
        if self.is_running() {
            bail!("{}: already running", self.name);
        }
        let sockets = self.socket_dir();
        std::fs::create_dir_all(&sockets)
            .with_context(|| format!("create {}", sockets.display()))?;
        self.chown(&sockets)?;
        if self.started {
            let from = self.log_len();
            return match self.node.start(START_TIMEOUT).await {
                Ok(()) => Ok(()),
                Err(e) if self.port_taken_since(from) => Err(e).with_context(|| {
                    format!(
                        "{}: start postgres: its address {} was taken while it was down (it \
                         keeps it: others have been given it)",
                        self.name, self.listen
                    )
                }),
                Err(e) => Err(e).with_context(|| format!("{}: start postgres", self.name)),
            };
        }
        let mut attempt = 1;
        loop {
            if self.listen.port() == 0 {
                self.listen.set_port(free_port(self.listen.ip())?);
                self.node = local_node(&self.data, &self.bin, self.run_as, self.server_args());
            }
            let from = self.log_len();
            let Err(e) = self.node.start(START_TIMEOUT).await else {
                self.started = true;
                return Ok(());
            };
            if !self.port_taken_since(from) {
                return Err(e).with_context(|| format!("{}: start postgres", self.name));
            }
            if attempt == PORT_ATTEMPTS {
                return Err(e).with_context(|| {
                    format!(
                        "{}: start postgres: each of {PORT_ATTEMPTS} free ports tried on {} was \
                         taken before the server could bind it",
                        self.name,
                        self.listen.ip()
                    )
                });
            }
            tracing::info!(
                node = %self.name,
                taken = %self.listen,
                "the port was taken before postgres could bind it; trying another"
            );
            self.listen.set_port(0);
            attempt += 1;
        }
    }

    /// The length of the server's log now, to read what a start adds to it.
    fn log_len(&self) -> u64 {
        std::fs::metadata(self.log_path()).map_or(0, |m| m.len())
    }

    /// Whether the server's log says, after byte `from`, that its port was taken.
    fn port_taken_since(&self, from: u64) -> bool {
        let log = std::fs::read(self.log_path()).unwrap_or_default();
        let added = log.get(from as usize..).unwrap_or_default();
        String::from_utf8_lossy(added).contains("Address already in use")
    }

    /// Crashes the server as a dead host would: SIGKILL to the postmaster and to every one of
    /// its children, then waits until none of them is alive, so no orphaned backend keeps the
    /// shared memory and the next start recovers at once.
    pub async fn kill(&mut self) {
        if let Err(e) = self.node.crash().await {
            tracing::warn!("{}: crash: {e}", self.name);
        }
    }

    /// Fast shutdown (sessions are ended, a shutdown checkpoint written), escalating to an
    /// immediate shutdown and then a kill when it takes longer than [`STOP_TIMEOUT`].
    pub async fn stop(&mut self) -> Result<()> {
        let how = self
            .node
            .stop(STOP_TIMEOUT)
            .await
            .with_context(|| format!("{}: stop", self.name))?;
        if !matches!(how, tern_pg::Stopped::Fast | tern_pg::Stopped::NotRunning) {
            bail!(
                "{}: no clean shutdown within {STOP_TIMEOUT:?} ({})",
                self.name,
                how.as_str()
            );
        }
        Ok(())
    }

    /// Whether a postmaster runs for this data directory (whoever started it).
    pub fn is_running(&mut self) -> bool {
        self.node.is_running()
    }

    /// The postmaster's process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.node.postmaster().map(|p| p as u32)
    }

    /// The connection string for this server's lab database.
    pub fn conninfo(&self) -> String {
        conninfo_for(self.listen)
    }

    /// The server's log (its stderr), beside the data directory.
    pub fn log_path(&self) -> PathBuf {
        self.data.with_extension("log")
    }

    /// The server's Unix socket directory, beside the data directory.
    pub fn socket_dir(&self) -> PathBuf {
        self.data.with_extension("sock")
    }

    /// uid and gid the binaries run as, for tools run on this node's data directory (such as
    /// the agent's `pg_rewind`).
    pub fn run_as(&self) -> Option<(u32, u32)> {
        self.run_as
    }

    /// Sets `synchronous_standby_names` on the running server (`ALTER SYSTEM`, then a reload):
    /// `Some(name)` makes commits wait for that standby, `None` makes replication asynchronous.
    pub async fn set_sync_standby(&self, application_name: Option<&str>) -> Result<()> {
        let value = application_name.map_or(String::new(), quote_name);
        let client = connect(&self.conninfo(), Duration::from_secs(10)).await?;
        let sql = format!(
            "ALTER SYSTEM SET synchronous_standby_names = {}; SELECT pg_reload_conf()",
            conf_string(&value)
        );
        tokio::time::timeout(Duration::from_secs(10), client.batch_execute(&sql))
            .await
            .map_err(|_| anyhow!("{}: set synchronous_standby_names: no answer", self.name))?
            .with_context(|| format!("{}: set synchronous_standby_names", self.name))
    }

    /// Waits until the standby `application_name` streams from this primary and, when this
    /// primary names it in `synchronous_standby_names`, until it counts as synchronous (a
    /// standby is listed as `async` until its first flush report). Returns its `sync_state`.
    pub async fn wait_for_standby(
        &self,
        application_name: &str,
        timeout: Duration,
    ) -> Result<String> {
        let deadline = Instant::now() + timeout;
        let mut last_error = None;
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            match connect(&self.conninfo(), remaining.min(Duration::from_secs(2))).await {
                Ok(client) => {
                    let row = tokio::time::timeout(
                        Duration::from_secs(2),
                        client.query_opt(
                            "SELECT sync_state, current_setting('synchronous_standby_names') \
                             FROM pg_stat_replication \
                             WHERE application_name = $1 AND state = 'streaming'",
                            &[&application_name],
                        ),
                    )
                    .await;
                    match row {
                        Ok(Ok(Some(row))) => {
                            let state: String = row.try_get(0)?;
                            let names: String = row.try_get(1)?;
                            if state == "sync"
                                || state == "quorum"
                                || !names_standby(&names, application_name)
                            {
                                return Ok(state);
                            }
                        }
                        Ok(Ok(None)) => {}
                        Ok(Err(err)) => last_error = Some(err.to_string()),
                        Err(_) => last_error = Some("no answer".into()),
                    }
                }
                Err(err) => last_error = Some(format!("{err:#}")),
            }
            if Instant::now() >= deadline {
                bail!(
                    "{}: standby {application_name} not streaming within {timeout:?}{}",
                    self.name,
                    last_error.map_or(String::new(), |e| format!(" ({e})"))
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Creates the data directory (empty, mode 0700, owned by the user the server runs as).
    fn prepare(bin: &Path, dir: &Path, name: &str, listen: SocketAddr) -> Result<PgServer> {
        let run_as = postgres_user()?;
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
        let data =
            std::fs::canonicalize(dir).with_context(|| format!("resolve {}", dir.display()))?;
        if std::fs::read_dir(&data)?.next().is_some() {
            bail!(
                "{}: the data directory {} is not empty",
                name,
                data.display()
            );
        }
        std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o700))?;
        let node = local_node(
            &data,
            bin,
            run_as,
            server_args(name, listen, &data.with_extension("sock")),
        );
        let server = PgServer {
            name: name.to_string(),
            data,
            listen,
            bin: bin.to_path_buf(),
            run_as,
            node,
            started: false,
        };
        server.chown(&server.data)?;
        if let Some((uid, gid)) = run_as {
            make_searchable(&server.data, uid, gid)?;
        }
        Ok(server)
    }

    fn command(&self, program: &str) -> std::process::Command {
        let mut cmd = std::process::Command::new(self.bin.join(program));
        if let Some((uid, gid)) = self.run_as {
            cmd.uid(uid).gid(gid);
        }
        // A directory every user may enter: the postgres user may not enter ours.
        cmd.current_dir("/")
            .env("LC_ALL", "C")
            .env_remove("PGDATA")
            .env_remove("PGHOST")
            .env_remove("PGPORT")
            .stdin(Stdio::null());
        cmd
    }

    async fn run_tool(&self, program: &str, args: &[&str]) -> Result<()> {
        let mut cmd = self.command(program);
        cmd.args(args);
        let out = tokio::time::timeout(TOOL_TIMEOUT, tokio::process::Command::from(cmd).output())
            .await
            .map_err(|_| anyhow!("{}: {program} not done within {TOOL_TIMEOUT:?}", self.name))?
            .with_context(|| format!("{}: run {}", self.name, self.bin.join(program).display()))?;
        if !out.status.success() {
            bail!(
                "{}: {program} failed ({}): {}{}",
                self.name,
                out.status,
                String::from_utf8_lossy(&out.stdout).trim(),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    }

    /// Appends to a file of the data directory, creating it (owned by the server's user).
    fn append(&self, file: &str, text: &str) -> Result<()> {
        let path = self.data.join(file);
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("open {}", path.display()))?;
        f.write_all(text.as_bytes())
            .with_context(|| format!("write {}", path.display()))?;
        self.chown(&path)
    }

    fn chown(&self, path: &Path) -> Result<()> {
        if let Some((uid, gid)) = self.run_as {
            std::os::unix::fs::chown(path, Some(uid), Some(gid))
                .with_context(|| format!("hand {} to the postgres user", path.display()))?;
        }
        Ok(())
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        self.node.crash_now();
    }
}

/// The server of the data directory `data`, run with `args` after `postgres -D <data>`.
fn local_node(
    data: &Path,
    bin: &Path,
    run_as: Option<(u32, u32)>,
    args: Vec<String>,
) -> tern_pg::LocalNode {
    tern_pg::LocalNode::new(data, bin, args)
        .with_run_as(run_as)
        .stop_with_parent(true)
}

/// A port on `ip` that was free a moment ago.
fn free_port(ip: std::net::IpAddr) -> Result<u16> {
    let l = std::net::TcpListener::bind(SocketAddr::new(ip, 0))
        .with_context(|| format!("find a free port on {ip}"))?;
    Ok(l.local_addr()?.port())
}

/// The arguments after `postgres -D <data>` that give a lab node its identity.
fn server_args(name: &str, listen: SocketAddr, sockets: &Path) -> Vec<String> {
    vec![
        "-p".into(),
        listen.port().to_string(),
        "-c".into(),
        format!("listen_addresses={}", listen.ip()),
        "-c".into(),
        format!("unix_socket_directories={}", sockets.display()),
        "-c".into(),
        format!("cluster_name={name}"),
    ]
}

/// The `postgres` user's uid and gid when the lab runs as root (PostgreSQL refuses to run as
/// root); `None` otherwise.
fn postgres_user() -> Result<Option<(u32, u32)>> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Ok(None);
    }
    let name = CString::new(USER).expect("no NUL in the user name");
    // SAFETY: getpwnam_r writes only into the buffers we pass, all of which outlive the call.
    let found = unsafe {
        let mut pwd: libc::passwd = std::mem::zeroed();
        let mut buf = vec![0 as libc::c_char; 16 * 1024];
        let mut result = std::ptr::null_mut();
        let rc = libc::getpwnam_r(
            name.as_ptr(),
            &mut pwd,
            buf.as_mut_ptr(),
            buf.len(),
            &mut result,
        );
        (rc == 0 && !result.is_null()).then_some((pwd.pw_uid, pwd.pw_gid))
    };
    match found {
        Some(ids) => Ok(Some(ids)),
        None => bail!(
            "running as root, but there is no `{USER}` user to run PostgreSQL as (it refuses to run as root)"
        ),
    }
}

/// Lets `uid`/`gid` reach `path`: every ancestor it could not enter gets search permission
/// for others (`o+x`, not read). The lab's own temporary directory is private to root.
fn make_searchable(path: &Path, uid: u32, gid: u32) -> Result<()> {
    for dir in path.ancestors().skip(1) {
        let meta = std::fs::metadata(dir).with_context(|| format!("inspect {}", dir.display()))?;
        let mode = meta.mode();
        let searchable = if meta.uid() == uid {
            mode & 0o100 != 0
        } else if meta.gid() == gid {
            mode & 0o010 != 0
        } else {
            mode & 0o001 != 0
        };
        if !searchable {
            std::fs::set_permissions(
                dir,
                std::fs::Permissions::from_mode((mode | 0o001) & 0o7777),
            )
            .with_context(|| format!("let the postgres user enter {}", dir.display()))?;
        }
    }
    Ok(())
}

/// Whether a `synchronous_standby_names` value names the standby (or all, with `*`).
fn names_standby(setting: &str, name: &str) -> bool {
    setting
        .split(|c: char| c == ',' || c == '(' || c == ')' || c.is_whitespace())
        .map(|t| t.trim_matches('"'))
        .any(|t| t == "*" || t.eq_ignore_ascii_case(name))
}

/// A name for `synchronous_standby_names`: double-quoted, since names such as `us-west` are
/// not plain identifiers.
fn quote_name(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// A string literal for a configuration file or SQL.
fn conf_string(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

/// A value inside a libpq connection string.
fn conninfo_value(value: &str) -> String {
    if !value.is_empty()
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    {
        value.to_string()
    } else {
        format!("'{}'", value.replace('\\', "\\\\").replace('\'', "\\'"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting() {
        assert_eq!(quote_name("us-west"), "\"us-west\"");
        assert_eq!(quote_name("a\"b"), "\"a\"\"b\"");
        assert_eq!(conf_string("it's"), "'it''s'");
        assert_eq!(conf_string(&quote_name("us-west")), "'\"us-west\"'");
        assert_eq!(conninfo_value("us-west"), "us-west");
        assert_eq!(conninfo_value("a b'c"), "'a b\\'c'");
        assert_eq!(conninfo_value(""), "''");
    }

    #[test]
    fn synchronous_standby_names_are_matched() {
        for (setting, named) in [
            ("\"us-west\"", true),
            ("FIRST 1 (\"us-east\", \"us-west\")", true),
            ("ANY 1 (a,us-west)", true),
            ("*", true),
            ("\"us-east\"", false),
            ("", false),
        ] {
            assert_eq!(names_standby(setting, "us-west"), named, "{setting}");
        }
    }

    #[test]
    fn conninfo_names_the_address() {
        assert_eq!(
            conninfo_for("127.0.1.5:5433".parse().unwrap()),
            "host=127.0.1.5 port=5433 user=postgres dbname=postgres connect_timeout=5"
        );
    }
}
