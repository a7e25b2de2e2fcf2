//! Certificates the lab makes for itself: a private certificate authority
//! and leaf certificates it signs, written as PEM files, so that the lab's
//! edges serve HTTPS without anything from outside (tests use it too).
//!
//! Keys are ECDSA P-256 (rcgen's default); leaves carry their names as DNS
//! or IP subject alternative names and the first one as common name.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use tern_core::config::tls::CertFiles;

/// How long a leaf is valid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Validity {
    /// From 1975 to 4096 (rcgen's default): valid for any test run.
    Current,
    /// 2000 to 2001: refused at load.
    Expired,
}

/// A certificate authority that lives as long as the lab run.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

impl Ca {
    /// A new self-signed CA named `common_name`.
    pub fn new(common_name: &str) -> Result<Ca> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        Ok(Ca {
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        })
    }

    /// The CA certificate, PEM.
    pub fn pem(&self) -> &str {
        &self.pem
    }

    /// Writes the CA certificate to `path` (what clients trust).
    pub fn write(&self, path: &Path) -> Result<()> {
        std::fs::write(path, &self.pem).with_context(|| format!("write {}", path.display()))
    }

    /// A leaf for `names` (server and client use), written to
    /// `dir/STEM.pem` (leaf then CA) and `dir/STEM-key.pem`.
    pub fn issue(
        &self,
        names: &[&str],
        validity: Validity,
        dir: &Path,
        stem: &str,
    ) -> Result<CertFiles> {
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())?;
        if let Some(first) = names.first() {
            params.distinguished_name.push(DnType::CommonName, *first);
        }
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        if validity == Validity::Expired {
            params.not_before = rcgen::date_time_ymd(2000, 1, 1);
            params.not_after = rcgen::date_time_ymd(2001, 1, 1);
        }
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        let files = CertFiles {
            cert: dir.join(format!("{stem}.pem")),
            key: dir.join(format!("{stem}-key.pem")),
        };
        write_atomically(&files.cert, &format!("{}{}", cert.pem(), self.pem))?;
        write_atomically(&files.key, &key.serialize_pem())?;
        Ok(files)
    }
}

/// Writes through a temporary file and a rename, so that a reader (an edge
/// reloading its certificates) never sees half a file.
pub fn write_atomically(path: &Path, text: &str) -> Result<()> {
    let tmp: PathBuf = path.with_extension("tmp");
    std::fs::write(&tmp, text).with_context(|| format!("write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("rename to {}", path.display()))
}
