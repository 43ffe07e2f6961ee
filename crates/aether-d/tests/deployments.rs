//! Deploy once, to any node, and every node of the lattice serves it:
//! deployments travel through the lattice state, essences are fetched from
//! members that hold them, and a removal reaches every node. Real processes
//! on 127.0.0.171–174.

mod common;

use std::time::Duration;

use common::cluster::{Node, Operator, eventually, fixture, join_args, lattice};
use http::Method;

fn aetherfile(name: &str, route: &str) -> String {
    format!("name = \"{name}\"\ncomponent = \"{name}.wasm\"\n[http]\nroutes = [\"{route}\"]\n")
}

#[test]
fn a_deploy_to_one_node_is_served_by_every_node_and_a_removal_reaches_all() {
    let operator = Operator::new();
    let scratch = tempfile::tempdir().expect("scratch");
    let nodes = lattice(&[171, 172, 173], scratch.path(), &operator);
    let invite = operator.invite();

    let essence = operator.seal(&aetherfile("hello", "/hello"), &fixture("hello-wstd"));
    nodes[1].deploy(essence);
    let took = eventually(
        "every node serves the component",
        Duration::from_secs(60),
        || {
            nodes
                .iter()
                .all(|n| n.request("GET", "/hello", b"").status == 200)
        },
    );
    eprintln!("deployed on node 2, served by all three after {took:?}");
    for n in &nodes {
        let status = n.admin_json(Method::GET, "/v1/components/hello", Vec::new());
        assert_eq!(status["name"], "hello", "{status}");
    }

    // A node that joins later gets the deployment too.
    let mut late = Node::new(174, scratch.path(), &operator);
    late.start(&join_args(&nodes[2], Some(&invite)));
    eventually(
        "the late joiner serves the component",
        Duration::from_secs(60),
        || late.request("GET", "/hello", b"").status == 200,
    );

    // Removing it on one node removes it everywhere.
    let _ = nodes[2].admin_json(Method::DELETE, "/v1/components/hello", Vec::new());
    eventually(
        "every node stops serving it",
        Duration::from_secs(60),
        || {
            nodes
                .iter()
                .chain(std::iter::once(&late))
                .all(|n| n.request("GET", "/hello", b"").status == 404)
        },
    );
}
