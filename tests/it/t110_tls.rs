//! TLS and mutual TLS between clients and nodes and among nodes: plaintext,
//! strangers' and expired certificates are refused on every port, rogue
//! nodes can neither join nor speak Raft, and certificates reload without a
//! restart. Certificates are made in the test with `ringkv::tls::gen`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use ringkv::tls::gen::{Authority, Issued, Validity};
use ringkv_client::proto::raft_client::RaftClient;
use ringkv_client::proto::RaftMessage;
use ringkv_client::{Client, ClientOptions, TlsOptions};
use ringkv_tests::{eventually, free_port, ringkv_bin, ProcCluster};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tonic::Code;

/// A cluster CA with a node certificate written to a directory.
struct Pki {
    dir: tempfile::TempDir,
    ca: Authority,
}

impl Pki {
    fn new() -> Pki {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = Authority::new("t110 cluster CA").expect("CA");
        ca.ca().write(dir.path(), "ca").expect("write CA");
        ca.node(&[], Validity::days(1)).expect("node cert").write(dir.path(), "node").expect("write node cert");
        Pki { dir, ca }
    }

    /// The files `ringkv tls gen` writes, with its CA loaded back for issuing more.
    fn from_cli(clients: &[&str]) -> Pki {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut cmd = Command::new(ringkv_bin());
        cmd.args(["tls", "gen", "--out"]).arg(dir.path()).args(["--node-names", "db1.example"]);
        for c in clients {
            cmd.args(["--client", c]);
        }
        let out = cmd.output().expect("run ringkv tls gen");
        assert!(out.status.success(), "tls gen: {}", String::from_utf8_lossy(&out.stderr));
        let read = |f: &str| std::fs::read_to_string(dir.path().join(f)).expect("generated file");
        let ca = Authority::load(&read("ca.pem"), &read("ca.key")).expect("load the generated CA");
        Pki { dir, ca }
    }

    fn path(&self, file: &str) -> PathBuf {
        self.dir.path().join(file)
    }

    /// `serve` flags using `<name>.pem` / `<name>.key` from this directory and its CA.
    fn serve_args(&self, name: &str) -> Vec<String> {
        let p = |f: String| self.path(&f).display().to_string();
        vec![
            "--tls-cert".into(),
            p(format!("{name}.pem")),
            "--tls-key".into(),
            p(format!("{name}.key")),
            "--tls-ca".into(),
            p("ca.pem".into()),
        ]
    }
}

fn der(pem: &str) -> CertificateDer<'static> {
    CertificateDer::from_pem_slice(pem.as_bytes()).expect("PEM certificate")
}

fn options(ca: &Issued, client_cert: Option<&Issued>) -> ClientOptions {
    let mut tls = TlsOptions::new(ca.cert_pem.clone());
    if let Some(c) = client_cert {
        tls = tls.with_client_cert(c.cert_pem.clone(), c.key_pem.clone());
    }
    let mut opts = ClientOptions {
        timeout: Duration::from_secs(10),
        connect_timeout: Duration::from_secs(3),
        ..Default::default()
    };
    opts.tls = Some(tls);
    opts
}

fn client(endpoint: &str, opts: ClientOptions) -> Client {
    Client::connect_with([endpoint], opts).expect("client").with_ring_routing(false)
}

/// A TLS connection to `addr` trusting `ca`, optionally presenting `client_cert`.
async fn handshake(
    addr: &str,
    ca: &Issued,
    client_cert: Option<&Issued>,
    alpn: &[u8],
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, String> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(der(&ca.cert_pem)).map_err(|e| e.to_string())?;
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_root_certificates(roots);
    let mut config = match client_cert {
        Some(c) => builder
            .with_client_auth_cert(
                vec![der(&c.cert_pem)],
                PrivateKeyDer::from_pem_slice(c.key_pem.as_bytes()).expect("PEM key"),
            )
            .expect("client cert"),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![alpn.to_vec()];
    let tcp = TcpStream::connect(addr).await.map_err(|e| format!("connect: {e}"))?;
    let name = ServerName::try_from("127.0.0.1").expect("server name");
    tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp).await.map_err(|e| format!("handshake: {e}"))
}

