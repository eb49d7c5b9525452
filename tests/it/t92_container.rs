//! The container image and docker-compose.yml, run for real on this
//! machine's Docker engine: scripts/build-image.sh builds the image, compose
//! starts the three-node cluster, data written through one node's published
//! port survives that node's container being stopped, and every container's
//! data survives `down` and `up` in the named volumes. `down -v` removes it
//! all, also when an assertion fails.
//!
//! Its project, ports and image tag are its own, so it can share the Docker
//! engine with t93_k8s_manifests.

use std::path::{Path, PathBuf};
use std::process::Command;

use ringkv_client::{Client, Consistency};
use ringkv_tests::container::{build_image, describe};
use ringkv_tests::{eventually, settled};

const IMAGE: &str = "ringkv:t92-test";
const KEYS: usize = 20;

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_path_buf()
}

/// `docker compose` (the plugin) where it exists, else `docker-compose`;
/// a machine with neither fails the test, it is never skipped.
fn compose_command() -> Vec<String> {
    let works = |cmd: &[&str]| {
        Command::new(cmd[0]).args(&cmd[1..]).arg("version").output().map(|o| o.status.success()).unwrap_or(false)
    };
    for cmd in [&["docker", "compose"][..], &["docker-compose"][..]] {
        if works(cmd) {
            return cmd.iter().map(|s| s.to_string()).collect();
        }
    }
    panic!("neither `docker compose` nor `docker-compose` works on this machine (./test.sh installs docker-compose)");
}

/// Six consecutive free loopback ports above the range the other tests use
/// (21000-27999), for the three nodes' gRPC and HTTP ports.
fn published_ports() -> [u16; 6] {
    let start = 28_380 + (std::process::id() % 100) as u16 * 6;
    for base in (start..28_990).step_by(6).chain((28_380..start).step_by(6)) {
        let ports: [u16; 6] = std::array::from_fn(|i| base + i as u16);
        if ports.iter().all(|p| std::net::TcpListener::bind(("127.0.0.1", *p)).is_ok()) {
            return ports;
        }
    }
    panic!("no six consecutive free ports in 28380..28990")
}

/// A compose project of docker-compose.yml under its own name and ports.
/// Dropping it runs `down -v` (after printing the nodes' logs when the test
/// is failing), so no container, network or volume outlives the test.
struct Project {
    compose: Vec<String>,
    name: String,
    ports: [u16; 6],
    down: bool,
}

