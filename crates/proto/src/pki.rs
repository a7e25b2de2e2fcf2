//! A private certificate authority for the control plane (`tern certs
//! init`): one CA, and one certificate per controller, agent, edge,
//! operator and viewer a configuration names, each carrying its
//! [`Principal`] as a URI subject alternative name
//! (`spiffe://tern/ROLE/NAME`, see [`crate::tls`]).
//!
//! Keys are ECDSA P-256 (rcgen's default). The CA is valid for 10 years,
//! leaves for `days` (365 by default in the command). Files: `ca.pem`,
//! `ca.key`, and `ROLE-NAME.pem` (the leaf) with `ROLE-NAME.key`; keys are
//! written mode 0600. Existing files are never overwritten: run again after
//! adding a region and only the missing certificates are made, signed by
//! the CA already in the directory.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use tern_core::auth::{Principal, Role};
use tern_core::config::Config;

/// Why the certificates could not be made.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Cert(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> PkiError + '_ {
    move |source| PkiError::Io {
        path: path.display().to_string(),
        source,
    }
}

fn cert_err(e: rcgen::Error) -> PkiError {
    PkiError::Cert(e.to_string())
}

/// Every principal of a deployment: its controllers, an agent per region
/// (a witness site's agent is a vantage point too), an edge per serving
/// region, and the operators and viewers `[controller.tls]` names (one
/// operator, `admin`, by default).
pub fn principals(config: &Config) -> Vec<Principal> {
    let mut out = Vec::new();
    if let Some(c) = &config.controller {
        for n in &c.nodes {
            out.push(Principal::new(Role::Controller, n.id.to_string()));
        }
    }
    for r in &config.regions {
        out.push(Principal::new(Role::Agent, &r.name));
        if r.serves_traffic {
            out.push(Principal::new(Role::Edge, &r.name));
        }
    }
    let (operators, viewers) = match config.controller.as_ref().and_then(|c| c.tls.as_ref()) {
        Some(t) => (t.operators.clone(), t.viewers.clone()),
        None => (vec!["admin".to_string()], Vec::new()),
    };
    out.extend(
        operators
            .into_iter()
            .map(|n| Principal::new(Role::Operator, n)),
    );
    out.extend(viewers.into_iter().map(|n| Principal::new(Role::Viewer, n)));
    out
}

/// A certificate authority that signs control-plane certificates.
pub struct Authority {
    issuer: Issuer<'static, KeyPair>,
}

impl Authority {
    /// A new self-signed CA named `common_name`.
    pub fn new(common_name: &str) -> Result<(Authority, String, String), PkiError> {
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(cert_err)?;
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let (from, until) = validity(3650);
        params.not_before = from;
        params.not_after = until;
        let key = KeyPair::generate().map_err(cert_err)?;
        let cert = params.self_signed(&key).map_err(cert_err)?;
        let (cert_pem, key_pem) = (cert.pem(), key.serialize_pem());
        Ok((
            Authority {
                issuer: Issuer::new(params, key),
            },
            cert_pem,
            key_pem,
        ))
    }

    /// A CA from its certificate and key (PEM), to sign with.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Authority, PkiError> {
        let key = KeyPair::from_pem(key_pem).map_err(cert_err)?;
        let issuer = Issuer::from_ca_cert_pem(cert_pem, key).map_err(cert_err)?;
        Ok(Authority { issuer })
    }

    /// A certificate for `who`, valid `days` from yesterday (clock skew):
    /// client and server use, the principal as URI name, and `who` as
    /// common name. Returns the certificate and key, PEM.
    pub fn issue(&self, who: &Principal, days: u32) -> Result<(String, String), PkiError> {
        self.issue_between(who, validity(days))
    }

    /// As [`Authority::issue`], valid over exactly `(from, until)` (tests
    /// make expired certificates with it).
    pub fn issue_between(
        &self,
        who: &Principal,
        (from, until): (time::OffsetDateTime, time::OffsetDateTime),
    ) -> Result<(String, String), PkiError> {
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(cert_err)?;
        params
            .distinguished_name
            .push(DnType::CommonName, who.to_string());
        params.subject_alt_names =
            vec![SanType::URI(who.spiffe_id().try_into().map_err(cert_err)?)];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.use_authority_key_identifier_extension = true;
        params.not_before = from;
        params.not_after = until;
        let key = KeyPair::generate().map_err(cert_err)?;
        let cert = params.signed_by(&key, &self.issuer).map_err(cert_err)?;
        Ok((cert.pem(), key.serialize_pem()))
    }
}