/// Fingerprint of the certificate a new connection to `addr` is served.
async fn served_fingerprint(addr: &str, ca: &Issued) -> Result<String, String> {
    let tls = handshake(addr, ca, None, b"h2").await?;
    let certs = tls.get_ref().1.peer_certificates().ok_or("no server certificate")?;
    Ok(ringkv::tls::fingerprint(&certs[0]))
}

/// `GET path` over HTTPS; the whole response.
async fn https_get(addr: &str, path: &str, ca: &Issued, client_cert: Option<&Issued>) -> Result<String, String> {
    let mut tls = handshake(addr, ca, client_cert, b"http/1.1").await?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    tls.write_all(request.as_bytes()).await.map_err(|e| format!("write: {e}"))?;
    let mut out = Vec::new();
    tls.read_to_end(&mut out).await.map_err(|e| format!("read: {e}"))?;
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// A Raft `Vote` straight to `addr`, as a rogue node would send it.
async fn raw_vote(addr: &str, ca: &Issued, client_cert: Option<&Issued>) -> Result<(), tonic::Status> {
    let mut tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(&ca.cert_pem))
        .domain_name(ringkv::tls::NODE_NAME);
    if let Some(c) = client_cert {
        tls = tls.identity(tonic::transport::Identity::from_pem(&c.cert_pem, &c.key_pem));
    }
    let channel = tonic::transport::Endpoint::from_shared(format!("https://{addr}"))
        .expect("endpoint")
        .tls_config(tls)
        .expect("tls config")
        .connect_timeout(Duration::from_secs(3))
        .timeout(Duration::from_secs(10))
        .connect_lazy();
    let msg = RaftMessage { group_id: 0, from: 99, payload: Default::default(), cluster_id: String::new() };
    RaftClient::new(channel).vote(msg).await.map(|_| ())
}

/// A `ringkv serve` started outside the harness; killed when dropped.
struct Rogue {
    child: Child,
    log: PathBuf,
    http: String,
}

