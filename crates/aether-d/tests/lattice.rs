//! Multi-process lattice tests: real `aether-d` processes on loopback
//! addresses (127.0.0.131–137, 141–148 and 151–155), default mesh port, joined
//! with invites; real SIGKILL and SIGTERM.

mod common;

use std::net::Ipv4Addr;
use std::path::Path;
use std::time::Duration;

use aether_identity::{InviteToken, Labels, NodeCertificate, SecretKey};
use bytes::Bytes;
use common::block_on;
use common::cluster::{Node, Operator, eventually, join_args, unix_now};
use common::partition::Partition;
use http::Method;
use serde_json::Value;

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
    let invite = operator.invite();
    for i in 1..5 {
        let mut args = join_args(&nodes[0], Some(&invite));
        if i == 4 {
            // Joining through a node's admin address finds its mesh port too.
            args[1] = nodes[0].admin().to_string();
        }
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
    let single = operator.invite_single_use();
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
    foreign.start(&join_args(&seed, Some(&other.invite())));
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
    preadmitted_data_dir(&forged.data, &operator, &operator.invite(), unix_now());
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
    doomed.start(&join_args(&seed, Some(&operator.invite())));
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
    // Refused by a node's QUIC stack, or, where the eBPF admission filter runs, dropped in the
    // kernel before that.
    let dropped_in_kernel = |node: &Node| {
        let needle = format!(
            "aether_ebpf_dropped_packets_total{{source=\"{}\"}} ",
            doomed.ip
        );
        node.metrics()
            .lines()
            .find_map(|l| l.strip_prefix(&needle))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .is_some_and(|v| v > 0.0)
    };
    eventually(
        "the revoked node is refused when it reconnects",
        Duration::from_secs(20),
        || {
            refused_count(&first, "revoked") >= 1
                || refused_count(&seed, "revoked") >= 1
                || dropped_in_kernel(&first)
                || dropped_in_kernel(&seed)
        },
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
    let invite = operator.invite();
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

#[test]
fn nodes_advertise_built_in_labels_and_the_capacity_they_are_given() {
    let operator = Operator::new();
    let scratch = tempfile::tempdir().expect("scratch");
    let mut small = Node::new(136, scratch.path(), &operator);
    let mut other = Node::new(137, scratch.path(), &operator);

    // What a node may not claim is refused before it starts.
    for (args, expected) in [
        (
            vec!["--max-memory", "0MiB"],
            "--max-memory must be more than 0",
        ),
        (vec!["--max-memory", "1PiB"], "never more"),
        (vec!["--max-cores", "0"], "--max-cores 0"),
        (vec!["--label", "arch=riscv64"], "built-in label"),
    ] {
        small.spawn(&args.iter().map(|a| a.to_string()).collect::<Vec<_>>());
        let (status, stderr) = small.wait_exit(Duration::from_secs(20));
        assert!(!status.success(), "{args:?} was accepted");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }

    small.start(&[
        "--max-memory".into(),
        "256MiB".into(),
        "--max-cores".into(),
        "1".into(),
        "--label".into(),
        "tier=edge".into(),
    ]);
    other.start(&join_args(&small, Some(&operator.invite())));
    let small_id = small.id();
    let row = || {
        other
            .members()
            .into_iter()
            .find(|m| m["id"] == small_id.as_str() && m["state"] == "alive")
    };
    eventually(
        "the other node sees the small one",
        Duration::from_secs(30),
        || row().is_some(),
    );
    let row = row().expect("row");
    let labels = &row["labels"];
    assert_eq!(labels["arch"], std::env::consts::ARCH, "{row}");
    assert_eq!(labels["os"], std::env::consts::OS, "{row}");
    assert_eq!(labels["cores"], "1", "{row}");
    assert_eq!(labels["memory"], "256MiB", "{row}");
    assert_eq!(labels["tier"], "edge", "{row}");
    assert_eq!(row["capacity"]["memory_bytes"], 256u64 << 20, "{row}");
    assert_eq!(row["capacity"]["cores"], 1, "{row}");
    // The other node advertises all of its machine.
    let own = other
        .members()
        .into_iter()
        .find(|m| m["is_self"] == true)
        .expect("self row");
    let memory = own["capacity"]["memory_bytes"].as_u64().unwrap_or(0);
    assert!(memory > 256 << 20, "{own}");
    assert_eq!(
        own["labels"]["memory"],
        format!("{}MiB", memory >> 20),
        "{own}"
    );
}
