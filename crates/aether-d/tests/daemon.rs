//! Multi-process tests of the `aether-d` daemon: each test starts real
//! `aether-d` processes on its own loopback address (127.0.0.x, a different x
//! per test) with free ports and a temporary data directory, deploys sealed
//! essences through the signed admin API and talks HTTP to the ingress.
//!
//! Test components come from `scripts/build-fixtures.sh`
//! (`target/fixtures/*.wasm`); a missing fixture fails the test.

use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

mod common;

use aether_admin::client::{AdminClient, ClientError};
use aether_identity::SecretKey;
use bytes::Bytes;
use common::cluster::fixture;
use common::http::{HttpResponse, request, try_request};
use common::{block_on, capture};
use http::{Method, StatusCode};

const READY_TIMEOUT: Duration = Duration::from_secs(20);
const EXIT_TIMEOUT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------
// Fixtures and essences
// ---------------------------------------------------------------------------

fn manifest(text: &str) -> aether_manifest::Manifest {
    aether_manifest::parse(text, "Aetherfile")
        .unwrap_or_else(|e| panic!("test manifest does not parse: {e}\n{text}"))
}

/// An Aetherfile for `name` serving `routes`, plus `extra` TOML appended.
fn aetherfile(name: &str, routes: &[&str], extra: &str) -> String {
    let routes: Vec<String> = routes.iter().map(|r| format!("\"{r}\"")).collect();
    format!(
        "name = \"{name}\"\ncomponent = \"{name}.wasm\"\n[http]\nroutes = [{}]\n{extra}",
        routes.join(", ")
    )
}

fn seal(text: &str, wasm: &[u8], key: &SecretKey) -> Vec<u8> {
    aether_essence::seal(&manifest(text), wasm, key)
}

// ---------------------------------------------------------------------------
// Addresses
// ---------------------------------------------------------------------------

/// Ports free on `ip` right now (the kernel picks it; the listener is closed
/// before the daemon binds it, but each test uses its own address so nothing
/// else in this suite competes for it).
fn free_ports<const N: usize>(ip: Ipv4Addr) -> [u16; N] {
    // Hold all listeners at once so the ports differ.
    let listeners: Vec<TcpListener> = (0..N)
        .map(|_| {
            TcpListener::bind((ip, 0))
                .unwrap_or_else(|e| panic!("cannot bind {ip}:0 to find a free port: {e}"))
        })
        .collect();
    std::array::from_fn(|i| listeners[i].local_addr().expect("local addr").port())
}

// ---------------------------------------------------------------------------
// The daemon under test
// ---------------------------------------------------------------------------

/// What a test node needs across restarts: keys, addresses, data directory.
struct Setup {
    data: tempfile::TempDir,
    admin_key: SecretKey,
    publisher: SecretKey,
    http: SocketAddr,
    admin: SocketAddr,
}

impl Setup {
    fn new(last_octet: u8) -> Self {
        let ip = Ipv4Addr::new(127, 0, 0, last_octet);
        let [http_port, admin_port] = free_ports(ip);
        Self {
            data: tempfile::tempdir().expect("temp data dir"),
            admin_key: SecretKey::generate(),
            publisher: SecretKey::generate(),
            http: SocketAddr::from((ip, http_port)),
            admin: SocketAddr::from((ip, admin_port)),
        }
    }

    fn data_dir(&self) -> PathBuf {
        self.data.path().join("data")
    }

    /// Spawns `aether-d` for this setup without waiting for it.
    fn spawn(&self, http: SocketAddr, admin: SocketAddr, data_dir: &Path) -> Daemon {
        self.spawn_with(http, admin, data_dir, &[])
    }