fn validity(days: u32) -> (time::OffsetDateTime, time::OffsetDateTime) {
    let now = time::OffsetDateTime::now_utc();
    (
        now - time::Duration::days(1),
        now + time::Duration::days(i64::from(days)),
    )
}

/// What [`init`] did, file by file.
#[derive(Debug, Default)]
pub struct Made {
    /// Files written.
    pub written: Vec<PathBuf>,
    /// Certificates left as they were (already in the directory).
    pub kept: Vec<PathBuf>,
}

/// Makes the CA (unless `DIR/ca.pem` and `DIR/ca.key` exist: then they
/// sign) and every missing certificate of `principals` in `dir`.
pub fn init(dir: &Path, principals: &[Principal], days: u32) -> Result<Made, PkiError> {
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let mut made = Made::default();
    let (ca_cert, ca_key) = (dir.join("ca.pem"), dir.join("ca.key"));
    let authority = match (ca_cert.exists(), ca_key.exists()) {
        (true, true) => {
            let cert = std::fs::read_to_string(&ca_cert).map_err(io(&ca_cert))?;
            let key = std::fs::read_to_string(&ca_key).map_err(io(&ca_key))?;
            made.kept.push(ca_cert.clone());
            Authority::from_pem(&cert, &key)
                .map_err(|e| PkiError::Cert(format!("{}: {e}", ca_cert.display())))?
        }
        (false, false) => {
            let (authority, cert, key) = Authority::new("tern control plane CA")?;
            write_new(&ca_key, &key, 0o600)?;
            write_new(&ca_cert, &cert, 0o644)?;
            made.written.extend([ca_cert.clone(), ca_key.clone()]);
            authority
        }
        (true, false) => {
            return Err(PkiError::Cert(format!(
                "{} exists without {}: to sign with your own CA, put its key there too; or remove it to make a new CA",
                ca_cert.display(),
                ca_key.display()
            )))
        }
        (false, true) => {
            return Err(PkiError::Cert(format!(
                "{} exists without {}",
                ca_key.display(),
                ca_cert.display()
            )))
        }
    };
    for who in principals {
        let stem = who.file_stem();
        let (cert_path, key_path) = (
            dir.join(format!("{stem}.pem")),
            dir.join(format!("{stem}.key")),
        );
        if cert_path.exists() || key_path.exists() {
            made.kept.push(cert_path);
            continue;
        }
        let (cert, key) = authority.issue(who, days)?;
        write_new(&key_path, &key, 0o600)?;
        write_new(&cert_path, &cert, 0o644)?;
        made.written.extend([cert_path, key_path]);
    }
    Ok(made)
}

/// Creates `path` (refusing to replace a file) with `mode`.
fn write_new(path: &Path, text: &str, mode: u32) -> Result<(), PkiError> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(io(path))?;
    f.write_all(text.as_bytes()).map_err(io(path))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::principal_of;
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;

    #[test]
    fn init_makes_what_is_missing_and_never_overwrites() {
        let dir = tempfile::tempdir().unwrap();
        let who = vec![
            Principal::new(Role::Controller, "1"),
            Principal::new(Role::Agent, "us-east"),
        ];
        let made = init(dir.path(), &who, 30).unwrap();
        assert_eq!(made.written.len(), 6);
        let pem = std::fs::read(dir.path().join("agent-us-east.pem")).unwrap();
        let der = CertificateDer::from_pem_slice(&pem).unwrap();
        assert_eq!(principal_of(&der).unwrap(), who[1]);
        let mode = std::fs::metadata(dir.path().join("agent-us-east.key"))
            .unwrap()
            .permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
            0o600
        );
        // Again with one more: only the new one is made, by the same CA.
        let mut more = who.clone();
        more.push(Principal::new(Role::Edge, "us-east"));
        let made = init(dir.path(), &more, 30).unwrap();
        assert_eq!(made.written.len(), 2);
        assert_eq!(
            std::fs::read(dir.path().join("agent-us-east.pem")).unwrap(),
            pem
        );
    }
}
