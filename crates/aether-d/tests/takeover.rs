//! A rollout survives the SIGKILL of the node driving it, on five real processes
//! (127.0.0.249–253): at every step boundary (the rollout held there with `pause_before`), and in
//! the middle of the distribute and precompile steps (a node stopped with SIGSTOP keeps the step
//! waiting). Each time another node takes over, the steps done before are not run again, and
//! every node compiles the new version once.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::block_on;
use common::cluster::{Node, Operator, eventually, fixture, join_args, lattice, metric};
use http::Method;
use serde_json::Value;

fn probe_aetherfile(version: &str) -> String {
    format!(
        "name = \"held\"\ncomponent = \"held.wasm\"\n[http]\nroutes = [\"/\"]\n[intent]\nreplicas = 2\n[env]\nVERSION = \"{version}\"\n"
    )
}

/// `wasm` with a custom section carrying `tag` appended: the same component, other bytes, so
/// each version is compiled anew rather than found in the compile cache.
fn tagged(wasm: &[u8], tag: &str) -> Vec<u8> {
    let name = b"aether-test";
    let mut body = vec![name.len() as u8];
    body.extend_from_slice(name);
    body.extend_from_slice(tag.as_bytes());
    assert!(body.len() < 128, "one-byte LEB128 sizes");
    let mut out = wasm.to_vec();
    out.push(0);
    out.push(body.len() as u8);
    out.extend_from_slice(&body);
    out
}

fn status(node: &Node, id: &str) -> Value {
    block_on(
        node.client()
            .json::<Value>(Method::GET, &format!("/v1/rollouts/{id}"), Bytes::new()),
    )
    .unwrap_or(Value::Null)
}

fn steps_in(s: &Value, state: &str) -> Vec<Value> {
    s["steps"]
        .as_array()
        .map(|steps| {
            steps
                .iter()
                .filter(|s| s["state"] == state)
                .cloned()
                .collect()
        })
        .unwrap_or_default()
}

fn misses(node: &Node) -> f64 {
    metric(&node.metrics(), "aether_compile_cache_misses_total")
}

