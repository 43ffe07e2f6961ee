//! The `alkahest` CLI as a user runs it: real processes, each test with its
//! own `ALKAHEST_HOME` and its own ports.
//!
//! Test components come from `scripts/build-fixtures.sh`
//! (`target/fixtures/*.wasm`); a missing fixture fails the test.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long `alkahest up` may take to print its `Serving` line for small components.
const UP_TIMEOUT: Duration = Duration::from_secs(30);
/// The Python component is ~18 MB and compiles slowly the first time.
const UP_TIMEOUT_PYTHON: Duration = Duration::from_secs(120);
const EXIT_TIMEOUT: Duration = Duration::from_secs(10);

const CONTRACT_AETHERFILE: &str =
    "name = \"x\"\ncomponent = \"x.wasm\"\n[http]\nroutes = [\"/\"]\n";

fn fixture_path(name: &str) -> PathBuf {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../target/fixtures")
        .join(format!("{name}.wasm"));
    assert!(
        path.is_file(),
        "test fixture {} is missing; run scripts/build-fixtures.sh first",
        path.display()
    );
    path
}

/// Ports free on 127.0.0.1 right now (all held at once, so they differ).
fn free_ports<const N: usize>() -> [u16; N] {
    let listeners: Vec<TcpListener> = (0..N)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("binding 127.0.0.1:0"))
        .collect();
    std::array::from_fn(|i| listeners[i].local_addr().expect("local addr").port())
}

fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// An `alkahest` command with `home` as its ALKAHEST_HOME and nothing of the
/// operator's environment that could point it elsewhere.
fn alkahest(home: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_alkahest"));
    cmd.env("ALKAHEST_HOME", home)
        .env_remove("ALKAHEST_NODE")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null());
    cmd
}

/// Runs a short command to completion.
fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().expect("running alkahest");
    eprintln!(
        "$ {cmd:?}\n--- stdout ---\n{}--- stderr ---\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn lattice_init(home: &Path) -> Output {
    let out = run(alkahest(home).args(["lattice", "init"]));
    assert!(
        out.status.success(),
        "lattice init failed: {}",
        stderr(&out)
    );
    out
}

/// A project directory holding the contract Aetherfile and `fixture` as x.wasm.
fn project(dir: &Path, fixture: &str) {
    std::fs::create_dir_all(dir).expect("project dir");
    std::fs::write(dir.join("Aetherfile"), CONTRACT_AETHERFILE).expect("writing Aetherfile");
    std::fs::copy(fixture_path(fixture), dir.join("x.wasm")).expect("copying the fixture");
}

/// A running `alkahest up`, SIGKILLed when dropped so a failing test leaves
/// no process behind.
struct Up {
    child: Child,
    lines: Receiver<String>,
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
}

impl Drop for Up {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

fn collect(
    pipe: impl std::io::Read + Send + 'static,
    lines: Option<std::sync::mpsc::Sender<String>>,
) -> Arc<Mutex<String>> {
    let all = Arc::new(Mutex::new(String::new()));
    let sink = all.clone();
    std::thread::spawn(move || {
        let mut reader = BufReader::new(pipe);
        let mut line = String::new();
        loop {
            line.clear();
            match reader.read_line(&mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    sink.lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push_str(&line);
                    if let Some(tx) = &lines {
                        let _ = tx.send(line.trim_end().to_string());
                    }
                }
            }
        }
    });
    all
}

impl Up {
    /// Spawns `alkahest up DIR --listen LISTEN [--admin-listen ADMIN]`.
    fn spawn(home: &Path, dir: &Path, listen: SocketAddr, admin: Option<SocketAddr>) -> Self {
        let mut extra = Vec::new();
        if let Some(admin) = admin {
            extra = vec!["--admin-listen".to_string(), admin.to_string()];
        }
        Self::spawn_with(home, dir, listen, &extra)
    }

