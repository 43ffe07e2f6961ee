//! Deployments as durable workflows, on real processes (127.0.0.231–245): a rollout reaches
//! every node with no failed request, versions are kept and rolled back to, bad requests get
//! clear refusals, a rollout whose driver is killed with SIGKILL finishes on another node, and a
//! drain moves replicas off a node.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use aether_admin::client::ClientError;
use bytes::Bytes;
use common::block_on;
use common::cluster::{Node, Operator, eventually, fixture, lattice, metric, step_names};
use http::{Method, StatusCode};
use serde_json::Value;

fn probe_aetherfile(version: &str) -> String {
    format!(
        "name = \"roll\"\ncomponent = \"roll.wasm\"\n[http]\nroutes = [\"/\"]\n[env]\nVERSION = \"{version}\"\n"
    )
}

fn start(node: &Node, essence: Vec<u8>) -> String {
    let started = node.admin_json(Method::POST, "/v1/rollouts", essence);
    started["rollout"]
        .as_str()
        .expect("a rollout id")
        .to_string()
}

/// The rollout as `node` tells it, once it knows of it.
fn try_status(node: &Node, id: &str) -> Option<Value> {
    let path = format!("/v1/rollouts/{id}");
    block_on(
        node.client()
            .json::<Value>(Method::GET, &path, Bytes::new()),
    )
    .ok()
}

fn wait_state(node: &Node, id: &str, state: &str, timeout: Duration) -> Value {
    let mut last = Value::Null;
    let waited = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        eventually(&format!("rollout {id} is {state}"), timeout, || {
            last = try_status(node, id).unwrap_or(Value::Null);
            last["state"] == state
        })
    }));
    assert!(
        waited.is_ok(),
        "rollout {id} never became {state}: {last:#}\n{}",
        node.stderr()
    );
    last
}

/// Starts two rollouts at once, each through its node; returns their ids.
fn start_both(a: (&Node, Vec<u8>), b: (&Node, Vec<u8>)) -> (String, String) {
    std::thread::scope(|s| {
        let first = s.spawn(|| start(a.0, a.1));
        let second = s.spawn(|| start(b.0, b.1));
        (first.join().expect("start"), second.join().expect("start"))
    })
}

/// The rollout as `node` tells it once it has ended, whatever the outcome.
fn wait_ended(node: &Node, id: &str) -> Value {
    let mut last = Value::Null;
    eventually(
        &format!("rollout {id} ends"),
        Duration::from_secs(120),
        || {
            last = try_status(node, id).unwrap_or(Value::Null);
            last["state"] != "running" && last["state"] != "paused" && !last["state"].is_null()
        },
    );
    last
}

/// The refusal status of a signed admin request that must fail.
fn refused(node: &Node, method: Method, path: &str) -> (StatusCode, String) {
    match block_on(node.client().json::<Value>(method, path, Bytes::new())) {
        Err(ClientError::Api { status, message }) => (status, message),
        other => panic!("{path} should be refused, got {other:?}"),
    }
}

fn version_served(node: &Node) -> String {
    let r = node.request("GET", "/env?name=VERSION", b"");
    assert_eq!(r.status, 200, "{}", node.stderr());
    r.body
}

