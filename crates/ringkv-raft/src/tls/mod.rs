//! TLS for a node: loading the node certificate, key and cluster CA from
//! PEM files, reloading them on SIGHUP or when the files change, accepting
//! TLS connections on the gRPC and HTTP ports, the client side of peer
//! connections, and telling node certificates from client certificates.
//!
//! One certificate does everything: it is the server certificate of the
//! gRPC and HTTP ports and the client certificate on peer connections. The
//! cluster CA verifies both peers and clients. A *node certificate* carries
//! the DNS name [`NODE_NAME`]; peers expect that name, so hostname
//! verification doubles as the "is a node" check, and the `Raft` service
//! asks [`peer_identity`] for it. Client certificates are optional (token
//! clients have none); when presented they must chain to the CA.
//!
//! [`gen`] makes certificates with rcgen for `ringkv tls gen`, `ringkv dev
//! --tls` and the tests.

pub mod gen;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use sha2::Digest;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio_rustls::server::TlsStream;

/// The DNS name every node certificate carries and every peer connection expects.
pub const NODE_NAME: &str = "ringkv-node";

/// How long a TLS handshake may take before the connection is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long adding a node waits for it to complete a handshake: well
/// under a client's request deadline, so the refusal reaches the caller.
const PROBE_TIMEOUT: Duration = Duration::from_secs(4);
/// How often the certificate files are checked for changes.
const POLL_EVERY: Duration = Duration::from_secs(2);

/// Where the node's certificate, key and cluster CA are (`[tls]` in the config).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsConfig {
    /// PEM certificate chain of this node, leaf first.
    pub cert: PathBuf,
    /// PEM private key of `cert` (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// PEM certificates of the cluster CA.
    pub ca: PathBuf,
}

/// A certificate, key or CA that cannot be used; names the file and the problem.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct TlsError(String);

/// Who is on the other end of a connection, by its verified certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerIdentity {
    /// No TLS, or no client certificate.
    None,
    /// A certificate with the [`NODE_NAME`] DNS name: another node.
    Node,
    /// A client certificate; its subject Common Name is the principal.
    Client { common_name: String },
}

/// The identity of the peer that sent `req`. The certificate chain was
/// verified against the cluster CA during the handshake, so only its
/// names need reading here.
pub fn peer_identity<T>(req: &tonic::Request<T>) -> PeerIdentity {
    match req.peer_certs() {
        Some(chain) => chain.first().map_or(PeerIdentity::None, |leaf| identity_of(leaf)),
        None => PeerIdentity::None,
    }
}

/// The identity a certificate (DER) stands for.
pub fn identity_of(der: &[u8]) -> PeerIdentity {
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
        return PeerIdentity::None;
    };
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        let is_node = san.value.general_names.iter().any(
            |n| matches!(n, x509_parser::extensions::GeneralName::DNSName(d) if d.eq_ignore_ascii_case(NODE_NAME)),
        );
        if is_node {
            return PeerIdentity::Node;
        }
    }
    let common_name = cert.subject().iter_common_name().next().and_then(|cn| cn.as_str().ok().map(str::to_string));
    match common_name {
        Some(cn) if !cn.is_empty() => PeerIdentity::Client { common_name: cn },
        _ => PeerIdentity::None,
    }
}

/// SHA-256 of a DER certificate, as lowercase hex: how logs and tests name a certificate.
pub fn fingerprint(der: &[u8]) -> String {
    sha2::Sha256::digest(der).iter().map(|b| format!("{b:02x}")).collect()
}

/// Everything built from one read of the certificate files.
pub struct Material {
    /// Server side of the gRPC port (ALPN h2).
    pub grpc_server: Arc<ServerConfig>,
    /// Server side of the HTTP port (ALPN http/1.1).
    pub http_server: Arc<ServerConfig>,
    /// Client side of peer connections, for probing a joining node.
    pub peer_client: Arc<ClientConfig>,
    /// Client side of peer connections, for tonic channels.
    pub peer_channel: tonic::transport::ClientTlsConfig,
    /// Fingerprint of this node's certificate.
    pub fingerprint: String,
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read(path: &Path, what: &str) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|e| TlsError(format!("cannot read the {what} {}: {e}", path.display())))
}

