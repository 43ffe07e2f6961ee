//! Real `aether-d` processes forming a lattice on loopback addresses: an
//! operator (lattice root and publisher keys in a temporary ALKAHEST_HOME),
//! nodes on the default mesh port, deploys of sealed essences and plain HTTP
//! to the ingress. (The same pattern as `lattice.rs`, for tests that deploy
//! components to several nodes.)

use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aether_admin::client::AdminClient;
use aether_identity::home::Home;
use aether_identity::{Invite, InviteConstraints, InviteToken, LatticeId, SecretKey};
use bytes::Bytes;
use http::Method;
use serde_json::Value;

use super::http::{HttpResponse, try_request};
use super::{block_on, capture};

/// The mesh port every node uses (each on its own loopback address).
pub const MESH_PORT: u16 = 7946;

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The operator's side: lattice root and publisher keys, invites, essences.
pub struct Operator {
    pub home: tempfile::TempDir,
}

impl Operator {
    pub fn new() -> Self {
        let home = tempfile::tempdir().expect("home dir");
        Home::at(home.path()).init().expect("lattice init");
        Self { home }
    }

    pub fn root(&self) -> SecretKey {
        Home::at(self.home.path()).root_key().expect("root key")
    }

    /// An invite issued at `issued` (Unix seconds) for `lifetime` seconds.
    pub fn invite_at(&self, single_use: bool, issued: u64, lifetime: u64) -> InviteToken {
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

    /// A reusable invite valid for an hour.
    pub fn invite(&self) -> InviteToken {
        self.invite_at(false, unix_now(), 3600)
    }

    /// A single-use invite valid for an hour.
    pub fn invite_single_use(&self) -> InviteToken {
        self.invite_at(true, unix_now(), 3600)
    }

    /// `wasm` sealed with the operator's publisher key (which nodes started
    /// with this ALKAHEST_HOME trust) under the Aetherfile `aetherfile`.
    pub fn seal(&self, aetherfile: &str, wasm: &[u8]) -> Vec<u8> {
        let manifest = aether_manifest::parse(aetherfile, "Aetherfile")
            .unwrap_or_else(|e| panic!("test Aetherfile does not parse: {e}\n{aetherfile}"));
        let publisher = Home::at(self.home.path())
            .publisher_key()
            .expect("publisher key");
        aether_essence::seal(&manifest, wasm, &publisher)
    }
}

/// A test component built by `scripts/build-fixtures.sh`.
pub fn fixture(name: &str) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../target/fixtures")
        .join(format!("{name}.wasm"));
    std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "test fixture {} is missing ({e}); run scripts/build-fixtures.sh first",
            path.display()
        )
    })
}

/// Two distinct ports free on `ip` right now (both listeners are held
/// until both are known, so the kernel cannot hand out the same one twice).
fn free_port_pair(ip: Ipv4Addr) -> (u16, u16) {
    let bind =
        || TcpListener::bind((ip, 0)).unwrap_or_else(|e| panic!("no free port on {ip}: {e}"));
    let (a, b) = (bind(), bind());
    let port = |l: &TcpListener| l.local_addr().map(|a| a.port()).expect("local addr");
    (port(&a), port(&b))
}

/// One `aether-d` process, SIGKILLed when dropped.
pub struct Node {
    pub ip: Ipv4Addr,
    pub data: PathBuf,
    pub home: PathBuf,
    pub http_port: u16,
    pub admin_port: u16,
    /// The program started: `aether-d` of this build unless a test sets another (a
    /// cross-built binary, run through `launcher`).
    pub program: PathBuf,
    /// Words put before `program` on the command line (`qemu-aarch64 -L ...`).
    pub launcher: Vec<String>,
    /// How long `wait_ready` waits for the admin API.
    pub ready_timeout: Duration,
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

impl Node {
    /// A node on 127.0.0.`octet` with its data under `scratch`.
    pub fn new(octet: u8, scratch: &Path, operator: &Operator) -> Self {
        let ip = Ipv4Addr::new(127, 0, 0, octet);
        let (http_port, admin_port) = free_port_pair(ip);
        Self {
            ip,
            data: scratch.join(format!("node-{octet}")),
            home: operator.home.path().to_path_buf(),
            http_port,
            admin_port,
            program: PathBuf::from(env!("CARGO_BIN_EXE_aether-d")),
            launcher: Vec::new(),
            ready_timeout: Duration::from_secs(20),
            child: None,
            stderr: Arc::new(Mutex::new(String::new())),
            admin_key: operator.root(),
        }
    }

