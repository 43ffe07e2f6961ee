//! The kernel data plane on real nodes, each in a network namespace of its own joined to a hub
//! namespace's bridge (10.233.0.0/24; all created and removed by this test): the lattice forms
//! with the admission filter on, a stranger's datagrams are dropped in the kernel (the node's
//! per-source counter rises, its own handshake refusals do not), a node joins with an invite
//! while the filter is on, a revoked node's datagrams are dropped, `alkahest nodes` shows each
//! node's data plane, and without the capability to load programs the node says so in one line
//! and admits in userspace.

mod common;

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::process::Command;
use std::time::Duration;

use bytes::Bytes;
use common::block_on;
use common::cluster::{Node, Operator, eventually, join_args, metric, unix_now};
use common::netns::{enter, ip};
use http::Method;
use serde_json::Value;

/// A hub namespace with a bridge, and one namespace per host on it; removed on drop.
struct Network {
    hub: String,
    hosts: Vec<String>,
}

const SUBNET: [u8; 3] = [10, 233, 0];

impl Network {
    fn new(hosts: &[u8]) -> Self {
        let id = std::process::id();
        let hub = format!("aeth-hub{id}");
        ip(&["netns", "add", &hub]);
        let mut net = Network {
            hub,
            hosts: Vec::new(),
        };
        ip(&["-n", &net.hub, "link", "add", "br0", "type", "bridge"]);
        ip(&[
            "-n",
            &net.hub,
            "addr",
            "add",
            "10.233.0.254/24",
            "dev",
            "br0",
        ]);
        ip(&["-n", &net.hub, "link", "set", "br0", "up"]);
        ip(&["-n", &net.hub, "link", "set", "lo", "up"]);
        for &h in hosts {
            let ns = format!("aeth-h{h}-{id}");
            ip(&["netns", "add", &ns]);
            net.hosts.push(ns.clone());
            let (inner, outer) = (format!("e{h}"), format!("p{h}-{id}"));
            ip(&[
                "link", "add", &inner, "netns", &ns, "type", "veth", "peer", "name", &outer,
                "netns", &net.hub,
            ]);
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("10.233.0.{h}/24"),
                "dev",
                &inner,
            ]);
            ip(&["-n", &ns, "link", "set", &inner, "up"]);
            ip(&["-n", &ns, "link", "set", "lo", "up"]);
            ip(&["-n", &net.hub, "link", "set", &outer, "master", "br0"]);
            ip(&["-n", &net.hub, "link", "set", &outer, "up"]);
        }
        net
    }

    fn host(&self, h: u8) -> String {
        format!("aeth-h{h}-{}", std::process::id())
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        for ns in self.hosts.iter().chain(std::iter::once(&self.hub)) {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// A node on host `h` of the network, started inside its namespace (through `launcher`).
fn node_on(
    net: &Network,
    h: u8,
    scratch: &std::path::Path,
    operator: &Operator,
    wrap: &[&str],
) -> Node {
    let mut node = Node::new(h, scratch, operator);
    node.ip = Ipv4Addr::new(SUBNET[0], SUBNET[1], SUBNET[2], h);
    node.http_port = 18080;
    node.admin_port = 17070;
    node.launcher = ["ip", "netns", "exec", &net.host(h)]
        .iter()
        .chain(wrap)
        .map(|s| s.to_string())
        .collect();
    node
}

fn counter(node: &Node, name: &str, source: &str) -> f64 {
    let needle = format!("{name}{{source=\"{source}\"}} ");
    node.metrics()
        .lines()
        .find_map(|l| l.strip_prefix(&needle))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

fn refused_total(node: &Node) -> f64 {
    node.metrics()
        .lines()
        .filter(|l| l.starts_with("aether_mesh_refused_handshakes_total"))
        .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
        .sum()
}

fn data_planes(node: &Node) -> Vec<(String, String)> {
    node.members()
        .iter()
        .map(|m| {
            (
                m["mesh_addr"].as_str().unwrap_or("").to_string(),
                m["data_plane"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

/// Sends `n` datagrams that are not QUIC from host `h`'s namespace to `to`.
fn flood(net: &Network, h: u8, to: SocketAddr, n: usize) {
    let ns = net.host(h);
    std::thread::spawn(move || {
        enter(&ns);
        let socket = UdpSocket::bind("0.0.0.0:0").expect("bind");
        for _ in 0..n {
            let _ = socket.send_to(&[0x42; 1200], to);
        }
    })
    .join()
    .expect("flood");
}

#[test]
fn the_kernel_admits_only_members_to_the_mesh() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("not root: network namespaces and eBPF need it; nothing checked here");
        return;
    }
    let net = Network::new(&[1, 2, 3, 4, 9]);
    // Everything this test thread connects to from now on is inside the hub.
    enter(&net.hub);
    let operator = Operator::new();
    let scratch = tempfile::tempdir().expect("scratch");

    let mut seed = node_on(&net, 1, scratch.path(), &operator, &[]);
    seed.start(&["--ebpf".into(), "on".into()]);
    let mut second = node_on(&net, 2, scratch.path(), &operator, &[]);
    second.start(
        &[
            join_args(&seed, Some(&operator.invite())),
            vec!["--ebpf".into(), "on".into()],
        ]
        .concat(),
    );
    let mut third = node_on(&net, 3, scratch.path(), &operator, &[]);
    third.start(
        &[
            join_args(&seed, Some(&operator.invite())),
            vec!["--ebpf".into(), "audit".into()],
        ]
        .concat(),
    );
    let ids: Vec<String> = [&seed, &second, &third].iter().map(|n| n.id()).collect();
    eventually(
        "the lattice forms with the filter on (a node joined with an invite through it)",
        Duration::from_secs(60),
        || [&seed, &second, &third].iter().all(|n| n.sees_alive(&ids)),
    );
    assert!(
        seed.stderr().contains("eBPF admission filter attached"),
        "{}",
        seed.stderr()
    );
    let planes = data_planes(&seed);
    for (addr, plane) in &planes {
        let want = if addr.starts_with("10.233.0.3:") {
            "ebpf-audit"
        } else {
            "ebpf"
        };
        assert_eq!(plane, want, "{planes:?}");
    }

    // A stranger's garbage: dropped in the kernel past its handshake budget.
    let refused_before = refused_total(&seed);
    flood(&net, 9, seed.mesh(), 2000);
    let dropped = counter(&seed, "aether_ebpf_dropped_packets_total", "10.233.0.9");
    let passed = counter(&seed, "aether_ebpf_passed_packets_total", "10.233.0.9");
    eventually(
        "the counters show the flood",
        Duration::from_secs(5),
        || {
            counter(&seed, "aether_ebpf_dropped_packets_total", "10.233.0.9")
                + counter(&seed, "aether_ebpf_passed_packets_total", "10.233.0.9")
                >= 2000.0
        },
    );
    let dropped = counter(&seed, "aether_ebpf_dropped_packets_total", "10.233.0.9").max(dropped);
    let passed = counter(&seed, "aether_ebpf_passed_packets_total", "10.233.0.9").max(passed);
    eprintln!("stranger: {dropped} dropped, {passed} passed (its handshake budget)");
    assert!(dropped >= 1900.0, "dropped {dropped}, passed {passed}");
    assert_eq!(
        refused_total(&seed),
        refused_before,
        "the daemon never saw them"
    );
    // Members pass, and what the seed sends them is counted on the way out.
    assert!(counter(&seed, "aether_ebpf_passed_packets_total", "10.233.0.2") > 0.0);
    let sent = |n: &Node, to: &str| {
        let needle = format!("aether_ebpf_sent_packets_total{{destination=\"{to}\"}} ");
        n.metrics()
            .lines()
            .find_map(|l| l.strip_prefix(&needle))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    eventually(
        "outbound datagrams are counted",
        Duration::from_secs(5),
        || sent(&seed, "10.233.0.2") > 0.0 && sent(&seed, "10.233.0.3") > 0.0,
    );
    // Audit mode drops nothing: the third node counts the stranger and still hands it all over.
    flood(&net, 9, third.mesh(), 500);
    eventually("the audit node counts", Duration::from_secs(5), || {
        counter(&third, "aether_ebpf_dropped_packets_total", "10.233.0.9") >= 400.0
    });

    // Revoked: the node's datagrams are dropped at the seed within a second of it learning.
    let revocation = aether_identity::Revocation::issue(
        &operator.root(),
        &ids[1].parse().expect("node id"),
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
    eventually(
        "the seed shows the node revoked",
        Duration::from_secs(10),
        || seed.state_of(&ids[1]).is_some_and(|(s, _)| s == "revoked"),
    );
    std::thread::sleep(Duration::from_secs(1));
    let before = counter(&seed, "aether_ebpf_dropped_packets_total", "10.233.0.2");
    flood(&net, 2, seed.mesh(), 100);
    eventually(
        "the revoked node's datagrams are dropped",
        Duration::from_secs(5),
        || counter(&seed, "aether_ebpf_dropped_packets_total", "10.233.0.2") >= before + 100.0,
    );

    // Without the capability to load programs: one line saying why, and the userspace path.
    let mut plain = node_on(
        &net,
        4,
        scratch.path(),
        &operator,
        &["setpriv", "--bounding-set=-all", "--inh-caps=-all"],
    );
    plain.start(&join_args(&seed, Some(&operator.invite())));
    let plain_id = plain.id();
    eventually(
        "the unprivileged node joins",
        Duration::from_secs(60),
        || seed.sees_alive(std::slice::from_ref(&plain_id)),
    );
    let log = plain.stderr();
    assert!(
        log.contains("eBPF data plane not used") && log.contains("userspace"),
        "{log}"
    );
    let planes = data_planes(&seed);
    assert!(
        planes
            .iter()
            .any(|(a, p)| a.starts_with("10.233.0.4:") && p == "userspace"),
        "{planes:?}"
    );
}

/// The cgroup v2 mount: the unified hierarchy of a hybrid set-up, or the only one.
fn cgroup2_root() -> Option<std::path::PathBuf> {
    ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"]
        .iter()
        .map(std::path::PathBuf::from)
        .find(|p| p.join("cgroup.threads").exists())
}

/// A cgroup removed on drop.
struct Cgroup(std::path::PathBuf);

impl Drop for Cgroup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// A GET of `/` through `to`, from a Python client (inside `cgroup` when given): what it
/// printed (`peer IP PORT STATUS BODY` or `error ...`).
fn get_through(to: &str, cgroup: Option<&std::path::Path>) -> String {
    let (host, port) = to.rsplit_once(':').expect("IP:PORT");
    let script = format!(
        "import socket\ns = socket.socket()\ns.settimeout(5)\ntry:\n    s.connect(('{host}', {port}))\n    peer = s.getpeername()\n    s.sendall(b'GET / HTTP/1.0\\r\\nHost: x\\r\\n\\r\\n')\n    data = b''\n    while True:\n        chunk = s.recv(4096)\n        if not chunk:\n            break\n        data += chunk\n    head, _, body = data.partition(b'\\r\\n\\r\\n')\n    print('peer', peer[0], peer[1], head.split()[1].decode(), body.decode())\nexcept OSError as e:\n    print('error', e)\n"
    );
    let join = cgroup
        .map(|c| format!("echo $$ > {}/cgroup.procs && ", c.display()))
        .unwrap_or_default();
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!("{join}exec python3 -c \"$0\""))
        .arg(script)
        .output()
        .expect("python3");
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
    .trim()
    .to_string()
}

#[test]
fn a_process_in_the_nodes_cgroup_reaches_a_component_by_its_virtual_address() {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let Some(mount) = cgroup2_root().filter(|_| root) else {
        eprintln!("not root or no cgroup v2: nothing checked here");
        return;
    };
    let id = std::process::id();
    let clients = Cgroup(mount.join(format!("aeth-clients-{id}")));
    let elsewhere = Cgroup(mount.join(format!("aeth-elsewhere-{id}")));
    std::fs::create_dir(&clients.0).expect("cgroup");
    std::fs::create_dir(&elsewhere.0).expect("cgroup");
    let operator = Operator::new();
    let scratch = tempfile::tempdir().expect("scratch");
    let vip_args =
        |dir: &std::path::Path| vec!["--vip-cgroup".to_string(), dir.display().to_string()];

    // The component runs only on the second node; the first node's cgroup dials it.
    let mut first = Node::new(156, scratch.path(), &operator);
    first.start(&vip_args(&clients.0));
    let mut second = Node::new(157, scratch.path(), &operator);
    second.start(
        &[
            join_args(&first, Some(&operator.invite())),
            vip_args(&elsewhere.0),
            vec!["--label".into(), "role=worker".into()],
        ]
        .concat(),
    );
    let ids = vec![first.id(), second.id()];
    eventually("two members", Duration::from_secs(30), || {
        first.sees_alive(&ids) && second.sees_alive(&ids)
    });
    let aetherfile = "name = \"vipped\"\ncomponent = \"vipped.wasm\"\n[http]\nroutes = [\"/vipped\"]\nvirtual_address = true\n[intent]\nlabels = { role = \"worker\" }\n";
    let essence = operator.seal(aetherfile, &common::cluster::fixture("probe"));
    let _ = first.deploy(essence);
    let status = |n: &Node| {
        block_on(
            n.client()
                .json::<Value>(Method::GET, "/v1/components/vipped", Bytes::new()),
        )
        .unwrap_or(Value::Null)
    };
    let mut vip = String::new();
    eventually(
        "both nodes give it the same virtual address",
        Duration::from_secs(30),
        || {
            let (a, b) = (status(&first), status(&second));
            vip = a["virtual_address"].as_str().unwrap_or("").to_string();
            !vip.is_empty() && a["virtual_address"] == b["virtual_address"]
        },
    );
    assert!(vip.starts_with("127.77.") && vip.ends_with(":80"), "{vip}");

    let mut inside = String::new();
    eventually(
        "a process in the cgroup gets an answer",
        Duration::from_secs(30),
        || {
            inside = get_through(&vip, Some(&clients.0));
            eprintln!("through {vip}: {inside}");
            inside.contains(" 200 ")
        },
    );
    let (ip, _) = vip.rsplit_once(':').expect("IP:PORT");
    assert_eq!(
        inside,
        format!("peer {ip} 80 200 probe ok"),
        "served on the other node, through this one"
    );
    let outside = get_through(&vip, None);
    assert!(
        outside.starts_with("error"),
        "outside the cgroup: {outside}"
    );

    // The kernel counted the connection and what it carried, per component.
    let component = "{component=\"vipped\"";
    eventually(
        "the counters reach /metrics",
        Duration::from_secs(10),
        || {
            let text = first.metrics();
            metric(
                &text,
                &format!("aether_ebpf_vip_connections_total{component}}}"),
            ) >= 1.0
                && metric(
                    &text,
                    &format!("aether_ebpf_vip_bytes_total{component},direction=\"to\"}}"),
                ) > 0.0
                && metric(
                    &text,
                    &format!("aether_ebpf_vip_bytes_total{component},direction=\"from\"}}"),
                ) >= "probe ok".len() as f64
        },
    );

    // A component that did not ask for one gets a virtual address once the lattice gives every
    // component one, on every node, and loses it when the setting is off again.
    let plain = "name = \"plain\"\ncomponent = \"plain.wasm\"\n[http]\nroutes = [\"/plain\"]\n[intent]\nlabels = { role = \"worker\" }\n";
    let _ = first.deploy(operator.seal(plain, &common::cluster::fixture("probe")));
    let plain_status = |n: &Node| {
        block_on(
            n.client()
                .json::<Value>(Method::GET, "/v1/components/plain", Bytes::new()),
        )
        .unwrap_or(Value::Null)
    };
    eventually(
        "the plain component is deployed",
        Duration::from_secs(30),
        || plain_status(&first)["name"] == "plain",
    );
    assert!(plain_status(&first)["virtual_address"].is_null());
    let set = |value: &'static str| {
        block_on(second.client().json::<Value>(
            Method::PUT,
            "/v1/settings/virtual-addresses",
            Bytes::from_static(value.as_bytes()),
        ))
        .expect("setting changed")
    };
    assert_eq!(set("on")["virtual_addresses"], true);
    let mut plain_vip = String::new();
    eventually(
        "every node gives the plain component an address",
        Duration::from_secs(30),
        || {
            let (a, b) = (plain_status(&first), plain_status(&second));
            plain_vip = a["virtual_address"].as_str().unwrap_or("").to_string();
            !plain_vip.is_empty() && a["virtual_address"] == b["virtual_address"]
        },
    );
    assert_ne!(plain_vip, vip);
    eventually("it answers there", Duration::from_secs(30), || {
        get_through(&plain_vip, Some(&clients.0)).contains(" 200 probe ok")
    });
    let refused = block_on(second.client().json::<Value>(
        Method::PUT,
        "/v1/settings/virtual-addresses",
        Bytes::from_static(b"maybe"),
    ));
    assert!(refused.is_err(), "{refused:?}");
    assert_eq!(set("off")["virtual_addresses"], false);
    eventually("the address is withdrawn", Duration::from_secs(30), || {
        plain_status(&first)["virtual_address"].is_null()
            && get_through(&plain_vip, Some(&clients.0)).starts_with("error")
    });
    assert_eq!(
        status(&first)["virtual_address"].as_str(),
        Some(vip.as_str())
    );
}
