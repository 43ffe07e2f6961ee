//! The admission filter in the kernel, in two network namespaces this test creates and removes
//! (a veth pair, 10.231.0.0/24): datagrams to the mesh port from an allowed address pass, an
//! unknown address gets its handshake budget and then is dropped, a denied (revoked) address is
//! dropped at once, audit mode drops nothing and counts, and the filter on tc ingress decides the
//! same. Needs root; without it the test says so
//! and checks that loading fails with a clear error instead.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd as _;
use std::process::Command;
use std::time::Duration;

use aether_ebpf::{DataPlane, DataPlaneError, Hook, Mode};

const PORT: u16 = 7946;
const NODE: &str = "10.231.0.1";
const MEMBER: &str = "10.231.0.2";
const STRANGER: &str = "10.231.0.3";

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Two namespaces joined by a veth pair; removed on drop.
struct Namespaces {
    node: String,
    peer: String,
}

impl Namespaces {
    fn new() -> Self {
        let id = std::process::id();
        let (node, peer) = (format!("aeth-adm-n{id}"), format!("aeth-adm-p{id}"));
        ip(&["netns", "add", &node]);
        ip(&["netns", "add", &peer]);
        let ns = Namespaces { node, peer };
        let (a, b) = (format!("va{id}"), format!("vb{id}"));
        ip(&[
            "link", "add", &a, "netns", &ns.node, "type", "veth", "peer", "name", &b, "netns",
            &ns.peer,
        ]);
        ip(&[
            "-n",
            &ns.node,
            "addr",
            "add",
            &format!("{NODE}/24"),
            "dev",
            &a,
        ]);
        ip(&[
            "-n",
            &ns.peer,
            "addr",
            "add",
            &format!("{MEMBER}/24"),
            "dev",
            &b,
        ]);
        ip(&[
            "-n",
            &ns.peer,
            "addr",
            "add",
            &format!("{STRANGER}/24"),
            "dev",
            &b,
        ]);
        for (n, dev) in [(&ns.node, &a), (&ns.peer, &b)] {
            ip(&["-n", n, "link", "set", dev, "up"]);
            ip(&["-n", n, "link", "set", "lo", "up"]);
        }
        ns
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for n in [&self.node, &self.peer] {
            let _ = Command::new("ip").args(["netns", "del", n]).status();
        }
    }
}

/// Moves the calling thread into the named namespace.
fn enter(name: &str) {
    let file = std::fs::File::open(format!("/var/run/netns/{name}")).expect("netns file");
    // SAFETY: setns on a valid namespace fd; it changes only this thread's namespace.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns {name}: {}", std::io::Error::last_os_error());
}

/// Sends `n` datagrams from `from` to the node's mesh port, from inside the peer namespace.
fn send(peer_ns: &str, from: &str, n: usize) {
    let peer_ns = peer_ns.to_string();
    let from: IpAddr = from.parse().expect("address");
    std::thread::spawn(move || {
        enter(&peer_ns);
        let socket = UdpSocket::bind(SocketAddr::new(from, 0)).expect("bind sender");
        let to: SocketAddr = format!("{NODE}:{PORT}").parse().expect("address");
        for _ in 0..n {
            socket.send_to(b"not a quic packet", to).expect("send");
        }
    })
    .join()
    .expect("sender");
}

/// Datagrams waiting on the receiving socket, by source.
fn drain(socket: &UdpSocket) -> std::collections::BTreeMap<IpAddr, usize> {
    let mut got = std::collections::BTreeMap::new();
    let mut buf = [0u8; 2048];
    socket
        .set_read_timeout(Some(Duration::from_millis(300)))
        .expect("timeout");
    while let Ok((_, from)) = socket.recv_from(&mut buf) {
        *got.entry(from.ip()).or_insert(0) += 1;
    }
    got
}

fn addrs(list: &[&str]) -> BTreeSet<IpAddr> {
    list.iter().map(|a| a.parse().expect("address")).collect()
}

#[test]
fn the_kernel_drops_what_is_not_admitted() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("not root: checking only that loading fails with a reason");
        let err = DataPlane::start(Mode::On, "127.0.0.1".parse().expect("ip"), &[PORT])
            .err()
            .expect("no eBPF without privileges");
        assert!(
            matches!(err, DataPlaneError::Load(_) | DataPlaneError::NotBuilt),
            "{err}"
        );
        return;
    }
    let ns = Namespaces::new();
    let node_ns = ns.node.clone();
    let peer_ns = ns.peer.clone();
    std::thread::spawn(move || {
        enter(&node_ns);
        let socket = UdpSocket::bind(format!("{NODE}:{PORT}")).expect("bind node");
        let mut plane = DataPlane::start(Mode::On, NODE.parse().expect("ip"), &[PORT])
            .expect("the admission filter loads");
        assert_eq!(plane.interfaces().len(), 1, "{:?}", plane.interfaces());
        plane
            .set_members(&addrs(&[MEMBER]), &BTreeSet::new())
            .expect("allow-list");

        // A member passes; a stranger gets its handshake budget (64), then nothing.
        send(&peer_ns, MEMBER, 100);
        send(&peer_ns, STRANGER, 200);
        let got = drain(&socket);
        assert_eq!(got.get(&MEMBER.parse().expect("ip")), Some(&100), "{got:?}");
        assert_eq!(
            got.get(&STRANGER.parse().expect("ip")),
            Some(&64),
            "{got:?}"
        );
        let stats: std::collections::BTreeMap<IpAddr, _> = plane.sources().into_iter().collect();
        let stranger = stats[&STRANGER.parse::<IpAddr>().expect("ip")];
        assert_eq!((stranger.passed, stranger.dropped), (64, 136));
        assert_eq!(stats[&MEMBER.parse::<IpAddr>().expect("ip")].passed, 100);

        // Revoked: dropped at once, no budget.
        plane
            .set_members(&addrs(&[MEMBER]), &addrs(&[MEMBER]))
            .expect("deny-list");
        send(&peer_ns, MEMBER, 10);
        let got = drain(&socket);
        assert!(got.is_empty(), "a revoked member got through: {got:?}");

        // Audit: nothing dropped, what would be is counted.
        drop(plane);
        let audit = DataPlane::start(Mode::Audit, NODE.parse().expect("ip"), &[PORT])
            .expect("audit mode loads");
        send(&peer_ns, STRANGER, 100);
        let got = drain(&socket);
        assert_eq!(
            got.get(&STRANGER.parse().expect("ip")),
            Some(&100),
            "{got:?}"
        );
        let stats: std::collections::BTreeMap<IpAddr, _> = audit.sources().into_iter().collect();
        assert_eq!(stats[&STRANGER.parse::<IpAddr>().expect("ip")].dropped, 36);

        // The same filter on tc ingress, where XDP does not attach.
        drop(audit);
        let mut tc = DataPlane::start_on(Mode::On, NODE.parse().expect("ip"), &[PORT], Hook::Tc)
            .expect("the tc filter loads");
        assert_eq!(tc.hooks(), [Hook::Tc]);
        tc.set_members(&addrs(&[MEMBER]), &BTreeSet::new())
            .expect("allow-list");
        send(&peer_ns, MEMBER, 50);
        send(&peer_ns, STRANGER, 100);
        let got = drain(&socket);
        assert_eq!(got.get(&MEMBER.parse().expect("ip")), Some(&50), "{got:?}");
        assert_eq!(
            got.get(&STRANGER.parse().expect("ip")),
            Some(&64),
            "{got:?}"
        );
    })
    .join()
    .expect("node side");
}
