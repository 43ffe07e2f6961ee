//! Virtual addresses in the kernel: a cgroup this test creates and removes, the programs
//! attached to it, a listener on loopback standing for a component. A process in the cgroup
//! reaches the listener through the virtual address and sees that address as its peer; a process
//! outside does not reach it. What the connection carried is counted. Needs root (and cgroup v2); without it the test says so.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::net::{SocketAddrV4, TcpListener};
use std::path::PathBuf;
use std::process::Command;

use aether_ebpf::VirtualAddresses;

/// The cgroup v2 mount: the unified hierarchy of a hybrid set-up, or the only one.
fn cgroup2_root() -> Option<PathBuf> {
    ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.join("cgroup.procs").exists() && p.join("cgroup.threads").exists())
}

/// A cgroup removed on drop.
struct Cgroup(PathBuf);

impl Drop for Cgroup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// Runs a Python client that dials `to` (inside `cgroup` when given); returns what it printed.
fn dial(to: SocketAddrV4, cgroup: Option<&std::path::Path>) -> String {
    let script = format!(
        "import socket\ns = socket.socket()\ns.settimeout(3)\ntry:\n    s.connect(('{}', {}))\n    print('peer', s.getpeername()[0], s.getpeername()[1], s.recv(64).decode())\nexcept OSError as e:\n    print('error', e)\n",
        to.ip(),
        to.port()
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
}

#[test]
fn a_process_in_the_cgroup_reaches_a_component_by_its_virtual_address() {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let Some(mount) = cgroup2_root().filter(|_| root) else {
        eprintln!("not root or no cgroup v2: nothing checked here");
        return;
    };
    let cgroup = Cgroup(mount.join(format!("aeth-vip-{}", std::process::id())));
    std::fs::create_dir(&cgroup.0).expect("create the cgroup");

    let listener = TcpListener::bind("127.0.0.1:0").expect("listener");
    let target = match listener.local_addr().expect("addr") {
        std::net::SocketAddr::V4(a) => a,
        other => panic!("{other}"),
    };
    let server = std::thread::spawn(move || {
        for stream in listener.incoming().take(1) {
            let _ = stream.expect("accept").write_all(b"component");
        }
    });
    let vip: SocketAddrV4 = "127.77.0.9:80".parse().expect("vip");
    let mut vips = VirtualAddresses::attach(&cgroup.0).expect("the cgroup programs load");
    vips.set(&BTreeMap::from([(vip, target)])).expect("table");

    let inside = dial(vip, Some(&cgroup.0));
    assert_eq!(inside.trim(), "peer 127.77.0.9 80 component", "{inside}");
    let outside = dial(vip, None);
    assert!(outside.starts_with("error"), "{outside}");
    let counted: BTreeMap<_, _> = vips.connections().into_iter().collect();
    assert_eq!(counted.get(&vip), Some(&1));
    // What the connection carried: the handshake out, and back the handshake and 9 bytes.
    let traffic: BTreeMap<_, _> = vips.traffic().into_iter().collect();
    let t = traffic.get(&vip).copied().unwrap_or_default();
    assert!(t.packets_out >= 2 && t.bytes_out >= 2 * 40, "{t:?}");
    assert!(t.packets_in >= 2 && t.bytes_in >= 2 * 40 + 9, "{t:?}");

    // Taken out of the table, the address leads nowhere again.
    vips.set(&BTreeMap::new()).expect("table");
    let gone = dial(vip, Some(&cgroup.0));
    assert!(gone.starts_with("error"), "{gone}");
    drop(vips);
    server.join().expect("server");
}
