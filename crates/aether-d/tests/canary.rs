//! Canary rollouts on real processes (127.0.0.246–248): a healthy canary grows its share step by
//! step and completes, a canary whose new version answers 500 to a fifth of its requests is
//! rolled back by its health gate; under load, no request fails because of either.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::block_on;
use common::cluster::{Node, Operator, eventually, fixture, lattice, step_names};
use http::Method;
use serde_json::Value;

fn aetherfile(version: &str, extra_env: &str, rollout: &str) -> String {
    format!(
        "name = \"canary\"\ncomponent = \"canary.wasm\"\n[http]\nroutes = [\"/\"]\n[intent]\nreplicas = 2\n[env]\nVERSION = \"{version}\"\n{extra_env}\n{rollout}"
    )
}

fn start(node: &Node, query: &str, essence: Vec<u8>) -> String {
    let started = node.admin_json(Method::POST, &format!("/v1/rollouts{query}"), essence);
    started["rollout"]
        .as_str()
        .expect("a rollout id")
        .to_string()
}

fn status(node: &Node, id: &str) -> Value {
    block_on(
        node.client()
            .json::<Value>(Method::GET, &format!("/v1/rollouts/{id}"), Bytes::new()),
    )
    .unwrap_or(Value::Null)
}

fn wait_ended(node: &Node, id: &str) -> Value {
    let mut last = Value::Null;
    eventually(
        &format!("rollout {id} ends"),
        Duration::from_secs(180),
        || {
            last = status(node, id);
            !last["state"].is_null() && last["state"] != "running" && last["state"] != "paused"
        },
    );
    last
}

/// Answers counted by what they were.
#[derive(Default)]
struct Counts {
    /// 200 from the serving version, by the `VERSION` it answered.
    by_version: std::sync::Mutex<std::collections::BTreeMap<String, u64>>,
    /// 200 `probe ok` from `/`.
    ok: AtomicU64,
    /// The bad version's own deliberate 500s.
    deliberate: AtomicU64,
    /// Anything else: a failure the rollout caused.
    failed: AtomicU64,
    /// The first few failures, for the assertion message.
    examples: std::sync::Mutex<Vec<String>>,
}

/// Sends requests round the nodes until `stop`, alternating `/` and `/env?name=VERSION`.
fn load(nodes: &[Node], stop: Arc<AtomicBool>, counts: Arc<Counts>) -> std::thread::JoinHandle<()> {
    let addrs: Vec<_> = nodes.iter().map(Node::http).collect();
    std::thread::spawn(move || {
        let started = Instant::now();
        let mut i = 0usize;
        while !stop.load(Ordering::Relaxed) && started.elapsed() < Duration::from_secs(240) {
            let addr = addrs[i % addrs.len()];
            let path = if i.is_multiple_of(2) {
                "/"
            } else {
                "/env?name=VERSION"
            };
            i += 1;
            match common::http::try_request(addr, "GET", path, &[], b"") {
                Ok(r) if r.status == 200 && path == "/" && r.body == "probe ok" => {
                    counts.ok.fetch_add(1, Ordering::Relaxed);
                }
                Ok(r) if r.status == 200 && path != "/" => {
                    *counts
                        .by_version
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .entry(r.body)
                        .or_default() += 1;
                }
                Ok(r) if r.status == 500 && r.body == "probe: deliberate failure" => {
                    counts.deliberate.fetch_add(1, Ordering::Relaxed);
                }
                other => {
                    counts.failed.fetch_add(1, Ordering::Relaxed);
                    let mut ex = counts.examples.lock().unwrap_or_else(|p| p.into_inner());
                    if ex.len() < 5 {
                        ex.push(format!("{path}: {other:?}"));
                    }
                }
            }
        }
    })
}

fn served_versions(nodes: &[Node]) -> Vec<String> {
    nodes
        .iter()
        .map(|n| n.request("GET", "/env?name=VERSION", b"").body)
        .collect()
}