    /// Spawns `alkahest up DIR --listen LISTEN EXTRA...`.
    fn spawn_with(home: &Path, dir: &Path, listen: SocketAddr, extra: &[String]) -> Self {
        let mut cmd = alkahest(home);
        cmd.arg("up")
            .arg(dir)
            .arg("--listen")
            .arg(listen.to_string())
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawning alkahest up");
        let (tx, lines) = channel();
        let stdout = collect(child.stdout.take().expect("stdout pipe"), Some(tx));
        let stderr = collect(child.stderr.take().expect("stderr pipe"), None);
        Self {
            child,
            lines,
            stdout,
            stderr,
        }
    }

    fn output(&self) -> String {
        format!(
            "--- alkahest up stdout ---\n{}--- alkahest up stderr ---\n{}",
            self.stdout.lock().unwrap_or_else(|p| p.into_inner()),
            self.stderr.lock().unwrap_or_else(|p| p.into_inner())
        )
    }

    fn stderr(&self) -> String {
        self.stderr
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Waits for the `Serving NAME at http://...` line and returns it.
    fn wait_serving(&mut self, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self
                .lines
                .recv_timeout(left.min(Duration::from_millis(200)))
            {
                Ok(line) if line.starts_with("Serving ") => return line,
                Ok(_) => {}
                Err(RecvTimeoutError::Timeout) => {
                    if let Ok(Some(status)) = self.child.try_wait() {
                        panic!(
                            "alkahest up exited ({status}) before serving\n{}",
                            self.output()
                        );
                    }
                    if left.is_zero() {
                        panic!(
                            "alkahest up did not print `Serving` within {timeout:?}\n{}",
                            self.output()
                        );
                    }
                }
                Err(RecvTimeoutError::Disconnected) => {
                    let status = self.wait_exit(EXIT_TIMEOUT);
                    panic!(
                        "alkahest up closed stdout ({status}) before serving\n{}",
                        self.output()
                    );
                }
            }
        }
    }

    fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .expect("running kill");
        assert!(status.success(), "kill {sig} failed");
    }

    fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            if Instant::now() > deadline {
                panic!(
                    "alkahest up did not exit within {timeout:?}\n{}",
                    self.output()
                );
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// Waits until stderr contains `needle` (read on another thread).
    fn wait_stderr(&self, needle: &str) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !self.stderr().contains(needle) {
            if Instant::now() > deadline {
                panic!(
                    "alkahest up stderr never contained {needle:?}\n{}",
                    self.output()
                );
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }
}

/// A blocking `GET` with `Connection: close`; returns status and body.
fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("connecting to {addr}: {e}"));
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("read timeout");
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .expect("sending the request");
    let mut raw = Vec::new();
    stream
        .read_to_end(&mut raw)
        .unwrap_or_else(|e| panic!("reading the answer to GET {path}: {e}"));
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("malformed response: {}", String::from_utf8_lossy(&raw)));
    let head = String::from_utf8_lossy(&raw[..end]).to_ascii_lowercase();
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head}"));
    let mut body = raw[end + 4..].to_vec();
    if head.contains("transfer-encoding: chunked") {
        body = dechunk(&body);
    }
    (status, String::from_utf8_lossy(&body).into_owned())
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let eol = data
            .windows(2)
            .position(|w| w == b"\r\n")
            .expect("chunk size line");
        let size_text = String::from_utf8_lossy(&data[..eol]);
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .expect("chunk size");
        data = &data[eol + 2..];
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&data[..size]);
        data = &data[size + 2..];
    }
}

#[cfg(unix)]
fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

