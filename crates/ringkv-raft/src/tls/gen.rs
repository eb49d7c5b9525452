//! Certificate generation with rcgen: a cluster CA, node certificates (DNS
//! name `ringkv-node` plus the names clients use) and client certificates
//! (the Common Name is the principal). For `ringkv tls gen`, `ringkv dev
//! --tls` and tests; production clusters may use any CA that issues the
//! same shapes.

use std::path::Path;
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

use super::NODE_NAME;

/// A certificate and its private key, both PEM.
#[derive(Debug, Clone)]
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
}

impl Issued {
    /// Writes `<dir>/<name>.pem` and `<dir>/<name>.key` (the key readable by the owner only).
    pub fn write(&self, dir: &Path, name: &str) -> anyhow::Result<()> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::create_dir_all(dir)?;
        let cert = dir.join(format!("{name}.pem"));
        std::fs::write(&cert, &self.cert_pem).map_err(|e| anyhow::anyhow!("writing {}: {e}", cert.display()))?;
        let key = dir.join(format!("{name}.key"));
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&key)
            .map_err(|e| anyhow::anyhow!("writing {}: {e}", key.display()))?;
        f.write_all(self.key_pem.as_bytes())?;
        Ok(())
    }
}

/// When a certificate is valid.
#[derive(Debug, Clone, Copy)]
pub struct Validity {
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

impl Validity {
    /// From an hour ago for `days` days.
    pub fn days(days: u64) -> Validity {
        let now = SystemTime::now();
        Validity { not_before: now - Duration::from_secs(3600), not_after: now + Duration::from_secs(days * 24 * 3600) }
    }

    /// Expired yesterday (for tests of refusal).
    pub fn expired() -> Validity {
        let now = SystemTime::now();
        Validity {
            not_before: now - Duration::from_secs(30 * 24 * 3600),
            not_after: now - Duration::from_secs(24 * 3600),
        }
    }

    fn apply(&self, params: &mut CertificateParams) {
        params.not_before = self.not_before.into();
        params.not_after = self.not_after.into();
    }
}

/// A certificate authority that issues node and client certificates.
pub struct Authority {
    issued: Issued,
    issuer: Issuer<'static, KeyPair>,
}

fn name(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn
}

fn random_serial(params: &mut CertificateParams) {
    // A positive 16-byte serial: RFC 5280 wants them unique per CA, and a
    // reloaded certificate must be told apart from the one it replaces.
    let mut serial: [u8; 16] = rand::random();
    serial[0] &= 0x7f;
    params.serial_number = Some(rcgen::SerialNumber::from_slice(&serial));
}

impl Authority {
    /// A new self-signed CA valid for ten years.
    pub fn new(common_name: &str) -> anyhow::Result<Authority> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        params.distinguished_name = name(common_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages =
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        Validity::days(3650).apply(&mut params);
        random_serial(&mut params);
        let cert = params.self_signed(&key)?;
        let issued = Issued { cert_pem: cert.pem(), key_pem: key.serialize_pem() };
        Ok(Authority { issued, issuer: Issuer::new(params, key) })
    }

    /// The CA written earlier by [`Issued::write`] as `ca.pem` / `ca.key`.
    pub fn load(cert_pem: &str, key_pem: &str) -> anyhow::Result<Authority> {
        let key = KeyPair::from_pem(key_pem)?;
        let issuer = Issuer::from_ca_cert_pem(cert_pem, KeyPair::from_pem(key_pem)?)?;
        Ok(Authority { issued: Issued { cert_pem: cert_pem.to_string(), key_pem: key.serialize_pem() }, issuer })
    }

    /// The CA's own certificate and key.
    pub fn ca(&self) -> &Issued {
        &self.issued
    }

    /// A node certificate: DNS name `ringkv-node`, `localhost`, `127.0.0.1`
    /// and `names` (host names or IP addresses clients use).
    pub fn node(&self, names: &[String], validity: Validity) -> anyhow::Result<Issued> {
        let mut sans = vec![NODE_NAME.to_string(), "localhost".to_string(), "127.0.0.1".to_string()];
        sans.extend(names.iter().filter(|n| !sans.contains(n)).cloned().collect::<Vec<_>>());
        let mut params = CertificateParams::new(sans)?;
        params.distinguished_name = name(NODE_NAME);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        self.sign(params, validity)
    }

    /// A client certificate for principal `common_name` (no node name).
    pub fn client(&self, common_name: &str, validity: Validity) -> anyhow::Result<Issued> {
        anyhow::ensure!(!common_name.is_empty(), "a client certificate needs a non-empty name");
        anyhow::ensure!(common_name != NODE_NAME, "{NODE_NAME} is reserved for node certificates");
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name = name(common_name);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.sign(params, validity)
    }