fn certs_of(pem: &[u8], path: &Path, what: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError(format!("the {what} {} is not valid PEM: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(TlsError(format!("the {what} {} holds no certificate", path.display())));
    }
    Ok(certs)
}

fn rustls_error(what: &str, e: impl std::fmt::Display) -> TlsError {
    TlsError(format!("{what}: {e}"))
}

/// Reads and checks the files of `cfg`: the key must match the certificate,
/// which must be a node certificate of the CA. An expired certificate is
/// only reported (peers will refuse it), so a node can be brought up to
/// replace it.
pub fn load(cfg: &TlsConfig) -> Result<Material, TlsError> {
    let cert_pem = read(&cfg.cert, "certificate")?;
    let key_pem = read(&cfg.key, "private key")?;
    let ca_pem = read(&cfg.ca, "CA certificate")?;
    let certs = certs_of(&cert_pem, &cfg.cert, "certificate")?;
    let ca = certs_of(&ca_pem, &cfg.ca, "CA certificate")?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|e| TlsError(format!("the private key {} is not a valid PEM key: {e}", cfg.key.display())))?;
    let mut roots = RootCertStore::empty();
    for c in ca {
        roots.add(c).map_err(|e| rustls_error(&format!("the CA certificate {}", cfg.ca.display()), e))?;
    }
    let roots = Arc::new(roots);
    check_node_certificate(&certs, &roots, &cfg.cert)?;

    let server = |alpn: &[u8]| -> Result<Arc<ServerConfig>, TlsError> {
        let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider())
            .allow_unauthenticated()
            .build()
            .map_err(|e| rustls_error("client certificate verifier", e))?;
        let mut c = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| rustls_error("TLS versions", e))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(certs.clone(), key.clone_key())
            .map_err(|e| {
                rustls_error(&format!("the key {} and certificate {}", cfg.key.display(), cfg.cert.display()), e)
            })?;
        c.alpn_protocols = vec![alpn.to_vec()];
        Ok(Arc::new(c))
    };
    let grpc_server = server(b"h2")?;
    let http_server = server(b"http/1.1")?;
    let peer_client = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| rustls_error("TLS versions", e))?
        .with_root_certificates(roots.clone())
        .with_client_auth_cert(certs.clone(), key.clone_key())
        .map_err(|e| rustls_error("peer client certificate", e))?;
    let peer_channel = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(&ca_pem))
        .identity(tonic::transport::Identity::from_pem(&cert_pem, &key_pem))
        .domain_name(NODE_NAME)
        .timeout(HANDSHAKE_TIMEOUT);
    Ok(Material {
        grpc_server,
        http_server,
        peer_client: Arc::new(peer_client),
        peer_channel,
        fingerprint: fingerprint(&certs[0]),
    })
}

