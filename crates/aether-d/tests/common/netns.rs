//! Network namespaces for the tests that need more than loopback: created by the test, removed
//! on drop, with `ip` and `nft` run inside them.

use std::os::fd::AsRawFd as _;
use std::process::Command;

/// Runs `ip ARGS`; panics with its error when it fails.
pub fn ip(args: &[&str]) {
    run("ip", args);
}

/// Runs `PROGRAM ARGS`; panics with its error when it fails.
pub fn run(program: &str, args: &[&str]) {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs `PROGRAM ARGS` inside namespace `ns`.
pub fn run_in(ns: &str, program: &str, args: &[&str]) {
    let mut full = vec!["netns", "exec", ns, program];
    full.extend_from_slice(args);
    ip(&full);
}

/// Moves the calling thread (and what it starts from now on) into the named namespace.
pub fn enter(name: &str) {
    let file = std::fs::File::open(format!("/var/run/netns/{name}")).expect("netns file");
    // SAFETY: setns on a valid namespace fd; it changes only this thread's namespace.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns {name}: {}", std::io::Error::last_os_error());
}

/// Whether this process may create namespaces (root).
pub fn privileged() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Namespaces deleted on drop, named `PREFIX-NAME-PID`.
pub struct Namespaces {
    prefix: String,
    names: Vec<String>,
}

impl Namespaces {
    /// None yet; names get `prefix` and this process's id.
    pub fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_string(),
            names: Vec::new(),
        }
    }

    /// The full name of namespace `name`.
    pub fn name(&self, name: &str) -> String {
        format!("{}-{name}-{}", self.prefix, std::process::id())
    }

    /// Creates namespace `name` with its loopback up; returns its full name.
    pub fn add(&mut self, name: &str) -> String {
        let full = self.name(name);
        let _ = Command::new("ip").args(["netns", "del", &full]).status();
        ip(&["netns", "add", &full]);
        ip(&["-n", &full, "link", "set", "lo", "up"]);
        self.names.push(full.clone());
        full
    }

    /// A veth pair: `a_if` in namespace `a` with `a_addr` (CIDR), `b_if` in `b` with `b_addr`
    /// (or no address, e.g. a bridge port), both up.
    pub fn link(
        &self,
        a: &str,
        a_if: &str,
        a_addr: Option<&str>,
        b: &str,
        b_if: &str,
        b_addr: Option<&str>,
    ) {
        let (a, b) = (self.name(a), self.name(b));
        ip(&[
            "link", "add", a_if, "netns", &a, "type", "veth", "peer", "name", b_if, "netns", &b,
        ]);
        for (ns, dev, addr) in [(&a, a_if, a_addr), (&b, b_if, b_addr)] {
            if let Some(addr) = addr {
                ip(&["-n", ns, "addr", "add", addr, "dev", dev]);
            }
            ip(&["-n", ns, "link", "set", dev, "up"]);
        }
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for ns in &self.names {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}
