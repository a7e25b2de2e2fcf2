//! HTTPS at the edge: certificates chosen by SNI, reloaded without a restart.
//!
//! [`Certificates`] holds the served set ([`CertSet`]: exact names, wildcard
//! names, an optional default) behind a lock that a handshake only reads.
//! [`load`] reads every PEM file of `[edge.tls]` and refuses a set in which a
//! certificate is expired or not yet valid, or whose key does not match its
//! certificate. [`reload_loop`] reloads on SIGHUP and whenever a file's
//! modification time or size changes; a set that fails to load is refused
//! with a log line (and counted in `/status`), the old one staying in use.
//! Connections already open keep their session: only new handshakes see a
//! new certificate.
//!
//! The server speaks TLS 1.2 and 1.3 with rustls' ring provider and offers
//! ALPN `h2` and `http/1.1` (RFC 7301), as browsers and curl expect.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use serde::Serialize;
use tern_core::config::tls::{CertFiles, EdgeTls};
use tokio_util::sync::CancellationToken;

/// Why a certificate set could not be loaded; names the file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {why}")]
    File { path: PathBuf, why: String },
    #[error("TLS settings: {0}")]
    Settings(String),
}

fn file_err(path: &Path, why: impl Into<String>) -> TlsError {
    TlsError::File {
        path: path.to_path_buf(),
        why: why.into(),
    }
}

/// One loaded set of certificates.
#[derive(Debug, Default)]
pub struct CertSet {
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// Keyed by the part after `*.`.
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    default: Option<Arc<CertifiedKey>>,
    /// The earliest expiry among the set's leaf certificates.
    pub not_after: Option<SystemTime>,
}

impl CertSet {
    /// The certificate for `sni`: an exact name, then a wildcard one label
    /// deep, then the default.
    pub fn choose(&self, sni: Option<&str>) -> Option<Arc<CertifiedKey>> {
        if let Some(name) = sni.map(|n| n.trim_end_matches('.').to_ascii_lowercase()) {
            if let Some(k) = self.exact.get(&name) {
                return Some(k.clone());
            }
            if let Some((_, parent)) = name.split_once('.') {
                if let Some(k) = self.wildcard.get(parent) {
                    return Some(k.clone());
                }
            }
        }
        self.default.clone()
    }
}

/// Reads one certificate chain and key, checking the leaf's validity period
/// against `now` and that the key belongs to the certificate.
pub fn load_pair(
    files: &CertFiles,
    now: SystemTime,
) -> Result<(CertifiedKey, SystemTime), TlsError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.cert)
        .map_err(|e| file_err(&files.cert, format!("cannot read certificates: {e}")))?
        .collect::<Result<_, _>>()
        .map_err(|e| file_err(&files.cert, format!("not a PEM certificate file: {e}")))?;
    let Some(leaf) = chain.first() else {
        return Err(file_err(&files.cert, "no CERTIFICATE block in the file"));
    };
    let (_, parsed) = x509_parser::parse_x509_certificate(leaf.as_ref()).map_err(|e| {
        file_err(
            &files.cert,
            format!("the first certificate does not parse: {e}"),
        )
    })?;
    let validity = parsed.validity();
    let not_before = system_time(validity.not_before.timestamp());
    let not_after = system_time(validity.not_after.timestamp());
    if now < not_before {
        return Err(file_err(
            &files.cert,
            format!("certificate not valid before {}", validity.not_before),
        ));
    }
    if now > not_after {
        return Err(file_err(
            &files.cert,
            format!("certificate expired on {}", validity.not_after),
        ));
    }
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .map_err(|e| file_err(&files.key, format!("no usable private key: {e}")))?;
    let provider = tern_probe::crypto_provider();
    let signing = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| file_err(&files.key, format!("unsupported private key: {e}")))?;
    let certified = CertifiedKey::new(chain, signing);
    certified.keys_match().map_err(|e| {
        file_err(
            &files.key,
            format!("this key does not belong to {}: {e}", files.cert.display()),
        )
    })?;
    Ok((certified, not_after))
}

fn system_time(unix: i64) -> SystemTime {
    if unix >= 0 {
        SystemTime::UNIX_EPOCH + Duration::from_secs(unix as u64)
    } else {
        SystemTime::UNIX_EPOCH - Duration::from_secs(unix.unsigned_abs())
    }
}

/// Loads every certificate `settings` names.
pub fn load(settings: &EdgeTls) -> Result<CertSet, TlsError> {
    let now = SystemTime::now();
    let mut set = CertSet::default();
    let earliest = |t: SystemTime, set: &mut CertSet| {
        set.not_after = Some(set.not_after.map_or(t, |e| e.min(t)));
    };
    if let Some(files) = &settings.default {
        let (k, until) = load_pair(files, now)?;
        set.default = Some(Arc::new(k));
        earliest(until, &mut set);
    }
    for named in &settings.certificates {
        let (k, until) = load_pair(&named.files, now)?;
        earliest(until, &mut set);
        let k = Arc::new(k);
        for host in &named.hosts {
            match host.strip_prefix("*.") {
                Some(parent) => set.wildcard.entry(parent.to_string()).or_insert(k.clone()),
                None => set.exact.entry(host.clone()).or_insert(k.clone()),
            };
        }
    }
    Ok(set)
}