impl Rogue {
    fn start(dir: &Path, id: u64, seed: &str, tls_args: &[String]) -> Rogue {
        let grpc = format!("127.0.0.1:{}", free_port());
        let http = format!("127.0.0.1:{}", free_port());
        let log = dir.join(format!("rogue{id}.log"));
        let out = std::fs::File::create(&log).expect("log file");
        let child = Command::new(ringkv_bin())
            .args(["serve", "--id", &id.to_string(), "--listen", &grpc, "--http", &http, "--join", seed])
            .arg("--data-dir")
            .arg(dir.join(format!("rogue{id}")))
            .args(tls_args)
            .env("RUST_LOG", "info,openraft=warn")
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("log"))
            .stderr(out)
            .spawn()
            .expect("spawn rogue");
        Rogue { child, log, http }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Rogue {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn members(c: &Client) -> usize {
    c.status().await.expect("status").nodes.len()
}

#[tokio::test]
async fn a_tls_cluster_serves_clients_and_refuses_plaintext_and_strangers() {
    let pki = Pki::from_cli(&["ops"]);
    let ca = pki.ca.ca().clone();
    let mut args = pki.serve_args("node");
    args.extend(["--shards".into(), "4".into()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let c = ProcCluster::start_with_client_options(3, &args, options(&ca, None)).await;

    // End to end over TLS, with and without a client certificate.
    let alice = pki.ca.client("alice", Validity::days(1)).expect("client cert");
    let with_cert = Client::connect_with(c.endpoints(), options(&ca, Some(&alice))).expect("client");
    with_cert.put("greeting", "hello").await.expect("put over mTLS");
    let got = c.client().get("greeting").await.expect("get over TLS").expect("present");
    assert_eq!(&got.value[..], b"hello");
    for node in c.nodes.values() {
        let got = client(&node.grpc, options(&ca, None)).get("greeting").await.expect("get").expect("present");
        assert_eq!(&got.value[..], b"hello", "node {}", node.id);
        let http = node.http.clone();
        let ca = ca.clone();
        eventually(&format!("node {} to answer /readyz over HTTPS", node.id), || {
            let (http, ca) = (http.clone(), ca.clone());
            async move {
                let r = https_get(&http, "/readyz", &ca, None).await.ok()?;
                r.starts_with("HTTP/1.1 200").then_some(())
            }
        })
        .await;
    }
    let node1 = c.nodes[&1].grpc.clone();
    let http1 = c.nodes[&1].http.clone();

    // The CLI with the client certificate `tls gen` made, from the environment.
    let cli = |args: &[&str]| {
        Command::new(ringkv_bin())
            .args(args)
            .args(["--endpoints", &node1])
            .env("RINGKV_TLS_CA", pki.path("ca.pem"))
            .env("RINGKV_TLS_CERT", pki.path("client-ops.pem"))
            .env("RINGKV_TLS_KEY", pki.path("client-ops.key"))
            .output()
            .expect("run the CLI")
    };
    let out = cli(&["get", "greeting"]);
    assert!(out.status.success(), "CLI get over mTLS: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "hello");
    let out = Command::new(ringkv_bin()).args(["get", "greeting", "--endpoints", &node1]).output().expect("run");
    assert!(!out.status.success(), "plaintext CLI to a TLS port must fail");

    // Plaintext to the TLS ports.
    let plain = Client::connect([&node1]).expect("client").with_ring_routing(false);
    let r = plain.get("greeting").await;
    assert!(r.is_err(), "plaintext gRPC to a TLS port must fail: {r:?}");
    let mut tcp = TcpStream::connect(&http1).await.expect("connect");
    tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.expect("write");
    let mut answer = Vec::new();
    let _ = tcp.read_to_end(&mut answer).await;
    assert!(!String::from_utf8_lossy(&answer).contains("200 OK"), "plaintext HTTP to a TLS port must fail");

    // A client that trusts another CA refuses the node's certificate.
    let stranger = Authority::new("someone else's CA").expect("CA");
    let r = client(&node1, options(stranger.ca(), None)).get("greeting").await;
    assert!(r.is_err(), "a client trusting another CA must not connect: {r:?}");
    let r = https_get(&http1, "/healthz", stranger.ca(), None).await;
    assert!(r.is_err(), "HTTPS with another CA must fail: {r:?}");

    // The node refuses client certificates from another CA and expired ones.
    let foreign = stranger.client("mallory", Validity::days(1)).expect("cert");
    let expired = pki.ca.client("alice", Validity::expired()).expect("cert");
    for (what, cert) in [("from another CA", &foreign), ("expired", &expired)] {
        let r = client(&node1, options(&ca, Some(cert))).get("greeting").await;
        assert!(r.is_err(), "a client certificate {what} must be refused: {r:?}");
        let r = https_get(&http1, "/healthz", &ca, Some(cert)).await;
        assert!(!r.as_deref().unwrap_or_default().contains("200 OK"), "HTTPS with a client certificate {what}: {r:?}");
    }

    // The node kept serving through all of that.
    with_cert.put("after", "still here").await.expect("put after the refusals");
    c.wait_settled(3).await;
}

#[tokio::test]
async fn rogue_nodes_cannot_join_or_send_raft_messages() {
    let pki = Pki::new();
    let ca = pki.ca.ca().clone();
    let mut args = pki.serve_args("node");
    args.extend(["--shards".into(), "4".into()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let c = ProcCluster::start_with_client_options(1, &args, options(&ca, None)).await;
    let seed = c.nodes[&1].grpc.clone();
    let admin = c.client();

    // Direct Raft RPCs: only a node certificate of the cluster CA gets past the check.
    let genuine = pki.ca.node(&[], Validity::days(1)).expect("node cert");
    let alice = pki.ca.client("alice", Validity::days(1)).expect("client cert");
    let stranger = Authority::new("rogue CA").expect("CA");
    let foreign_node = stranger.node(&[], Validity::days(1)).expect("cert");
    let expired_node = pki.ca.node(&[], Validity::expired()).expect("cert");
    let r = raw_vote(&seed, &ca, Some(&genuine)).await;
    assert!(
        matches!(&r, Err(s) if s.code() != Code::Unauthenticated && s.code() != Code::Unavailable),
        "a node certificate passes the check (the empty payload is then refused): {r:?}"
    );
    for (what, cert) in [("a client certificate", Some(&alice)), ("no certificate", None)] {
        let r = raw_vote(&seed, &ca, cert).await;
        assert!(matches!(&r, Err(s) if s.code() == Code::Unauthenticated), "Vote with {what}: {r:?}");
    }
    for (what, cert) in
        [("another CA's node certificate", &foreign_node), ("an expired node certificate", &expired_node)]
    {
        let r = raw_vote(&seed, &ca, Some(cert)).await;
        assert!(r.is_err(), "Vote with {what} must fail: {r:?}");
    }

    // Rogue processes: a node certificate from another CA, and an expired one from the cluster CA.
    let rogue_dir = tempfile::tempdir().expect("tempdir");
    stranger.ca().write(rogue_dir.path(), "rogue-ca").expect("write");
    foreign_node.write(rogue_dir.path(), "foreign").expect("write");
    expired_node.write(pki.dir.path(), "expired").expect("write");
    let p = |d: &Path, f: &str| d.join(f).display().to_string();
    let foreign_args: Vec<String> = vec![
        "--tls-cert".into(),
        p(rogue_dir.path(), "foreign.pem"),
        "--tls-key".into(),
        p(rogue_dir.path(), "foreign.key"),
        "--tls-ca".into(),
        p(rogue_dir.path(), "rogue-ca.pem"),
    ];
    let foreign = Rogue::start(rogue_dir.path(), 7, &seed, &foreign_args);
    let expired = Rogue::start(rogue_dir.path(), 8, &seed, &pki.serve_args("expired"));
    for rogue in [&foreign, &expired] {
        eventually("the rogue to fail to reach the cluster", || async {
            rogue.log().contains("cannot fetch the ring from the seed yet").then_some(())
        })
        .await;
    }
    assert!(expired.log().contains("outside its validity period"), "{}", expired.log());
    // The expired certificate is refused by clients too (its HTTP port is up while it waits).
    let r = https_get(&expired.http, "/healthz", &ca, None).await;
    assert!(r.is_err(), "a client must refuse a node's expired certificate: {r:?}");

    // A client certificate is not a node certificate: `serve` refuses it.
    let alice_dir = tempfile::tempdir().expect("tempdir");
    alice.write(pki.dir.path(), "alice").expect("write");
    let mut not_a_node = Rogue::start(alice_dir.path(), 9, &seed, &pki.serve_args("alice"));
    let status = not_a_node.child.wait().expect("wait");
    assert!(!status.success(), "serve with a client certificate must fail");
    assert!(not_a_node.log().contains("not a node certificate"), "{}", not_a_node.log());

    // Adding a member that does not present a node certificate is refused:
    // a TLS server with a client certificate, and a plaintext listener.
    let fake = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let fake_addr = fake.local_addr().expect("addr").to_string();
    let server_config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(
            vec![der(&alice.cert_pem)],
            PrivateKeyDer::from_pem_slice(alice.key_pem.as_bytes()).expect("key"),
        )
        .expect("server config");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server_config));
    let fake_server = tokio::spawn(async move {
        while let Ok((tcp, _)) = fake.accept().await {
            let _ = acceptor.accept(tcp).await;
        }
    });
    let plain = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let plain_addr = plain.local_addr().expect("addr").to_string();
    for addr in [&fake_addr, &plain_addr] {
        let r = admin.add_node(20, addr.clone()).await;
        let msg = format!("{r:?}");
        assert!(msg.contains("does not present a valid node certificate"), "adding {addr}: {msg}");
    }
    fake_server.abort();
    drop(plain);

    assert_eq!(members(&admin).await, 1, "no rogue became a member");
    let log = std::fs::read_to_string(&c.nodes[&1].log).expect("log");
    assert!(log.contains("TLS handshake refused"), "node 1 logs refused handshakes");
    admin.put("k", "v").await.expect("the cluster keeps serving");
}

/// Replaces `dir/<name>.pem` and `.key` with `issued`, each by an atomic
/// rename. With `keep_stamp` the new files get the old files' length
/// (padded with newlines, which PEM ignores) and modification time, so only
/// a SIGHUP can make the node notice.
fn replace(dir: &Path, name: &str, issued: &Issued, keep_stamp: bool) {
    for (ext, text) in [("key", &issued.key_pem), ("pem", &issued.cert_pem)] {
        let path = dir.join(format!("{name}.{ext}"));
        let mut text = text.clone();
        let old = std::fs::metadata(&path).expect("old file");
        if keep_stamp {
            let old_len = usize::try_from(old.len()).expect("size");
            assert!(text.len() <= old_len, "caller picks a certificate no longer than the old one");
            text.push_str(&"\n".repeat(old_len - text.len()));
        }
        let tmp = dir.join(format!("{name}.{ext}.tmp"));
        std::fs::write(&tmp, &text).expect("write");
        if keep_stamp {
            let f = std::fs::File::options().write(true).open(&tmp).expect("open");
            f.set_modified(old.modified().expect("mtime")).expect("set mtime");
        }
        std::fs::rename(&tmp, &path).expect("rename");
    }
}

#[tokio::test]
async fn certificates_reload_on_file_change_and_on_sighup() {
    let pki = Pki::new();
    let ca = pki.ca.ca().clone();
    let mut args = pki.serve_args("node");
    args.extend(["--shards".into(), "4".into()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let c = ProcCluster::start_with_client_options(3, &args, options(&ca, None)).await;
    let client = c.client();
    let node1 = c.nodes[&1].grpc.clone();
    let node2 = c.nodes[&2].grpc.clone();
    let first = served_fingerprint(&node1, &ca).await.expect("handshake");

    // A broken certificate file: the node keeps the old certificate and says so once.
    let cert_path = pki.path("node.pem");
    let good = std::fs::read(&cert_path).expect("read");
    std::fs::write(pki.path("node.pem.tmp"), "-----BEGIN CERTIFICATE-----\nbroken\n-----END CERTIFICATE-----\n")
        .expect("write");
    std::fs::rename(pki.path("node.pem.tmp"), &cert_path).expect("rename");
    eventually("node 1 to report the failed reload", || async {
        c.log_tail(1).contains("TLS reload failed").then_some(())
    })
    .await;
    assert_eq!(served_fingerprint(&node1, &ca).await.expect("handshake"), first, "old certificate kept");
    client.put("during", "broken files").await.expect("serving with the old certificate");
    // Polls go on: the restored file (written aside and renamed, so no poll
    // sees half of it) is loaded, and the broken version was reported once.
    let count = |what: &str| std::fs::read_to_string(&c.nodes[&1].log).expect("log").matches(what).count();
    let reloads = count("TLS certificates reloaded");
    std::fs::write(pki.path("node.pem.tmp"), &good).expect("write");
    std::fs::rename(pki.path("node.pem.tmp"), &cert_path).expect("restore");
    eventually("node 1 to load the restored certificate file", || async {
        (count("TLS certificates reloaded") > reloads).then_some(())
    })
    .await;
    assert_eq!(count("TLS reload failed"), 1, "one error per broken version of the files");

    // New files: every node picks them up by itself.
    let second_cert = pki.ca.node(&[], Validity::days(1)).expect("cert");
    replace(pki.dir.path(), "node", &second_cert, false);
    let second = ringkv::tls::fingerprint(&der(&second_cert.cert_pem));
    for addr in [&node1, &node2] {
        eventually("a new connection to see the new certificate", || async {
            (served_fingerprint(addr, &ca).await.ok()? == second).then_some(())
        })
        .await;
    }
    client.put("after", "file change").await.expect("put after the reload");

    // Same length and modification time: only SIGHUP makes node 1 reload.
    let old_len = std::fs::metadata(&cert_path).expect("meta").len() as usize;
    let third_cert = (0..100)
        .map(|_| pki.ca.node(&[], Validity::days(1)).expect("cert"))
        .find(|c| c.cert_pem.len() <= old_len)
        .expect("a certificate no longer than the previous one");
    replace(pki.dir.path(), "node", &third_cert, true);
    let third = ringkv::tls::fingerprint(&der(&third_cert.cert_pem));
    let pid = c.nodes[&1].pid().expect("node 1 runs");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::SIGHUP).expect("SIGHUP");
    eventually("node 1 to serve the certificate it was signalled to load", || async {
        (served_fingerprint(&node1, &ca).await.ok()? == third).then_some(())
    })
    .await;
    assert_eq!(served_fingerprint(&node2, &ca).await.expect("handshake"), second, "node 2 got no signal");

    // The cluster keeps working: node 1 reaches its peers with the new certificate.
    for i in 0..20 {
        client.put(format!("k{i}"), "v").await.expect("put after SIGHUP");
    }
    c.wait_settled(3).await;
    let got = c.node_client(1).get("k19").await.expect("get").expect("present");
    assert_eq!(&got.value[..], b"v");
}

/// `ringkv dev`, stopped with Ctrl-C (SIGINT) when dropped so it stops its nodes.
struct Dev(Child);

impl Dev {
    fn stop(&mut self) -> std::process::ExitStatus {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.0.id() as i32), nix::sys::signal::SIGINT);
        self.0.wait().expect("wait for dev")
    }
}

impl Drop for Dev {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.0.id() as i32), nix::sys::signal::SIGINT);
            let _ = self.0.wait();
        }
    }
}

