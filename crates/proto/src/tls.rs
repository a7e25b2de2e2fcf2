//! Mutual TLS on the control plane: every controller, agent, edge and
//! operator holds a certificate signed by the deployment's CA whose URI
//! subject alternative name is its [`Principal`] (`spiffe://tern/ROLE/NAME`).
//!
//! - Servers (controllers) require a client certificate that chains to the
//!   CA, and read the caller's principal from it ([`principal_of`]).
//! - Clients accept a server only if its certificate chains to the CA and
//!   names a controller: the identity is checked, not the address, so a
//!   controller is the same peer whatever address it is reached at (the
//!   SPIFFE way; host names are not checked).
//! - Each process's own certificate is a [`LiveCert`]: reloaded on SIGHUP
//!   and when its files change ([`LiveCert::watch`]); a new pair that does
//!   not load, does not chain to the CA, has expired or names another
//!   principal is refused with a log line, and the old pair stays in use.
//!   The CA itself is read once at start.
//!
//! Certificates are made by [`crate::pki`] (`tern certs init`) or by the
//! deployment's own CA, with the same URI names.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::ResolvesClientCert;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::{ClientHello, ParsedCertificate, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};
use tern_core::auth::{Principal, Role};
use tern_core::config::tls::CertFiles;
use tern_core::config::ControlTls;
use tokio_util::sync::CancellationToken;

/// Why TLS material was refused: the file and what is wrong with it.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{path}: {why}")]
pub struct TlsError {
    pub path: String,
    pub why: String,
}

fn err(path: &Path, why: impl Into<String>) -> TlsError {
    TlsError {
        path: path.display().to_string(),
        why: why.into(),
    }
}

/// The crypto of the control plane: rustls with ring, like every tern
/// endpoint (ring is marked deprecated in rustls 0.23.48 for lacking
/// post-quantum key exchange; see `tern_probe::crypto_provider`).
#[allow(deprecated)]
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The principal a certificate names in its URI subject alternative name.
/// Errors: not X.509, no URI name, more than one tern identity, or a URI
/// that is not `spiffe://tern/ROLE/NAME`.
pub fn principal_of(cert: &CertificateDer<'_>) -> Result<Principal, String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref())
        .map_err(|e| format!("the certificate does not parse: {e}"))?;
    let san = parsed
        .subject_alternative_name()
        .map_err(|e| format!("bad subject alternative names: {e}"))?
        .ok_or(
            "the certificate has no subject alternative name (expected spiffe://tern/ROLE/NAME)",
        )?;
    let uris: Vec<&str> = san
        .value
        .general_names
        .iter()
        .filter_map(|n| match n {
            x509_parser::extensions::GeneralName::URI(u) => Some(*u),
            _ => None,
        })
        .filter(|u| u.starts_with("spiffe://"))
        .collect();
    match uris.as_slice() {
        [one] => Principal::from_spiffe_id(one),
        [] => {
            Err("the certificate names no spiffe:// URI (expected spiffe://tern/ROLE/NAME)".into())
        }
        _ => Err(format!(
            "the certificate names {} spiffe:// URIs; expected one",
            uris.len()
        )),
    }
}

/// Reads the CA certificates of `path` into a root store.
pub fn load_roots(path: &Path) -> Result<Arc<RootCertStore>, TlsError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .map_err(|e| err(path, format!("cannot read CA certificates: {e}")))?
        .collect::<Result<_, _>>()
        .map_err(|e| err(path, format!("not a PEM certificate file: {e}")))?;
    if certs.is_empty() {
        return Err(err(path, "no CERTIFICATE block in the CA file"));
    }
    let mut roots = RootCertStore::empty();
    for cert in certs {
        roots
            .add(cert)
            .map_err(|e| err(path, format!("not a usable CA certificate: {e}")))?;
    }
    Ok(Arc::new(roots))
}