/// The contract: init, `up` a directory, reach it, inspect it, stop it.
#[test]
fn contract_lattice_init_up_status_logs_and_ctrl_c() {
    let dir = tempfile::tempdir().expect("tempdir");
    let dir = dir.path();
    let [port] = free_ports();
    let listen = local(port);

    lattice_init(dir);
    project(dir, "hello");
    // No --admin-listen: `up` prefers 7070 and falls back to a free port.
    let mut up = Up::spawn(dir, dir, listen, None);
    let serving = up.wait_serving(UP_TIMEOUT);
    assert!(
        serving.starts_with(&format!("Serving x at http://{listen}/")),
        "{serving}"
    );

    assert_eq!(get(listen, "/"), (200, "Hello from Aether!\n".to_string()));

    // `up` recorded its admin address, so no --node is needed.
    let node_file = std::fs::read_to_string(dir.join("node")).expect("ALKAHEST_HOME/node");
    assert!(
        node_file.trim().parse::<SocketAddr>().is_ok(),
        "{node_file:?}"
    );

    let out = run(alkahest(dir).args(["status", "--json"]));
    assert!(out.status.success(), "status failed: {}", stderr(&out));
    let status: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("status --json prints JSON");
    let names: Vec<&str> = status["components"]
        .as_array()
        .expect("components")
        .iter()
        .filter_map(|c| c["name"].as_str())
        .collect();
    assert_eq!(names, ["x"], "{status:#}");
    assert_eq!(status["http_addr"], listen.to_string());
    assert_eq!(status["components"][0]["requests"], 1, "{status:#}");

    let out = run(alkahest(dir).args(["logs", "x"]));
    assert!(out.status.success(), "logs failed: {}", stderr(&out));
    assert!(stdout(&out).contains("activated x"), "{}", stdout(&out));

    // `nodes --json`: a JSON array with the contract's fields; a node alone
    // lists itself.
    let out = run(alkahest(dir).args(["nodes", "--json"]));
    assert!(out.status.success(), "nodes failed: {}", stderr(&out));
    let nodes: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("nodes --json prints JSON");
    let rows = nodes.as_array().expect("an array");
    assert_eq!(rows.len(), 1, "{nodes:#}");
    for field in ["id", "state", "region", "rtt_ms"] {
        assert!(rows[0].get(field).is_some(), "no {field} in {nodes:#}");
    }
    assert_eq!(rows[0]["state"], "alive");
    assert_eq!(rows[0]["is_self"], true);

    // The lattice state: put, get (raw and JSON), list, history, delete.
    let out = run(alkahest(dir).args(["kv", "put", "app", "greeting", "hello"]));
    assert!(out.status.success(), "kv put failed: {}", stderr(&out));
    let out = run(alkahest(dir).args(["kv", "put", "app", "greeting", "hello again"]));
    assert!(out.status.success(), "kv put failed: {}", stderr(&out));
    let out = run(alkahest(dir).args(["kv", "get", "app", "greeting"]));
    assert_eq!(stdout(&out), "hello again", "{}", stderr(&out));
    let out = run(alkahest(dir).args(["kv", "get", "app", "greeting", "--json"]));
    let entry: serde_json::Value = serde_json::from_slice(&out.stdout).expect("kv get --json");
    assert_eq!(entry["value"], "hello again");
    assert_eq!(entry["origin"], rows[0]["id"]);
    let out = run(alkahest(dir).args(["kv", "history", "app", "greeting", "--json"]));
    let history: serde_json::Value = serde_json::from_slice(&out.stdout).expect("history");
    assert_eq!(history.as_array().map(Vec::len), Some(2), "{history:#}");
    let out = run(alkahest(dir).args(["kv", "list", "app", "--json"]));
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).expect("list");
    assert_eq!(list.as_array().map(Vec::len), Some(1), "{list:#}");
    let out = run(alkahest(dir).args(["kv", "del", "app", "greeting"]));
    assert!(out.status.success(), "kv del failed: {}", stderr(&out));
    let out = run(alkahest(dir).args(["kv", "get", "app", "greeting"]));
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("no entry `greeting`"),
        "{}",
        stderr(&out)
    );
    let mut put = alkahest(dir)
        .args(["kv", "put", "app", "big", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn kv put");
    {
        use std::io::Write as _;
        let mut stdin = put.stdin.take().expect("stdin");
        stdin
            .write_all(&vec![b'x'; 600 * 1024])
            .expect("write value");
    }
    let out = put.wait_with_output().expect("kv put");
    assert!(!out.status.success());
    assert!(stderr(&out).contains("over the limit"), "{}", stderr(&out));

    // Revoking needs a lattice; a node alone says so.
    let id = rows[0]["id"].as_str().expect("id").to_string();
    let out = run(alkahest(dir).args(["revoke", &id]));
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("not in a lattice"),
        "{}",
        stderr(&out)
    );

    up.signal("-INT");
    let status = up.wait_exit(EXIT_TIMEOUT);
    assert_eq!(status.code(), Some(0), "{}", up.output());
    up.wait_stderr("Stopped");
    TcpListener::bind(listen).unwrap_or_else(|e| panic!("port still taken after Ctrl-C: {e}"));
    assert!(!dir.join("node").exists(), "`up` left its node file behind");
}