#[tokio::test]
async fn dev_tls_runs_a_tls_only_cluster_with_the_certificates_it_generates() {
    let dir = tempfile::tempdir().expect("tempdir");
    // `dev` takes consecutive ports: a base with the next three free too, in
    // 28000-30000, between `free_port`'s range (used by the other tests in
    // this process) and the ephemeral ports.
    let mut base = 28_000 + (std::process::id() % 240) as u16 * 8;
    while !(base..base + 4).all(|p| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok()) {
        base = if base >= 29_990 { 28_000 } else { base + 8 };
    }
    let mut dev = Dev(Command::new(ringkv_bin())
        .args(["dev", "--tls", "--nodes", "2", "--base-port", &base.to_string(), "--data-dir"])
        .arg(dir.path())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn dev"));
    let tls = dir.path().join("tls");
    let endpoints = [format!("127.0.0.1:{base}"), format!("127.0.0.1:{}", base + 2)];
    // Read the files on every try: a half-written one just means "not yet".
    let tls_client = eventually("the dev cluster to have 2 voters over TLS", || async {
        let tls = TlsOptions::from_files(
            &tls.join("ca.pem"),
            Some(&tls.join("client-dev.pem")),
            Some(&tls.join("client-dev.key")),
        )
        .ok()?;
        let c = Client::connect_with(&endpoints, ClientOptions { tls: Some(tls), ..Default::default() }).ok()?;
        (c.status().await.ok()?.nodes.iter().filter(|n| n.role == "voter").count() == 2).then_some(c)
    })
    .await;
    tls_client.put("dev", "over tls").await.expect("put");
    let plain = Client::connect(&endpoints).expect("client").with_ring_routing(false);
    assert!(plain.get("dev").await.is_err(), "the dev cluster does not speak plaintext");
    let exit = dev.stop();
    assert!(exit.success(), "dev stops its nodes and exits cleanly on Ctrl-C: {exit:?}");
}
