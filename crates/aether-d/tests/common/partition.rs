//! A network partition between loopback addresses, for tests that split a
//! lattice: an nftables table, removed when dropped.

use std::net::Ipv4Addr;
use std::process::{Command, Stdio};

/// An nftables table that drops UDP between two groups of loopback
/// addresses; removed on drop.
pub struct Partition {
    table: String,
}

impl Partition {
    /// Drops UDP between addresses `a` and `b` until dropped.
    pub fn new(a: &[Ipv4Addr], b: &[Ipv4Addr]) -> Self {
        let table = format!("aether_test_{}", std::process::id());
        let set = |ips: &[Ipv4Addr]| {
            let list: Vec<String> = ips.iter().map(ToString::to_string).collect();
            format!("{{ {} }}", list.join(", "))
        };
        let script = format!(
            "add table inet {table}\n\
             add chain inet {table} input {{ type filter hook input priority -10; }}\n\
             add rule inet {table} input ip saddr {a} ip daddr {b} meta l4proto udp drop\n\
             add rule inet {table} input ip saddr {b} ip daddr {a} meta l4proto udp drop\n",
            a = set(a),
            b = set(b)
        );
        let mut child = Command::new("nft")
            .args(["-f", "-"])
            .stdin(Stdio::piped())
            .spawn()
            .expect("nft is needed for the partition test (scripts/test.sh installs nftables)");
        use std::io::Write as _;
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(script.as_bytes())
            .expect("write nft script");
        assert!(
            child.wait().expect("nft").success(),
            "nft refused:\n{script}"
        );
        Self { table }
    }
}

impl Drop for Partition {
    fn drop(&mut self) {
        let _ = Command::new("nft")
            .args(["delete", "table", "inet", &self.table])
            .status();
    }
}