#[test]
fn lattice_init_writes_private_keys_and_is_idempotent() {
    let home = tempfile::tempdir().expect("tempdir");
    let home = home.path().join("home");
    let out = run(alkahest(&home).args(["lattice", "init", "--json"]));
    assert!(out.status.success(), "{}", stderr(&out));
    let first: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(first["created"], true);

    let keys = ["root.key", "publisher.key"];
    let before: Vec<Vec<u8>> = keys
        .iter()
        .map(|k| std::fs::read(home.join(k)).expect("key file"))
        .collect();
    #[cfg(unix)]
    for k in keys {
        assert_eq!(mode(&home.join(k)), 0o600, "{k}");
    }

    let out = run(alkahest(&home).args(["lattice", "init", "--json"]));
    assert!(out.status.success(), "{}", stderr(&out));
    let second: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(second["created"], false);
    assert_eq!(second["root"], first["root"]);
    assert_eq!(second["publisher"], first["publisher"]);
    assert_ne!(first["root"], first["publisher"]);
    for (k, old) in keys.iter().zip(&before) {
        assert_eq!(
            &std::fs::read(home.join(k)).expect("key file"),
            old,
            "{k} changed"
        );
        #[cfg(unix)]
        assert_eq!(mode(&home.join(k)), 0o600, "{k}");
    }
    let out = run(alkahest(&home).args(["lattice", "init"]));
    assert!(stdout(&out).contains("Found existing"), "{}", stdout(&out));
}

#[test]
fn malformed_aetherfiles_fail_with_located_errors_and_hints() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let home = tmp.path().join("home");
    lattice_init(&home);
    let [port, admin_port] = free_ports();

    let dir = tmp.path().join("unitless");
    project(&dir, "hello");
    std::fs::write(
        dir.join("Aetherfile"),
        "name = \"x\"\ncomponent = \"x.wasm\"\n[limits]\nmemory = 64\n",
    )
    .expect("Aetherfile");
    let up = run(alkahest(&home)
        .arg("up")
        .arg(&dir)
        .args(["--listen", &local(port).to_string()])
        .args(["--admin-listen", &local(admin_port).to_string()]));
    let seal = run(alkahest(&home).arg("seal").arg(&dir));
    for (what, out) in [("up", &up), ("seal", &seal)] {
        assert!(
            !out.status.success(),
            "`alkahest {what}` accepted `memory = 64`"
        );
        let err = stderr(out);
        assert!(
            err.contains("Aetherfile:4:"),
            "{what}: no location in\n{err}"
        );
        assert!(
            err.contains("unit"),
            "{what}: no hint about units in\n{err}"
        );
        assert!(
            err.contains("MiB") || err.contains("MB"),
            "{what}: no unit example in\n{err}"
        );
    }
    assert!(!dir.join("x.essence").exists());
    TcpListener::bind(local(port)).expect("a refused `up` must not keep its port");

    let dir = tmp.path().join("typo");
    project(&dir, "hello");
    std::fs::write(
        dir.join("Aetherfile"),
        "name = \"x\"\ncomponent = \"x.wasm\"\n[http]\nroutez = [\"/\"]\n",
    )
    .expect("Aetherfile");
    for sub in ["seal", "up"] {
        let out = run(alkahest(&home).arg(sub).arg(&dir).args(if sub == "up" {
            vec!["--listen".to_string(), local(port).to_string()]
        } else {
            vec![]
        }));
        assert!(!out.status.success(), "`alkahest {sub}` accepted `routez`");
        let err = stderr(&out);
        assert!(
            err.contains("Aetherfile:4:"),
            "{sub}: no location in\n{err}"
        );
        assert!(err.contains("routez"), "{sub}: {err}");
        assert!(err.contains("did you mean `routes`"), "{sub}: {err}");
    }
}

