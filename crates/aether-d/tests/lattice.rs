//! Multi-process lattice tests: real `aether-d` processes on loopback
//! addresses (127.0.0.131–135, 141–148 and 151–155), default mesh port, joined
//! with invites; real SIGKILL and SIGTERM.

mod common;

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aether_admin::client::AdminClient;
use aether_identity::home::Home;
use aether_identity::{
    Invite, InviteConstraints, InviteToken, Labels, LatticeId, NodeCertificate, SecretKey,
};
use bytes::Bytes;
use common::{block_on, capture};
use http::Method;
use serde_json::Value;

const MESH_PORT: u16 = 7946;

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The operator's side: a lattice root (ALKAHEST_HOME) that issues invites.
struct Operator {
    home: tempfile::TempDir,
}

impl Operator {
    fn new() -> Self {
        let home = tempfile::tempdir().expect("home dir");
        Home::at(home.path()).init().expect("lattice init");
        Self { home }
    }

    fn root(&self) -> SecretKey {
        Home::at(self.home.path()).root_key().expect("root key")
    }

    fn invite_at(&self, single_use: bool, issued: u64, lifetime: u64) -> InviteToken {
        let root = self.root();
        Invite::issue(
            &root,
            LatticeId::of_root(&root.public()),
            InviteConstraints::default(),
            issued + lifetime,
            single_use,
            issued,
        )
        .expect("invite")
    }

    fn invite(&self, single_use: bool) -> InviteToken {
        self.invite_at(single_use, unix_now(), 3600)
    }
}