    /// [`Setup::spawn`] with `extra` arguments.
    fn spawn_with(
        &self,
        http: SocketAddr,
        admin: SocketAddr,
        data_dir: &Path,
        extra: &[&str],
    ) -> Daemon {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_aether-d"));
        cmd.arg("--data-dir")
            .arg(data_dir)
            .arg("--listen")
            .arg(http.to_string())
            .arg("--admin-listen")
            .arg(admin.to_string())
            .arg("--admin-key")
            .arg(self.admin_key.public().to_string())
            .arg("--trust-publisher")
            .arg(self.publisher.public().to_string())
            .arg("--workers")
            .arg("2")
            .arg("--drain-timeout")
            .arg("10s")
            .args(extra)
            // Keep the operator's own home and settings out of the test.
            .env("ALKAHEST_HOME", self.data.path().join("home"))
            .env_remove("AETHER_DATA_DIR")
            .env("AETHER_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawning aether-d");
        let stdout = capture(child.stdout.take().expect("stdout pipe"));
        let stderr = capture(child.stderr.take().expect("stderr pipe"));
        Daemon {
            child,
            http,
            admin,
            admin_key: self.admin_key.clone(),
            stdout,
            stderr,
        }
    }

    /// Starts `aether-d` and waits until its admin API answers `/healthz`.
    fn start(&self) -> Daemon {
        self.start_with(&[])
    }

    /// Starts `aether-d` with `extra` arguments and waits until it is ready.
    fn start_with(&self, extra: &[&str]) -> Daemon {
        let mut d = self.spawn_with(self.http, self.admin, &self.data_dir(), extra);
        d.wait_ready();
        d
    }
}

