//! TLS in the configuration: the edge's HTTPS listener and its certificates
//! (`[edge.tls]`, `[[edge.tls.certificate]]`, a service's `tls`), and TLS
//! toward backends (`https://` URLs with a backend's `tls` table).
//!
//! Only paths are checked here (the core does no I/O): the edge reads and
//! checks the PEM files themselves when it starts and on every reload.
//! Relative paths are relative to the configuration file's directory.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::raw::{RawBackendTls, RawCertPair, RawEdgeTls, S};
use super::Checker;

/// A certificate chain and its private key, both PEM files.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CertFiles {
    /// The leaf certificate first, then its intermediates.
    pub cert: PathBuf,
    /// PKCS#8, PKCS#1 (RSA) or SEC1 (EC) private key.
    pub key: PathBuf,
}

/// A certificate served to clients that name one of `hosts` in SNI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamedCertificate {
    /// Lower case; `*.example.com` matches one label.
    pub hosts: Vec<String>,
    pub files: CertFiles,
}

/// The edge's HTTPS listener (`[edge.tls]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EdgeTls {
    pub listen: SocketAddr,
    /// Served when SNI names no configured host, or is absent. Without one,
    /// such a handshake is refused (`unrecognized_name`).
    pub default: Option<CertFiles>,
    /// Per host name, from `[[edge.tls.certificate]]` and every service's
    /// `tls` (for the service's hosts), in file order; an exact name wins
    /// over a wildcard.
    pub certificates: Vec<NamedCertificate>,
    /// How often the files are checked for changes (default 2 s); SIGHUP
    /// reloads at once.
    pub reload_check: Duration,
}

/// TLS toward one backend (`https://` URLs).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BackendTls {
    /// CA certificates (PEM) that sign the backend's certificate; `None`
    /// trusts the system's store.
    pub ca: Option<PathBuf>,
    /// A client certificate for backends that ask for one (mutual TLS).
    pub client: Option<CertFiles>,
    /// The name sent in SNI and checked against the certificate; default:
    /// the URL's host.
    pub server_name: Option<String>,
}

/// `path` as written, made relative to the configuration file's directory.
pub(super) fn resolve(c: &Checker<'_>, path: &S<String>) -> PathBuf {
    let p = Path::new(path.get_ref().trim());
    if p.is_absolute() {
        return p.to_path_buf();
    }
    match Path::new(c.source.file).parent() {
        Some(dir) => dir.join(p),
        None => p.to_path_buf(),
    }
}

pub(super) fn nonempty(c: &mut Checker<'_>, v: &S<String>, key: &str) -> bool {
    if v.get_ref().trim().is_empty() {
        c.err(v.span(), key, "expected a file path");
        return false;
    }
    true
}

pub(super) fn cert_pair(c: &mut Checker<'_>, key: &str, p: &S<RawCertPair>) -> Option<CertFiles> {
    let r = p.get_ref();
    let ok =
        nonempty(c, &r.cert, &format!("{key}.cert")) & nonempty(c, &r.key, &format!("{key}.key"));
    ok.then(|| CertFiles {
        cert: resolve(c, &r.cert),
        key: resolve(c, &r.key),
    })
}

pub(super) fn validate_edge_tls(
    c: &mut Checker<'_>,
    t: &S<RawEdgeTls>,
    service_certs: Vec<NamedCertificate>,
) -> Option<EdgeTls> {
    let r = t.get_ref();
    let listen = c.socket_addr(&r.listen, "edge.tls.listen");
    let default = match (&r.cert, &r.key) {
        (Some(cert), Some(key)) => {
            let ok = nonempty(c, cert, "edge.tls.cert") & nonempty(c, key, "edge.tls.key");
            ok.then(|| CertFiles {
                cert: resolve(c, cert),
                key: resolve(c, key),
            })
        }
        (Some(v), None) | (None, Some(v)) => {
            c.err(
                v.span(),
                "edge.tls",
                "expected both cert and key for the default certificate, or neither",
            );
            None
        }
        (None, None) => None,
    };
    let mut certificates = Vec::new();
    for (i, n) in r.certificate.iter().enumerate() {
        let key = format!("edge.tls.certificate[{i}]");
        let raw = n.get_ref();
        let mut hosts = Vec::new();
        for (j, h) in raw.hosts.iter().enumerate() {
            match tls_host(h.get_ref()) {
                Some(h) => hosts.push(h),
                None => c.err(
                    h.span(),
                    format!("{key}.hosts[{j}]"),
                    format!(
                        "expected a host name such as \"api.example.com\" or \"*.example.com\", found \"{}\"",
                        h.get_ref()
                    ),
                ),
            }
        }
        if raw.hosts.is_empty() {
            c.err(
                n.span(),
                format!("{key}.hosts"),
                "expected at least one host name",
            );
        }
        let ok = nonempty(c, &raw.cert, &format!("{key}.cert"))
            & nonempty(c, &raw.key, &format!("{key}.key"));
        if ok {
            certificates.push(NamedCertificate {
                hosts,
                files: CertFiles {
                    cert: resolve(c, &raw.cert),
                    key: resolve(c, &raw.key),
                },
            });
        }
    }
    certificates.extend(service_certs);
    if default.is_none() && certificates.is_empty() {
        c.err(
            t.span(),
            "edge.tls",
            "expected a certificate: cert and key here, [[edge.tls.certificate]], or a service's tls",
        );
    }
    let reload_check = c.duration(
        &r.reload_check,
        "edge.tls.reload_check",
        Duration::from_secs(2),
    );
    Some(EdgeTls {
        listen: listen?,
        default,
        certificates,
        reload_check,
    })
}

pub(super) fn validate_backend_tls(
    c: &mut Checker<'_>,
    key: &str,
    t: &S<RawBackendTls>,
) -> BackendTls {
    let r = t.get_ref();
    let ca =
        r.ca.as_ref()
            .filter(|v| nonempty(c, v, &format!("{key}.ca")))
            .map(|v| resolve(c, v));
    let client = match (&r.cert, &r.key) {
        (Some(cert), Some(k)) => {
            let ok =
                nonempty(c, cert, &format!("{key}.cert")) & nonempty(c, k, &format!("{key}.key"));
            ok.then(|| CertFiles {
                cert: resolve(c, cert),
                key: resolve(c, k),
            })
        }
        (Some(v), None) | (None, Some(v)) => {
            c.err(
                v.span(),
                key,
                "expected both cert and key for a client certificate, or neither",
            );
            None
        }
        (None, None) => None,
    };
    let server_name = r
        .server_name
        .as_ref()
        .and_then(|v| match tls_host(v.get_ref()) {
            Some(h) if !h.contains('*') => Some(h),
            _ => {
                c.err(
                    v.span(),
                    format!("{key}.server_name"),
                    format!(
                        "expected a host name such as \"api.internal\", found \"{}\"",
                        v.get_ref()
                    ),
                );
                None
            }
        });
    BackendTls {
        ca,
        client,
        server_name,
    }
}

/// A host name for SNI: letters, digits, `-` and `.`, optionally starting
/// with `*.`; lower-cased.
fn tls_host(text: &str) -> Option<String> {
    let t = text.trim().trim_end_matches('.').to_ascii_lowercase();
    let body = t.strip_prefix("*.").unwrap_or(&t);
    let ok = !body.is_empty()
        && body.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        });
    ok.then_some(t)
}
