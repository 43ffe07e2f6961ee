//! `wasi:keyvalue` across a real lattice: two `aether-d` processes on
//! 127.0.0.161–162 (default mesh port), the `kv-counter` test component
//! (built from source by `scripts/build-fixtures.sh`) deployed to both.
//! What a component writes on one node, the same component reads on the
//! other; a component whose Aetherfile does not grant the bucket is refused.

mod common;

use std::time::Duration;

use common::cluster::{Node, Operator, eventually, fixture, join_args};
use http::Method;

/// The Aetherfile of `name`, serving `route`, granted `buckets`; one replica
/// on each of the two nodes, so each node's requests run on that node.
fn aetherfile(name: &str, route: &str, buckets: &[&str]) -> String {
    let buckets: Vec<String> = buckets.iter().map(|b| format!("\"{b}\"")).collect();
    format!(
        "name = \"{name}\"\ncomponent = \"kv-counter.wasm\"\n[http]\nroutes = [\"{route}\"]\n\
         [intent]\nreplicas = 2\n[capabilities]\nkeyvalue = [{}]\n",
        buckets.join(", ")
    )
}

#[test]
fn a_component_reads_on_one_node_what_it_wrote_on_another_and_ungranted_buckets_are_refused() {
    let operator = Operator::new();
    let scratch = tempfile::tempdir().expect("scratch");
    let mut a = Node::new(161, scratch.path(), &operator);
    let mut b = Node::new(162, scratch.path(), &operator);
    a.start(&[]);
    b.start(&join_args(&a, Some(&operator.invite())));
    let ids = [a.id(), b.id()];
    eventually("both nodes see both alive", Duration::from_secs(30), || {
        a.sees_alive(&ids) && b.sees_alive(&ids)
    });

    // The same component on both nodes, granted `counters`; and, under
    // another route, the same code without any bucket granted.
    let wasm = fixture("kv-counter");
    let granted = operator.seal(&aetherfile("kv-counter", "/kv", &["counters"]), &wasm);
    let stranger = operator.seal(&aetherfile("kv-stranger", "/stranger", &[]), &wasm);
    for node in [&a, &b] {
        node.deploy(granted.clone());
        node.deploy(stranger.clone());
    }
    // Both nodes host both (placement settles within a moment of the deploy).
    eventually(
        "each node hosts its replica",
        Duration::from_secs(30),
        || {
            [&a, &b].iter().all(|n| {
                ["kv-counter", "kv-stranger"].iter().all(|c| {
                    n.admin_json(Method::GET, &format!("/v1/components/{c}"), Vec::new())["state"]
                        != "standby"
                })
            })
        },
    );

    // Writes through node A's component; A reads them back at once.
    let set = a.request("POST", "/kv/set?key=greeting", b"hello from A");
    assert_eq!(
        (set.status, set.body.as_str()),
        (200, "ok"),
        "{}",
        a.stderr()
    );
    for expected in ["1", "2", "3"] {
        let r = a.request("POST", "/kv/incr?key=hits", b"");
        assert_eq!((r.status, r.body.as_str()), (200, expected), "{r:?}");
    }
    let r = a.request("GET", "/kv/get?key=greeting", b"");
    assert_eq!((r.status, r.body.as_str()), (200, "hello from A"));

    // Node B's component sees them, eventually (served on B, not forwarded).
    let r = b.request("GET", "/kv/get?key=nothing", b"");
    assert!(r.header("aether-forwarded-to").is_none(), "{r:?}");
    let took = eventually(
        "node B's component reads what node A's wrote",
        Duration::from_secs(30),
        || {
            let greeting = b.request("GET", "/kv/get?key=greeting", b"");
            let hits = b.request("GET", "/kv/get?key=hits", b"");
            greeting.status == 200
                && greeting.body == "hello from A"
                && hits.status == 200
                && hits.body == "3"
        },
    );
    eprintln!("visible on node B {took:?} after the write on node A");
    let keys = b.request("GET", "/kv/keys", b"");
    assert_eq!((keys.status, keys.body.as_str()), (200, "greeting\nhits"));

    // Written back on B, read on A: the other direction.
    let r = b.request("POST", "/kv/incr?key=hits&by=10", b"");
    assert_eq!((r.status, r.body.as_str()), (200, "13"), "{r:?}");
    eventually(
        "node A's component reads what node B's wrote",
        Duration::from_secs(30),
        || {
            let r = a.request("GET", "/kv/get?key=hits", b"");
            r.status == 200 && r.body == "13"
        },
    );

    // In the lattice state, the component's bucket is `app:counters`.
    let entry = b.admin_json(Method::GET, "/v1/kv/app:counters?key=greeting", Vec::new());
    assert_eq!(entry["value"], "hello from A", "{entry}");

    // Refusals: a component without the grant, and a bucket not granted.
    for (node, path, bucket) in [
        (&b, "/stranger/get?key=greeting", "counters"),
        (&a, "/stranger/set?key=greeting", "counters"),
        (&b, "/kv/get?key=greeting&bucket=secret", "secret"),
    ] {
        let r = node.request("POST", path, b"overwritten?");
        assert_eq!(
            (r.status, r.body.clone()),
            (403, format!("access-denied: bucket `{bucket}`")),
            "{path} on {}",
            node.ip
        );
    }
    let logs = b.logs("kv-stranger");
    assert!(
        logs.contains("bucket `counters` denied")
            && logs.contains("capabilities.keyvalue")
            && logs.contains("granted: none"),
        "{logs}"
    );
    // The refused write changed nothing.
    let r = a.request("GET", "/kv/get?key=greeting", b"");
    assert_eq!((r.status, r.body.as_str()), (200, "hello from A"));
}