/// The served certificates and what reloading them did.
#[derive(Debug)]
pub struct Certificates {
    settings: EdgeTls,
    /// The listener's address once bound (port 0 resolved).
    bound: std::sync::OnceLock<std::net::SocketAddr>,
    current: RwLock<Arc<CertSet>>,
    /// (path, modified, length) of every file when the set was loaded.
    stamps: Mutex<Vec<(PathBuf, Option<SystemTime>, u64)>>,
    reloads: AtomicU64,
    reload_failures: AtomicU64,
    last_error: Mutex<Option<String>>,
    /// Handshakes that named a host no certificate covers, without a default.
    unknown_names: AtomicU64,
}

/// What `/status` shows of TLS.
#[derive(Debug, Serialize)]
pub struct TlsStatus {
    pub listen: String,
    /// Certificate sets loaded since start (the first load included).
    pub reloads: u64,
    /// Reloads refused (the old set stayed in use).
    pub reload_failures: u64,
    pub last_error: Option<String>,
    /// Unix seconds of the earliest expiry in the served set.
    pub earliest_expiry_unix_s: Option<u64>,
    pub unknown_names: u64,
}

impl Certificates {
    /// Loads the set for the first time; an error here stops the edge.
    pub fn new(settings: EdgeTls) -> Result<Certificates, TlsError> {
        let set = load(&settings)?;
        let stamps = stamps(&settings);
        Ok(Certificates {
            settings,
            bound: std::sync::OnceLock::new(),
            current: RwLock::new(Arc::new(set)),
            stamps: Mutex::new(stamps),
            reloads: AtomicU64::new(1),
            reload_failures: AtomicU64::new(0),
            last_error: Mutex::new(None),
            unknown_names: AtomicU64::new(0),
        })
    }

    pub fn settings(&self) -> &EdgeTls {
        &self.settings
    }

    /// The HTTPS listener's address: the bound one once known.
    pub fn listen_addr(&self) -> std::net::SocketAddr {
        self.bound.get().copied().unwrap_or(self.settings.listen)
    }

    /// Records the HTTPS listener's bound address, for `/status`.
    pub fn set_bound(&self, addr: std::net::SocketAddr) {
        let _ = self.bound.set(addr);
    }

    /// Loads the files again; on success the new set serves every later
    /// handshake, on failure the old one stays and the reason is kept.
    pub fn reload(&self) -> Result<(), String> {
        let stamps_now = stamps(&self.settings);
        *self.stamps.lock().expect("stamps lock") = stamps_now;
        match load(&self.settings) {
            Ok(set) => {
                *self.current.write().expect("certificates lock") = Arc::new(set);
                self.reloads.fetch_add(1, Ordering::Relaxed);
                *self.last_error.lock().expect("error lock") = None;
                tracing::info!("TLS certificates reloaded");
                Ok(())
            }
            Err(e) => {
                self.reload_failures.fetch_add(1, Ordering::Relaxed);
                let why = e.to_string();
                tracing::error!(error = %why, "new TLS certificates refused; the old ones stay in use");
                *self.last_error.lock().expect("error lock") = Some(why.clone());
                Err(why)
            }
        }
    }

    /// Whether any file changed since the last load.
    fn changed(&self) -> bool {
        *self.stamps.lock().expect("stamps lock") != stamps(&self.settings)
    }

    pub fn status(&self) -> TlsStatus {
        let set = self.current.read().expect("certificates lock").clone();
        TlsStatus {
            listen: self.listen_addr().to_string(),
            reloads: self.reloads.load(Ordering::Relaxed),
            reload_failures: self.reload_failures.load(Ordering::Relaxed),
            last_error: self.last_error.lock().expect("error lock").clone(),
            earliest_expiry_unix_s: set
                .not_after
                .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
                .map(|d| d.as_secs()),
            unknown_names: self.unknown_names.load(Ordering::Relaxed),
        }
    }
}

fn stamps(settings: &EdgeTls) -> Vec<(PathBuf, Option<SystemTime>, u64)> {
    let mut paths: Vec<&PathBuf> = Vec::new();
    if let Some(d) = &settings.default {
        paths.extend([&d.cert, &d.key]);
    }
    for n in &settings.certificates {
        paths.extend([&n.files.cert, &n.files.key]);
    }
    paths
        .into_iter()
        .map(|p| {
            let meta = std::fs::metadata(p).ok();
            (
                p.clone(),
                meta.as_ref().and_then(|m| m.modified().ok()),
                meta.map_or(0, |m| m.len()),
            )
        })
        .collect()
}

impl ResolvesServerCert for Certificates {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let set = self.current.read().expect("certificates lock").clone();
        let chosen = set.choose(hello.server_name());
        if chosen.is_none() {
            self.unknown_names.fetch_add(1, Ordering::Relaxed);
        }
        chosen
    }
}

/// The rustls configuration of the HTTPS listener: TLS 1.2 and 1.3, ALPN
/// `h2` then `http/1.1`, certificates from `certs`.
pub fn server_config(certs: Arc<Certificates>) -> Result<Arc<ServerConfig>, TlsError> {
    let mut config = ServerConfig::builder_with_provider(tern_probe::crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| TlsError::Settings(e.to_string()))?
        .with_no_client_auth()
        .with_cert_resolver(certs);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Reloads on SIGHUP and when a file changes (checked every
/// `reload_check`), until `stop`.
pub async fn reload_loop(certs: Arc<Certificates>, stop: CancellationToken) {
    let every = certs.settings.reload_check;
    let changed = || certs.changed();
    let reload = || {
        let _ = certs.reload();
    };
    tern_proto::tls::reload_on_change("the edge's certificate set", every, stop, changed, reload)
        .await;
}
