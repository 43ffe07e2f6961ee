//! The lattice serves: placement puts replicas where the intent says, every
//! node serves every component (forwarding to a host over the mesh), a
//! killed host's replicas come back elsewhere by themselves, and
//! `replicas = { min, max }` scales with load and down to zero. Real
//! processes on 127.0.0.181–196, killed with real signals.

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::cluster::{
    Node, Operator, eventually, fixture, join_args, lattice, metric, placed_hosts,
};
use common::http::try_request;
use common::partition::Partition;
use http::Method;
use serde_json::Value;

fn aetherfile(name: &str, route: &str, extra: &str) -> String {
    format!(
        "name = \"{name}\"\ncomponent = \"{name}.wasm\"\n[http]\nroutes = [\"{route}\"]\n{extra}"
    )
}

/// `GET /v1/components/NAME` on `node`.
fn component(node: &Node, name: &str) -> Value {
    node.admin_json(Method::GET, &format!("/v1/components/{name}"), Vec::new())
}

/// The hosts `node`'s placement gives `name`.
fn hosts(node: &Node, name: &str) -> BTreeSet<String> {
    placed_hosts(&component(node, name)).into_iter().collect()
}

#[test]
fn replicas_land_by_intent_every_node_serves_and_a_killed_host_is_replaced() {
    let operator = Operator::new();
    let scratch = tempfile::tempdir().expect("scratch");
    let mut nodes = lattice(&[181, 182, 183, 184, 185], scratch.path(), &operator);
    let ids: Vec<String> = nodes.iter().map(Node::id).collect();

    let essence = operator.seal(
        &aetherfile("probe", "/", "[intent]\nreplicas = 2\n"),
        &fixture("probe"),
    );
    nodes[0].deploy(essence);
    let took = eventually(
        "every node serves the component",
        Duration::from_secs(60),
        || {
            nodes
                .iter()
                .all(|n| n.request("GET", "/", b"").status == 200)
        },
    );
    eprintln!("deployed on node 1, served by all five after {took:?}");

    // Two hosts, the same on every node; the others hold it on standby.
    let placed = hosts(&nodes[0], "probe");
    assert_eq!(placed.len(), 2, "{}", component(&nodes[0], "probe"));
    eventually(
        "every node agrees on the hosts",
        Duration::from_secs(10),
        || nodes.iter().all(|n| hosts(n, "probe") == placed),
    );
    eventually("both hosts run it", Duration::from_secs(10), || {
        let status = component(&nodes[0], "probe");
        status["placement"]["running"] == 2
    });
    let running_here: Vec<bool> = nodes
        .iter()
        .map(|n| component(n, "probe")["state"] != "standby")
        .collect();
    assert_eq!(running_here.iter().filter(|r| **r).count(), 2);
    for (n, id) in nodes.iter().zip(&ids) {
        assert_eq!(
            placed.contains(id),
            component(n, "probe")["state"] != "standby"
        );
    }

    // A node that does not host it forwards, with X-Forwarded-* set and
    // hop-by-hop headers dropped; a body streams through both ways.
    let standby = nodes
        .iter()
        .zip(&ids)
        .find(|(_, id)| !placed.contains(*id))
        .map(|(n, _)| n)
        .expect("a standby node");
    let resp = try_request(
        standby.http(),
        "GET",
        "/headers",
        &[
            ("x-custom", "kept".to_string()),
            ("connection", "close, x-hop".to_string()),
            ("x-hop", "dropped".to_string()),
        ],
        b"",
    )
    .expect("request");
    assert_eq!(resp.status, 200, "{}", resp.body);
    assert!(resp.header("aether-forwarded-to").is_some(), "{resp:?}");
    let body = resp.body.to_ascii_lowercase();
    assert!(body.contains("x-custom: kept"), "{body}");
    assert!(body.contains("x-forwarded-for: 127.0.0.1"), "{body}");
    assert!(body.contains("x-forwarded-proto: http"), "{body}");
    assert!(body.contains("x-forwarded-host:"), "{body}");
    assert!(!body.contains("x-hop"), "{body}");
    let big: Vec<u8> = (0..3_000_000u32).map(|i| b'a' + (i % 26) as u8).collect();
    let echoed = try_request(standby.http(), "POST", "/echo", &[], &big).expect("echo");
    assert_eq!(echoed.status, 200);
    assert_eq!(
        echoed.body.as_bytes(),
        &big[..],
        "3 MB echoed through a forward"
    );
    // Both replicas are about as near as each other: the forwarding node
    // spreads its requests over them instead of sending all to one. (Until
    // both round trips are known it may not; hence a few rounds.)
    let mut shares = std::collections::BTreeMap::new();
    for _ in 0..20 {
        shares.clear();
        for _ in 0..20 {
            let resp = try_request(standby.http(), "GET", "/headers", &[], b"").expect("request");
            assert_eq!(resp.status, 200, "{}", resp.body);
            let host = resp
                .header("aether-forwarded-to")
                .unwrap_or("?")
                .to_string();
            *shares.entry(host).or_insert(0u32) += 1;
        }
        if shares.len() == 2 && shares.values().all(|n| *n >= 5) {
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    assert!(
        shares.len() == 2 && shares.values().all(|n| *n >= 5),
        "20 requests through one forwarding node, by host: {shares:?}"
    );
    // They left from the ingress threads' own endpoints, straight to the
    // hosts' ingress threads.
    let direct = metric(&standby.metrics(), "aether_forward_direct_requests_total");
    assert!(
        direct >= 20.0,
        "{direct} requests forwarded directly:\n{}",
        standby.metrics()
    );

    // SIGKILL one host while a bounded load runs through the other nodes.
    let victim = ids
        .iter()
        .position(|id| placed.contains(id))
        .expect("a host");
    let victim_id = ids[victim].clone();
    let survivors: Vec<std::net::SocketAddr> = nodes
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != victim)
        .map(|(_, n)| n.http())
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let load: Vec<_> = (0..4)
        .map(|t| {
            let (stop, ok, failed, survivors) =
                (stop.clone(), ok.clone(), failed.clone(), survivors.clone());
            std::thread::spawn(move || {
                let deadline = Instant::now() + Duration::from_secs(60);
                let mut i = t;
                while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                    let addr = survivors[i % survivors.len()];
                    i += 1;
                    match try_request(addr, "GET", "/", &[], b"") {
                        Ok(r) if r.status == 200 => ok.fetch_add(1, Ordering::Relaxed),
                        _ => failed.fetch_add(1, Ordering::Relaxed),
                    };
                    std::thread::sleep(Duration::from_millis(20));
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let killed = Instant::now();
    nodes[victim].sigkill();
    let observer_index = if victim == 0 { 1 } else { 0 };
    let observer = &nodes[observer_index];
    let restored = eventually(
        "the killed host's replica is placed and running elsewhere",
        Duration::from_secs(60),
        || {
            let status = component(observer, "probe");
            let now: BTreeSet<String> = status["placement"]["hosts"]
                .as_array()
                .map(|h| {
                    h.iter()
                        .filter_map(|h| h["node"].as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default();
            now.len() == 2 && !now.contains(&victim_id) && status["placement"]["running"] == 2
        },
    );
    std::thread::sleep(Duration::from_secs(1));
    stop.store(true, Ordering::Relaxed);
    for t in load {
        t.join().expect("load thread");
    }
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    eprintln!(
        "kill → replica restored in {restored:?} ({:?} after the kill); requests during it: {ok} ok, {failed} failed ({:.2} % failed)",
        killed.elapsed(),
        100.0 * failed as f64 / (ok + failed).max(1) as f64
    );
    assert!(ok > 0);
    assert!(
        failed * 20 <= ok + failed,
        "more than 5 % of requests failed: {failed} of {}",
        ok + failed
    );
    let status = component(observer, "probe");
    let changes = status["placement"]["changes"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(
        changes.iter().any(|c| c["removed"]
            .as_array()
            .is_some_and(|r| r.iter().any(|r| r == victim_id.as_str()))),
        "the change is recorded: {status}"
    );

    // The moves and the forwarding are counted.
    let metrics = observer.metrics();
    assert!(
        metric(&metrics, "aether_placement_changes_total") >= 1.0,
        "{metrics}"
    );
    assert!(
        metric(&metrics, "aether_placement_recomputations_total") >= 1.0,
        "{metrics}"
    );
    let forwarded: f64 = nodes
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != victim)
        .map(|(_, n)| metric(&n.metrics(), "aether_forward_requests_total"))
        .sum();
    assert!(forwarded > 0.0, "standby nodes forwarded requests");

    // The node rejoins from its data directory: the ranking gives it its
    // replica back, and nothing else moves.
    let invite = operator.invite();
    let seed = if victim == 0 { 1 } else { 0 };
    let args = join_args(&nodes[seed], Some(&invite));
    nodes[victim].start(&args);
    eventually(
        "the rejoined node hosts what the ranking gives it",
        Duration::from_secs(60),
        || hosts(&nodes[observer_index], "probe") == placed,
    );
}

#[test]
fn bad_intents_are_reported_routes_collide_and_missing_essences_are_logged() {
    let operator = Operator::new();
    let scratch = tempfile::tempdir().expect("scratch");
    let nodes = lattice(&[186, 187, 188], scratch.path(), &operator);

    // An intent no member satisfies: deployed, reported, and answered 503.
    let essence = operator.seal(
        &aetherfile("marsonly", "/mars", "[intent]\nregions = [\"mars\"]\n"),
        &fixture("hello-wstd"),
    );
    nodes[0].deploy(essence);
    eventually("every node has it", Duration::from_secs(60), || {
        nodes.iter().all(|n| {
            n.admin_json(Method::GET, "/v1/status", Vec::new())["components"]
                .as_array()
                .is_some_and(|c| c.iter().any(|c| c["name"] == "marsonly"))
        })
    });
    eventually(
        "placement reports the region",
        Duration::from_secs(10),
        || {
            let status = component(&nodes[1], "marsonly");
            status["placement"]["unsatisfied"]
                .as_array()
                .is_some_and(|u| u.iter().any(|u| u["constraint"] == "regions"))
        },
    );
    let status = component(&nodes[1], "marsonly");
    assert_eq!(status["placement"]["placed"], 0, "{status}");
    let ranking = status["placement"]["ranking"].as_array().expect("ranking");
    assert_eq!(ranking.len(), 3);
    assert!(
        ranking.iter().all(|r| r["eligible"] == false
            && r["reason"].as_str().is_some_and(|s| s.contains("region"))),
        "{status}"
    );
    for n in &nodes {
        let r = n.request("GET", "/mars", b"");
        assert_eq!(
            r.status,
            503,
            "{r:?} from {}: {}\n{}",
            n.ip,
            component(n, "marsonly"),
            n.stderr()
        );
        assert!(r.body.contains("regions"), "{}", r.body);
    }

    // A route another deployment has is refused, and nothing changes.
    let hello = operator.seal(&aetherfile("hello", "/hello", ""), &fixture("hello-wstd"));
    nodes[2].deploy(hello);
    eventually("every node serves hello", Duration::from_secs(60), || {
        nodes
            .iter()
            .all(|n| n.request("GET", "/hello", b"").status == 200)
    });
    let clash = operator.seal(&aetherfile("clash", "/hello", ""), &fixture("probe"));
    let refused = common::block_on(nodes[0].client().json::<Value>(
        Method::POST,
        "/v1/deploy",
        bytes::Bytes::from(clash),
    ));
    let err = match refused {
        Ok(v) => panic!(
            "a colliding route must be refused: {v}\n{}",
            nodes[0].stderr()
        ),
        Err(e) => format!("{e:?}"),
    };
    assert!(err.contains("hello"), "{err}");
    for n in &nodes {
        assert_eq!(n.request("GET", "/nothing-here", b"").status, 404);
    }

    // A deployment whose essence no member holds: logged, never served,
    // nothing else disturbed.
    let record = serde_json::json!({
        "name": "ghost",
        "essence_hash": "ab".repeat(32),
        "size": 1234,
        "publisher": "ed25519:none",
        "deployed_at": 0,
    });
    nodes[0].admin_json(
        Method::PUT,
        "/v1/kv/sys:deployments?key=ghost",
        serde_json::to_vec(&record).expect("json"),
    );
    eventually(
        "a node says it cannot fetch the essence",
        Duration::from_secs(60),
        || {
            nodes
                .iter()
                .any(|n| n.stderr().contains("no member could send the essence"))
        },
    );
    let asked = common::block_on(nodes[1].client().json::<Value>(
        Method::GET,
        "/v1/components/ghost",
        bytes::Bytes::new(),
    ));
    let err = format!("{:?}", asked.expect_err("ghost is not here"));
    assert!(err.contains("no member could send it"), "{err}");
    for n in &nodes {
        assert_eq!(n.request("GET", "/hello", b"").status, 200);
        let names = n.admin_json(Method::GET, "/v1/status", Vec::new());
        assert!(
            !names["components"]
                .as_array()
                .is_some_and(|c| c.iter().any(|c| c["name"] == "ghost")),
            "{names}"
        );
    }
    // Removing it is possible all the same.
    nodes[2].admin_json(Method::DELETE, "/v1/components/ghost", Vec::new());
}

#[test]
fn replicas_scale_up_under_load_down_after_it_and_to_zero_then_back() {
    let operator = Operator::new();
    let scratch = tempfile::tempdir().expect("scratch");
    let nodes = lattice(&[191, 192, 193], scratch.path(), &operator);
    let essence = operator.seal(
        &aetherfile(
            "probe",
            "/",
            "[limits]\nmax_concurrency = 4\n[intent]\nreplicas = { min = 0, max = 3 }\nidle_timeout = \"3s\"\n",
        ),
        &fixture("probe"),
    );
    nodes[0].deploy(essence);
    eventually("every node serves it", Duration::from_secs(60), || {
        nodes
            .iter()
            .all(|n| n.request("GET", "/", b"").status == 200)
    });
    let placement = |n: &Node| component(n, "probe")["placement"].clone();
    assert_eq!(placement(&nodes[0])["desired"], 1);

    // Bounded load: 8 clients of a 150 ms route for at most 25 s. One
    // replica takes 4 at once (the rest get 503 with Retry-After); three
    // take them all.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, busy) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let addrs: Vec<_> = nodes.iter().map(Node::http).collect();
    let load: Vec<_> = (0..8)
        .map(|t| {
            let (stop, addrs, ok, busy) = (stop.clone(), addrs.clone(), ok.clone(), busy.clone());
            std::thread::spawn(move || {
                let deadline = Instant::now() + Duration::from_secs(25);
                while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                    match try_request(addrs[t % addrs.len()], "GET", "/sleep?ms=150", &[], b"") {
                        Ok(r) if r.status == 200 => ok.fetch_add(1, Ordering::Relaxed),
                        _ => busy.fetch_add(1, Ordering::Relaxed),
                    };
                }
            })
        })
        .collect();
    let up = eventually("scaled up to 3 under load", Duration::from_secs(18), || {
        let p = placement(&nodes[1]);
        p["desired"] == 3 && p["running"] == 3
    });
    eprintln!(
        "scaled up to 3 replicas {up:?} into the load ({} ok, {} refused at capacity before)",
        ok.load(Ordering::Relaxed),
        busy.load(Ordering::Relaxed)
    );
    std::thread::sleep(Duration::from_secs(1));
    let (ok_before, busy_before) = (ok.load(Ordering::Relaxed), busy.load(Ordering::Relaxed));
    std::thread::sleep(Duration::from_secs(3));
    stop.store(true, Ordering::Relaxed);
    for t in load {
        t.join().expect("load");
    }
    let ok_after = ok.load(Ordering::Relaxed) - ok_before;
    let busy_after = busy.load(Ordering::Relaxed) - busy_before;
    assert!(ok_after > 0);
    assert_eq!(
        busy_after, 0,
        "with 3 replicas every request is served ({ok_after} ok)"
    );

    // After the load: down, then to zero once idle, on every node alike.
    let down = eventually(
        "scaled to zero after the load",
        Duration::from_secs(40),
        || nodes.iter().all(|n| placement(n)["desired"] == 0),
    );
    eprintln!("scaled to zero {down:?} after the load stopped");
    eventually("nothing runs anywhere", Duration::from_secs(15), || {
        nodes
            .iter()
            .all(|n| component(n, "probe")["state"] != "running")
    });

    // The first request, through any node, activates it and waits for it.
    let started = Instant::now();
    let r = nodes[2].request("GET", "/", b"");
    eprintln!(
        "first request after scale to zero took {:?}",
        started.elapsed()
    );
    assert_eq!(r.status, 200, "{r:?}");
    eventually("back to one replica", Duration::from_secs(15), || {
        placement(&nodes[0])["desired"] == 1
    });
}

#[test]
fn a_host_at_capacity_passes_forwarded_requests_to_another_replica() {
    let operator = Operator::new();
    let scratch = tempfile::tempdir().expect("scratch");
    let nodes = lattice(&[194, 195, 196], scratch.path(), &operator);
    let ids: Vec<String> = nodes.iter().map(Node::id).collect();
    let essence = operator.seal(
        &aetherfile(
            "probe",
            "/",
            "[limits]\nmax_concurrency = 1\n[intent]\nreplicas = 2\n",
        ),
        &fixture("probe"),
    );
    nodes[0].deploy(essence);
    eventually("both hosts run it", Duration::from_secs(60), || {
        component(&nodes[0], "probe")["placement"]["running"] == 2
            && nodes
                .iter()
                .all(|n| n.request("GET", "/", b"").status == 200)
    });
    let placed = hosts(&nodes[0], "probe");
    let host_index: Vec<usize> = (0..3).filter(|i| placed.contains(&ids[*i])).collect();
    let standby = (0..3)
        .find(|i| !placed.contains(&ids[*i]))
        .expect("standby");
    let (busy, free) = (host_index[0], host_index[1]);

    // The busy host's only instance slot is taken by a slow request sent to
    // it directly, which the forwarding node knows nothing about.
    let busy_addr = nodes[busy].http();
    let slow = std::thread::spawn(move || {
        try_request(busy_addr, "GET", "/sleep?ms=4000", &[], b"").map(|r| r.status)
    });
    eventually(
        "the busy host is at capacity",
        Duration::from_secs(3),
        || component(&nodes[busy], "probe")["instances"] == 1,
    );
    let retries_before = metric(&nodes[standby].metrics(), "aether_forward_retries_total");
    let started = Instant::now();
    for _ in 0..6 {
        let resp =
            try_request(nodes[standby].http(), "GET", "/headers", &[], b"").expect("request");
        assert_eq!(resp.status, 200, "{}", resp.body);
        let by = resp
            .header("aether-forwarded-to")
            .expect("forwarded")
            .to_string();
        assert!(
            ids[free].contains(&by),
            "answered by {by}, not the free host"
        );
        assert!(resp.header("aether-overloaded").is_none());
    }
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "the slow request still runs"
    );
    assert!(
        metric(&nodes[standby].metrics(), "aether_forward_retries_total") > retries_before,
        "some requests tried the busy host first"
    );
    // Straight to the busy host: a request without a body goes on to the
    // free one; one with a body (which cannot be sent twice) gets 503 with
    // Retry-After, and the internal marker does not leave the node.
    let passed = try_request(nodes[busy].http(), "GET", "/headers", &[], b"").expect("request");
    assert_eq!(passed.status, 200, "{}", passed.body);
    let by = passed.header("aether-forwarded-to").expect("forwarded");
    assert!(
        ids[free].contains(by),
        "answered by {by}, not the free host"
    );
    let refused =
        try_request(nodes[busy].http(), "POST", "/echo", &[], b"payload").expect("request");
    assert_eq!(refused.status, 503);
    assert!(refused.header("retry-after").is_some());
    assert!(refused.header("aether-overloaded").is_none());
    assert_eq!(slow.join().expect("slow request").expect("answered"), 200);

    // Both hosts free again. A component cannot fake the marker: its own
    // 503 is returned as it is, not retried on the other host (which would
    // run the request twice).
    let retries = metric(&nodes[standby].metrics(), "aether_forward_retries_total");
    let faked = try_request(
        nodes[standby].http(),
        "GET",
        "/status?code=503&header=aether-overloaded",
        &[],
        b"",
    )
    .expect("request");
    assert_eq!(faked.status, 503, "{}", faked.body);
    assert_eq!(faked.body, "status");
    assert!(faked.header("aether-overloaded").is_none());
    assert_eq!(
        metric(&nodes[standby].metrics(), "aether_forward_retries_total"),
        retries
    );
}

/// Whether `node` has deployment `name` loaded.
fn has_component(node: &Node, name: &str) -> bool {
    common::block_on(node.client().json::<Value>(
        Method::GET,
        &format!("/v1/components/{name}"),
        bytes::Bytes::new(),
    ))
    .is_ok()
}

#[test]
fn a_route_two_sides_of_a_partition_both_deployed_goes_to_the_first_deploy_everywhere() {
    let operator = Operator::new();
    let scratch = tempfile::tempdir().expect("scratch");
    let nodes = lattice(&[197, 198, 199], scratch.path(), &operator);
    // The later deploy has the smaller name, so only the deploy time can
    // make the first one win.
    let first = operator.seal(
        &aetherfile("zfirst", "/claimed", ""),
        &fixture("hello-wstd"),
    );
    let later = operator.seal(&aetherfile("alater", "/claimed", ""), &fixture("probe"));
    {
        let _partition = Partition::new(&[nodes[0].ip], &[nodes[1].ip, nodes[2].ip]);
        nodes[1].deploy(first);
        // Deploy times are whole seconds: the next deploy is in a later one.
        std::thread::sleep(Duration::from_millis(1100));
        nodes[0].deploy(later);
        assert!(has_component(&nodes[0], "alater"), "{}", nodes[0].stderr());
        assert!(!has_component(&nodes[0], "zfirst"));
        assert!(has_component(&nodes[1], "zfirst"), "{}", nodes[1].stderr());
    }
    eventually(
        "every node serves the first deploy and has dropped the later",
        Duration::from_secs(60),
        || {
            nodes.iter().all(|n| {
                let r = n.request("GET", "/claimed", b"");
                r.status == 200
                    && r.body.contains("Hello from wstd")
                    && has_component(n, "zfirst")
                    && !has_component(n, "alater")
            })
        },
    );
    assert!(
        nodes.iter().any(|n| n
            .stderr()
            .contains("route `/claimed` belongs to `zfirst`, deployed first; `alater` is removed")),
        "no node says why `alater` went:\n{}",
        nodes[1].stderr()
    );
    // The later deploy's record is gone from the lattice: it does not come
    // back, on any node.
    std::thread::sleep(Duration::from_secs(3));
    for n in &nodes {
        assert!(!has_component(n, "alater"), "{}", n.stderr());
        let r = n.request("GET", "/claimed", b"");
        assert!(r.body.contains("Hello from wstd"), "{r:?}");
    }
}
