//! An intent's constraints hold when its hosts cannot be reached: a node that does not meet a
//! component's labels answers 503, naming the unmet constraint and the hosts it tried, instead
//! of serving the request itself; a component without constraints is still served by the node
//! asked when its host does not answer. Real processes on 127.0.0.26–28, a host frozen with
//! SIGSTOP.

mod common;

use std::time::Duration;

use common::block_on;
use common::cluster::{Node, Operator, eventually, fixture, join_args, metric, placed_hosts};
use http::Method;
use serde_json::Value;

/// The hosts `node`'s placement gives `name`, as the status lists them (none before it knows
/// the component).
fn hosts(node: &Node, name: &str) -> Vec<String> {
    let status: Value = block_on(node.client().json(
        Method::GET,
        &format!("/v1/components/{name}"),
        bytes::Bytes::new(),
    ))
    .unwrap_or(Value::Null);
    placed_hosts(&status)
}

#[test]
fn a_node_outside_the_intent_refuses_what_it_cannot_forward() {
    let operator = Operator::new();
    let scratch = tempfile::tempdir().expect("scratch");
    let mut nodes: Vec<Node> = [26, 27, 28]
        .iter()
        .map(|o| Node::new(*o, scratch.path(), &operator))
        .collect();
    nodes[0].start(&[]);
    let invite = operator.invite();
    let join = join_args(&nodes[0], Some(&invite));
    nodes[1].start(&join);
    nodes[2].start(&[join, vec!["--label".into(), "home=a".into()]].concat());
    let ids: Vec<String> = nodes.iter().map(Node::id).collect();
    eventually("three members", Duration::from_secs(30), || {
        nodes.iter().all(|n| n.sees_alive(&ids))
    });

    // `pinned` (the probe's /echo) may only run on the node labelled home=a; `free` (its
    // /headers) anywhere, one replica.
    let pinned = "name = \"pinned\"\ncomponent = \"pinned.wasm\"\n[http]\nroutes = [\"/echo\"]\n[intent]\nlabels = { home = \"a\" }\n";
    let free = "name = \"free\"\ncomponent = \"free.wasm\"\n[http]\nroutes = [\"/headers\"]\n[intent]\nreplicas = 1\n";
    let probe = fixture("probe");
    let _ = nodes[0].deploy(operator.seal(pinned, &probe));
    let _ = nodes[0].deploy(operator.seal(free, &probe));
    // Node ids as the ingress names them: the key's first 12 characters.
    let short = |n: &Node| {
        let id = n.id();
        id.trim_start_matches("ed25519:")[..12].to_string()
    };
    let mut free_host = String::new();
    eventually(
        "both are placed, alike in every view, and served",
        Duration::from_secs(60),
        || {
            let placed = hosts(&nodes[0], "pinned");
            let free_hosts: Vec<Vec<String>> = nodes.iter().map(|n| hosts(n, "free")).collect();
            free_host = free_hosts[0].first().cloned().unwrap_or_default();
            placed.len() == 1
                && placed[0] == nodes[2].id()
                && !free_host.is_empty()
                && free_hosts.iter().all(|h| *h == [free_host.clone()])
                && nodes
                    .iter()
                    .all(|n| n.request("GET", "/echo", b"").status == 200)
        },
    );
    // Ask through a node that hosts neither; freeze the hosts of both.
    let host_of_free = nodes
        .iter()
        .position(|n| n.id() == free_host)
        .expect("free's host is a member");
    let via = if host_of_free == 0 { 1 } else { 0 };
    let mut frozen = vec![2];
    if host_of_free != 2 {
        frozen.push(host_of_free);
    }
    eprintln!(
        "asking {} with {:?} frozen",
        short(&nodes[via]),
        frozen.iter().map(|&i| short(&nodes[i])).collect::<Vec<_>>()
    );
    for &i in &frozen {
        nodes[i].signal("-STOP");
    }

    let refused = nodes[via].request("GET", "/echo", b"");
    let free_answer = nodes[via].request("GET", "/headers", b"");
    for &i in &frozen {
        nodes[i].signal("-CONT");
    }
    assert_eq!(refused.status, 503, "{refused:?}");
    assert!(
        refused.body.contains("does not meet its intent")
            && refused.body.contains("home")
            && refused.body.contains(&short(&nodes[2])),
        "names the constraint and the host tried: {}",
        refused.body
    );
    assert_eq!(refused.header("aether-unmet-constraint"), Some("label"));
    assert_eq!(
        metric(
            &nodes[via].metrics(),
            "aether_forward_refused_constraint_total{component=\"pinned\",constraint=\"label\"}"
        ),
        1.0
    );
    // No constraint: answered all the same, by the node asked itself or, once membership has
    // moved the replica off the frozen host, by its new host.
    assert_eq!(free_answer.status, 200, "{free_answer:?}");
    let answered_by = free_answer.header("aether-forwarded-to").unwrap_or("");
    assert!(
        frozen.iter().all(|&i| short(&nodes[i]) != answered_by),
        "{free_answer:?}"
    );

    // Thawed, the pinned host serves again through every node.
    eventually("the host serves again", Duration::from_secs(60), || {
        nodes
            .iter()
            .all(|n| n.request("GET", "/echo", b"").status == 200)
    });
    let served: Value = nodes[2].admin_json(Method::GET, "/v1/components/pinned", Vec::new());
    assert_eq!(served["name"], "pinned");
}