/// Checks that `chain` is a node certificate of `roots`, as peers will.
fn check_node_certificate(
    chain: &[CertificateDer<'static>],
    roots: &Arc<RootCertStore>,
    path: &Path,
) -> Result<(), TlsError> {
    let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(roots.clone(), provider())
        .build()
        .map_err(|e| rustls_error("server certificate verifier", e))?;
    let name = ServerName::try_from(NODE_NAME).map_err(|e| rustls_error("node name", e))?;
    let now = UnixTime::now();
    use rustls::client::danger::ServerCertVerifier;
    match verifier.verify_server_cert(&chain[0], &chain[1..], &name, &[], now) {
        Ok(_) => Ok(()),
        Err(rustls::Error::InvalidCertificate(
            e @ (rustls::CertificateError::Expired
            | rustls::CertificateError::ExpiredContext { .. }
            | rustls::CertificateError::NotValidYet
            | rustls::CertificateError::NotValidYetContext { .. }),
        )) => {
            tracing::error!(cert = %path.display(), error = %e, "the node certificate is outside its validity period: peers and clients will refuse it");
            Ok(())
        }
        Err(e) => Err(TlsError(format!(
            "the certificate {} is not a node certificate of the cluster CA (it must be signed by the CA and carry the DNS name {NODE_NAME}): {e}",
            path.display()
        ))),
    }
}

/// The node's TLS settings as currently loaded, swapped on reload.
pub struct TlsState {
    config: TlsConfig,
    current: ArcSwap<Material>,
    /// Bumped on every successful reload: peer channels built before it are rebuilt.
    generation: AtomicU64,
}

/// What the certificate files looked like when last read.
type Stamp = Vec<Option<(SystemTime, u64)>>;

impl TlsState {
    /// Loads the files of `config`.
    pub fn load(config: TlsConfig) -> Result<Arc<TlsState>, TlsError> {
        let material = load(&config)?;
        tracing::info!(cert = %config.cert.display(), fingerprint = %material.fingerprint, "TLS on");
        Ok(Arc::new(TlsState { config, current: ArcSwap::from_pointee(material), generation: AtomicU64::new(0) }))
    }

    pub fn current(&self) -> Arc<Material> {
        self.current.load_full()
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    pub fn config(&self) -> &TlsConfig {
        &self.config
    }

    /// Reads the files again; on success new connections use them.
    pub fn reload(&self) -> Result<(), TlsError> {
        let material = load(&self.config)?;
        tracing::info!(cert = %self.config.cert.display(), fingerprint = %material.fingerprint, "TLS certificates reloaded");
        self.current.store(Arc::new(material));
        self.generation.fetch_add(1, Ordering::AcqRel);
        Ok(())
    }

    fn stamp(&self) -> Stamp {
        [&self.config.cert, &self.config.key, &self.config.ca]
            .iter()
            .map(|p| std::fs::metadata(p).ok().and_then(|m| Some((m.modified().ok()?, m.len()))))
            .collect()
    }

    /// Reloads on SIGHUP and whenever a file changes, until `stop` turns
    /// true. A failed reload keeps the old settings and is logged once per
    /// version of the files.
    pub async fn watch(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        use tokio::signal::unix::{signal, SignalKind};
        let mut hangup = match signal(SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::error!(error = %e, "cannot watch for SIGHUP; certificates reload only when their files change");
                None
            }
        };
        let mut seen = self.stamp();
        let mut failed: Option<Stamp> = None;
        loop {
            let signalled = tokio::select! {
                _ = stop.wait_for(|s| *s) => return,
                _ = async { match hangup.as_mut() { Some(h) => { h.recv().await; } None => std::future::pending().await } } => true,
                _ = tokio::time::sleep(POLL_EVERY) => false,
            };
            let now = self.stamp();
            if !signalled && now == seen {
                continue;
            }
            seen = now.clone();
            match self.reload() {
                Ok(()) => failed = None,
                Err(e) => {
                    if signalled || failed.as_ref() != Some(&now) {
                        tracing::error!(error = %e, "TLS reload failed; keeping the certificates in use");
                    }
                    failed = Some(now);
                }
            }
        }
    }
}

/// Accepts TCP connections on `listener` and completes TLS handshakes
/// concurrently (a slow client cannot hold up others), with the server
/// settings `pick` chooses from the material current at accept time.
/// `admit` decides, before the handshake, whether a connection is taken (the
/// gRPC port's per-IP cap); a refused one is dropped, which closes it.
/// Ends when the receiver is dropped.
pub fn accept<C, A>(
    listener: TcpListener,
    state: Arc<TlsState>,
    pick: fn(&Material) -> Arc<ServerConfig>,
    admit: A,
) -> mpsc::Receiver<(TlsStream<C>, SocketAddr)>
where
    C: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    A: Fn(TcpStream) -> Option<C> + Send + 'static,
{
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let (tcp, remote) = tokio::select! {
                _ = tx.closed() => return,
                accepted = listener.accept() => match accepted {
                    Ok(c) => c,
                    Err(e) => {
                        // Out of file descriptors and the like: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            if let Err(e) = tcp.set_nodelay(true) {
                tracing::debug!(error = %e, "could not disable Nagle on an accepted connection");
            }
            let Some(conn) = admit(tcp) else { continue };
            let acceptor = tokio_rustls::TlsAcceptor::from(pick(&state.current()));
            let tx = tx.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(conn)).await {
                    Ok(Ok(tls)) => {
                        let _ = tx.send((tls, remote)).await;
                    }
                    Ok(Err(e)) => tracing::info!(peer = %remote, error = %e, "TLS handshake refused"),
                    Err(_) => tracing::info!(peer = %remote, "TLS handshake timed out"),
                }
            });
        }
    });
    rx
}

/// Connects to `addr` as a peer would and completes a handshake: succeeds
/// only when the node there presents a valid node certificate.
pub async fn probe_node(material: &Material, addr: &str) -> Result<(), String> {
    let connect = async {
        let tcp = TcpStream::connect(addr).await.map_err(|e| format!("cannot connect: {e}"))?;
        let name = ServerName::try_from(NODE_NAME).map_err(|e| e.to_string())?;
        tokio_rustls::TlsConnector::from(material.peer_client.clone())
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS handshake failed: {e}"))?;
        Ok(())
    };
    tokio::time::timeout(PROBE_TIMEOUT, connect).await.map_err(|_| "TLS handshake timed out".to_string())?
}

/// The HTTP port's TLS listener, for `axum::serve`.
pub struct HttpsListener {
    incoming: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
}

impl HttpsListener {
    /// Serves the connections [`accept`] hands over, as the port bound at `local`.
    pub fn new(incoming: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>, local: SocketAddr) -> Self {
        Self { incoming, local }
    }
}

impl axum::serve::Listener for HttpsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.incoming.recv().await {
            Some(conn) => conn,
            // The accept task only ends when this listener is dropped.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}