impl Project {
    fn new() -> Self {
        Project {
            compose: compose_command(),
            name: format!("ringkv-t92-{}", std::process::id()),
            ports: published_ports(),
            down: false,
        }
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.compose[0]);
        cmd.args(&self.compose[1..])
            .args(["--project-name", &self.name, "--file"])
            .arg(workspace_root().join("docker-compose.yml"))
            .args(args)
            .env("RINGKV_IMAGE", IMAGE);
        let vars = ["NODE1_GRPC", "NODE1_HTTP", "NODE2_GRPC", "NODE2_HTTP", "NODE3_GRPC", "NODE3_HTTP"];
        for (var, port) in vars.iter().zip(self.ports) {
            cmd.env(format!("RINGKV_{var}_PORT"), port.to_string());
        }
        cmd
    }

    fn run(&self, args: &[&str]) -> String {
        let out = self.command(args).output().expect("run compose");
        assert!(out.status.success(), "compose {args:?} failed: {}", describe(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A client for node `n` (1-3) through its published port. Ring routing
    /// is off: the routing table names nodes by their compose service names,
    /// which do not resolve on the host, so the called node forwards instead.
    fn client(&self, n: usize) -> Client {
        let port = self.ports[2 * (n - 1)];
        Client::connect([format!("127.0.0.1:{port}")]).expect("client").with_ring_routing(false)
    }

    fn volumes(&self) -> Vec<String> {
        let label = format!("label=com.docker.compose.project={}", self.name);
        let out = Command::new("docker").args(["volume", "ls", "--quiet", "--filter", &label]).output();
        let out = out.expect("docker volume ls");
        assert!(out.status.success(), "docker volume ls failed: {}", describe(&out));
        String::from_utf8_lossy(&out.stdout).split_whitespace().map(str::to_string).collect()
    }

    fn down(&mut self) {
        self.run(&["down", "--volumes", "--remove-orphans", "--timeout", "20"]);
        self.down = true;
    }
}

impl Drop for Project {
    fn drop(&mut self) {
        if self.down {
            return;
        }
        if std::thread::panicking() {
            if let Ok(out) = self.command(&["logs", "--no-color", "--tail", "60"]).output() {
                eprintln!("--- logs of compose project {}\n{}", self.name, String::from_utf8_lossy(&out.stdout));
            }
        }
        let _ = self.command(&["down", "--volumes", "--remove-orphans", "--timeout", "5"]).output();
    }
}

/// Waits until node `n` sees all three members, every shard placed and a leader everywhere.
async fn wait_settled(project: &Project, n: usize) {
    let client = project.client(n);
    eventually(&format!("node{n} to see a settled three-node cluster"), || {
        let client = client.clone();
        async move { settled(&client.status().await.ok()?, 3).then_some(()) }
    })
    .await;
}

async fn put(client: &Client, key: &str, value: &str) {
    eventually(&format!("put {key}"), || async move { client.put(key.to_string(), value.to_string()).await.ok() })
        .await;
}

async fn read_back(client: &Client, key: &str) -> Option<String> {
    eventually(&format!("a linearizable read of {key}"), || async move {
        client.get_with(key.to_string(), Consistency::Linearizable).await.ok()
    })
    .await
    .map(|v| String::from_utf8_lossy(&v.value).into_owned())
}

#[tokio::test(flavor = "multi_thread")]
async fn compose_cluster_keeps_data_through_a_stopped_node_and_a_restart() {
    build_image(IMAGE);
    let mut project = Project::new();
    project.run(&["up", "--detach"]);
    wait_settled(&project, 1).await;

    let node1 = project.client(1);
    for i in 0..KEYS {
        put(&node1, &format!("k{i}"), &format!("v{i}")).await;
    }

    // node1 bootstrapped the cluster and likely leads it: stopping it forces
    // an election, and the data must still be there through node2.
    project.run(&["stop", "--timeout", "20", "node1"]);
    let running = project.run(&["ps", "--services", "--filter", "status=running"]);
    assert!(!running.lines().any(|s| s.trim() == "node1"), "node1 still running: {running}");
    let node2 = project.client(2);
    for i in 0..KEYS {
        assert_eq!(read_back(&node2, &format!("k{i}")).await.as_deref(), Some(format!("v{i}").as_str()));
    }
    put(&node2, "written-while-node1-was-down", "yes").await;

    // New containers on the same volumes: every node comes back as itself
    // with its data, including node1, which must not bootstrap again.
    project.run(&["down", "--timeout", "20"]);
    assert_eq!(project.volumes().len(), 3, "down without -v keeps the three volumes");
    project.run(&["up", "--detach"]);
    wait_settled(&project, 3).await;
    let node3 = project.client(3);
    for i in 0..KEYS {
        assert_eq!(read_back(&node3, &format!("k{i}")).await.as_deref(), Some(format!("v{i}").as_str()));
    }
    assert_eq!(read_back(&node1, "written-while-node1-was-down").await.as_deref(), Some("yes"));
    let status = node1.status().await.expect("status from node1");
    assert_eq!(status.nodes.len(), 3, "node1 rejoined its own cluster: {status:?}");

    project.down();
    assert!(project.volumes().is_empty(), "down -v removes the volumes: {:?}", project.volumes());
    let out = Command::new("docker").args(["image", "rm", IMAGE]).output().expect("docker image rm");
    assert!(out.status.success(), "docker image rm {IMAGE}: {}", describe(&out));
}
