//! Faults injected into a [`ProcCluster`] started with
//! [`ProcCluster::start_on_own_ips`]: `kill -9` and restart, `SIGSTOP` /
//! `SIGCONT` pauses, and network partitions.
//!
//! **Why loopback aliases and iptables** (not network namespaces): every node
//! listens on its own `127.x.y.i` address and opens its peer connections from
//! it, so a rule matching source and destination addresses cuts exactly one
//! direction of one link, in the real kernel network stack — packets vanish
//! and connections hang until keepalives notice, as on a real network. This
//! needs root for iptables but no veth or namespace plumbing, and the test
//! process (clients, harness) keeps reaching every node from 127.0.0.1,
//! which no rule matches: Jepsen's "clients on the control node" model.
//!
//! The rules live in a chain of their own (`RKV-<pid>-<n>`), jumped to from
//! `INPUT`; dropping the [`Firewall`] removes the chain, so a failed test
//! leaves no rule behind.
//!
//! iptables accepting a rule proves nothing about the cluster, so
//! [`Nemesis::confirm`] waits until each fault visibly took effect: a killed
//! node refuses connections, a paused one stops answering, every cut link
//! drops a TCP connect from the source node's address while the links left
//! open still connect, an isolated minority cannot commit a write and the
//! majority leads every group, a joined node holds replicas.

use std::net::Ipv4Addr;
use std::process::Command;
use std::time::Duration;

use crate::ProcCluster;

/// A fault the nemesis can inject, then heal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// `kill -9`, restarted on heal.
    Kill(u64),
    /// `SIGSTOP`, resumed with `SIGCONT` on heal.
    Pause(u64),
    /// No traffic between the two sides, either way.
    Partition { a: Vec<u64>, b: Vec<u64> },
    /// `bridge` sees both sides; the sides do not see each other.
    Bridge { a: Vec<u64>, bridge: u64, b: Vec<u64> },
    /// Packets from `from` to `to` are dropped; the reverse direction works.
    OneWay { from: u64, to: u64 },
    /// A new node joins (shards move onto it); on heal it is drained and
    /// removed (shards move off it) and its process stopped.
    Join(u64),
}

impl Fault {
    /// Every [`Fault::kind`].
    pub const KINDS: [&'static str; 6] = ["kill", "pause", "partition", "bridge", "one-way", "join-and-remove"];

    /// A short name for reports: "kill", "pause", "partition", "bridge", "one-way", "join-and-remove".
    pub fn kind(&self) -> &'static str {
        match self {
            Fault::Kill(_) => "kill",
            Fault::Pause(_) => "pause",
            Fault::Partition { .. } => "partition",
            Fault::Bridge { .. } => "bridge",
            Fault::OneWay { .. } => "one-way",
            Fault::Join(_) => "join-and-remove",
        }
    }
}

/// iptables rules in a chain owned by one test cluster.
pub struct Firewall {
    chain: String,
}

impl Firewall {
    /// Creates the chain. Fails with a clear message when iptables is not
    /// usable (not root, no iptables): the nemesis tests need it and must
    /// not pass without it.
    pub fn new() -> Result<Self, String> {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let chain = format!("RKV-{}-{n}", std::process::id());
        iptables(&["-N", &chain])
            .map_err(|e| format!("the nemesis needs iptables as root (apt-get install iptables; run as root): {e}"))?;
        let fw = Firewall { chain };
        iptables(&["-I", "INPUT", "-j", &fw.chain])?;
        Ok(fw)
    }

    /// Drops every packet from `from` to `to`.
    pub fn drop_packets(&self, from: Ipv4Addr, to: Ipv4Addr) -> Result<(), String> {
        iptables(&["-A", &self.chain, "-s", &from.to_string(), "-d", &to.to_string(), "-j", "DROP"])
    }

    /// Removes every rule.
    pub fn heal(&self) -> Result<(), String> {
        iptables(&["-F", &self.chain])
    }
}

impl Drop for Firewall {
    fn drop(&mut self) {
        let _ = iptables(&["-F", &self.chain]);
        let _ = iptables(&["-D", "INPUT", "-j", &self.chain]);
        let _ = iptables(&["-X", &self.chain]);
    }
}