/// Reads a certificate chain and key and checks everything a peer would:
/// the key belongs to the leaf, the leaf chains to `roots` and is valid
/// now (client use; server use too for a controller), and it names `who`.
fn load_pair(
    files: &CertFiles,
    who: &Principal,
    roots: &Arc<RootCertStore>,
) -> Result<Arc<CertifiedKey>, TlsError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.cert)
        .map_err(|e| err(&files.cert, format!("cannot read certificates: {e}")))?
        .collect::<Result<_, _>>()
        .map_err(|e| err(&files.cert, format!("not a PEM certificate file: {e}")))?;
    let Some(leaf) = chain.first() else {
        return Err(err(&files.cert, "no CERTIFICATE block in the file"));
    };
    let named = principal_of(leaf).map_err(|e| err(&files.cert, e))?;
    if &named != who {
        return Err(err(
            &files.cert,
            format!(
                "the certificate is {named} ({}), not {who} ({})",
                named.spiffe_id(),
                who.spiffe_id()
            ),
        ));
    }
    let now = UnixTime::now();
    let provider = provider();
    let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
        .build()
        .map_err(|e| err(&files.cert, format!("cannot check against the CA: {e}")))?;
    verifier
        .verify_client_cert(leaf, &chain[1..], now)
        .map_err(|e| err(&files.cert, format!("not valid under the CA: {e}")))?;
    if who.role == Role::Controller {
        let parsed = ParsedCertificate::try_from(leaf)
            .map_err(|e| err(&files.cert, format!("does not parse: {e}")))?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &parsed,
            roots,
            &chain[1..],
            now,
            provider.signature_verification_algorithms.all,
        )
        .map_err(|e| {
            err(
                &files.cert,
                format!("not valid as a server under the CA: {e}"),
            )
        })?;
    }
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .map_err(|e| err(&files.key, format!("no usable private key: {e}")))?;
    let signing = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| err(&files.key, format!("unsupported private key: {e}")))?;
    let certified = CertifiedKey::new(chain, signing);
    certified.keys_match().map_err(|e| {
        err(
            &files.key,
            format!("this key does not belong to {}: {e}", files.cert.display()),
        )
    })?;
    Ok(Arc::new(certified))
}

type Stamps = Vec<(PathBuf, Option<SystemTime>, u64)>;

fn stamps(files: &CertFiles) -> Stamps {
    [&files.cert, &files.key]
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

/// This process's own certificate and key, kept current: what it presents
/// as a server and as a client.
pub struct LiveCert {
    who: Principal,
    files: CertFiles,
    roots: Arc<RootCertStore>,
    current: RwLock<Arc<CertifiedKey>>,
    stamps: Mutex<Stamps>,
    reloads: AtomicU64,
    failures: AtomicU64,
    last_error: Mutex<Option<String>>,
}

impl fmt::Debug for LiveCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LiveCert")
            .field("who", &self.who)
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

impl LiveCert {
    /// Loads `files` for `who`; errors say which file and why.
    pub fn load(
        files: CertFiles,
        who: Principal,
        roots: Arc<RootCertStore>,
    ) -> Result<LiveCert, TlsError> {
        let stamped = stamps(&files);
        let current = load_pair(&files, &who, &roots)?;
        Ok(LiveCert {
            who,
            files,
            roots,
            current: RwLock::new(current),
            stamps: Mutex::new(stamped),
            reloads: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            last_error: Mutex::new(None),
        })
    }

    pub fn principal(&self) -> &Principal {
        &self.who
    }

    /// Reads the files again. A pair that does not pass every check of
    /// [`LiveCert::load`] is refused (logged, counted) and the old one kept.
    pub fn reload(&self) -> Result<(), TlsError> {
        *self.stamps.lock().expect("stamps lock") = stamps(&self.files);
        match load_pair(&self.files, &self.who, &self.roots) {
            Ok(pair) => {
                *self.current.write().expect("cert lock") = pair;
                self.reloads.fetch_add(1, Ordering::Relaxed);
                *self.last_error.lock().expect("error lock") = None;
                tracing::info!(principal = %self.who, cert = %self.files.cert.display(), "control-plane certificate reloaded");
                Ok(())
            }
            Err(e) => {
                self.failures.fetch_add(1, Ordering::Relaxed);
                *self.last_error.lock().expect("error lock") = Some(e.to_string());
                tracing::error!(principal = %self.who, error = %e, "new control-plane certificate refused; the old one stays in use");
                Err(e)
            }
        }
    }

    /// Reloads that took effect, and refused ones.
    pub fn reload_counts(&self) -> (u64, u64) {
        (
            self.reloads.load(Ordering::Relaxed),
            self.failures.load(Ordering::Relaxed),
        )
    }

    /// The certificate chain in use (leaf first).
    pub fn chain(&self) -> Vec<CertificateDer<'static>> {
        self.current.read().expect("cert lock").cert.clone()
    }

    fn changed(&self) -> bool {
        *self.stamps.lock().expect("stamps lock") != stamps(&self.files)
    }

    /// Reloads on SIGHUP and when a file changes (checked every `every`),
    /// until `stop`.
    pub async fn watch(self: Arc<Self>, every: Duration, stop: CancellationToken) {
        let changed = || self.changed();
        let reload = || {
            let _ = self.reload();
        };
        reload_on_change(
            "the control-plane certificate",
            every,
            stop,
            changed,
            reload,
        )
        .await;
    }
}