fn serves_fixture(fixture: &str, expected: &str, timeout: Duration) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let home = tmp.path().join("home");
    let dir = tmp.path().join("project");
    project(&dir, fixture);
    let [port, admin_port] = free_ports();
    let listen = local(port);
    // `up` creates the lattice keys itself when there are none.
    let mut up = Up::spawn(&home, &dir, listen, Some(local(admin_port)));
    up.wait_serving(timeout);
    assert_eq!(
        get(listen, "/"),
        (200, expected.to_string()),
        "{}",
        up.output()
    );
    assert!(home.join("root.key").exists());
    up.signal("-TERM");
    let status = up.wait_exit(EXIT_TIMEOUT);
    assert_eq!(status.code(), Some(0), "{}", up.output());
}

#[test]
fn up_serves_a_wstd_component() {
    serves_fixture("hello-wstd", "Hello from wstd!\n", UP_TIMEOUT);
}

#[test]
fn up_serves_a_python_component() {
    serves_fixture("hello-py", "Hello from Python!\n", UP_TIMEOUT_PYTHON);
}

#[test]
fn seal_then_deploy_replaces_the_running_component() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let home = tmp.path().join("home");
    let dir = tmp.path().join("project");
    lattice_init(&home);
    project(&dir, "hello");
    let [port, admin_port] = free_ports();
    let (listen, admin) = (local(port), local(admin_port));
    let mut up = Up::spawn(&home, &dir, listen, Some(admin));
    up.wait_serving(UP_TIMEOUT);
    assert_eq!(get(listen, "/").1, "Hello from Aether!\n");

    // Seal a different component under the same name.
    std::fs::copy(fixture_path("hello-wstd"), dir.join("x.wasm")).expect("copy");
    let out = run(alkahest(&home).arg("seal").arg(&dir));
    assert!(out.status.success(), "{}", stderr(&out));
    let essence = dir.join("x.essence");
    assert!(
        essence.is_file(),
        "seal did not write {}",
        essence.display()
    );
    assert!(stdout(&out).contains("Sealed x"), "{}", stdout(&out));

    let out = run(alkahest(&home)
        .arg("deploy")
        .arg(&essence)
        .args(["--node", &admin.to_string()]));
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("Deployed x"), "{text}");
    assert!(text.contains("replacing the previous version"), "{text}");
    assert!(text.contains(&format!("http://{listen}/")), "{text}");
    assert_eq!(get(listen, "/"), (200, "Hello from wstd!\n".to_string()));

    up.signal("-INT");
    assert_eq!(
        up.wait_exit(EXIT_TIMEOUT).code(),
        Some(0),
        "{}",
        up.output()
    );
}