    pub fn mesh(&self) -> SocketAddr {
        SocketAddr::from((self.ip, MESH_PORT))
    }

    pub fn admin(&self) -> SocketAddr {
        SocketAddr::from((self.ip, self.admin_port))
    }

    pub fn http(&self) -> SocketAddr {
        SocketAddr::from((self.ip, self.http_port))
    }

    /// Starts the process with `extra` arguments and waits until its admin
    /// API accepts connections.
    pub fn start(&mut self, extra: &[String]) {
        self.spawn(extra);
        self.wait_ready();
    }

    /// Starts the process without waiting.
    pub fn spawn(&mut self, extra: &[String]) {
        let mut cmd = match self.launcher.split_first() {
            Some((first, rest)) => {
                let mut cmd = Command::new(first);
                cmd.args(rest).arg(&self.program);
                cmd
            }
            None => Command::new(&self.program),
        };
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
            .env("AETHER_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawning aether-d");
        self.stderr = capture(child.stderr.take().expect("stderr pipe"));
        self.child = Some(child);
    }

    /// Waits until the admin API accepts connections; panics if the process exits.
    pub fn wait_ready(&mut self) {
        let deadline = Instant::now() + self.ready_timeout;
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
            if TcpStream::connect(self.admin()).is_ok() {
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

    /// Waits for the process to exit by itself; returns its status and stderr.
    pub fn wait_exit(&mut self, timeout: Duration) -> (std::process::ExitStatus, String) {
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

    /// Sends a signal (`-TERM`, `-KILL`) to the process.
    pub fn signal(&mut self, sig: &str) {
        let pid = self.child.as_ref().expect("running").id();
        let ok = Command::new("kill")
            .args([sig, &pid.to_string()])
            .status()
            .expect("kill")
            .success();
        assert!(ok, "kill {sig} {pid} failed");
    }

    /// SIGKILL, then wait for the process to be gone.
    pub fn sigkill(&mut self) {
        self.signal("-KILL");
        let _ = self.wait_exit(Duration::from_secs(10));
    }

    /// The Prometheus text of `/metrics`.
    pub fn metrics(&self) -> String {
        let mut stream = TcpStream::connect(self.admin()).expect("connect admin");
        write!(
            stream,
            "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .expect("write");
        let mut out = String::new();
        stream.read_to_string(&mut out).expect("read");
        out
    }

    /// The state and incarnation this node shows for `id` (`None`: not listed).
    pub fn state_of(&self, id: &str) -> Option<(String, u64)> {
        self.members().into_iter().find(|m| m["id"] == id).map(|m| {
            (
                m["state"].as_str().unwrap_or("").to_string(),
                m["incarnation"].as_u64().unwrap_or(0),
            )
        })
    }

    pub fn stderr(&self) -> String {
        self.stderr
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn client(&self) -> AdminClient {
        AdminClient::new(self.admin(), self.admin_key.clone())
    }

    /// A signed admin request answered with JSON; panics on refusal.
    pub fn admin_json(&self, method: Method, path: &str, body: Vec<u8>) -> Value {
        block_on(self.client().json(method.clone(), path, Bytes::from(body)))
            .unwrap_or_else(|e| panic!("{method} {path} on {}: {e}\n{}", self.ip, self.stderr()))
    }

    /// The last lines of a component's log (`GET /v1/logs/NAME`), one JSON
    /// object a line.
    pub fn logs(&self, component: &str) -> String {
        use http_body_util::BodyExt as _;
        let path = format!("/v1/logs/{component}?tail=100");
        block_on(async {
            let resp = self.client().send(Method::GET, &path, Bytes::new()).await?;
            let body = resp.into_body().collect().await.map_err(|e| {
                aether_admin::client::ClientError::Decode(format!("reading the logs: {e}"))
            })?;
            Ok::<_, aether_admin::client::ClientError>(body.to_bytes())
        })
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_else(|e| panic!("GET {path} on {}: {e}\n{}", self.ip, self.stderr()))
    }

    /// Deploys a sealed essence.
    pub fn deploy(&self, essence: Vec<u8>) -> Value {
        self.admin_json(Method::POST, "/v1/deploy", essence)
    }

    /// This node's id (`ed25519:…`).
    pub fn id(&self) -> String {
        self.members()
            .into_iter()
            .find(|m| m["is_self"] == true)
            .and_then(|m| m["id"].as_str().map(str::to_string))
            .expect("self row")
    }

    pub fn members(&self) -> Vec<Value> {
        self.admin_json(Method::GET, "/v1/nodes", Vec::new())
            .as_array()
            .cloned()
            .expect("array of members")
    }

    /// Whether this node lists every one of `ids` alive.
    pub fn sees_alive(&self, ids: &[String]) -> bool {
        let members = self.members();
        ids.iter().all(|id| {
            members
                .iter()
                .any(|m| m["id"] == id.as_str() && m["state"] == "alive")
        })
    }

    /// One HTTP/1.1 request to the ingress.
    pub fn request(&self, method: &str, path: &str, body: &[u8]) -> HttpResponse {
        try_request(self.http(), method, path, &[], body).unwrap_or_else(|e| {
            panic!(
                "{method} http://{}{path} failed: {e}\n{}",
                self.http(),
                self.stderr()
            )
        })
    }
}

/// Nodes on 127.0.0.`octets`, the first starting the lattice and the others
/// joining it with an invite; returns once every node sees every node alive.
#[allow(dead_code)]
pub fn lattice(octets: &[u8], scratch: &Path, operator: &Operator) -> Vec<Node> {
    let mut nodes: Vec<Node> = octets
        .iter()
        .map(|o| Node::new(*o, scratch, operator))
        .collect();
    nodes[0].start(&[]);
    let invite = operator.invite();
    for i in 1..nodes.len() {
        let args = join_args(&nodes[0], Some(&invite));
        nodes[i].start(&args);
    }
    let ids: Vec<String> = nodes.iter().map(Node::id).collect();
    eventually(
        "every node sees every node",
        Duration::from_secs(30),
        || nodes.iter().all(|n| n.sees_alive(&ids)),
    );
    nodes
}

/// The value of the first sample of metric `name` in Prometheus text (0
/// when absent).
#[allow(dead_code)]
pub fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// `--join SEED` plus `--invite TOKEN` when given.
pub fn join_args(seed: &Node, invite: Option<&InviteToken>) -> Vec<String> {
    let mut args = vec!["--join".to_string(), seed.mesh().to_string()];
    if let Some(token) = invite {
        args.push("--invite".into());
        args.push(token.to_text());
    }
    args
}

/// The hosts a component's status (`GET /v1/components/NAME`) gives it, in placement order
/// (none when it has no placement).
#[allow(dead_code)]
pub fn placed_hosts(status: &Value) -> Vec<String> {
    status["placement"]["hosts"]
        .as_array()
        .map(|hosts| {
            hosts
                .iter()
                .filter_map(|h| h["node"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// The names of a rollout's (or drain's) steps, in order, from its status JSON.
#[allow(dead_code)]
pub fn step_names(status: &Value) -> Vec<String> {
    status["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .filter_map(|s| s["name"].as_str().map(str::to_string))
        .collect()
}

/// Polls `check` every 100 ms until it returns true, or panics with `what`.
pub fn eventually(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) -> Duration {
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