/// Calls `reload` on SIGHUP, and whenever `changed` says a file changed
/// (checked every `every`), until `stop`: how each set of certificates
/// (the control plane's, the edge's HTTPS) follows its files. `what` names
/// them in the warning when no SIGHUP handler can be installed.
pub async fn reload_on_change(
    what: &str,
    every: Duration,
    stop: CancellationToken,
    changed: impl Fn() -> bool,
    reload: impl Fn(),
) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hangup = match signal(SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(error = %e, "no SIGHUP handler; {what} reloads on file changes only");
            None
        }
    };
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let signalled = tokio::select! {
            _ = stop.cancelled() => return,
            _ = ticker.tick() => false,
            _ = async {
                match hangup.as_mut() {
                    Some(h) => { h.recv().await; }
                    None => std::future::pending::<()>().await,
                }
            } => true,
        };
        if signalled || changed() {
            reload();
        }
    }
}

impl ResolvesServerCert for LiveCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.read().expect("cert lock").clone())
    }
}

impl ResolvesClientCert for LiveCert {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.current.read().expect("cert lock").clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// Accepts a server whose certificate chains to the CA and names a
/// controller; the server's address or host name is not checked.
#[derive(Debug)]
struct ControllerVerifier {
    roots: Arc<RootCertStore>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for ControllerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let parsed = ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &self.roots,
            intermediates,
            now,
            self.provider.signature_verification_algorithms.all,
        )?;
        match principal_of(end_entity) {
            Ok(p) if p.role == Role::Controller => Ok(ServerCertVerified::assertion()),
            Ok(p) => Err(rustls::Error::General(format!(
                "the server is {p}, not a controller"
            ))),
            Err(e) => Err(rustls::Error::General(e)),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// One process's side of the control plane's mutual TLS: the CA it trusts
/// and its own certificate.
#[derive(Clone, Debug)]
pub struct ControlPlaneTls {
    roots: Arc<RootCertStore>,
    cert: Arc<LiveCert>,
    reload_check: Duration,
}

impl ControlPlaneTls {
    /// Loads the CA of `settings` and `who`'s certificate from its
    /// directory (`ROLE-NAME.pem`, `ROLE-NAME.key`), or from `files` when
    /// given (an operator's own pair).
    pub fn load(
        settings: &ControlTls,
        who: Principal,
        files: Option<CertFiles>,
    ) -> Result<ControlPlaneTls, TlsError> {
        let roots = load_roots(&settings.ca)?;
        let files = files.unwrap_or_else(|| settings.files(&who));
        let cert = LiveCert::load(files, who, roots.clone())?;
        Ok(ControlPlaneTls {
            roots,
            cert: Arc::new(cert),
            reload_check: settings.reload_check,
        })
    }

    pub fn principal(&self) -> &Principal {
        self.cert.principal()
    }

    pub fn cert(&self) -> &Arc<LiveCert> {
        &self.cert
    }

    /// Starts reloading this process's certificate on SIGHUP and file
    /// changes, until `stop`.
    pub fn spawn_watch(&self, stop: CancellationToken) {
        tokio::spawn(self.cert.clone().watch(self.reload_check, stop));
    }

    /// A controller's server side: TLS 1.3, a client certificate under the
    /// CA required.
    pub fn server_config(&self) -> Arc<ServerConfig> {
        let provider = provider();
        let verifier =
            WebPkiClientVerifier::builder_with_provider(self.roots.clone(), provider.clone())
                .build()
                .expect("a root store that loaded builds a verifier");
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("ring supports TLS 1.3")
            .with_client_cert_verifier(verifier)
            .with_cert_resolver(self.cert.clone());
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Arc::new(config)
    }

    /// A client of the controllers: TLS 1.3, this process's certificate,
    /// servers accepted when they are controllers under the CA.
    pub fn client_config(&self) -> Arc<ClientConfig> {
        let provider = provider();
        let config = ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("ring supports TLS 1.3")
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(ControllerVerifier {
                roots: self.roots.clone(),
                provider,
            }))
            .with_client_cert_resolver(self.cert.clone());
        // ALPN is left to the HTTP client (hyper-rustls offers http/1.1).
        Arc::new(config)
    }
}