/// Where the driver is killed.
#[derive(Clone, Copy, Debug)]
enum KillAt {
    /// Held before this step.
    Before(&'static str),
    /// While this step runs, a stopped node keeping it waiting.
    During(&'static str),
}

#[test]
fn a_rollout_resumes_elsewhere_after_its_driver_is_killed_at_any_step() {
    let operator = Operator::new();
    let scratch = tempfile::tempdir().expect("scratch");
    let mut nodes = lattice(&[249, 250, 251, 252, 253], scratch.path(), &operator);
    let probe = fixture("probe");
    let first = nodes[0].admin_json(
        Method::POST,
        "/v1/rollouts",
        operator.seal(&probe_aetherfile("k0"), &probe),
    );
    let first = first["rollout"].as_str().expect("id").to_string();
    eventually(
        "the first version is rolled out",
        Duration::from_secs(120),
        || status(&nodes[1], &first)["state"] == "finished",
    );

    let cases = [
        KillAt::Before("distribute"),
        KillAt::During("distribute"),
        KillAt::Before("precompile"),
        KillAt::During("precompile"),
        KillAt::Before("switch"),
        KillAt::Before("retire"),
    ];
    for (i, kill_at) in cases.into_iter().enumerate() {
        let (driver, helper, stopped) = (i % 5, (i + 1) % 5, (i + 2) % 5);
        let version = format!("k{}", i + 1);
        let essence = operator.seal(&probe_aetherfile(&version), &tagged(&probe, &version));
        let before: Vec<f64> = nodes.iter().map(misses).collect();
        // Held before the step, then (to kill during it) a node is stopped and the rollout
        // resumed: the step starts at once and waits for the stopped node, however long the
        // rollout took to get there.
        let query = match kill_at {
            KillAt::Before(step) | KillAt::During(step) => format!("?pause_before={step}"),
        };
        let started =
            nodes[driver].admin_json(Method::POST, &format!("/v1/rollouts{query}"), essence);
        let id = started["rollout"].as_str().expect("id").to_string();
        let wanted_running = match kill_at {
            KillAt::Before(_) => None,
            KillAt::During(step) => Some(step),
        };
        eventually(
            &format!("{kill_at:?}: the rollout holds"),
            Duration::from_secs(60),
            || status(&nodes[helper], &id)["state"] == "paused",
        );
        if let KillAt::During(_) = kill_at {
            nodes[stopped].signal("-STOP");
            nodes[helper].admin_json(
                Method::POST,
                &format!("/v1/rollouts/{id}/resume"),
                Vec::new(),
            );
        }
        if let Some(step) = wanted_running {
            eventually(&format!("{step} runs"), Duration::from_secs(60), || {
                steps_in(&status(&nodes[helper], &id), "running")
                    .iter()
                    .any(|s| s["name"] == step)
            });
            // Well inside the step: the stopped node keeps it waiting.
            std::thread::sleep(Duration::from_millis(500));
        }
        let held = status(&nodes[helper], &id);
        let done_before = steps_in(&held, "done");
        let driver_id = nodes[driver].id();
        assert_eq!(held["driver"], driver_id.as_str(), "{kill_at:?}: {held:#}");
        nodes[driver].sigkill();
        if wanted_running.is_some() {
            nodes[stopped].signal("-CONT");
        } else {
            nodes[helper].admin_json(
                Method::POST,
                &format!("/v1/rollouts/{id}/resume"),
                Vec::new(),
            );
        }
        let mut end = Value::Null;
        eventually(
            &format!("{kill_at:?}: the rollout finishes"),
            Duration::from_secs(180),
            || {
                end = status(&nodes[helper], &id);
                end["state"] != "running" && end["state"] != "paused" && !end["state"].is_null()
            },
        );
        assert_eq!(end["state"], "finished", "{kill_at:?}: {end:#}");
        let leases = end["leases"].as_array().expect("leases");
        assert!(
            leases
                .iter()
                .any(|l| l["reason"] == "holder-dead" || l["reason"] == "lease-lapsed"),
            "{kill_at:?}: the takeover is shown: {end:#}"
        );
        assert_ne!(end["driver"], driver_id.as_str(), "{kill_at:?}: {end:#}");
        let steps = end["steps"].as_array().expect("steps");
        assert_eq!(steps.len(), 5, "{kill_at:?}: {end:#}");
        for (was, is) in done_before.iter().zip(steps) {
            assert_eq!(
                (&was["name"], &was["epoch"], &was["finished_ms"]),
                (&is["name"], &is["epoch"], &is["finished_ms"]),
                "{kill_at:?}: a step done before the kill ran again: {end:#}"
            );
        }
        let first_epoch = steps[0]["epoch"].as_u64();
        assert!(
            steps[done_before.len()..]
                .iter()
                .all(|s| s["epoch"].as_u64() > first_epoch),
            "{kill_at:?}: the steps after the kill ran under a higher epoch: {end:#}"
        );
        for (n, node) in nodes.iter().enumerate().filter(|(n, _)| *n != driver) {
            eventually(
                &format!("node {n} serves {version}"),
                Duration::from_secs(30),
                || node.request("GET", "/env?name=VERSION", b"").body == version,
            );
            assert_eq!(
                misses(node) - before[n],
                1.0,
                "{kill_at:?}: node {n} compiled the new version once\n{}\n{}",
                node.logs("held"),
                node.stderr()
            );
        }
        eprintln!(
            "{kill_at:?}: finished; leases {}",
            serde_json::to_string(leases).unwrap_or_default()
        );

        // The killed node comes back for the next case.
        let args = join_args(&nodes[helper], None);
        nodes[driver].start(&args);
        let ids: Vec<String> = nodes.iter().map(Node::id).collect();
        eventually(
            "every node sees every node again",
            Duration::from_secs(60),
            || nodes.iter().all(|n| n.sees_alive(&ids)),
        );
        // Deployed there itself, not only answered through a host, before the next case
        // counts its compiles.
        let hash = |n: &Node| {
            n.admin_json(Method::GET, "/v1/components/held", Vec::new())["content_hash"].clone()
        };
        eventually(
            "the restarted node deployed the new version",
            Duration::from_secs(60),
            || hash(&nodes[driver]) == hash(&nodes[helper]),
        );
    }
}