#[test]
fn new_scaffolds_a_project_and_refuses_bad_names() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let home = tmp.path().join("home");
    let dir = tmp.path().join("my-app");
    let out = run(alkahest(&home).args(["new", "my-app", "--dir"]).arg(&dir));
    assert!(out.status.success(), "{}", stderr(&out));
    for file in ["Cargo.toml", "src/lib.rs", "Aetherfile"] {
        assert!(
            dir.join(file).is_file(),
            "`alkahest new` did not create {file}"
        );
    }
    let manifest = aether_manifest::load(&dir.join("Aetherfile"))
        .unwrap_or_else(|e| panic!("the generated Aetherfile does not parse: {e}"));
    assert_eq!(manifest.name, "my-app");
    let cargo = std::fs::read_to_string(dir.join("Cargo.toml")).expect("Cargo.toml");
    assert!(cargo.contains("name = \"my-app\""), "{cargo}");

    // A second time into the same directory is refused, not overwritten.
    let out = run(alkahest(&home).args(["new", "my-app", "--dir"]).arg(&dir));
    assert!(!out.status.success());
    assert!(stderr(&out).contains("already exists"), "{}", stderr(&out));

    let out = run(alkahest(&home)
        .args(["new", "Bad_Name"])
        .current_dir(tmp.path()));
    assert!(!out.status.success(), "`alkahest new Bad_Name` succeeded");
    let err = stderr(&out);
    assert!(
        err.contains("`Bad_Name` cannot be a component name"),
        "{err}"
    );
    assert!(!tmp.path().join("Bad_Name").exists());
}

#[test]
fn a_second_up_on_the_same_port_fails_clearly() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let home = tmp.path().join("home");
    let dir = tmp.path().join("project");
    lattice_init(&home);
    project(&dir, "hello");
    let [port, admin_port, other_admin_port] = free_ports();
    let listen = local(port);
    let mut first = Up::spawn(&home, &dir, listen, Some(local(admin_port)));
    first.wait_serving(UP_TIMEOUT);

    let mut second = Up::spawn(&home, &dir, listen, Some(local(other_admin_port)));
    let status = second.wait_exit(UP_TIMEOUT);
    assert!(
        !status.success(),
        "second `up` should fail\n{}",
        second.output()
    );
    second.wait_stderr("already in use");
    assert!(
        second.stderr().contains(&listen.to_string()),
        "{}",
        second.output()
    );

    // The first one is unaffected.
    assert_eq!(get(listen, "/").0, 200);
}

#[test]
fn status_of_a_node_that_is_not_running_says_so() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let home = tmp.path().join("home");
    lattice_init(&home);
    let [port] = free_ports();
    let out = run(alkahest(&home).args(["status", "--node", &local(port).to_string()]));
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("cannot reach"), "{err}");
    assert!(err.contains(&local(port).to_string()), "{err}");
}

#[test]
fn invite_prints_a_root_signed_token_with_its_constraints() {
    let home = tempfile::tempdir().expect("tempdir");
    assert!(lattice_init(home.path()).status.success());
    let out = run(alkahest(home.path()).args([
        "invite",
        "--expires",
        "2h",
        "--single-use",
        "--region",
        "eu-west",
        "--label",
        "tier=edge",
    ]));
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    let token = aether_identity::InviteToken::from_text(text.trim()).expect("a valid invite token");
    let root = aether_identity::home::Home::at(home.path())
        .root_public()
        .expect("root public key");
    let invite = token
        .certificate()
        .verify(&root)
        .expect("signed by the lattice root");
    assert!(invite.single_use());
    assert_eq!(
        invite.constraints().region.as_ref().map(|r| r.as_str()),
        Some("eu-west")
    );
    assert_eq!(invite.constraints().labels.get("tier"), Some("edge"));
    assert!(invite.expires_at() > invite.issued_at() + 7000);

    let bad = run(alkahest(home.path()).args(["invite", "--expires", "soon"]));
    assert!(!bad.status.success());
    assert!(stderr(&bad).contains("--expires soon"), "{}", stderr(&bad));

    let stranger = tempfile::tempdir().expect("tempdir");
    let none = run(alkahest(stranger.path()).args(["invite"]));
    assert!(!none.status.success());
    assert!(stderr(&none).contains("lattice init"), "{}", stderr(&none));
}

