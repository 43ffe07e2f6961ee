//! The kernel data plane (DESIGN §3.7): eBPF programs written in C in `bpf/`, built by clang
//! from `build.rs`, loaded and kept in step by the node through `aya`.
//!
//! - `bpf/vip.c`, cgroup `connect4` and `getpeername4` programs: a process in the node's cgroup
//!   that dials a component's virtual address is connected to the node's listener for that
//!   component, and sees the virtual address as its peer ([`VirtualAddresses`], [`VipRange`]).
//! - `bpf/admission.c`, an XDP program on the interfaces that carry the mesh: a UDP datagram to
//!   one of the node's mesh ports passes only when its source is an admitted, unrevoked member's
//!   address, or an unknown source still within its handshake budget (so a node can join with an
//!   invite); the rest is dropped before the daemon's QUIC stack sees it. Passes, drops and bytes
//!   are counted per source. In audit mode nothing is dropped and what would be is counted.
//!
//! This crate's own logic is sans-IO and tested without a kernel: [`Mode`], the address keys
//! ([`addr_key`]), and [`Changes`], which turns the wanted allow and deny sets into map updates.
//! [`DataPlane`] is the thin shell that loads the object, attaches it and applies the updates.

use std::collections::BTreeSet;
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

#[cfg(target_os = "linux")]
mod loader;
#[cfg(target_os = "linux")]
mod vip;
#[cfg(target_os = "linux")]
pub use loader::DataPlane;
#[cfg(target_os = "linux")]
pub use vip::VirtualAddresses;

/// How the node uses the kernel data plane (`aether-d --ebpf`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Mode {
    /// Use it where it loads; otherwise say why once and use the userspace path.
    #[default]
    Auto,
    /// Use it; a load failure stops the node.
    On,
    /// Do not load it: the userspace path.
    Off,
    /// Load it, count what it would drop, drop nothing.
    Audit,
}

impl FromStr for Mode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(Mode::Auto),
            "on" => Ok(Mode::On),
            "off" => Ok(Mode::Off),
            "audit" => Ok(Mode::Audit),
            other => Err(format!(
                "unknown eBPF mode {other:?}: use auto, on, off or audit"
            )),
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Auto => "auto",
            Mode::On => "on",
            Mode::Off => "off",
            Mode::Audit => "audit",
        })
    }
}

/// Where the admission filter runs on an interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    /// XDP, before the kernel allocates anything for the packet (native where the driver
    /// supports it, generic otherwise).
    Xdp,
    /// tc ingress, where XDP does not attach.
    Tc,
}

/// What carries a node's mesh traffic: `ebpf`, `ebpf-audit` or `userspace` (as `alkahest nodes`
/// shows it).
pub fn data_plane_name(loaded: Option<Mode>) -> &'static str {
    match loaded {
        Some(Mode::Audit) => "ebpf-audit",
        Some(_) => "ebpf",
        None => "userspace",
    }
}

/// The key of an address in the programs' maps: 16 bytes, IPv4 as `::ffff:a.b.c.d`.
pub fn addr_key(addr: IpAddr) -> [u8; 16] {
    match addr {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

/// The address a map key stands for (IPv4 when it is `::ffff:a.b.c.d`).
pub fn key_addr(key: [u8; 16]) -> IpAddr {
    let v6 = std::net::Ipv6Addr::from(key);
    match v6.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(v6),
    }
}

/// The range virtual addresses are given from (`aether-d --vip-range`, default
/// `127.77.0.0/16`: loopback addresses nothing else answers on).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VipRange {
    base: std::net::Ipv4Addr,
    prefix: u8,
}

impl Default for VipRange {
    fn default() -> Self {
        VipRange {
            base: std::net::Ipv4Addr::new(127, 77, 0, 0),
            prefix: 16,
        }
    }
}

impl FromStr for VipRange {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (addr, prefix) = s
            .split_once('/')
            .ok_or_else(|| format!("{s:?} is not a CIDR range such as 127.77.0.0/16"))?;
        let base: std::net::Ipv4Addr = addr
            .parse()
            .map_err(|_| format!("{addr:?} is not an IPv4 address"))?;
        let prefix: u8 = prefix
            .parse()
            .ok()
            .filter(|p| (8..=30).contains(p))
            .ok_or_else(|| format!("/{prefix}: the prefix must be between 8 and 30"))?;
        let mask = u32::MAX << (32 - prefix);
        Ok(VipRange {
            base: std::net::Ipv4Addr::from(u32::from(base) & mask),
            prefix,
        })
    }
}