fn iptables(args: &[&str]) -> Result<(), String> {
    // -w: wait for the xtables lock instead of failing when another test holds it.
    let out = Command::new("iptables").arg("-w").args(args).output().map_err(|e| format!("iptables: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("iptables {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()))
    }
}

/// Injects and heals faults on one cluster.
pub struct Nemesis {
    firewall: Firewall,
}

impl Nemesis {
    pub fn new() -> Result<Self, String> {
        Ok(Self { firewall: Firewall::new()? })
    }

    pub async fn inject(&self, cluster: &mut ProcCluster, fault: &Fault) -> Result<(), String> {
        match fault {
            Fault::Join(id) => cluster.add_process(*id),
            Fault::Kill(id) => cluster.kill(*id),
            Fault::Pause(id) => signal(cluster, *id, nix::sys::signal::SIGSTOP)?,
            Fault::Partition { a, b } => self.cut_between(cluster, a, b)?,
            Fault::Bridge { a, bridge: _, b } => self.cut_between(cluster, a, b)?,
            Fault::OneWay { from, to } => self.firewall.drop_packets(cluster.ip_of(*from), cluster.ip_of(*to))?,
        }
        Ok(())
    }

    pub async fn heal(&self, cluster: &mut ProcCluster, fault: &Fault) -> Result<(), String> {
        match fault {
            Fault::Join(id) => {
                // Drains the node (its replicas move away), then removes it.
                let deadline = std::time::Instant::now() + crate::PATIENCE;
                loop {
                    let e = match cluster.client().remove_node(*id).await {
                        Ok(()) => break,
                        // An earlier try removed it, but its reply was lost.
                        Err(ringkv_client::Error::Other(s)) if s.code() == tonic::Code::NotFound => break,
                        Err(e) => e,
                    };
                    if std::time::Instant::now() > deadline {
                        return Err(format!("removing node {id}: {e}"));
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                cluster.stop(*id);
            }
            Fault::Kill(id) => cluster.restart(*id),
            Fault::Pause(id) => signal(cluster, *id, nix::sys::signal::SIGCONT)?,
            Fault::Partition { .. } | Fault::Bridge { .. } | Fault::OneWay { .. } => self.firewall.heal()?,
        }
        Ok(())
    }

    /// Waits, at most [`crate::PATIENCE`], until `fault` (just injected)
    /// visibly took effect, and says what was seen; an error says what did
    /// not happen.
    pub async fn confirm(&self, cluster: &ProcCluster, fault: &Fault) -> Result<String, String> {
        match fault {
            Fault::Kill(id) => {
                let addr = grpc_addr(cluster, *id)?;
                match tokio::time::timeout(OPEN_PROBE, tokio::net::TcpStream::connect(addr)).await {
                    Ok(Err(_)) => Ok(format!("node {id} refuses connections")),
                    other => Err(format!("killed node {id} still accepts connections on {addr}: {other:?}")),
                }
            }
            Fault::Pause(id) => {
                let client = pinned(cluster, *id, Duration::from_secs(1))?;
                match client.status().await {
                    Err(e) => Ok(format!("node {id} no longer answers ({e})")),
                    Ok(_) => Err(format!("paused node {id} still answers")),
                }
            }
            Fault::Partition { a, b } => {
                let mut seen = self.links(cluster, a, b, &[]).await?;
                let nodes = a.len() + b.len();
                let (minority, majority) = if a.len() < b.len() { (a, b) } else { (b, a) };
                if minority.len() * 2 < nodes {
                    seen.push(minority_cannot_write(cluster, minority).await?);
                    seen.push(majority_leads(cluster, majority).await?);
                }
                Ok(seen.join("; "))
            }
            Fault::Bridge { a, bridge, b } => {
                let open: Vec<(u64, u64)> = a.iter().chain(b).flat_map(|&x| [(x, *bridge), (*bridge, x)]).collect();
                Ok(self.links(cluster, a, b, &open).await?.join("; "))
            }
            Fault::OneWay { from, to } => {
                // The reverse direction cannot be shown by a TCP connect
                // (its SYN-ACK travels the cut way); a third node can.
                let open: Vec<(u64, u64)> =
                    cluster.nodes.keys().filter(|n| *n != from && *n != to).map(|n| (*from, *n)).take(1).collect();
                let mut seen = vec![probe(cluster, *from, *to, false).await?];
                for (x, y) in open {
                    seen.push(probe(cluster, x, y, true).await?);
                }
                Ok(seen.join("; "))
            }
            Fault::Join(id) => {
                let client = cluster.client();
                let started = std::time::Instant::now();
                loop {
                    if let Ok(s) = client.status().await {
                        let shards = s.shards.iter().filter(|r| r.replicas.contains(id)).count();
                        if s.nodes.iter().any(|n| n.id == *id) && shards > 0 {
                            return Ok(format!("node {id} joined and holds replicas of {shards} shards"));
                        }
                    }
                    if started.elapsed() > crate::PATIENCE {
                        return Err(format!("node {id} never joined and got a replica"));
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    }

    /// Shows that every link between `a` and `b` is cut, both ways, and that
    /// each link in `open` still carries a connection.
    async fn links(
        &self,
        cluster: &ProcCluster,
        a: &[u64],
        b: &[u64],
        open: &[(u64, u64)],
    ) -> Result<Vec<String>, String> {
        let cut = a.iter().flat_map(|&x| b.iter().flat_map(move |&y| [(x, y), (y, x)]));
        let probes = cut.map(|(x, y)| (x, y, false)).chain(open.iter().map(|&(x, y)| (x, y, true)));
        futures::future::join_all(probes.map(|(x, y, want)| probe(cluster, x, y, want))).await.into_iter().collect()
    }

    fn cut_between(&self, cluster: &ProcCluster, a: &[u64], b: &[u64]) -> Result<(), String> {
        for &x in a {
            for &y in b {
                self.firewall.drop_packets(cluster.ip_of(x), cluster.ip_of(y))?;
                self.firewall.drop_packets(cluster.ip_of(y), cluster.ip_of(x))?;
            }
        }
        Ok(())
    }
}

fn signal(cluster: &ProcCluster, id: u64, sig: nix::sys::signal::Signal) -> Result<(), String> {
    let pid = cluster.nodes[&id].pid().ok_or_else(|| format!("node {id} is not running"))?;
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), sig).map_err(|e| format!("{sig} to node {id}: {e}"))
}

/// How long a TCP connect on a link that should be open may take, and how
/// long a connect on a cut link is given to (wrongly) succeed.
const OPEN_PROBE: Duration = Duration::from_secs(10);
const CUT_PROBE: Duration = Duration::from_secs(2);

fn grpc_addr(cluster: &ProcCluster, id: u64) -> Result<std::net::SocketAddr, String> {
    cluster.nodes[&id].grpc.parse().map_err(|e| format!("node {id}'s address: {e}"))
}

/// A client that sends everything to node `id`, giving up after `timeout`.
fn pinned(cluster: &ProcCluster, id: u64, timeout: Duration) -> Result<ringkv_client::Client, String> {
    let opts = ringkv_client::ClientOptions { timeout, connect_timeout: timeout, ..Default::default() };
    ringkv_client::Client::connect_with([&cluster.nodes[&id].grpc], opts)
        .map(|c| c.with_ring_routing(false))
        .map_err(|e| format!("client of node {id}: {e}"))
}

/// A TCP connect from node `from`'s address to node `to`'s gRPC port, the
/// path its peer connections take: `open` says whether it must connect.
async fn probe(cluster: &ProcCluster, from: u64, to: u64, open: bool) -> Result<String, String> {
    let addr = grpc_addr(cluster, to)?;
    let socket = tokio::net::TcpSocket::new_v4().map_err(|e| format!("socket: {e}"))?;
    socket.bind((cluster.ip_of(from), 0).into()).map_err(|e| format!("bind to node {from}'s address: {e}"))?;
    let connected = matches!(
        tokio::time::timeout(if open { OPEN_PROBE } else { CUT_PROBE }, socket.connect(addr)).await,
        Ok(Ok(_))
    );
    match (open, connected) {
        (true, true) => Ok(format!("{from}->{to} open")),
        (false, false) => Ok(format!("{from}->{to} cut")),
        (true, false) => Err(format!("link {from}->{to} should be open but a connect from {from} to {addr} failed")),
        (false, true) => {
            Err(format!("link {from}->{to} should be cut but a connect from {from} to {addr} went through"))
        }
    }
}

/// A write through each node of an isolated minority fails: it can reach no
/// quorum, whether it leads the key's shard or would forward the write.
async fn minority_cannot_write(cluster: &ProcCluster, minority: &[u64]) -> Result<String, String> {
    for &id in minority {
        let client = pinned(cluster, id, Duration::from_secs(2))?;
        if let Ok(v) = client.put(format!("probe/isolated/{id}"), "x").await {
            return Err(format!("node {id}, cut off from a majority, committed a write (version {v})"));
        }
    }
    Ok(format!("writes through {minority:?} fail"))
}

/// Polls until a node of the majority side sees a leader inside the
/// majority for every group it hosts: an isolated leader has been replaced.
async fn majority_leads(cluster: &ProcCluster, majority: &[u64]) -> Result<String, String> {
    let client = pinned(cluster, majority[0], Duration::from_secs(2))?;
    let started = std::time::Instant::now();
    loop {
        if let Ok(s) = client.status().await {
            if !s.groups.is_empty() && s.groups.iter().all(|g| majority.contains(&g.leader_id)) {
                return Ok(format!("{majority:?} lead all {} groups", s.groups.len()));
            }
        }
        if started.elapsed() > crate::PATIENCE {
            return Err(format!("the majority {majority:?} never led every group"));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A fault schedule cycling through every kind, on nodes picked by a seeded
/// generator (xorshift), so a failing run can be replayed from its seed.
pub struct Schedule {
    state: u64,
    nodes: Vec<u64>,
    step: usize,
    /// Id of the next node to join.
    next_id: u64,
}

impl Schedule {
    pub fn new(seed: u64, nodes: Vec<u64>) -> Self {
        let next_id = nodes.iter().max().copied().unwrap_or(0) + 1;
        Self { state: seed.max(1), nodes, step: 0, next_id }
    }

    fn next_u64(&mut self) -> u64 {
        self.state ^= self.state << 13;
        self.state ^= self.state >> 7;
        self.state ^= self.state << 17;
        self.state
    }

    fn pick(&mut self) -> u64 {
        let i = (self.next_u64() % self.nodes.len() as u64) as usize;
        self.nodes[i]
    }

    /// Faults in one cycle of the schedule: after this many, every
    /// [`Fault::KINDS`] has run (partitions twice: a minority and the leader).
    pub const CYCLE: usize = 7;

    /// The next fault; `leader` is the node to isolate when the schedule
    /// wants to isolate a leader (the caller knows who leads).
    pub fn next_fault(&mut self, leader: Option<u64>) -> Fault {
        let kind = self.step % Self::CYCLE;
        self.step += 1;
        match kind {
            0 => Fault::Kill(self.pick()),
            1 => Fault::Pause(self.pick()),
            2 => {
                let minority = self.pick();
                Fault::Partition { a: vec![minority], b: self.others(&[minority]) }
            }
            3 => {
                let l = leader.unwrap_or_else(|| self.pick());
                Fault::Partition { a: vec![l], b: self.others(&[l]) }
            }
            4 => {
                let bridge = self.pick();
                let rest = self.others(&[bridge]);
                let (a, b) = rest.split_at(rest.len() / 2);
                Fault::Bridge { a: a.to_vec(), bridge, b: b.to_vec() }
            }
            6 => {
                self.next_id += 1;
                Fault::Join(self.next_id - 1)
            }
            _ => {
                let from = self.pick();
                let others = self.others(&[from]);
                let to = others[(self.next_u64() % others.len() as u64) as usize];
                Fault::OneWay { from, to }
            }
        }
    }

    fn others(&self, except: &[u64]) -> Vec<u64> {
        self.nodes.iter().copied().filter(|n| !except.contains(n)).collect()
    }
}

/// How long a fault stays, and the quiet time after healing it.
pub const FAULT_FOR: Duration = Duration::from_secs(5);
pub const QUIET_FOR: Duration = Duration::from_secs(3);