/// One `aether-d` process and what it needs to be restarted.
struct Node {
    ip: Ipv4Addr,
    data: PathBuf,
    home: PathBuf,
    http_port: u16,
    admin_port: u16,
    child: Option<Child>,
    stderr: Arc<Mutex<String>>,
    admin_key: SecretKey,
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn free_port(ip: Ipv4Addr) -> u16 {
    TcpListener::bind((ip, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("no free port on {ip}: {e}"))
}

impl Node {
    fn new(octet: u8, scratch: &Path, operator: &Operator) -> Self {
        let ip = Ipv4Addr::new(127, 0, 0, octet);
        let data = scratch.join(format!("node-{octet}"));
        Self {
            ip,
            data,
            home: operator.home.path().to_path_buf(),
            http_port: free_port(ip),
            admin_port: free_port(ip),
            child: None,
            stderr: Arc::new(Mutex::new(String::new())),
            admin_key: operator.root(),
        }
    }

    fn mesh(&self) -> SocketAddr {
        SocketAddr::from((self.ip, MESH_PORT))
    }

    fn admin(&self) -> SocketAddr {
        SocketAddr::from((self.ip, self.admin_port))
    }

    /// Starts the process with `extra` arguments (join, invite, region).
    fn spawn(&mut self, extra: &[String]) {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_aether-d"));
        cmd.arg("--data-dir")
            .arg(&self.data)
            .arg("--bind")
            .arg(self.ip.to_string())
            .arg("--http-port")
            .arg(self.http_port.to_string())
            .arg("--admin-port")
            .arg(self.admin_port.to_string())
            .arg("--workers")
            .arg("1")
            .args(extra)
            .env("ALKAHEST_HOME", &self.home)
            .env_remove("AETHER_DATA_DIR")
            .env_remove("AETHER_INVITE")
            .env("AETHER_LOG", "info,aether_mesh=debug")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawning aether-d");
        self.stderr = capture(child.stderr.take().expect("stderr pipe"));
        self.child = Some(child);
    }

    fn stderr(&self) -> String {
        self.stderr
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Waits until the admin API answers; panics if the process exits.
    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!(
                    "aether-d on {} exited early ({status})\n{}",
                    self.ip,
                    self.stderr()
                );
            }
            if std::net::TcpStream::connect(self.admin()).is_ok() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "aether-d on {} never became ready\n{}",
                self.ip,
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn start(&mut self, extra: &[String]) {
        self.spawn(extra);
        self.wait_ready();
    }

    /// Waits for the process to exit by itself; returns its status and stderr.
    fn wait_exit(&mut self, timeout: Duration) -> (std::process::ExitStatus, String) {
        let deadline = Instant::now() + timeout;
        let child = self.child.as_mut().expect("running");
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                self.child = None;
                // Let the capture thread read the last lines.
                std::thread::sleep(Duration::from_millis(100));
                return (status, self.stderr());
            }
            assert!(
                Instant::now() < deadline,
                "aether-d on {} did not exit within {timeout:?}\n{}",
                self.ip,
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    fn signal(&mut self, sig: &str) {
        let pid = self.child.as_ref().expect("running").id();
        let ok = Command::new("kill")
            .args([sig, &pid.to_string()])
            .status()
            .expect("kill")
            .success();
        assert!(ok, "kill {sig} {pid} failed");
    }

    fn sigkill(&mut self) {
        self.signal("-KILL");
        let _ = self.wait_exit(Duration::from_secs(10));
    }

    fn client(&self) -> AdminClient {
        AdminClient::new(self.admin(), self.admin_key.clone())
    }

    fn members(&self) -> Vec<Value> {
        let v: Value = block_on(self.client().json(Method::GET, "/v1/nodes", Bytes::new()))
            .unwrap_or_else(|e| panic!("GET /v1/nodes on {}: {e}\n{}", self.ip, self.stderr()));
        v.as_array().cloned().expect("array of members")
    }

    fn id(&self) -> String {
        self.members()
            .into_iter()
            .find(|m| m["is_self"] == true)
            .and_then(|m| m["id"].as_str().map(str::to_string))
            .expect("self row")
    }

    fn metrics(&self) -> String {
        let mut stream = std::net::TcpStream::connect(self.admin()).expect("connect admin");
        use std::io::{Read as _, Write as _};
        write!(
            stream,
            "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .expect("write");
        let mut out = String::new();
        stream.read_to_string(&mut out).expect("read");
        out
    }

    /// The state this node shows for `id` (`None`: not listed).
    fn state_of(&self, id: &str) -> Option<(String, u64)> {
        self.members().into_iter().find(|m| m["id"] == id).map(|m| {
            (
                m["state"].as_str().unwrap_or("").to_string(),
                m["incarnation"].as_u64().unwrap_or(0),
            )
        })
    }
}

fn join_args(seed: &Node, invite: Option<&InviteToken>) -> Vec<String> {
    let mut args = vec!["--join".to_string(), seed.mesh().to_string()];
    if let Some(token) = invite {
        args.push("--invite".into());
        args.push(token.to_text());
    }
    args
}

/// Polls `check` every 100 ms until it returns true, or panics with `what`.
fn eventually(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    loop {
        if check() {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?}: {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn all_alive(nodes: &[&Node], ids: &[String]) -> bool {
    nodes.iter().all(|n| {
        let members = n.members();
        ids.iter().all(|id| {
            members
                .iter()
                .any(|m| m["id"] == id.as_str() && m["state"] == "alive")
        })
    })
}

#[test]
fn five_nodes_see_each_other_detect_a_crash_take_a_restart_back_and_see_a_leave() {
    let operator = Operator::new();
    let scratch = tempfile::tempdir().expect("scratch");
    let mut nodes: Vec<Node> = (131..=135)
        .map(|o| Node::new(o, scratch.path(), &operator))
        .collect();
    // The first node admits itself with the operator's root key.
    nodes[0].start(&["--region".into(), "eu-west".into()]);
    let invite = operator.invite(false);
    for i in 1..5 {
        let mut args = join_args(&nodes[0], Some(&invite));
        args.extend(["--region".to_string(), format!("r{i}")]);
        nodes[i].start(&args);
    }
    let ids: Vec<String> = nodes.iter().map(Node::id).collect();
    let refs: Vec<&Node> = nodes.iter().collect();
    let took = eventually(
        "all five nodes see all five alive",
        Duration::from_secs(30),
        || all_alive(&refs, &ids),
    );
    eprintln!("all see all after {took:?}");

    // Every row carries the contract's fields; RTT estimates appear.
    eventually(
        "RTT estimates for every member",
        Duration::from_secs(20),
        || {
            nodes[0]
                .members()
                .iter()
                .all(|m| m["rtt_ms"].as_f64().is_some_and(|r| r >= 0.0))
        },
    );
    let rows = nodes[1].members();
    assert_eq!(rows.len(), 5, "{rows:?}");
    eventually(
        "metrics count five alive members",
        Duration::from_secs(5),
        || {
            nodes[1]
                .metrics()
                .contains("aether_mesh_members{state=\"alive\"} 5")
        },
    );
    let metrics = nodes[1].metrics();
    for name in [
        "aether_mesh_probes_total",
        "aether_mesh_suspicions_total",
        "aether_mesh_refutations_total",
        "aether_mesh_peer_received_bytes_total{peer=",
        "aether_mesh_peer_sent_bytes_total{peer=",
    ] {
        assert!(metrics.contains(name), "{name} missing from\n{metrics}");
    }
    let first = rows
        .iter()
        .find(|m| m["id"] == ids[0].as_str())
        .expect("node 1 row");
    assert_eq!(first["region"], "eu-west");
    assert_eq!(first["mesh_addr"], nodes[0].mesh().to_string());

    // SIGKILL node 3: the others mark it dead.
    let victim = ids[2].clone();
    let (_, inc_before) = nodes[0].state_of(&victim).expect("listed");
    nodes[2].sigkill();
    let took = eventually(
        "the survivors declare the killed node dead",
        Duration::from_secs(40),
        || {
            [0, 1, 3, 4].iter().all(|&i| {
                let rows = nodes[i].members();
                // No false dead declaration on the way.
                for m in &rows {
                    assert!(
                        m["state"] != "dead" || m["id"] == victim.as_str(),
                        "node {} declared a live member dead: {rows:?}",
                        i + 1
                    );
                }
                rows.iter()
                    .any(|m| m["id"] == victim.as_str() && m["state"] == "dead")
            })
        },
    );
    eprintln!("SIGKILL -> dead everywhere after {took:?}");

    // Restart it from its data directory: no invite needed, higher incarnation.
    let rejoin = join_args(&nodes[0], None);
    nodes[2].start(&rejoin);
    eventually(
        "the restarted node is alive again with a higher incarnation",
        Duration::from_secs(30),
        || {
            [0, 1, 3, 4].iter().all(|&i| {
                nodes[i]
                    .state_of(&victim)
                    .is_some_and(|(s, inc)| s == "alive" && inc > inc_before)
            }) && all_alive(&[&nodes[2]], &ids)
        },
    );

    // SIGTERM node 5: it leaves gracefully and exits cleanly.
    let leaver = ids[4].clone();
    nodes[4].signal("-TERM");
    let (status, log) = nodes[4].wait_exit(Duration::from_secs(15));
    assert!(status.success(), "SIGTERM exit: {status}\n{log}");
    assert!(log.contains("left the lattice"), "{log}");
    eventually(
        "the others show the leaver as left",
        Duration::from_secs(15),
        || {
            [0, 1, 2, 3]
                .iter()
                .all(|&i| nodes[i].state_of(&leaver).is_some_and(|(s, _)| s == "left"))
        },
    );
}

/// Writes a data directory admitted with `token` as of `issued` (so tests can
/// present certificates whose invite has since expired).
fn preadmitted_data_dir(dir: &Path, operator: &Operator, token: &InviteToken, issued: u64) {
    std::fs::create_dir_all(dir).expect("data dir");
    let key = SecretKey::load_or_create(&aether_identity::node_key_path(dir)).expect("node key");
    let cert = NodeCertificate::issue(token, &key, None, Labels::new(), issued).expect("cert");
    std::fs::write(dir.join("node.cert"), cert.to_bytes()).expect("write cert");
    std::fs::write(
        dir.join("lattice.pub"),
        format!("{}\n", operator.root().public()),
    )
    .expect("write root");
}

fn refused_count(node: &Node, reason: &str) -> u64 {
    let needle = format!("aether_mesh_refused_handshakes_total{{reason=\"{reason}\"}} ");
    node.metrics()
        .lines()
        .find_map(|l| l.strip_prefix(&needle))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

#[test]
fn nodes_that_cannot_prove_admission_are_refused_counted_and_never_alive() {
    let operator = Operator::new();
    let scratch = tempfile::tempdir().expect("scratch");
    let mut seed = Node::new(141, scratch.path(), &operator);
    seed.start(&[]);
    let seed_id = seed.id();
    let mut refused_ids = Vec::new();

    // No invite, and no root key on the machine: aether-d refuses to try.
    let empty_home = tempfile::tempdir().expect("empty home");
    let mut stranger = Node::new(142, scratch.path(), &operator);
    stranger.home = empty_home.path().to_path_buf();
    stranger.spawn(
        &[
            join_args(&seed, None),
            vec![
                "--admin-key".into(),
                operator.root().public().to_string(),
                "--trust-publisher".into(),
                SecretKey::generate().public().to_string(),
            ],
        ]
        .concat(),
    );
    let (status, log) = stranger.wait_exit(Duration::from_secs(20));
    assert!(!status.success());
    assert!(
        log.contains("has not been admitted") && log.contains("--invite"),
        "{log}"
    );

    // A single-use invite admits one node; the second one is refused.
    let single = operator.invite(true);
    let mut first = Node::new(143, scratch.path(), &operator);
    first.start(&join_args(&seed, Some(&single)));
    let first_id = first.id();
    eventually(
        "the single-use invite's node is alive",
        Duration::from_secs(20),
        || seed.state_of(&first_id).is_some_and(|(s, _)| s == "alive"),
    );
    std::thread::sleep(Duration::from_millis(1100));
    let mut second = Node::new(144, scratch.path(), &operator);
    second.start(&join_args(&seed, Some(&single)));
    refused_ids.push(second.id());
    eventually(
        "the reused invite is refused",
        Duration::from_secs(20),
        || refused_count(&seed, "invite_used") >= 1,
    );

    // A certificate whose invite expired before any member saw the node.
    let past = unix_now() - 600;
    let stale = operator.invite_at(false, past, 60);
    let mut late = Node::new(145, scratch.path(), &operator);
    preadmitted_data_dir(&late.data, &operator, &stale, past + 1);
    late.start(&join_args(&seed, None));
    refused_ids.push(late.id());
    eventually(
        "the expired invite is refused",
        Duration::from_secs(20),
        || refused_count(&seed, "invite_expired") >= 1,
    );

    // An invite from another lattice's root.
    let other = Operator::new();
    let mut foreign = Node::new(146, scratch.path(), &other);
    foreign.start(&join_args(&seed, Some(&other.invite(false))));
    refused_ids.push(foreign.id());
    // The newcomer checks the member's certificate first in the handshake,
    // so the refusal is counted on whichever side sees the other's first.
    eventually(
        "the foreign lattice is refused",
        Duration::from_secs(20),
        || {
            refused_count(&seed, "foreign_lattice") + refused_count(&foreign, "foreign_lattice")
                >= 1
        },
    );

    // A forged node certificate (its invite signature altered) cannot even
    // start a node: aether-d checks its own certificate.
    let mut forged = Node::new(147, scratch.path(), &operator);
    preadmitted_data_dir(&forged.data, &operator, &operator.invite(false), unix_now());
    let cert_path = forged.data.join("node.cert");
    let mut bytes = std::fs::read(&cert_path).expect("cert");
    let n = bytes.len();
    bytes[n - 100] ^= 0x01;
    std::fs::write(&cert_path, bytes).expect("write");
    forged.spawn(&join_args(&seed, None));
    let (status, log) = forged.wait_exit(Duration::from_secs(20));
    assert!(!status.success());
    assert!(log.contains("node.cert"), "{log}");

    // A node admitted, then revoked: everyone marks it revoked and it cannot
    // come back.
    let mut doomed = Node::new(148, scratch.path(), &operator);
    doomed.start(&join_args(&seed, Some(&operator.invite(false))));
    let doomed_id = doomed.id();
    eventually(
        "the node to revoke is alive",
        Duration::from_secs(20),
        || {
            seed.state_of(&doomed_id).is_some_and(|(s, _)| s == "alive")
                && first
                    .state_of(&doomed_id)
                    .is_some_and(|(s, _)| s == "alive")
        },
    );
    let revocation = aether_identity::Revocation::issue(
        &operator.root(),
        &doomed_id.parse().expect("node id"),
        "test",
        unix_now(),
    )
    .expect("revocation");
    let _: Value = block_on(seed.client().json(
        Method::POST,
        "/v1/revoke",
        Bytes::from(revocation.to_bytes()),
    ))
    .expect("revoke");
    let took = eventually(
        "every member shows the node revoked",
        Duration::from_secs(10),
        || {
            [&seed, &first]
                .iter()
                .all(|n| n.state_of(&doomed_id).is_some_and(|(s, _)| s == "revoked"))
        },
    );
    eprintln!("revocation reached every member after {took:?}");
    doomed.sigkill();
    doomed.start(&join_args(&first, None));
    eventually(
        "the revoked node is refused when it reconnects",
        Duration::from_secs(20),
        || refused_count(&first, "revoked") >= 1 || refused_count(&seed, "revoked") >= 1,
    );

    // Let gossip run a while, then check nobody lists a refused node alive.
    std::thread::sleep(Duration::from_secs(3));
    for member in [&seed, &first] {
        let rows = member.members();
        for id in &refused_ids {
            assert!(
                !rows.iter().any(|m| m["id"] == id.as_str()),
                "refused node {id} is listed: {rows:?}"
            );
        }
        let doomed_row = rows.iter().find(|m| m["id"] == doomed_id.as_str());
        assert_eq!(
            doomed_row.map(|m| m["state"].clone()),
            Some(Value::from("revoked")),
            "{rows:?}"
        );
        assert!(rows.iter().any(|m| m["id"] == seed_id.as_str()));
    }
    let log = seed.stderr();
    assert!(
        log.contains("refused peer during the TLS handshake"),
        "{log}"
    );
}

/// An nftables table that drops UDP between two groups of loopback
/// addresses; removed on drop.
struct Partition {
    table: String,
}

impl Partition {
    fn new(a: &[Ipv4Addr], b: &[Ipv4Addr]) -> Self {
        let table = format!("aether_test_{}", std::process::id());
        let set = |ips: &[Ipv4Addr]| {
            let list: Vec<String> = ips.iter().map(ToString::to_string).collect();
            format!("{{ {} }}", list.join(", "))
        };
        let script = format!(
            "add table inet {table}\n\
             add chain inet {table} input {{ type filter hook input priority -10; }}\n\
             add rule inet {table} input ip saddr {a} ip daddr {b} meta l4proto udp drop\n\
             add rule inet {table} input ip saddr {b} ip daddr {a} meta l4proto udp drop\n",
            a = set(a),
            b = set(b)
        );
        let mut child = Command::new("nft")
            .args(["-f", "-"])
            .stdin(Stdio::piped())
            .spawn()
            .expect("nft is needed for the partition test (scripts/test.sh installs nftables)");
        use std::io::Write as _;
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(script.as_bytes())
            .expect("write nft script");
        assert!(
            child.wait().expect("nft").success(),
            "nft refused:\n{script}"
        );
        Self { table }
    }
}

impl Drop for Partition {
    fn drop(&mut self) {
        let _ = Command::new("nft")
            .args(["delete", "table", "inet", &self.table])
            .status();
    }
}

fn kv_put(node: &Node, bucket: &str, key: &str, value: &str) {
    let path = format!("/v1/kv/{bucket}?key={key}");
    let _: Value = block_on(
        node.client()
            .json(Method::PUT, &path, Bytes::from(value.to_string())),
    )
    .unwrap_or_else(|e| panic!("PUT {path} on {}: {e}\n{}", node.ip, node.stderr()));
}

fn kv_get(node: &Node, bucket: &str, key: &str) -> Option<String> {
    let path = format!("/v1/kv/{bucket}?key={key}");
    block_on(
        node.client()
            .json::<Value>(Method::GET, &path, Bytes::new()),
    )
    .ok()
    .and_then(|v| v["value"].as_str().map(str::to_string))
}

fn kv_digest(node: &Node) -> String {
    let v: Value = block_on(node.client().json(Method::GET, "/v1/kv", Bytes::new()))
        .unwrap_or_else(|e| panic!("GET /v1/kv on {}: {e}\n{}", node.ip, node.stderr()));
    v["digest"].as_str().unwrap_or_default().to_string()
}

fn same_digest(nodes: &[&Node]) -> bool {
    let digests: Vec<String> = nodes.iter().map(|n| kv_digest(n)).collect();
    digests.windows(2).all(|w| w[0] == w[1])
}

#[test]
fn state_converges_across_crashes_restarts_and_a_partition() {
    let operator = Operator::new();
    let scratch = tempfile::tempdir().expect("scratch");
    let mut nodes: Vec<Node> = (151..=155)
        .map(|o| Node::new(o, scratch.path(), &operator))
        .collect();
    nodes[0].start(&[]);
    let invite = operator.invite(false);
    for i in 1..5 {
        let args = join_args(&nodes[0], Some(&invite));
        nodes[i].start(&args);
    }
    let ids: Vec<String> = nodes.iter().map(Node::id).collect();
    eventually("all five see all five", Duration::from_secs(30), || {
        all_alive(&nodes.iter().collect::<Vec<_>>(), &ids)
    });

    // Writes on every node, plus one key written by all of them at once.
    let mut expected: Vec<(String, String)> = Vec::new();
    for (i, n) in nodes.iter().enumerate() {
        for j in 0..10 {
            let (k, v) = (format!("n{i}-k{j}"), format!("v{i}-{j}"));
            kv_put(n, "app", &k, &v);
            expected.push((k, v));
        }
        kv_put(n, "app", "shared", &format!("from {i}"));
    }
    let took = eventually(
        "every node holds the same state",
        Duration::from_secs(30),
        || same_digest(&nodes.iter().collect::<Vec<_>>()),
    );
    eprintln!("5 nodes converged {took:?} after the last write");
    let shared = kv_get(&nodes[0], "app", "shared").expect("shared key");
    for n in &nodes {
        assert_eq!(kv_get(n, "app", "shared").as_deref(), Some(shared.as_str()));
    }

    // SIGKILL two nodes, write on the others, restart them from disk.
    nodes[3].sigkill();
    nodes[4].sigkill();
    for (i, n) in nodes.iter().enumerate().take(3) {
        for j in 0..10 {
            let (k, v) = (format!("after-crash-{i}-{j}"), format!("w{i}-{j}"));
            kv_put(n, "app", &k, &v);
            expected.push((k, v));
        }
    }
    let rejoin = join_args(&nodes[0], None);
    nodes[3].start(&rejoin);
    nodes[4].start(&rejoin);
    eventually(
        "the restarted nodes catch up",
        Duration::from_secs(40),
        || same_digest(&nodes.iter().collect::<Vec<_>>()),
    );

    // Partition {1, 2} | {3, 4, 5}, write on both sides, heal.
    let side_a: Vec<Ipv4Addr> = nodes[..2].iter().map(|n| n.ip).collect();
    let side_b: Vec<Ipv4Addr> = nodes[2..].iter().map(|n| n.ip).collect();
    {
        let _partition = Partition::new(&side_a, &side_b);
        for (i, n) in nodes.iter().enumerate() {
            for j in 0..5 {
                let (k, v) = (format!("split-{i}-{j}"), format!("s{i}-{j}"));
                kv_put(n, "app", &k, &v);
                expected.push((k, v));
            }
            kv_put(n, "app", "contested", &format!("side of {i}"));
        }
        std::thread::sleep(Duration::from_secs(3));
        assert!(
            !same_digest(&[&nodes[0], &nodes[4]]),
            "the partition did not separate the two sides"
        );
    }
    let took = eventually(
        "the two sides converge after the heal",
        Duration::from_secs(60),
        || same_digest(&nodes.iter().collect::<Vec<_>>()),
    );
    eprintln!("converged {took:?} after the partition healed");
    let contested = kv_get(&nodes[0], "app", "contested").expect("contested");
    for n in &nodes {
        assert_eq!(
            kv_get(n, "app", "contested").as_deref(),
            Some(contested.as_str())
        );
        for (k, v) in &expected {
            assert_eq!(
                kv_get(n, "app", k).as_deref(),
                Some(v.as_str()),
                "{k} on {}",
                n.ip
            );
        }
    }
}