#[test]
fn rollouts_reach_every_node_keep_versions_and_roll_back() {
    let operator = Operator::new();
    let scratch = tempfile::tempdir().expect("scratch");
    let nodes = lattice(&[231, 232, 233], scratch.path(), &operator);

    let v1 = operator.seal(&probe_aetherfile("1"), &fixture("probe"));
    let first = start(&nodes[0], v1);
    let done = wait_state(&nodes[2], &first, "finished", Duration::from_secs(120));
    let names = step_names(&done);
    assert_eq!(
        names,
        ["verify", "distribute", "precompile", "switch", "retire"],
        "{done}"
    );
    for n in &nodes {
        assert_eq!(version_served(n), "1");
    }

    // A second version under load through another node: every answer is 200, old or new.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, bad) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let http = nodes[2].http();
    let load = {
        let (stop, ok, bad) = (stop.clone(), ok.clone(), bad.clone());
        std::thread::spawn(move || {
            let started = std::time::Instant::now();
            while !stop.load(Ordering::Relaxed) && started.elapsed() < Duration::from_secs(120) {
                match common::http::try_request(http, "GET", "/env?name=VERSION", &[], b"") {
                    Ok(r) if r.status == 200 && (r.body == "1" || r.body == "2") => {
                        ok.fetch_add(1, Ordering::Relaxed)
                    }
                    _ => bad.fetch_add(1, Ordering::Relaxed),
                };
            }
        })
    };
    let v2 = operator.seal(&probe_aetherfile("2"), &fixture("probe"));
    let second = start(&nodes[1], v2);
    wait_state(&nodes[0], &second, "finished", Duration::from_secs(120));
    stop.store(true, Ordering::Relaxed);
    load.join().expect("load thread");
    eprintln!(
        "during the second rollout: {} requests answered, {} failed",
        ok.load(Ordering::Relaxed),
        bad.load(Ordering::Relaxed)
    );
    assert!(ok.load(Ordering::Relaxed) > 0);
    assert_eq!(
        bad.load(Ordering::Relaxed),
        0,
        "no request fails during a rollout"
    );
    for n in &nodes {
        assert_eq!(version_served(n), "2");
    }

    let history = nodes[2].admin_json(Method::GET, "/v1/history/roll", Vec::new());
    let versions = history["versions"].as_array().expect("versions").clone();
    assert_eq!(versions.len(), 2, "{history}");
    assert_eq!(versions[1]["current"], true, "{history}");
    assert_eq!(versions[1]["rollout"], second.as_str());

    // Back to the version before: a rollout too.
    let back = nodes[0].admin_json(Method::POST, "/v1/rollback/roll", Vec::new());
    let back = back["rollout"].as_str().expect("rollout").to_string();
    let end = wait_state(&nodes[1], &back, "finished", Duration::from_secs(120));
    assert_eq!(end["reason"], "rollback to version 1", "{end}");
    for n in &nodes {
        assert_eq!(version_served(n), "1");
    }
    let history = nodes[1].admin_json(Method::GET, "/v1/history/roll", Vec::new());
    assert_eq!(
        history["versions"].as_array().map(Vec::len),
        Some(3),
        "{history}"
    );

    // Two rollouts of one component started at once on two nodes: the later one wins on every
    // node, the other ends superseded and says why.
    let v3 = operator.seal(&probe_aetherfile("3"), &fixture("probe"));
    let v4 = operator.seal(&probe_aetherfile("4"), &fixture("probe"));
    let (a, b) = start_both((&nodes[0], v3), (&nodes[2], v4));
    let ends = [wait_ended(&nodes[1], &a), wait_ended(&nodes[1], &b)];
    let states: Vec<&str> = ends.iter().filter_map(|e| e["state"].as_str()).collect();
    assert!(
        states == ["finished", "superseded"] || states == ["superseded", "finished"],
        "{ends:#?}"
    );
    let loser = ends
        .iter()
        .find(|e| e["state"] == "superseded")
        .expect("a loser");
    assert!(
        loser["outcome_reason"]
            .as_str()
            .is_some_and(|r| r.contains("started later")),
        "{loser}"
    );
    let winner = if ends[0]["state"] == "finished" {
        "3"
    } else {
        "4"
    };
    eventually(
        "every node serves the winner",
        Duration::from_secs(30),
        || nodes.iter().all(|n| version_served(n) == winner),
    );

    // Bad requests.
    let (code, why) = refused(&nodes[0], Method::POST, "/v1/rollback/roll?to=9");
    assert_eq!(code, StatusCode::NOT_FOUND, "{why}");
    assert!(why.contains("no version 9"), "{why}");
    let (code, why) = refused(&nodes[0], Method::GET, "/v1/rollouts/r-000000000000");
    assert_eq!(code, StatusCode::NOT_FOUND, "{why}");
    let (code, why) = refused(
        &nodes[2],
        Method::POST,
        &format!("/v1/rollouts/{first}/cancel"),
    );
    assert_eq!(code, StatusCode::CONFLICT, "{why}");
    assert!(why.contains("has ended (finished)"), "{why}");
    let (code, why) = refused(&nodes[2], Method::POST, "/v1/rollback/nothing");
    assert_eq!(code, StatusCode::NOT_FOUND, "{why}");
    assert!(metric(&nodes[0].metrics(), "aether_workflow_steps_total") >= 1.0);
}

