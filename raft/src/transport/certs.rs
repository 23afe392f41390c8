//! Cluster certificates for [`Security::Certs`](super::Security::Certs), as made by
//! `ironhub ctl certs`.
//!
//! [`generate_cluster_certs`] writes `ca.pem`, `ca.key` and, per node, `node-N.pem` and
//! `node-N.key`. Every node certificate carries the SANs [`CLUSTER_SERVER_NAME`] (the name every
//! node dials) and `node-N`, plus the extra SANs given (DNS names or IP addresses), and is valid
//! for both TLS server and client authentication. If `ca.pem` and `ca.key` already exist, the CA
//! key is reused (the CA certificate is left untouched), so certificates for new nodes join an
//! existing cluster.

use std::io::Write;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};

use super::{NodeId, CLUSTER_SERVER_NAME};

const CA_COMMON_NAME: &str = "ironhub cluster CA";

/// Errors of [`generate_cluster_certs`].
#[derive(Debug, thiserror::Error)]
pub enum CertsError {
    /// Reading or writing a file failed.
    #[error("{action} {path}: {source}")]
    Io {
        /// "reading", "writing"...
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// Key or certificate generation failed (bad SAN, unreadable existing CA key...).
    #[error("{what}: {reason}")]
    Generate {
        /// What was being made.
        what: String,
        /// Why it failed.
        reason: String,
    },
}

fn gen_err(what: impl Into<String>) -> impl FnOnce(rcgen::Error) -> CertsError {
    let what = what.into();
    move |e| CertsError::Generate { what, reason: e.to_string() }
}

fn ca_params() -> Result<CertificateParams, CertsError> {
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(gen_err("CA parameters"))?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, CA_COMMON_NAME);
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages =
        vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    Ok(params)
}

fn write_file(path: &Path, contents: &str, secret: bool) -> Result<(), CertsError> {
    let io = |source| CertsError::Io { action: "writing", path: path.to_path_buf(), source };
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if secret {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    #[cfg(not(unix))]
    let _ = secret;
    let mut f = opts.open(path).map_err(io)?;
    f.write_all(contents.as_bytes()).map_err(io)?;
    f.sync_all().map_err(io)
}

/// Writes a cluster CA and one certificate per node into `dir` (created if missing) and returns
/// the paths written. `nodes` lists each node id with extra SANs (host names or IP addresses).
pub fn generate_cluster_certs(
    dir: &Path,
    nodes: &[(NodeId, Vec<String>)],
) -> Result<Vec<PathBuf>, CertsError> {
    std::fs::create_dir_all(dir).map_err(|source| CertsError::Io {
        action: "creating",
        path: dir.to_path_buf(),
        source,
    })?;
    let ca_pem = dir.join("ca.pem");
    let ca_key_path = dir.join("ca.key");
    let mut written = Vec::new();
    let (ca_key, reuse) = if ca_pem.exists() && ca_key_path.exists() {
        let pem = std::fs::read_to_string(&ca_key_path).map_err(|source| CertsError::Io {
            action: "reading",
            path: ca_key_path.clone(),
            source,
        })?;
        (KeyPair::from_pem(&pem).map_err(gen_err(format!("CA key {}", ca_key_path.display())))?, true)
    } else {
        (KeyPair::generate().map_err(gen_err("CA key"))?, false)
    };
    // Re-signing the same parameters with the same key yields an issuer identical to the one in an
    // existing ca.pem (same subject, same key identifier), so node certificates chain to it.
    let ca = ca_params()?.self_signed(&ca_key).map_err(gen_err("CA certificate"))?;
    if !reuse {
        write_file(&ca_pem, &ca.pem(), false)?;
        write_file(&ca_key_path, &ca_key.serialize_pem(), true)?;
        written.extend([ca_pem, ca_key_path]);
    }
    for (id, extra) in nodes {
        let mut sans = vec![CLUSTER_SERVER_NAME.to_string(), format!("node-{id}")];
        sans.extend(extra.iter().cloned());
        let what = format!("certificate of node {id}");
        let mut params = CertificateParams::new(sans).map_err(gen_err(what.clone()))?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, format!("ironhub node {id}"));
        params.distinguished_name = dn;
        params.use_authority_key_identifier_extension = true;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        params.extended_key_usages =
            vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        let key = KeyPair::generate().map_err(gen_err(format!("key of node {id}")))?;
        let cert = params.signed_by(&key, &ca, &ca_key).map_err(gen_err(what))?;
        let cert_path = dir.join(format!("node-{id}.pem"));
        let key_path = dir.join(format!("node-{id}.key"));
        write_file(&cert_path, &cert.pem(), false)?;
        write_file(&key_path, &key.serialize_pem(), true)?;
        written.extend([cert_path, key_path]);
    }
    Ok(written)
}
