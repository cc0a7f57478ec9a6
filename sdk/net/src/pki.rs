//! Cluster certificates: a development CA and node certificates signed by it.
//!
//! Files of one node: `ca.pem` (the cluster CA certificate), `<name>.pem` (its certificate) and
//! `<name>.key` (its private key, PKCS#8 PEM). The CA's own key, `ca.key`, is needed only to issue
//! certificates; keep it off the nodes in production.

use std::fs;
use std::path::Path;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};
use rustls::RootCertStore;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::{CLUSTER_SERVER_NAME, NetError};

/// What a node needs to join the cluster's links.
#[derive(Debug)]
pub struct ClusterIdentity {
    ca: CertificateDer<'static>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

impl Clone for ClusterIdentity {
    fn clone(&self) -> Self {
        ClusterIdentity { ca: self.ca.clone(), chain: self.chain.clone(), key: self.key.clone_key() }
    }
}

impl ClusterIdentity {
    /// Loads `ca.pem`, `<name>.pem` and `<name>.key` from `directory`.
    pub fn load(directory: &Path, name: &str) -> Result<ClusterIdentity, NetError> {
        let read = |file: &str| {
            fs::read(directory.join(file))
                .map_err(|error| NetError::Pki(format!("{}: {error}", directory.join(file).display())))
        };
        let ca = first_certificate(&read("ca.pem")?, "ca.pem")?;
        let chain = vec![first_certificate(&read(&format!("{name}.pem"))?, &format!("{name}.pem"))?];
        let key = rustls_pemfile::private_key(&mut read(&format!("{name}.key"))?.as_slice())
            .map_err(|error| NetError::Pki(format!("{name}.key: {error}")))?
            .ok_or_else(|| NetError::Pki(format!("{name}.key holds no private key")))?;
        Ok(ClusterIdentity { ca, chain, key })
    }

    pub(crate) fn roots(&self) -> Result<RootCertStore, NetError> {
        let mut roots = RootCertStore::empty();
        roots.add(self.ca.clone()).map_err(|error| NetError::Pki(format!("ca.pem: {error}")))?;
        Ok(roots)
    }

    pub(crate) fn chain(&self) -> Vec<CertificateDer<'static>> {
        self.chain.clone()
    }

    pub(crate) fn key(&self) -> PrivateKeyDer<'static> {
        self.key.clone_key()
    }
}

fn first_certificate(pem: &[u8], file: &str) -> Result<CertificateDer<'static>, NetError> {
    rustls_pemfile::certs(&mut &pem[..])
        .next()
        .ok_or_else(|| NetError::Pki(format!("{file} holds no certificate")))?
        .map_err(|error| NetError::Pki(format!("{file}: {error}")))
}

/// A development certificate authority kept in a directory.
#[derive(Debug)]
pub struct DevCa {
    directory: std::path::PathBuf,
}

impl DevCa {
    /// Opens the CA in `directory`, creating `ca.pem` and `ca.key` if they do not exist.
    pub fn open_or_create(directory: &Path) -> Result<DevCa, NetError> {
        fs::create_dir_all(directory).map_err(|error| NetError::Pki(format!("{}: {error}", directory.display())))?;
        let ca_cert = directory.join("ca.pem");
        let ca_key = directory.join("ca.key");
        if !ca_cert.exists() || !ca_key.exists() {
            let key = KeyPair::generate().map_err(|error| NetError::Pki(error.to_string()))?;
            let mut params =
                CertificateParams::new(Vec::<String>::new()).map_err(|error| NetError::Pki(error.to_string()))?;
            params.distinguished_name.push(DnType::CommonName, "Baton development cluster CA");
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.key_usages =
                vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
            let certificate = params.self_signed(&key).map_err(|error| NetError::Pki(error.to_string()))?;
            write_private(&ca_key, &key.serialize_pem())?;
            fs::write(&ca_cert, certificate.pem())
                .map_err(|error| NetError::Pki(format!("{}: {error}", ca_cert.display())))?;
        }
        Ok(DevCa { directory: directory.to_path_buf() })
    }

    /// Issues `<name>.pem` and `<name>.key` for a node (replacing existing ones).
    pub fn issue(&self, name: &str) -> Result<(), NetError> {
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
            return Err(NetError::Pki(format!("node name {name:?} must be letters, digits, '-' or '_'")));
        }
        let ca_pem = fs::read_to_string(self.directory.join("ca.pem"))
            .map_err(|error| NetError::Pki(format!("ca.pem: {error}")))?;
        let ca_key_pem = fs::read_to_string(self.directory.join("ca.key"))
            .map_err(|error| NetError::Pki(format!("ca.key: {error}")))?;
        let ca_key = KeyPair::from_pem(&ca_key_pem).map_err(|error| NetError::Pki(format!("ca.key: {error}")))?;
        let issuer =
            Issuer::from_ca_cert_pem(&ca_pem, ca_key).map_err(|error| NetError::Pki(format!("ca.pem: {error}")))?;
        let key = KeyPair::generate().map_err(|error| NetError::Pki(error.to_string()))?;
        let mut params = CertificateParams::new(vec![CLUSTER_SERVER_NAME.to_owned()])
            .map_err(|error| NetError::Pki(error.to_string()))?;
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        let certificate = params.signed_by(&key, &issuer).map_err(|error| NetError::Pki(error.to_string()))?;
        write_private(&self.directory.join(format!("{name}.key")), &key.serialize_pem())?;
        let path = self.directory.join(format!("{name}.pem"));
        fs::write(&path, certificate.pem()).map_err(|error| NetError::Pki(format!("{}: {error}", path.display())))
    }
}

pub(crate) fn write_private(path: &Path, contents: &str) -> Result<(), NetError> {
    fs::write(path, contents).map_err(|error| NetError::Pki(format!("{}: {error}", path.display())))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(path, fs::Permissions::from_mode(0o600))
            .map_err(|error| NetError::Pki(format!("{}: {error}", path.display())))?;
    }
    Ok(())
}