#[test]
fn a_rollout_whose_driver_is_killed_finishes_on_another_node() {
    let operator = Operator::new();
    let scratch = tempfile::tempdir().expect("scratch");
    let mut nodes = lattice(&[234, 235, 236], scratch.path(), &operator);

    // The Python component takes seconds to compile: the driver dies during the precompile step.
    let aetherfile = "name = \"py\"\ncomponent = \"py.wasm\"\n[http]\nroutes = [\"/py\"]\n";
    let essence = operator.seal(aetherfile, &fixture("hello-py"));
    let id = start(&nodes[0], essence);
    eventually("the precompile step runs", Duration::from_secs(60), || {
        try_status(&nodes[1], &id).unwrap_or_default()["steps"]
            .as_array()
            .is_some_and(|s| {
                s.iter()
                    .any(|s| s["name"] == "precompile" && s["state"] == "running")
            })
    });
    nodes[0].sigkill();
    let end = wait_state(&nodes[1], &id, "finished", Duration::from_secs(240));
    let leases = end["leases"].as_array().expect("leases");
    assert!(leases.len() >= 2, "a takeover is recorded: {end}");
    assert_ne!(
        leases.last().expect("lease")["node"],
        leases[0]["node"],
        "{end}"
    );
    for n in &nodes[1..] {
        let r = n.request("GET", "/py", b"");
        assert_eq!(r.status, 200, "{}", n.stderr());
        let misses = metric(&n.metrics(), "aether_compile_cache_misses_total");
        assert_eq!(misses, 1.0, "each node compiled the new version once");
    }
    eprintln!(
        "takeover: {}",
        serde_json::to_string(&leases).unwrap_or_default()
    );

    // At a step boundary: the rollout is paused between two steps, its driver killed there,
    // and resumed through the last node; the steps done before the kill are not run again.
    // Hold the rollout once its distribute step runs (every node then holds the essence, which
    // the survivor needs); should it finish first, try again with another version.
    let mut held = None;
    for attempt in 0..3 {
        let v = operator.seal(&probe_aetherfile(&format!("b{attempt}")), &fixture("probe"));
        let id = start(&nodes[1], v);
        let steps = |state: &str| -> Vec<Value> {
            try_status(&nodes[1], &id).unwrap_or_default()["steps"]
                .as_array()
                .map(|s| s.iter().filter(|s| s["state"] == state).cloned().collect())
                .unwrap_or_default()
        };
        eventually(
            "the distribute step runs or is done",
            Duration::from_secs(60),
            || {
                steps("done").len() >= 2
                    || steps("running").iter().any(|s| s["name"] == "distribute")
            },
        );
        let _ = nodes[1].admin_json(
            Method::POST,
            &format!("/v1/rollouts/{id}/pause"),
            Vec::new(),
        );
        // Paused between two steps: nothing more is recorded.
        let mut done = steps("done");
        eventually("the rollout holds still", Duration::from_secs(60), || {
            std::thread::sleep(Duration::from_millis(700));
            let now = steps("done");
            let still = now.len() == done.len();
            done = now;
            still
        });
        if done.len() < 5 {
            held = Some((id, done, format!("b{attempt}")));
            break;
        }
    }
    let (id, done, version) = held.expect("a rollout held between two steps in 3 attempts");
    nodes[1].sigkill();
    let _ = nodes[2].admin_json(
        Method::POST,
        &format!("/v1/rollouts/{id}/resume"),
        Vec::new(),
    );
    let end = wait_state(&nodes[2], &id, "finished", Duration::from_secs(120));
    let steps = end["steps"].as_array().expect("steps");
    assert_eq!(steps.len(), 5, "{end:#}");
    for (before, after) in done.iter().zip(steps) {
        assert_eq!(
            before["epoch"], after["epoch"],
            "a step done before the kill ran again: {end:#}"
        );
        assert_eq!(before["finished_ms"], after["finished_ms"], "{end:#}");
    }
    assert!(
        steps[done.len()..]
            .iter()
            .all(|s| s["epoch"].as_u64() > Some(1)),
        "the steps after the kill ran under the new epoch: {end:#}"
    );
    assert_eq!(version_served(&nodes[2]), version);
    eprintln!(
        "paused and killed after {} steps; resumed there",
        done.len()
    );
}

