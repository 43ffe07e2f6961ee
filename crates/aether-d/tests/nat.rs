//! Peers behind NAT, in network namespaces this test creates and removes: an "internet" bridge
//! (10.237.0.0/24) with three reachable nodes (the seed started `--no-relay`), and three homes,
//! each a router namespace doing nftables masquerade in front of a node on a private network
//! (homes A and C keep ports, home B uses `masquerade fully-random`). The homes' nodes join with
//! invites through the seed and are alive in every view; each learns the address members see it
//! at and that no member can dial it (`nat`), while the reachable ones are `direct`; homes A and
//! C punch a hole to each other; home B, whose NAT picks a new port for every peer, reaches home
//! A through a relay; state written in one home reaches another. A component pinned to home A
//! is served by home A's node through a reachable node, through home C and through home B;
//! killed, the relay is replaced and requests through home B go on; with no relay left, home B
//! answers 503 naming the constraint instead of serving the component itself. A home cut off by
//! its router is declared dead, and rejoins once let through again.
//!
//! The test thread lives in the bridge's namespace, which routes to the homes' private networks
//! through their routers (the nodes themselves have no such route): it is the operator's view.

mod common;

use std::net::Ipv4Addr;
use std::time::Duration;

use common::block_on;
use common::cluster::{Node, Operator, eventually, fixture, join_args};
use common::netns::{Namespaces, enter, ip, privileged, run_in};
use http::Method;
use serde_json::Value;

/// A node of the topology: in namespace `ns` at `addr`.
fn node_in(
    spaces: &Namespaces,
    ns: &str,
    octet: u8,
    addr: Ipv4Addr,
    operator: &Operator,
    scratch: &std::path::Path,
) -> Node {
    let mut node = Node::new(octet, scratch, operator);
    node.ip = addr;
    node.http_port = 18080;
    node.admin_port = 17070;
    node.launcher = ["ip", "netns", "exec", &spaces.name(ns)]
        .iter()
        .map(|s| s.to_string())
        .collect();
    node
}

/// A home: router namespace `gw` (WAN `wan_addr` on the bridge, LAN `.1` of `lan`) masquerading
/// for namespace `home` (`.2` of `lan`, default route through the router).
fn home(spaces: &mut Namespaces, name: &str, wan_addr: &str, lan: &str, masquerade: &str) {
    let gw = spaces.add(&format!("gw{name}"));
    let inside = spaces.add(&format!("home{name}"));
    spaces.link(
        &format!("gw{name}"),
        "wan",
        Some(&format!("{wan_addr}/24")),
        "inet",
        &format!("w{name}-{}", std::process::id() % 100_000),
        None,
    );
    let bridge_port = format!("w{name}-{}", std::process::id() % 100_000);
    ip(&[
        "-n",
        &spaces.name("inet"),
        "link",
        "set",
        &bridge_port,
        "master",
        "br0",
    ]);
    spaces.link(
        &format!("gw{name}"),
        "lan",
        Some(&format!("{lan}.1/24")),
        &format!("home{name}"),
        "eth0",
        Some(&format!("{lan}.2/24")),
    );
    ip(&[
        "-n",
        &inside,
        "route",
        "add",
        "default",
        "via",
        &format!("{lan}.1"),
    ]);
    run_in(&gw, "sh", &["-c", "echo 1 > /proc/sys/net/ipv4/ip_forward"]);
    run_in(&gw, "nft", &["add", "table", "ip", "nat"]);
    run_in(
        &gw,
        "nft",
        &["add chain ip nat post { type nat hook postrouting priority 100; }"],
    );
    let rule = format!("add rule ip nat post oifname wan ip saddr {lan}.0/24 {masquerade}");
    run_in(&gw, "nft", &[&rule]);
    // Like a home router, it drops what arrives on its WAN side unasked. (A router that answers
    // such a packet itself keeps a record of it, and when its node then sends to that peer the
    // NAT must pick another port: the first packet of a punch would spoil the punch.)
    run_in(&gw, "nft", &["add", "table", "inet", "firewall"]);
    run_in(
        &gw,
        "nft",
        &["add chain inet firewall input { type filter hook input priority 0; }"],
    );
    run_in(
        &gw,
        "nft",
        &["add rule inet firewall input iifname wan ct state established,related accept"],
    );
    run_in(
        &gw,
        "nft",
        &["add rule inet firewall input iifname wan drop"],
    );
    // The operator's namespace reaches the home's network through its router.
    ip(&[
        "-n",
        &spaces.name("inet"),
        "route",
        "add",
        &format!("{lan}.0/24"),
        "via",
        wan_addr,
    ]);
}

