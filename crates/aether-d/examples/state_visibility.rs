//! Time from a write on one node to its visibility on every other node, on
//! five real `aether-d` processes joined in one lattice on loopback
//! (127.0.0.71–75).
//!
//! `cargo run --release -p aether-d --example state_visibility -- [ROUNDS]`
//! (uses `target/release/aether-d`, or the binary in `AETHER_D`).

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use aether_admin::client::AdminClient;
use aether_identity::home::Home;
use aether_identity::{Invite, InviteConstraints, LatticeId, SecretKey};
use bytes::Bytes;
use http::Method;
use serde_json::Value;

const ADMIN_PORT: u16 = 17070;
const HTTP_PORT: u16 = 18080;

struct Kill(Vec<Child>);

impl Drop for Kill {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, 71 + i as u8)
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * p).round() as usize]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let rounds: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(200);
    let binary = std::env::var_os("AETHER_D")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("target/release/aether-d"));
    let scratch = tempfile::tempdir()?;
    let home = Home::at(scratch.path().join("home"));
    home.init()?;
    let root: SecretKey = home.root_key()?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let token = Invite::issue(
        &root,
        LatticeId::of_root(&root.public()),
        InviteConstraints::default(),
        now + 3600,
        false,
        now,
    )?;
    let mut children = Kill(Vec::new());
    for i in 0..5 {
        let mut cmd = Command::new(&binary);
        cmd.arg("--data-dir")
            .arg(scratch.path().join(format!("n{i}")))
            .arg("--bind")
            .arg(ip(i).to_string())
            .arg("--http-port")
            .arg(HTTP_PORT.to_string())
            .arg("--admin-port")
            .arg(ADMIN_PORT.to_string())
            .arg("--workers")
            .arg("1")
            .env("ALKAHEST_HOME", home.dir())
            .env("AETHER_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if i > 0 {
            cmd.arg("--join")
                .arg(format!("{}:7946", ip(0)))
                .arg("--invite")
                .arg(token.to_text());
        }
        children.0.push(cmd.spawn()?);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let clients: Vec<AdminClient> = (0..5)
        .map(|i| AdminClient::new(SocketAddr::from((ip(i), ADMIN_PORT)), root.clone()))
        .collect();
    // Wait until every node lists five alive members.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut ok = true;
        for c in &clients {
            let rows: Result<Value, _> = c.json(Method::GET, "/v1/nodes", Bytes::new()).await;
            let alive = rows
                .ok()
                .and_then(|v| v.as_array().cloned())
                .map_or(0, |a| a.iter().filter(|m| m["state"] == "alive").count());
            ok &= alive == 5;
        }
        if ok {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "the lattice did not form");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!("5 nodes joined; {rounds} writes on node 1, each polled on nodes 2–5 until visible");
    let mut all = Vec::new();
    let mut each = Vec::new();
    let mut per_node: Vec<Vec<f64>> = Vec::new();
    for r in 0..rounds {
        let path = format!("/v1/kv/bench?key=vis-{r}");
        let start = Instant::now();
        let _: Value = clients[0]
            .json(Method::PUT, &path, Bytes::from(format!("value {r}")))
            .await?;
        let acked = start.elapsed();
        let mut tasks = Vec::new();
        for c in &clients[1..] {
            let (c, path) = (c.clone(), path.clone());
            tasks.push(tokio::spawn(async move {
                let deadline = Instant::now() + Duration::from_secs(30);
                loop {
                    let got: Result<Value, _> = c.json(Method::GET, &path, Bytes::new()).await;
                    if got.is_ok() {
                        return Some(start.elapsed());
                    }
                    if Instant::now() > deadline {
                        return None;
                    }
                    tokio::time::sleep(Duration::from_micros(500)).await;
                }
            }));
        }
        let mut slowest = acked;
        let mut seen_by = Vec::new();
        for t in tasks {
            let seen = t
                .await?
                .ok_or_else(|| anyhow::anyhow!("write {r} never became visible"))?;
            each.push(seen.as_secs_f64() * 1000.0);
            seen_by.push(seen.as_secs_f64() * 1000.0);
            slowest = slowest.max(seen);
        }
        per_node.push(seen_by);
        all.push(slowest.as_secs_f64() * 1000.0);
    }
    println!("| write on node 1 → visible | median (ms) | p99 (ms) | max (ms) |");
    println!("|---|---:|---:|---:|");
    let max_each = each.iter().cloned().fold(0.0, f64::max);
    let max_all = all.iter().cloned().fold(0.0, f64::max);
    println!(
        "| on one other node | {:.1} | {:.1} | {:.1} |",
        pct(&mut each.clone(), 0.5),
        pct(&mut each, 0.99),
        max_each
    );
    let mut slowest: Vec<(usize, f64)> = all.iter().copied().enumerate().collect();
    slowest.sort_by(|a, b| b.1.total_cmp(&a.1));
    println!(
        "| on all four other nodes | {:.1} | {:.1} | {:.1} |",
        pct(&mut all.clone(), 0.5),
        pct(&mut all, 0.99),
        max_all
    );
    let listed: Vec<String> = slowest
        .iter()
        .take(4)
        .map(|(r, ms)| {
            let nodes: Vec<String> = per_node[*r].iter().map(|t| format!("{t:.0}")).collect();
            format!("write {r}: {ms:.1} ms (nodes 2-5: {} ms)", nodes.join("/"))
        })
        .collect();
    println!("slowest on all four: {}", listed.join(", "));
    Ok(())
}