impl fmt::Display for VipRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.base, self.prefix)
    }
}

impl VipRange {
    /// A virtual address for each name, the same on every node given the same names: the
    /// name's hash picks a slot, and a name whose slot an earlier one (in name order) took gets
    /// the next free one. The range's first and last addresses are not given out. Names beyond
    /// the range's size get none.
    pub fn allocate<'a>(
        &self,
        names: impl IntoIterator<Item = &'a str>,
    ) -> std::collections::BTreeMap<String, std::net::Ipv4Addr> {
        let names: BTreeSet<&str> = names.into_iter().collect();
        let size = 1u64 << (32 - self.prefix);
        let usable = size - 2;
        let mut taken = BTreeSet::new();
        let mut out = std::collections::BTreeMap::new();
        for name in names {
            if taken.len() as u64 >= usable {
                break;
            }
            // FNV-1a: stable across builds and machines.
            let hash = name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
                (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
            });
            let mut slot = hash % usable;
            while taken.contains(&slot) {
                slot = (slot + 1) % usable;
            }
            taken.insert(slot);
            let addr = u32::from(self.base) + 1 + slot as u32;
            out.insert(name.to_string(), std::net::Ipv4Addr::from(addr));
        }
        out
    }
}

/// What the admission filter counted for one source address.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SourceStats {
    /// Datagrams to a mesh port passed to the node.
    pub passed: u64,
    /// Datagrams dropped (in audit mode: that would have been).
    pub dropped: u64,
    /// Bytes of the passed datagrams.
    pub bytes: u64,
}

/// The map updates that take the kernel's allow and deny sets from what they hold to what is
/// wanted.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Changes {
    /// Addresses to add to the allow-list.
    pub allow: Vec<IpAddr>,
    /// Addresses to take off the allow-list.
    pub disallow: Vec<IpAddr>,
    /// Addresses to add to the deny-list.
    pub deny: Vec<IpAddr>,
    /// Addresses to take off the deny-list.
    pub undeny: Vec<IpAddr>,
}

impl Changes {
    /// The updates from (`allowed`, `denied`) as the kernel holds them to the wanted sets. An
    /// address both wanted allowed and denied is denied (a revocation wins).
    pub fn between(
        allowed: &BTreeSet<IpAddr>,
        denied: &BTreeSet<IpAddr>,
        want_allowed: &BTreeSet<IpAddr>,
        want_denied: &BTreeSet<IpAddr>,
    ) -> Self {
        let want_allowed: BTreeSet<IpAddr> =
            want_allowed.difference(want_denied).copied().collect();
        Changes {
            allow: want_allowed.difference(allowed).copied().collect(),
            disallow: allowed.difference(&want_allowed).copied().collect(),
            deny: want_denied.difference(denied).copied().collect(),
            undeny: denied.difference(want_denied).copied().collect(),
        }
    }

    /// Whether nothing changes.
    pub fn is_empty(&self) -> bool {
        self.allow.is_empty()
            && self.disallow.is_empty()
            && self.deny.is_empty()
            && self.undeny.is_empty()
    }
}

/// Why the data plane is not in use.
#[derive(Debug, thiserror::Error)]
pub enum DataPlaneError {
    /// The programs were not built (no clang when this crate was compiled).
    #[error("the eBPF programs were not built into this binary (clang was missing at build time)")]
    NotBuilt,
    /// This operating system has no eBPF.
    #[error("eBPF needs Linux")]
    Unsupported,
    /// The kernel refused to load a program or a map (often: not root, no CAP_BPF).
    #[error("the kernel refused the eBPF programs: {0}")]
    Load(String),
    /// A program could not be attached to an interface.
    #[error("could not attach the admission filter to {interface}: {reason}")]
    Attach {
        /// The interface.
        interface: String,
        /// What the kernel said.
        reason: String,
    },
    /// The virtual-address programs could not be attached to a cgroup.
    #[error("could not attach the virtual-address programs to the cgroup {cgroup}: {reason}")]
    AttachCgroup {
        /// The cgroup directory.
        cgroup: String,
        /// What the kernel said.
        reason: String,
    },
    /// No interface carries the mesh address.
    #[error("no interface holds the mesh address {0}")]
    NoInterface(IpAddr),
    /// A map update failed.
    #[error("eBPF map {map}: {reason}")]
    Map {
        /// The map.
        map: &'static str,
        /// What failed.
        reason: String,
    },
}