/// A node's id as the nodes name it in short: its key's first 12 characters.
fn short(node: &Node) -> String {
    node.id().trim_start_matches("ed25519:")[..12].to_string()
}

fn member<'a>(members: &'a [Value], node: &Node) -> Option<&'a Value> {
    let id = node.id();
    members.iter().find(|m| m["id"] == id.as_str())
}

#[test]
fn nodes_behind_nat_join_learn_their_reachability_and_keep_intents() {
    if !privileged() {
        eprintln!("not root: network namespaces need it; nothing checked here");
        return;
    }
    let mut spaces = Namespaces::new("aenat");
    let inet = spaces.add("inet");
    ip(&["-n", &inet, "link", "add", "br0", "type", "bridge"]);
    ip(&["-n", &inet, "addr", "add", "10.237.0.254/24", "dev", "br0"]);
    ip(&["-n", &inet, "link", "set", "br0", "up"]);
    for (i, name) in ["reach1", "reach2", "reach3"].iter().enumerate() {
        spaces.add(name);
        let port = format!("r{}-{}", i + 1, std::process::id() % 100_000);
        spaces.link(
            name,
            "eth0",
            Some(&format!("10.237.0.{}/24", i + 1)),
            "inet",
            &port,
            None,
        );
        ip(&["-n", &inet, "link", "set", &port, "master", "br0"]);
    }
    home(&mut spaces, "a", "10.237.0.11", "192.168.201", "masquerade");
    home(
        &mut spaces,
        "b",
        "10.237.0.12",
        "192.168.202",
        "masquerade fully-random",
    );
    home(&mut spaces, "c", "10.237.0.13", "192.168.203", "masquerade");
    enter(&inet);

    let operator = Operator::new();
    let scratch = tempfile::tempdir().expect("scratch");
    let mut reach1 = node_in(
        &spaces,
        "reach1",
        31,
        Ipv4Addr::new(10, 237, 0, 1),
        &operator,
        scratch.path(),
    );
    // The seed does not relay: the two others do, one at a time.
    reach1.start(&["--no-relay".to_string()]);
    let invite = operator.invite();
    let mut reach2 = node_in(
        &spaces,
        "reach2",
        32,
        Ipv4Addr::new(10, 237, 0, 2),
        &operator,
        scratch.path(),
    );
    reach2.start(&join_args(&reach1, Some(&invite)));
    let mut reach3 = node_in(
        &spaces,
        "reach3",
        36,
        Ipv4Addr::new(10, 237, 0, 3),
        &operator,
        scratch.path(),
    );
    reach3.start(&join_args(&reach1, Some(&invite)));
    let mut home_a = node_in(
        &spaces,
        "homea",
        33,
        Ipv4Addr::new(192, 168, 201, 2),
        &operator,
        scratch.path(),
    );
    home_a.start(
        &[
            join_args(&reach1, Some(&invite)),
            vec!["--label".into(), "home=a".into()],
        ]
        .concat(),
    );
    let mut home_b = node_in(
        &spaces,
        "homeb",
        34,
        Ipv4Addr::new(192, 168, 202, 2),
        &operator,
        scratch.path(),
    );
    home_b.start(
        &[
            join_args(&reach1, Some(&invite)),
            vec!["--label".into(), "home=b".into()],
        ]
        .concat(),
    );
    let mut home_c = node_in(
        &spaces,
        "homec",
        35,
        Ipv4Addr::new(192, 168, 203, 2),
        &operator,
        scratch.path(),
    );
    home_c.start(
        &[
            join_args(&reach1, Some(&invite)),
            vec!["--label".into(), "home=c".into()],
        ]
        .concat(),
    );
    let nodes = [&reach1, &reach2, &reach3, &home_a, &home_b, &home_c];
    let ids: Vec<String> = nodes.iter().map(|n| n.id()).collect();
    eventually(
        "every node sees all six alive",
        Duration::from_secs(60),
        || nodes.iter().all(|n| n.sees_alive(&ids)),
    );

    // Reachability, as learned from dial-backs and observed-address reports.
    let mut members = Vec::new();
    eventually("reachability is learned", Duration::from_secs(30), || {
        members = reach2.members();
        let reach = |n: &Node| member(&members, n).map(|m| m["reachability"].clone());
        reach(&reach1) == Some("direct".into())
            && reach(&reach2) == Some("direct".into())
            && reach(&home_a) == Some("nat".into())
            && reach(&home_b) == Some("nat".into())
            && reach(&home_c) == Some("nat".into())
    });
    let seen = |n: &Node| {
        member(&members, n)
            .and_then(|m| m["observed_addr"].as_str())
            .unwrap_or("")
            .to_string()
    };
    assert!(seen(&home_a).starts_with("10.237.0.11:"), "{members:?}");
    assert!(seen(&home_b).starts_with("10.237.0.12:"), "{members:?}");
    assert_eq!(
        seen(&reach1),
        "",
        "a reachable node is seen where it says it is"
    );

    // The two homes whose NATs keep ports punch a hole to each other: each dials the other's
    // public address while a reachable member tells the other to do the same.
    let path = |from: &Node, to: &Node| {
        member(&from.members(), to)
            .map(|m| m["path"].as_str().unwrap_or("").to_string())
            .unwrap_or_default()
    };
    eventually(
        "homes A and C punch through",
        Duration::from_secs(60),
        || path(&home_a, &home_c) == "punched" && path(&home_c, &home_a) == "punched",
    );
    assert_eq!(path(&reach1, &home_a), "direct");
    assert_eq!(path(&home_a, &reach1), "direct");

    // Home B's NAT picks a new port for every peer: no punch gets through, so B and A go
    // through a relay, a reachable member that relays (not the seed, started --no-relay).
    let relays = [short(&reach2), short(&reach3)];
    let relayed_via = |from: &Node, to: &Node| {
        path(from, to)
            .strip_prefix("relayed via ")
            .map(str::to_string)
    };
    eventually(
        "homes A and B go through a relay",
        Duration::from_secs(60),
        || {
            let (ab, ba) = (relayed_via(&home_a, &home_b), relayed_via(&home_b, &home_a));
            ab.is_some() && ba.is_some() && relays.iter().any(|s| Some(s) == ab.as_ref())
        },
    );

    // State written in one home reaches the other.
    home_a.admin_json(
        Method::PUT,
        "/v1/kv/notes?key=from-a",
        b"hello from home a".to_vec(),
    );
    eventually("state crosses both NATs", Duration::from_secs(30), || {
        block_on(home_b.client().json::<Value>(
            Method::GET,
            "/v1/kv/notes?key=from-a",
            bytes::Bytes::new(),
        ))
        .is_ok_and(|v| v["value"] == "hello from home a")
    });

    // A component pinned to home A: served by home A through a reachable node; home B has no
    // path to home A and, outside the intent, refuses rather than serving it itself.
    let pinned = "name = \"pinned\"\ncomponent = \"pinned.wasm\"\n[http]\nroutes = [\"/echo\"]\n[intent]\nlabels = { home = \"a\" }\n";
    let _ = reach1.deploy(operator.seal(pinned, &fixture("probe")));
    let short_a = home_a.id().trim_start_matches("ed25519:")[..12].to_string();
    eventually(
        "served by home A through a reachable node",
        Duration::from_secs(60),
        || {
            let r = reach2.request("GET", "/echo", b"");
            r.status == 200 && r.header("aether-forwarded-to") == Some(short_a.as_str())
        },
    );
    // Home C reaches home A through the punched hole.
    eventually(
        "home C is served by home A",
        Duration::from_secs(60),
        || {
            let r = home_c.request("GET", "/echo", b"");
            r.status == 200 && r.header("aether-forwarded-to") == Some(short_a.as_str())
        },
    );
    // Home B reaches home A through the relay.
    eventually(
        "home B is served by home A through the relay",
        Duration::from_secs(60),
        || {
            let r = home_b.request("GET", "/echo", b"");
            r.status == 200 && r.header("aether-forwarded-to") == Some(short_a.as_str())
        },
    );
    let relayed =
        |n: &Node| common::cluster::metric(&n.metrics(), "aether_mesh_relayed_packets_total");
    assert!(relayed(&reach2) + relayed(&reach3) > 0.0);
    assert_eq!(relayed(&reach1), 0.0, "the seed does not relay");

    // The relay in use is killed: the pair moves to the other one. Requests through home B go
    // on; count those that fail on the way.
    let first = relayed_via(&home_b, &home_a).expect("relayed");
    let first_is_2 = first == relays[0];
    let survivor = if first_is_2 {
        relays[1].clone()
    } else {
        relays[0].clone()
    };
    if first_is_2 {
        reach2.sigkill();
    } else {
        reach3.sigkill();
    }
    let (mut sent, mut failed, mut in_a_row) = (0u32, 0u32, 0u32);
    let started = std::time::Instant::now();
    while in_a_row < 20 && started.elapsed() < Duration::from_secs(60) {
        let r = home_b.request("GET", "/echo", b"");
        sent += 1;
        if r.status == 200 && r.header("aether-forwarded-to") == Some(short_a.as_str()) {
            in_a_row += 1;
        } else {
            failed += 1;
            in_a_row = 0;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!(
        "relay killed: {failed} of {sent} requests through home B failed ({:.1} %) over {:.1} s",
        100.0 * f64::from(failed) / f64::from(sent),
        started.elapsed().as_secs_f64()
    );
    assert_eq!(in_a_row, 20, "requests through home B recover");
    assert_eq!(
        relayed_via(&home_b, &home_a).as_deref(),
        Some(survivor.as_str())
    );

    // With no relay left, home B has no path to home A: outside the intent, it refuses rather
    // than serving the component itself.
    if first_is_2 {
        reach3.sigkill();
    } else {
        reach2.sigkill();
    }
    let mut refused = home_b.request("GET", "/echo", b"");
    eventually("home B refuses", Duration::from_secs(60), || {
        refused = home_b.request("GET", "/echo", b"");
        refused.status == 503
    });
    assert_eq!(
        refused.header("aether-unmet-constraint"),
        Some("label"),
        "{refused:?}"
    );
    assert!(
        refused.body.contains("home") && refused.body.contains(&short_a),
        "{}",
        refused.body
    );

    // Home C's router drops everything: its node is declared dead like any member; let
    // through again, it rejoins.
    let id_c = home_c.id();
    let gw_c = spaces.name("gwc");
    run_in(&gw_c, "nft", &["add", "table", "inet", "cut"]);
    run_in(
        &gw_c,
        "nft",
        &["add chain inet cut forward { type filter hook forward priority -10; policy drop; }"],
    );
    let state_of_c = |observer: &Node| {
        observer
            .members()
            .iter()
            .find(|m| m["id"] == id_c.as_str())
            .map(|m| m["state"].as_str().unwrap_or("").to_string())
            .unwrap_or_default()
    };
    eventually("home C is declared dead", Duration::from_secs(60), || {
        state_of_c(&reach1) == "dead" && state_of_c(&home_a) == "dead"
    });
    run_in(&gw_c, "nft", &["delete", "table", "inet", "cut"]);
    eventually("home C rejoins", Duration::from_secs(60), || {
        state_of_c(&reach1) == "alive" && state_of_c(&home_a) == "alive"
    });
}
