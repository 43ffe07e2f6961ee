//! Prometheus across the lattice: a real Prometheus server (Debian's `prometheus`, which
//! `scripts/system-deps.sh` installs) discovers every node of a 3-node lattice through one
//! node's `GET /sd/prometheus` (its `http_sd_configs` format) and scrapes them all; a node
//! killed with SIGKILL leaves the targets. Real processes on 127.0.0.111–114.

mod common;

use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::cluster::{Operator, eventually, lattice};
use common::http::try_request;
use serde_json::Value;

/// A Prometheus server, killed on drop.
struct Prometheus {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    /// The results of an instant query (`[]` while it cannot answer).
    fn query(&self, promql: &str) -> Vec<Value> {
        let encoded: String = promql
            .bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect();
        try_request(
            self.addr,
            "GET",
            &format!("/api/v1/query?query={encoded}"),
            &[],
            b"",
        )
        .ok()
        .and_then(|r| serde_json::from_str::<Value>(&r.body).ok())
        .and_then(|v| v["data"]["result"].as_array().cloned())
        .unwrap_or_default()
    }
}

#[test]
fn a_real_prometheus_finds_and_scrapes_every_node() {
    let operator = Operator::new();
    let scratch = tempfile::tempdir().expect("scratch");
    let mut nodes = lattice(&[111, 112, 113], scratch.path(), &operator);

    // The discovery document lists every live member's admin API, itself included.
    let sd = try_request(nodes[0].admin(), "GET", "/sd/prometheus", &[], b"").expect("sd");
    assert_eq!(sd.status, 200, "{sd:?}");
    let groups: Vec<Value> = serde_json::from_str(&sd.body).expect("sd json");
    let mut targets: Vec<String> = groups
        .iter()
        .filter_map(|g| g["targets"][0].as_str().map(str::to_string))
        .collect();
    targets.sort();
    let mut expected: Vec<String> = nodes.iter().map(|n| n.admin().to_string()).collect();
    expected.sort();
    assert_eq!(targets, expected, "{}", sd.body);

    let Ok(version) = Command::new("prometheus").arg("--version").output() else {
        panic!("no `prometheus` binary: run scripts/system-deps.sh (it installs Debian's)");
    };
    assert!(version.status.success());
    let port = TcpListener::bind("127.0.0.114:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let addr = SocketAddr::from(([127, 0, 0, 114], port));
    let config = scratch.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  - job_name: aether\n    http_sd_configs:\n      - url: http://{}/sd/prometheus\n        refresh_interval: 1s\n",
            nodes[0].admin()
        ),
    )
    .expect("config");
    let child = Command::new("prometheus")
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            scratch.path().join("tsdb").display()
        ))
        .arg(format!("--web.listen-address={addr}"))
        .arg("--log.level=warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start prometheus");
    let prometheus = Prometheus { child, addr };

    // `aether_*` series from all three nodes, each up.
    eventually(
        "Prometheus scrapes every node",
        Duration::from_secs(60),
        || {
            prometheus
                .query("count by (instance) (aether_mesh_members)")
                .len()
                == 3
                && prometheus.query("up{job=\"aether\"} == 1").len() == 3
        },
    );
    let instances: Vec<String> = prometheus
        .query("up{job=\"aether\"}")
        .iter()
        .filter_map(|r| r["metric"]["instance"].as_str().map(str::to_string))
        .collect();
    for n in &nodes {
        assert!(instances.contains(&n.admin().to_string()), "{instances:?}");
    }

    // A killed node's target goes: down at once, then out of the discovery once it is dead.
    let gone = nodes[2].admin().to_string();
    nodes[2].sigkill();
    eventually(
        "the killed node's target goes down",
        Duration::from_secs(60),
        || {
            let up: Vec<Value> = prometheus.query("up{job=\"aether\"} == 1");
            up.len() == 2
                && up
                    .iter()
                    .all(|r| r["metric"]["instance"].as_str() != Some(gone.as_str()))
        },
    );
}