/// An error and its sources, in one line (aya's errors keep the kernel's reason in a source).
/// Packets and bytes that sockets of the cgroup exchanged with a component through its virtual
/// address, as IP packets (headers included).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Traffic {
    /// Packets sent to the component.
    pub packets_out: u64,
    /// Bytes sent to the component.
    pub bytes_out: u64,
    /// Packets received from the component.
    pub packets_in: u64,
    /// Bytes received from the component.
    pub bytes_in: u64,
}

#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// A stand-in where there is no eBPF: it never loads.
#[cfg(not(target_os = "linux"))]
pub struct DataPlane;

#[cfg(not(target_os = "linux"))]
impl DataPlane {
    /// Never loads here.
    pub fn start(
        _mode: Mode,
        _mesh_addr: IpAddr,
        _mesh_ports: &[u16],
    ) -> Result<Self, DataPlaneError> {
        Err(DataPlaneError::Unsupported)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(addrs: &[&str]) -> BTreeSet<IpAddr> {
        addrs.iter().map(|a| a.parse().expect("address")).collect()
    }

    #[test]
    fn keys_map_ipv4_into_ipv6_and_back() {
        for a in ["127.0.0.5", "10.1.2.3", "::1", "fd00::7"] {
            let addr: IpAddr = a.parse().expect("address");
            assert_eq!(key_addr(addr_key(addr)), addr);
        }
        assert_eq!(
            addr_key("1.2.3.4".parse().expect("v4"))[10..],
            [0xff, 0xff, 1, 2, 3, 4]
        );
    }

    #[test]
    fn changes_take_the_maps_to_what_is_wanted_and_revocation_wins() {
        let c = Changes::between(
            &set(&["10.0.0.1", "10.0.0.2"]),
            &set(&["10.0.0.9"]),
            &set(&["10.0.0.2", "10.0.0.3", "10.0.0.4"]),
            &set(&["10.0.0.4"]),
        );
        assert_eq!(c.allow, set(&["10.0.0.3"]).into_iter().collect::<Vec<_>>());
        assert_eq!(
            c.disallow,
            set(&["10.0.0.1"]).into_iter().collect::<Vec<_>>()
        );
        assert_eq!(c.deny, set(&["10.0.0.4"]).into_iter().collect::<Vec<_>>());
        assert_eq!(c.undeny, set(&["10.0.0.9"]).into_iter().collect::<Vec<_>>());
        assert!(Changes::between(&set(&["::1"]), &set(&[]), &set(&["::1"]), &set(&[])).is_empty());
    }

    #[test]
    fn virtual_addresses_are_stable_and_distinct() {
        let range: VipRange = "10.9.8.7/24".parse().expect("range");
        assert_eq!(range.to_string(), "10.9.8.0/24");
        let a = range.allocate(["shop", "cart", "search"]);
        let b = range.allocate(["search", "shop", "cart"]);
        assert_eq!(a, b, "the same on every node whatever the order");
        let distinct: BTreeSet<_> = a.values().collect();
        assert_eq!(distinct.len(), 3);
        for addr in a.values() {
            let last = addr.octets()[3];
            assert!(
                addr.octets()[..3] == [10, 9, 8] && last != 0 && last != 255,
                "{addr}"
            );
        }
        let tiny: VipRange = "10.0.0.0/30".parse().expect("range");
        assert_eq!(tiny.allocate(["a", "b", "c"]).len(), 2, "only what fits");
        assert!("10.0.0.0/4".parse::<VipRange>().is_err());
        assert!("10.0.0.0".parse::<VipRange>().is_err());
        assert_eq!(VipRange::default().to_string(), "127.77.0.0/16");
    }

    #[test]
    fn modes_parse_and_print() {
        for m in ["auto", "on", "off", "audit"] {
            assert_eq!(m.parse::<Mode>().expect("mode").to_string(), m);
        }
        assert!("maybe".parse::<Mode>().is_err());
        assert_eq!(data_plane_name(Some(Mode::Audit)), "ebpf-audit");
        assert_eq!(data_plane_name(Some(Mode::Auto)), "ebpf");
        assert_eq!(data_plane_name(None), "userspace");
    }
}