/// A running `aether-d`, SIGKILLed when dropped so a failing test leaves no
/// process behind.
struct Daemon {
    child: Child,
    http: SocketAddr,
    admin: SocketAddr,
    admin_key: SecretKey,
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

impl Daemon {
    fn stderr(&self) -> String {
        self.stderr
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn stdout(&self) -> String {
        self.stdout
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn output(&self) -> String {
        format!(
            "--- aether-d stdout ---\n{}--- aether-d stderr ---\n{}",
            self.stdout(),
            self.stderr()
        )
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "aether-d exited before becoming ready ({status})\n{}",
                    self.output()
                );
            }
            if let Ok(resp) = try_request(self.admin, "GET", "/healthz", &[], b"")
                && resp.status == 200
            {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "aether-d did not answer /healthz on {} within {READY_TIMEOUT:?}\n{}",
                    self.admin,
                    self.output()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .expect("running kill");
        assert!(status.success(), "kill {sig} failed");
    }

    /// Waits for the process to exit on its own, panicking after `timeout`.
    fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            if Instant::now() > deadline {
                panic!(
                    "aether-d did not exit within {timeout:?}\n{}",
                    self.output()
                );
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// SIGTERM, then wait for a clean exit.
    fn terminate(&mut self) -> ExitStatus {
        self.signal("-TERM");
        self.wait_exit(EXIT_TIMEOUT)
    }

    /// Waits until the daemon's stderr contains `needle` (log lines are
    /// read on another thread, so they may arrive a moment late).
    fn wait_stderr(&self, needle: &str) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !self.stderr().contains(needle) {
            if Instant::now() > deadline {
                panic!(
                    "aether-d stderr never contained {needle:?}\n{}",
                    self.output()
                );
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    fn client(&self) -> AdminClient {
        AdminClient::new(self.admin, self.admin_key.clone())
    }

    fn admin_json(
        &self,
        method: Method,
        path: &str,
        body: Vec<u8>,
    ) -> Result<serde_json::Value, ClientError> {
        block_on(self.client().json(method, path, Bytes::from(body)))
    }

    fn deploy(&self, essence: Vec<u8>) -> Result<serde_json::Value, ClientError> {
        self.admin_json(Method::POST, "/v1/deploy", essence)
    }

    fn deploy_ok(&self, essence: Vec<u8>) -> serde_json::Value {
        self.deploy(essence)
            .unwrap_or_else(|e| panic!("deploy failed: {e}\n{}", self.output()))
    }

    fn status(&self) -> serde_json::Value {
        self.admin_json(Method::GET, "/v1/status", Vec::new())
            .unwrap_or_else(|e| panic!("GET /v1/status failed: {e}\n{}", self.output()))
    }

    fn component_names(&self) -> Vec<String> {
        self.status()["components"]
            .as_array()
            .expect("components array")
            .iter()
            .map(|c| c["name"].as_str().expect("name").to_string())
            .collect()
    }

    fn get(&self, path: &str) -> HttpResponse {
        request(self.http, "GET", path, &[], b"")
    }
}

/// The status and message of a refused admin request.
fn api_error(result: Result<serde_json::Value, ClientError>) -> (StatusCode, String) {
    match result {
        Err(ClientError::Api { status, message }) => (status, message),
        other => panic!("expected the node to refuse the request, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

#[test]
fn serves_a_deployed_component_and_404s_unrouted_paths() {
    let setup = Setup::new(11);
    let node = setup.start();
    let probe = fixture("probe");

    // The node created its identity key on first start, readable only by its owner.
    let key = setup.data_dir().join("node.key");
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&key)
            .expect("node.key exists")
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);

    let deployed = node.deploy_ok(seal(
        &aetherfile("probe", &["/"], ""),
        &probe,
        &setup.publisher,
    ));
    assert_eq!(deployed["replaced"], false);
    assert_eq!(deployed["component"]["name"], "probe");

    let resp = node.get("/");
    assert_eq!(
        (resp.status, resp.body.as_str()),
        (200, "probe ok"),
        "{resp:?}"
    );
    let echo = request(node.http, "POST", "/echo", &[], b"ping through the node");
    assert_eq!(echo.status, 200, "{echo:?}");
    assert_eq!(echo.body, "ping through the node");
    let unknown_to_probe = node.get("/no-such-probe-route");
    assert_eq!(unknown_to_probe.status, 404, "{unknown_to_probe:?}");

    // Redeploy the same name serving only `/only`: everything else is unrouted.
    let replaced = node.deploy_ok(seal(
        &aetherfile("probe", &["/only"], ""),
        &probe,
        &setup.publisher,
    ));
    assert_eq!(replaced["replaced"], true);
    for path in ["/", "/other", "/onlyx"] {
        let resp = node.get(path);
        assert_eq!(resp.status, 404, "GET {path}: {resp:?}");
        assert!(
            resp.body.contains("no component serves"),
            "GET {path} should be refused by the node's router: {resp:?}"
        );
    }
    // `/only` reaches the component (which itself knows no such route).
    let resp = node.get("/only");
    assert_eq!(resp.status, 404, "{resp:?}");
    assert!(!resp.body.contains("no component serves"), "{resp:?}");
}

#[test]
fn admin_api_refuses_unsigned_wrongly_signed_and_replayed_requests() {
    let setup = Setup::new(12);
    let node = setup.start();
    let essence = seal(
        &aetherfile("probe", &["/"], ""),
        &fixture("probe"),
        &setup.publisher,
    );

    // No signature at all.
    let resp = request(node.admin, "GET", "/v1/status", &[], b"");
    assert_eq!(resp.status, 401, "{resp:?}");
    assert!(resp.body.contains("not signed"), "{resp:?}");
    let resp = request(node.admin, "POST", "/v1/deploy", &[], &essence);
    assert_eq!(resp.status, 401, "{resp:?}");
    assert!(
        node.component_names().is_empty(),
        "an unsigned deploy changed the node"
    );
    assert_eq!(node.get("/").status, 404);

    // Signed by a key the node does not trust.
    let stranger = AdminClient::new(node.admin, SecretKey::generate());
    let (status, message) = api_error(block_on(stranger.json(
        Method::GET,
        "/v1/status",
        Bytes::new(),
    )));
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{message}");
    assert!(message.contains("not an admin key"), "{message}");
    let (status, _) = api_error(block_on(stranger.json(
        Method::POST,
        "/v1/deploy",
        Bytes::from(essence.clone()),
    )));
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(node.component_names().is_empty());

    // A correctly signed request, captured and sent again verbatim.
    let headers = aether_admin::auth::sign(&setup.admin_key, "POST", "/v1/deploy", &essence);
    let first = request(node.admin, "POST", "/v1/deploy", &headers, &essence);
    assert_eq!(first.status, 200, "{first:?}");
    let replay = request(node.admin, "POST", "/v1/deploy", &headers, &essence);
    assert_eq!(replay.status, 401, "{replay:?}");
    assert!(replay.body.contains("replayed"), "{replay:?}");
    // The same holds for reads.
    let headers = aether_admin::auth::sign(&setup.admin_key, "GET", "/v1/status", b"");
    assert_eq!(
        request(node.admin, "GET", "/v1/status", &headers, b"").status,
        200
    );
    assert_eq!(
        request(node.admin, "GET", "/v1/status", &headers, b"").status,
        401
    );
    // A signature for one path does not authorise another.
    let headers = aether_admin::auth::sign(&setup.admin_key, "GET", "/v1/status", b"");
    let other = request(node.admin, "GET", "/v1/components/probe", &headers, b"");
    assert_eq!(other.status, 401, "{other:?}");

    assert_eq!(node.component_names(), ["probe"]);
}

#[test]
fn deploy_refuses_bad_essences_and_components_with_clear_messages() {
    let setup = Setup::new(13);
    let node = setup.start();
    let text = aetherfile("probe", &["/"], "");
    let probe = fixture("probe");

    // Tampered: one byte of the component (the essence's last part) flipped.
    let mut tampered = seal(&text, &probe, &setup.publisher);
    let at = tampered.len() - probe.len() / 2;
    tampered[at] ^= 0x01;
    let (status, message) = api_error(node.deploy(tampered));
    assert_eq!(status, StatusCode::BAD_REQUEST, "{message}");
    assert!(message.contains("tampered"), "{message}");

    // Signed by a publisher this node does not trust.
    let stranger = SecretKey::generate();
    let (status, message) = api_error(node.deploy(seal(&text, &probe, &stranger)));
    assert_eq!(status, StatusCode::FORBIDDEN, "{message}");
    assert!(
        message.contains(&stranger.public().to_string()),
        "{message}"
    );
    assert!(message.contains("not trusted"), "{message}");

    // Not signed at all.
    let unsigned = aether_essence::seal_unsigned_for_tests(&manifest(&text), &probe);
    let (status, message) = api_error(node.deploy(unsigned));
    assert_eq!(status, StatusCode::BAD_REQUEST, "{message}");
    assert!(message.contains("unsigned"), "{message}");

    // Not an essence.
    let (status, message) = api_error(node.deploy(probe.clone()));
    assert_eq!(status, StatusCode::BAD_REQUEST, "{message}");
    assert!(message.contains("not an essence"), "{message}");

    // Properly sealed, but the component is not WebAssembly.
    let (status, message) =
        api_error(node.deploy(seal(&text, b"#!/bin/sh\necho not wasm\n", &setup.publisher)));
    assert_eq!(status, StatusCode::BAD_REQUEST, "{message}");
    assert!(message.contains("not a WebAssembly file"), "{message}");

    // A core module rather than a component.
    let (status, message) =
        api_error(node.deploy(seal(&text, b"\0asm\x01\0\0\0", &setup.publisher)));
    assert_eq!(status, StatusCode::BAD_REQUEST, "{message}");
    assert!(message.contains("core WebAssembly module"), "{message}");
    assert!(message.contains("wasm32-wasip2"), "{message}");

    // A component importing an interface the node does not provide.
    let (status, message) = api_error(node.deploy(seal(
        &aetherfile("needy", &["/"], ""),
        &fixture("missing-import"),
        &setup.publisher,
    )));
    assert_eq!(status, StatusCode::BAD_REQUEST, "{message}");
    assert!(message.contains("acme:missing/thing@1.0.0"), "{message}");

    assert!(
        node.component_names().is_empty(),
        "a refused deploy changed the node"
    );
    assert_eq!(node.get("/").status, 404);
    assert!(
        !setup.data_dir().join("essences/probe.essence").exists()
            && !setup.data_dir().join("essences/needy.essence").exists(),
        "a refused essence was stored"
    );
}

/// Deploys `middle` on `/`, then `newcomer` on `/` too, which must be refused
/// with 409 naming `middle` and change nothing.
fn assert_conflict_names_owner(last_octet: u8, newcomer: &str) {
    let setup = Setup::new(last_octet);
    let node = setup.start();
    let probe = fixture("probe");
    node.deploy_ok(seal(
        &aetherfile("middle", &["/"], ""),
        &probe,
        &setup.publisher,
    ));

    let (status, message) = api_error(node.deploy(seal(
        &aetherfile(newcomer, &["/"], ""),
        &probe,
        &setup.publisher,
    )));
    assert_eq!(status, StatusCode::CONFLICT, "{newcomer}: {message}");
    assert!(
        message.contains("already served by `middle`"),
        "deploying `{newcomer}` should name the owner `middle`: {message}"
    );
    assert_eq!(node.component_names(), ["middle"]);
    assert_eq!(node.get("/").body, "probe ok");
}

#[test]
fn conflicting_routes_are_refused_naming_the_owner() {
    assert_conflict_names_owner(14, "zulu");
}

/// The conflict names the deployment that had the route, even when the
/// newcomer's name sorts first.
#[test]
fn conflicting_routes_name_the_owner_when_the_newcomer_sorts_first() {
    assert_conflict_names_owner(20, "alpha");
}

#[test]
fn restart_restores_deployments_from_the_compile_cache() {
    let setup = Setup::new(15);
    let mut node = setup.start();
    let deployed = node.deploy_ok(seal(
        &aetherfile("probe", &["/"], ""),
        &fixture("probe"),
        &setup.publisher,
    ));
    let hash = deployed["component"]["content_hash"].clone();
    assert_eq!(node.get("/").body, "probe ok");

    let status = node.terminate();
    assert!(
        status.success(),
        "first run exited with {status}\n{}",
        node.output()
    );
    drop(node);

    let node = setup.start();
    let resp = node.get("/");
    assert_eq!(
        (resp.status, resp.body.as_str()),
        (200, "probe ok"),
        "{resp:?}"
    );
    let c = node
        .admin_json(Method::GET, "/v1/components/probe", Vec::new())
        .unwrap_or_else(|e| panic!("GET /v1/components/probe: {e}\n{}", node.output()));
    assert_eq!(c["compile_cache"], "hit", "{c:#}");
    assert_eq!(c["content_hash"], hash);
    assert!(
        node.stderr().contains("restored 1 deployment"),
        "{}",
        node.output()
    );
}

/// The files at the top of a data directory's compile cache (compiled code, leftovers).
fn cache_files(data_dir: &Path) -> Vec<String> {
    std::fs::read_dir(data_dir.join("compile-cache"))
        .map(|dir| {
            dir.filter_map(|e| e.ok())
                .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn components_compile_in_a_worker_process_into_a_cache_named_by_target() {
    let setup = Setup::new(24);
    let node = setup.start();
    let deployed = node.deploy_ok(seal(
        &aetherfile("probe", &["/"], ""),
        &fixture("probe"),
        &setup.publisher,
    ));
    assert_eq!(node.get("/").body, "probe ok");
    node.wait_stderr("compiled in a worker process");
    assert!(
        !node.stderr().contains("instead of a worker"),
        "{}",
        node.output()
    );
    // One file, named by content, architecture and OS; no leftovers of the worker.
    let hash = deployed["component"]["content_hash"]
        .as_str()
        .expect("content hash")
        .to_string();
    let prefix = format!(
        "{hash}-{}-{}-",
        std::env::consts::ARCH,
        std::env::consts::OS
    );
    let files = cache_files(&setup.data_dir());
    assert!(
        files.len() == 1 && files[0].starts_with(&prefix) && files[0].ends_with(".cwasm"),
        "{files:?}"
    );
    // The component's bytes are kept on disk beside it, not in the node's memory.
    let kept = setup
        .data_dir()
        .join(format!("compile-cache/wasm/{hash}.wasm"));
    assert_eq!(
        std::fs::read(&kept).map(|b| b.len()).ok(),
        Some(fixture("probe").len())
    );

    // A component the compiler refuses is refused through the worker, with its reason.
    let (status, message) = api_error(node.deploy(seal(
        &aetherfile("broken", &["/broken"], ""),
        &fixture("probe")[..fixture("probe").len() / 2],
        &setup.publisher,
    )));
    assert_eq!(status, StatusCode::BAD_REQUEST, "{message}");
    assert_eq!(cache_files(&setup.data_dir()).len(), 1);

    // `--compile-in-process` keeps the compiler in the node, and serves the same.
    let other = Setup::new(25);
    let node = other.start_with(&["--compile-in-process"]);
    node.deploy_ok(seal(
        &aetherfile("probe", &["/"], ""),
        &fixture("probe"),
        &other.publisher,
    ));
    assert_eq!(node.get("/").body, "probe ok");
    assert!(
        !node.stderr().contains("compiled in a worker process"),
        "{}",
        node.output()
    );
    assert_eq!(cache_files(&other.data_dir()).len(), 1);
}

#[test]
fn sigterm_drains_in_flight_requests_and_exits_cleanly() {
    let setup = Setup::new(16);
    let mut node = setup.start();
    node.deploy_ok(seal(
        &aetherfile("probe", &["/"], ""),
        &fixture("probe"),
        &setup.publisher,
    ));
    assert_eq!(node.get("/").status, 200);

    let http = node.http;
    let started = Instant::now();
    let slow = std::thread::spawn(move || try_request(http, "GET", "/sleep?ms=1500", &[], b""));
    // Let the request reach the component before asking the node to stop.
    std::thread::sleep(Duration::from_millis(400));
    node.signal("-TERM");

    let resp = slow.join().expect("request thread").unwrap_or_else(|e| {
        panic!(
            "in-flight request failed during drain: {e}\n{}",
            node.output()
        )
    });
    assert_eq!(resp.status, 200, "{resp:?}");
    assert!(resp.body.contains("slept"), "{resp:?}");
    assert!(started.elapsed() >= Duration::from_millis(1500));

    let status = node.wait_exit(Duration::from_secs(5));
    assert_eq!(status.code(), Some(0), "{}", node.output());
    // Once stopped, nothing listens on the ingress.
    assert!(TcpStream::connect_timeout(&http, Duration::from_secs(1)).is_err());
}

#[test]
fn a_second_daemon_on_a_taken_address_fails_clearly() {
    let setup = Setup::new(17);
    let _first = setup.start();
    let other_data = setup.data.path().join("other-data");
    let ip = Ipv4Addr::new(127, 0, 0, 17);
    let [admin_port] = free_ports(ip);
    let mut second = setup.spawn(setup.http, SocketAddr::from((ip, admin_port)), &other_data);
    let status = second.wait_exit(READY_TIMEOUT);
    assert!(
        !status.success(),
        "second aether-d should fail\n{}",
        second.output()
    );
    // The reader thread may still be collecting the last lines.
    second.wait_stderr("already in use");
    assert!(
        second.stderr().contains(&setup.http.to_string()),
        "{}",
        second.output()
    );
}

#[test]
fn metrics_are_public_and_cover_requests_instances_and_cache() {
    let setup = Setup::new(18);
    let node = setup.start();
    node.deploy_ok(seal(
        &aetherfile("probe", &["/"], ""),
        &fixture("probe"),
        &setup.publisher,
    ));
    for _ in 0..3 {
        assert_eq!(node.get("/").status, 200);
    }
    let resp = request(node.admin, "GET", "/metrics", &[], b"");
    assert_eq!(resp.status, 200, "{resp:?}");
    for name in [
        "aether_component_requests_total",
        "aether_component_request_duration_seconds",
        "aether_compile_cache_hits",
        "aether_component_instances",
        "aether_component_cold_start_seconds",
    ] {
        assert!(
            resp.body.contains(name),
            "/metrics lacks {name}:\n{}",
            resp.body
        );
    }
    assert!(
        resp.body
            .lines()
            .any(|l| l.starts_with("aether_component_requests_total{")
                && l.contains("probe")
                && !l.ends_with(" 0")),
        "no request count for probe:\n{}",
        resp.body
    );
}

#[test]
fn traps_and_runaway_loops_are_contained_and_logged() {
    let setup = Setup::new(19);
    let node = setup.start();
    node.deploy_ok(seal(
        &aetherfile("probe", &["/"], "[limits]\ntimeout = \"1s\"\n"),
        &fixture("probe"),
        &setup.publisher,
    ));

    let trap = node.get("/trap");
    assert_eq!(trap.status, 500, "{trap:?}");
    node.wait_stderr("component `probe` trapped");
    assert_eq!(
        node.get("/").body,
        "probe ok",
        "the node must survive a trap"
    );

    let http = node.http;
    let looping = std::thread::spawn(move || {
        let started = Instant::now();
        let resp = try_request(http, "GET", "/loop", &[], b"");
        (resp, started.elapsed())
    });
    std::thread::sleep(Duration::from_millis(200));
    // While one instance spins, the node keeps answering others promptly.
    for _ in 0..5 {
        let started = Instant::now();
        let resp = node.get("/");
        let took = started.elapsed();
        assert_eq!(resp.body, "probe ok", "{resp:?}");
        assert!(
            took < Duration::from_millis(500),
            "GET / took {took:?} during the loop"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let (resp, took) = looping.join().expect("loop thread");
    let resp = resp.unwrap_or_else(|e| panic!("GET /loop failed: {e}\n{}", node.output()));
    assert_eq!(resp.status, 504, "{resp:?}");
    assert!(
        took < Duration::from_secs(10),
        "the 1 s deadline took {took:?}"
    );
    node.wait_stderr("component `probe` stopped: request deadline exceeded");
    assert_eq!(node.get("/").body, "probe ok");
}

#[test]
fn a_min_zero_component_scales_to_zero_and_the_first_request_activates_it() {
    let setup = Setup::new(21);
    let node = setup.start();
    node.deploy_ok(seal(
        &aetherfile(
            "sleepy",
            &["/"],
            "[intent]\nreplicas = { min = 0, max = 1 }\nidle_timeout = \"1s\"\n",
        ),
        &fixture("hello"),
        &setup.publisher,
    ));
    assert_eq!(node.get("/").status, 200);
    let state = || {
        node.admin_json(Method::GET, "/v1/components/sleepy", Vec::new())
            .expect("status")["state"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while state() != "scaled-to-zero" {
        assert!(Instant::now() < deadline, "never scaled to zero");
        std::thread::sleep(Duration::from_millis(100));
    }
    // The first request waits for the activation (compiled code cached) and succeeds.
    let started = Instant::now();
    let resp = node.get("/");
    let took = started.elapsed();
    assert_eq!(
        (resp.status, resp.body.as_str()),
        (200, "Hello from Aether!\n")
    );
    assert_eq!(state(), "running");
    eprintln!("activation from zero, first request: {took:?}");
}