    fn sign(&self, mut params: CertificateParams, validity: Validity) -> anyhow::Result<Issued> {
        validity.apply(&mut params);
        random_serial(&mut params);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(Issued { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
    }
}

/// The files `ringkv tls gen` writes into `dir`: `ca.pem`/`ca.key` (reused
/// when present, so more certificates can be added later), `node.pem`/
/// `node.key` and `client-<name>.pem`/`.key` per client name. Returns the
/// paths written, for printing.
pub fn generate_dir(
    dir: &Path,
    node_names: &[String],
    clients: &[String],
    validity: Validity,
) -> anyhow::Result<Vec<std::path::PathBuf>> {
    let ca_cert = dir.join("ca.pem");
    let ca_key = dir.join("ca.key");
    let mut written = Vec::new();
    let ca = if ca_cert.exists() && ca_key.exists() {
        Authority::load(&std::fs::read_to_string(&ca_cert)?, &std::fs::read_to_string(&ca_key)?)
            .map_err(|e| anyhow::anyhow!("cannot reuse the CA in {}: {e}", dir.display()))?
    } else {
        let ca = Authority::new("ringkv cluster CA")?;
        ca.ca().write(dir, "ca")?;
        written.extend([ca_cert, ca_key]);
        ca
    };
    ca.node(node_names, validity)?.write(dir, "node")?;
    written.extend([dir.join("node.pem"), dir.join("node.key")]);
    for c in clients {
        anyhow::ensure!(
            c.chars().all(|ch| ch.is_ascii_alphanumeric() || "-_.@".contains(ch)),
            "client name {c:?} may only use letters, digits and - _ . @ (it names the files)"
        );
        ca.client(c, validity)?.write(dir, &format!("client-{c}"))?;
        written.extend([dir.join(format!("client-{c}.pem")), dir.join(format!("client-{c}.key"))]);
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::{identity_of, PeerIdentity};

    fn der(pem: &str) -> Vec<u8> {
        use rustls::pki_types::pem::PemObject;
        rustls::pki_types::CertificateDer::from_pem_slice(pem.as_bytes()).expect("pem").to_vec()
    }

    #[test]
    fn node_and_client_certificates_are_told_apart() {
        let ca = Authority::new("test CA").expect("ca");
        let node = ca.node(&["db1.example".into()], Validity::days(1)).expect("node");
        let client = ca.client("alice", Validity::days(1)).expect("client");
        assert_eq!(identity_of(&der(&node.cert_pem)), PeerIdentity::Node);
        assert_eq!(identity_of(&der(&client.cert_pem)), PeerIdentity::Client { common_name: "alice".into() });
        assert_eq!(identity_of(b"not a certificate"), PeerIdentity::None);
        assert!(ca.client(NODE_NAME, Validity::days(1)).is_err(), "the node name is reserved");
    }

    #[test]
    fn generated_files_load_and_a_reused_ca_signs_the_next_ones() {
        let dir = tempfile::tempdir().expect("tempdir");
        generate_dir(dir.path(), &[], &["ops".into()], Validity::days(1)).expect("first");
        let ca_before = std::fs::read(dir.path().join("ca.pem")).expect("ca");
        generate_dir(dir.path(), &["10.0.0.5".into()], &[], Validity::days(1)).expect("second");
        assert_eq!(std::fs::read(dir.path().join("ca.pem")).expect("ca"), ca_before, "the CA is reused");
        let cfg = crate::tls::TlsConfig {
            cert: dir.path().join("node.pem"),
            key: dir.path().join("node.key"),
            ca: dir.path().join("ca.pem"),
        };
        crate::tls::load(&cfg).expect("node certificate loads against its CA");
        // A client certificate is not a node certificate.
        let as_client = crate::tls::TlsConfig {
            cert: dir.path().join("client-ops.pem"),
            key: dir.path().join("client-ops.key"),
            ..cfg.clone()
        };
        let err = crate::tls::load(&as_client).err().expect("client certificate refused as a node's").to_string();
        assert!(err.contains("not a node certificate"), "{err}");
        // A key that does not match the certificate.
        let mismatched = crate::tls::TlsConfig { key: dir.path().join("client-ops.key"), ..cfg.clone() };
        assert!(crate::tls::load(&mismatched).is_err(), "mismatched key refused");
        let garbage = dir.path().join("garbage.pem");
        std::fs::write(&garbage, "-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
            .expect("write");
        let err = crate::tls::load(&crate::tls::TlsConfig { cert: garbage, ..cfg }).err().expect("bad PEM").to_string();
        assert!(err.contains("garbage.pem"), "{err}");
    }
}