#[test]
fn a_drain_moves_replicas_off_a_node_and_undrain_lets_placement_use_it_again() {
    let operator = Operator::new();
    let scratch = tempfile::tempdir().expect("scratch");
    let nodes = lattice(&[237, 238, 239], scratch.path(), &operator);
    // Two components with two replicas each on three nodes: some node hosts both.
    for name in ["one", "two"] {
        let aetherfile = format!(
            "name = \"{name}\"\ncomponent = \"{name}.wasm\"\n[http]\nroutes = [\"/{name}\"]\n[intent]\nreplicas = 2\n"
        );
        let id = start(
            &nodes[0],
            operator.seal(&aetherfile, &fixture("hello-wstd")),
        );
        wait_state(&nodes[0], &id, "finished", Duration::from_secs(120));
    }
    let hosts = |n: &Node, name: &str| -> Vec<String> {
        let s = n.admin_json(Method::GET, &format!("/v1/components/{name}"), Vec::new());
        s["placement"]["hosts"]
            .as_array()
            .map(|h| {
                h.iter()
                    .filter_map(|h| h["node"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut both = Vec::new();
    eventually("the replicas are placed", Duration::from_secs(30), || {
        let (one, two) = (hosts(&nodes[0], "one"), hosts(&nodes[0], "two"));
        both = one.iter().filter(|h| two.contains(h)).cloned().collect();
        one.len() == 2 && two.len() == 2 && !both.is_empty()
    });
    let host = both.remove(0);
    let other = nodes.iter().find(|n| n.id() != host).expect("another node");

    // One deployment moves at a time, each running elsewhere before the next moves.
    let drain = other.admin_json(Method::POST, &format!("/v1/drain/{host}"), Vec::new());
    let drain = drain["rollout"].as_str().expect("workflow id").to_string();
    let end = wait_state(other, &drain, "finished", Duration::from_secs(120));
    let names = step_names(&end);
    assert_eq!(
        names,
        ["cordon", "move:one", "move:two", "move", "mark-drained"],
        "{end}"
    );
    assert_eq!(
        end["steps"][0]["output"]["components"],
        serde_json::json!(["one", "two"])
    );
    for n in &nodes {
        for name in ["one", "two"] {
            let placed = hosts(n, name);
            assert!(
                !placed.contains(&host) && placed.len() == 2,
                "{placed:?}: {name} still on the drained node, or short of replicas"
            );
            assert_eq!(n.request("GET", &format!("/{name}"), b"").status, 200);
        }
    }
    let (code, why) = refused(other, Method::POST, &format!("/v1/drain/{host}x"));
    assert_eq!(code, StatusCode::BAD_REQUEST, "{why}");

    let _ = other.admin_json(Method::DELETE, &format!("/v1/drain/{host}"), Vec::new());
    let (code, why) = refused(other, Method::DELETE, &format!("/v1/drain/{host}"));
    assert_eq!(code, StatusCode::NOT_FOUND, "{why}");
}

#[test]
fn a_route_two_rollouts_claim_goes_to_one_and_an_essence_nobody_holds_fails_the_rollout() {
    let operator = Operator::new();
    let scratch = tempfile::tempdir().expect("scratch");
    let nodes = lattice(&[240, 241, 242], scratch.path(), &operator);

    // Two components claiming one route, rolled out at once through two nodes.
    let claim = |name: &str| {
        format!("name = \"{name}\"\ncomponent = \"{name}.wasm\"\n[http]\nroutes = [\"/same\"]\n")
    };
    let (a, b) = (
        operator.seal(&claim("left"), &fixture("hello-wstd")),
        operator.seal(&claim("right"), &fixture("hello-wstd")),
    );
    let (a, b) = start_both((&nodes[0], a), (&nodes[1], b));
    let states = [wait_ended(&nodes[2], &a), wait_ended(&nodes[2], &b)];
    let finished: Vec<&Value> = states.iter().filter(|s| s["state"] == "finished").collect();
    let superseded: Vec<&Value> = states
        .iter()
        .filter(|s| s["state"] == "superseded")
        .collect();
    assert_eq!((finished.len(), superseded.len()), (1, 1), "{states:#?}");
    assert!(
        superseded[0]["outcome_reason"]
            .as_str()
            .is_some_and(|r| r.contains("belongs to a component deployed first")),
        "{states:#?}"
    );
    for n in &nodes {
        assert_eq!(n.request("GET", "/same", b"").status, 200);
    }

    // A rollback to a version whose essence no node holds any more (its kept copies deleted):
    // the rollout fails with that reason and the current version goes on serving.
    let keep = |v: &str| {
        format!(
            "name = \"keep\"\ncomponent = \"keep.wasm\"\n[http]\nroutes = [\"/keep\"]\n[env]\nV = \"{v}\"\n"
        )
    };
    for v in ["1", "2"] {
        let id = start(&nodes[1], operator.seal(&keep(v), &fixture("hello-wstd")));
        wait_state(&nodes[1], &id, "finished", Duration::from_secs(60));
    }
    let history = nodes[2].admin_json(Method::GET, "/v1/history/keep", Vec::new());
    let gone = history["versions"][0]["essence_hash"]
        .as_str()
        .expect("version 1")
        .to_string();
    for n in &nodes {
        let kept = n
            .data
            .join("essences")
            .join("by-hash")
            .join(format!("{gone}.essence"));
        std::fs::remove_file(&kept).unwrap_or_else(|e| panic!("{}: {e}", kept.display()));
    }
    let back = nodes[2].admin_json(Method::POST, "/v1/rollback/keep?to=1", Vec::new());
    let back = back["rollout"].as_str().expect("rollout").to_string();
    let end = wait_state(&nodes[0], &back, "failed", Duration::from_secs(120));
    assert!(
        end["outcome_reason"]
            .as_str()
            .is_some_and(|r| r.contains("no member could send essence")),
        "{end:#}"
    );
    for n in &nodes {
        let r = n.request("GET", "/keep", b"");
        assert_eq!(r.status, 200, "the current version still serves");
    }
}

#[test]
fn rollouts_of_one_component_on_both_sides_of_a_partition_end_with_one_winner_everywhere() {
    let operator = Operator::new();
    let scratch = tempfile::tempdir().expect("scratch");
    let nodes = lattice(&[243, 244, 245], scratch.path(), &operator);
    let first = start(
        &nodes[0],
        operator.seal(&probe_aetherfile("1"), &fixture("probe")),
    );
    wait_state(&nodes[2], &first, "finished", Duration::from_secs(60));
    let ids: Vec<String> = nodes.iter().map(Node::id).collect();
    let sees_dead = |n: &Node, id: &str| {
        n.members()
            .iter()
            .any(|m| m["id"] == id && m["state"] != "alive" && m["state"] != "suspect")
    };

    let (near, far) = {
        let _partition =
            common::partition::Partition::new(&[nodes[0].ip], &[nodes[1].ip, nodes[2].ip]);
        eventually(
            "each side sees the other dead",
            Duration::from_secs(60),
            || {
                sees_dead(&nodes[0], &ids[1])
                    && sees_dead(&nodes[0], &ids[2])
                    && sees_dead(&nodes[1], &ids[0])
            },
        );
        // The near side starts first and is held before its switch; the far side starts later
        // and finishes; then the near side switches, later than the far side did, so the
        // state's merge rule alone would keep the near side's record. The far side's rollout,
        // started later, must win.
        let near = start(
            &nodes[0],
            operator.seal(&probe_aetherfile("near"), &fixture("probe")),
        );
        let _ = nodes[0].admin_json(
            Method::POST,
            &format!("/v1/rollouts/{near}/pause"),
            Vec::new(),
        );
        std::thread::sleep(Duration::from_millis(50));
        let far = start(
            &nodes[1],
            operator.seal(&probe_aetherfile("far"), &fixture("probe")),
        );
        wait_state(&nodes[1], &far, "finished", Duration::from_secs(60));
        let _ = nodes[0].admin_json(
            Method::POST,
            &format!("/v1/rollouts/{near}/resume"),
            Vec::new(),
        );
        wait_state(&nodes[0], &near, "finished", Duration::from_secs(60));
        assert_eq!(version_served(&nodes[0]), "near");
        assert_eq!(version_served(&nodes[2]), "far");
        (near, far)
    };
    eventually("the lattice heals", Duration::from_secs(90), || {
        nodes.iter().all(|n| n.sees_alive(&ids))
    });
    eventually(
        "every node serves the later rollout's version",
        Duration::from_secs(60),
        || nodes.iter().all(|n| version_served(n) == "far"),
    );
    for n in &nodes {
        let near = wait_state(n, &near, "superseded", Duration::from_secs(30));
        assert!(
            near["outcome_reason"]
                .as_str()
                .is_some_and(|r| r.contains(&far)),
            "{near:#}"
        );
        wait_state(n, &far, "finished", Duration::from_secs(30));
    }
}