#[test]
fn a_healthy_canary_completes_and_a_failing_one_rolls_back_by_itself() {
    let operator = Operator::new();
    let scratch = tempfile::tempdir().expect("scratch");
    let nodes = lattice(&[246, 247, 248], scratch.path(), &operator);
    let probe = fixture("probe");

    // A first deploy goes all at once, even when the Aetherfile asks for a canary.
    let canary_section =
        "[rollout]\nstrategy = \"canary\"\nsteps = [20, 50, 100]\ninterval = \"3s\"\n";
    let v1 = operator.seal(&aetherfile("1", "", canary_section), &probe);
    let first = start(&nodes[0], "", v1);
    let end = wait_ended(&nodes[1], &first);
    assert_eq!(end["state"], "finished", "{end:#}");
    assert_eq!(end["strategy"], "all-at-once", "{end:#}");
    assert!(
        end["strategy_note"]
            .as_str()
            .is_some_and(|n| n.contains("no version serves yet")),
        "{end:#}"
    );
    eventually(
        "every node serves version 1",
        Duration::from_secs(30),
        || served_versions(&nodes).iter().all(|v| v == "1"),
    );

    // A healthy canary, from the Aetherfile's [rollout]: 20%, 50%, then the switch.
    let stop = Arc::new(AtomicBool::new(false));
    let counts = Arc::new(Counts::default());
    let loader = load(&nodes, stop.clone(), counts.clone());
    let v2 = operator.seal(&aetherfile("2", "", canary_section), &probe);
    let healthy = start(&nodes[1], "", v2);
    let mut saw_share = false;
    eventually(
        "the canary gets its first share",
        Duration::from_secs(120),
        || {
            let s = status(&nodes[2], &healthy);
            saw_share |= s["canary"]["weight"].as_u64().is_some_and(|w| w > 0);
            saw_share || s["state"] != "running"
        },
    );
    let end = wait_ended(&nodes[2], &healthy);
    stop.store(true, Ordering::Relaxed);
    loader.join().expect("load thread");
    assert_eq!(end["state"], "finished", "{end:#}");
    assert_eq!(end["strategy"], "canary", "{end:#}");
    let names = step_names(&end);
    assert_eq!(
        names,
        [
            "verify",
            "distribute",
            "precompile",
            "canary-20",
            "gate-20",
            "canary-50",
            "gate-50",
            "switch",
            "retire"
        ],
        "{end:#}"
    );
    let by_version = counts
        .by_version
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    eprintln!(
        "healthy canary: {} ok on /, answers by version {by_version:?}, {} failed; canary figures {}",
        counts.ok.load(Ordering::Relaxed),
        counts.failed.load(Ordering::Relaxed),
        end["canary"]
    );
    assert_eq!(
        counts.failed.load(Ordering::Relaxed),
        0,
        "no request fails during a canary: {:?}",
        counts.examples.lock().unwrap_or_else(|p| p.into_inner())
    );
    assert!(
        by_version.get("1").is_some_and(|n| *n > 0) && by_version.get("2").is_some_and(|n| *n > 0),
        "both versions answered during the canary: {by_version:?}"
    );
    assert!(
        end["canary"]["new"]["requests"].as_u64() > Some(0),
        "the hosts measured the new version: {end:#}"
    );
    eventually(
        "every node serves version 2",
        Duration::from_secs(30),
        || served_versions(&nodes).iter().all(|v| v == "2"),
    );

    // A canary whose new version answers 500 to a fifth of its requests: its gate fails and the
    // rollout undoes itself; the strategy comes from the command line this time.
    let stop = Arc::new(AtomicBool::new(false));
    let counts = Arc::new(Counts::default());
    let loader = load(&nodes, stop.clone(), counts.clone());
    let v3 = operator.seal(&aetherfile("3", "FAIL_ONE_IN = \"5\"", ""), &probe);
    let failing = start(&nodes[2], "?strategy=canary&steps=50&interval=60s", v3);
    let end = wait_ended(&nodes[0], &failing);
    stop.store(true, Ordering::Relaxed);
    loader.join().expect("load thread");
    eprintln!(
        "failing canary: {} ok on /, {} deliberate 500s from the new version, answers by version {:?}, {} failed; canary figures {}; why: {}",
        counts.ok.load(Ordering::Relaxed),
        counts.deliberate.load(Ordering::Relaxed),
        counts.by_version.lock().unwrap_or_else(|p| p.into_inner()),
        counts.failed.load(Ordering::Relaxed),
        end["canary"],
        end["outcome_reason"]
    );
    assert_eq!(end["state"], "rolled-back", "{end:#}");
    let why = end["outcome_reason"].as_str().unwrap_or_default();
    assert!(
        why.contains("health gate at 50%") && why.contains("5xx"),
        "{why}"
    );
    let names = step_names(&end);
    assert_eq!(
        names,
        [
            "verify",
            "distribute",
            "precompile",
            "canary-50",
            "gate-50",
            "canary-off",
            "unstage"
        ],
        "{end:#}"
    );
    assert!(counts.deliberate.load(Ordering::Relaxed) > 0);
    assert_eq!(
        counts.failed.load(Ordering::Relaxed),
        0,
        "no request fails because of the rollout: {:?}",
        counts.examples.lock().unwrap_or_else(|p| p.into_inner())
    );
    eventually(
        "every node serves version 2 alone again",
        Duration::from_secs(30),
        || {
            served_versions(&nodes).iter().all(|v| v == "2")
                && (0..20).all(|i| nodes[i % 3].request("GET", "/", b"").status == 200)
        },
    );
    let history = nodes[0].admin_json(Method::GET, "/v1/history/canary", Vec::new());
    let versions = history["versions"].as_array().expect("versions");
    assert_eq!(
        versions.len(),
        2,
        "the failed canary is no version: {history}"
    );
}