/// `up --nodes 3`: a local lattice from one command; every node serves the
/// component deployed once; Ctrl-C stops them all.
#[test]
fn up_with_three_nodes_serves_from_every_node() {
    let home = tempfile::tempdir().expect("home");
    let dir = home.path();
    assert!(lattice_init(dir).status.success());
    project(dir, "hello-wstd");
    let port = free_ports::<1>()[0];
    let listen = SocketAddr::from(([127, 0, 0, 221], port));
    let mut up = Up::spawn_with(dir, dir, listen, &["--nodes".to_string(), "3".to_string()]);
    let serving = up.wait_serving(UP_TIMEOUT);
    assert!(serving.contains("local lattice of 3 nodes"), "{serving}");
    for last in 221..=223u8 {
        let addr = SocketAddr::from(([127, 0, 0, last], port));
        let (status, body) = get(addr, "/");
        assert_eq!(status, 200, "node {addr}: {body}\n{}", up.output());
    }
    let out = run(alkahest(dir).args(["nodes", "--json"]));
    assert!(out.status.success(), "nodes failed: {}", stderr(&out));
    let nodes: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let alive = nodes
        .as_array()
        .expect("array")
        .iter()
        .filter(|m| m["state"] == "alive")
        .count();
    assert_eq!(alive, 3, "{nodes:#}");
    up.signal("-INT");
    let status = up.wait_exit(EXIT_TIMEOUT);
    assert_eq!(status.code(), Some(0), "{}", up.output());
}

/// A private tmux server (its own socket), killed on drop.
struct Tmux(String);

impl Tmux {
    fn cmd(&self) -> Command {
        let mut cmd = Command::new("tmux");
        cmd.arg("-L").arg(&self.0);
        cmd
    }

    fn screen(&self) -> String {
        let out = self
            .cmd()
            .args(["capture-pane", "-p", "-t", "top"])
            .output()
            .expect("tmux capture-pane");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn running(&self) -> bool {
        self.cmd()
            .args(["has-session", "-t", "top"])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.cmd().arg("kill-server").stderr(Stdio::null()).status();
    }
}

#[test]
fn top_shows_the_lattice_live_and_q_quits() {
    if Command::new("tmux").arg("-V").output().is_err() {
        panic!("no tmux: run scripts/system-deps.sh (it installs it)");
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let dir = dir.path();
    let [port, admin_port] = free_ports();
    let (listen, admin) = (local(port), local(admin_port));
    lattice_init(dir);
    project(dir, "hello");
    let mut up = Up::spawn(dir, dir, listen, Some(admin));
    up.wait_serving(UP_TIMEOUT);

    let tmux = Tmux(format!("aether-top-{}", std::process::id()));
    let started = tmux
        .cmd()
        .args(["new-session", "-d", "-s", "top", "-x", "160", "-y", "40"])
        .arg(format!(
            "env ALKAHEST_HOME={} {} --node {admin} top --interval 200ms",
            dir.display(),
            env!("CARGO_BIN_EXE_alkahest")
        ))
        .status()
        .expect("tmux");
    assert!(started.success());
    let wait_for = |what: &str, check: &dyn Fn(&str) -> bool| {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let screen = tmux.screen();
            if check(&screen) {
                return screen;
            }
            assert!(Instant::now() < deadline, "{what}; the screen:\n{screen}");
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    let first = wait_for("the view appears", &|s| {
        s.contains("members") && s.contains("components") && s.contains("1/1 members alive")
    });
    assert!(
        first
            .lines()
            .any(|l| l.trim_start_matches('│').trim().starts_with("x ")),
        "the component's row:\n{first}"
    );
    // Live: requests show up without a keystroke.
    for _ in 0..5 {
        assert_eq!(get(listen, "/").0, 200);
    }
    wait_for("the requests are counted", &|s| {
        s.lines()
            .filter(|l| l.contains("x "))
            .any(|l| l.split_whitespace().any(|w| w == "5"))
    });
    let _ = tmux.cmd().args(["send-keys", "-t", "top", "q"]).status();
    let deadline = Instant::now() + Duration::from_secs(10);
    while tmux.running() {
        assert!(
            Instant::now() < deadline,
            "q did not quit:\n{}",
            tmux.screen()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
