//! The shell around the programs: load the object clang built, fill the configuration and port
//! maps, attach the admission filter to the interfaces that carry the mesh, apply allow and deny
//! updates, read the per-source counters. Detached when dropped (aya owns the links).

use std::collections::BTreeSet;
use std::ffi::CStr;
use std::net::IpAddr;

use aya::maps::{Array, HashMap, MapData};
use aya::programs::{SchedClassifier, TcAttachType, Xdp, XdpFlags};
use aya::{Ebpf, EbpfLoader, Pod};

use crate::{Changes, DataPlaneError, Hook, Mode, SourceStats, addr_key, key_addr};

/// The admission filter, as clang built it (empty when clang was missing).
static ADMISSION: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/admission.o"));

/// Datagrams per second that all unknown sources together may send to the mesh ports.
const UNKNOWN_PER_SEC: u32 = 256;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct Config {
    audit: u32,
    unknown_per_sec: u32,
}

// SAFETY: plain old data, the layout of `struct config` in admission.c.
unsafe impl Pod for Config {}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct RawStats {
    passed: u64,
    dropped: u64,
    bytes: u64,
    window_start: u64,
    window_count: u64,
}

// SAFETY: plain old data, the layout of `struct source_stats` in admission.c.
unsafe impl Pod for RawStats {}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Endpoint {
    addr: [u8; 16],
    port: u16,
    pad: u16,
}

// SAFETY: plain old data, the layout of `struct endpoint` in admission.c.
unsafe impl Pod for Endpoint {}

/// The loaded and attached admission filter.
pub struct DataPlane {
    hooks: Vec<Hook>,
    counts_sent: bool,
    ebpf: Ebpf,
    mode: Mode,
    interfaces: Vec<String>,
    mesh_addr: IpAddr,
    allowed: BTreeSet<IpAddr>,
    denied: BTreeSet<IpAddr>,
}

fn map_err(map: &'static str) -> impl Fn(aya::maps::MapError) -> DataPlaneError {
    move |e| DataPlaneError::Map {
        map,
        reason: e.to_string(),
    }
}

impl DataPlane {
    /// Loads the programs and attaches the admission filter to the interfaces holding
    /// `mesh_addr` (every interface that is up, for an unspecified address), filtering UDP to
    /// `mesh_addr` on `mesh_ports` (another address's traffic on a shared interface is not
    /// judged). `mode` must be `On`, `Auto` or `Audit`.
    pub fn start(
        mode: Mode,
        mesh_addr: IpAddr,
        mesh_ports: &[u16],
    ) -> Result<Self, DataPlaneError> {
        Self::start_on(mode, mesh_addr, mesh_ports, Hook::Xdp)
    }

    /// Like [`DataPlane::start`], attaching the admission filter on `hook` (tc ingress is also
    /// where it goes on an interface that refuses XDP).
    pub fn start_on(
        mode: Mode,
        mesh_addr: IpAddr,
        mesh_ports: &[u16],
        hook: Hook,
    ) -> Result<Self, DataPlaneError> {
        if ADMISSION.is_empty() {
            return Err(DataPlaneError::NotBuilt);
        }
        let interfaces = interfaces_for(mesh_addr)?;
        let mut ebpf = EbpfLoader::new()
            .load(ADMISSION)
            .map_err(|e| DataPlaneError::Load(format!("{e:#}")))?;
        {
            let map = ebpf.map_mut("config").ok_or(DataPlaneError::Map {
                map: "config",
                reason: "missing from the object".into(),
            })?;
            let mut config: Array<&mut MapData, Config> =
                Array::try_from(map).map_err(map_err("config"))?;
            let value = Config {
                audit: u32::from(mode == Mode::Audit),
                unknown_per_sec: UNKNOWN_PER_SEC,
            };
            config.set(0, value, 0).map_err(map_err("config"))?;
        }
        let mut hooks = Vec::new();
        for interface in &interfaces {
            let on_xdp = hook == Hook::Xdp && attach_xdp(&mut ebpf, interface).is_ok();
            if on_xdp {
                hooks.push(Hook::Xdp);
                continue;
            }
            attach_tc(&mut ebpf, interface)?;
            hooks.push(Hook::Tc);
        }
        // Counting what the node sends needs tc egress (tcx); without it only inbound is counted.
        let mut counts_sent = true;
        match program::<SchedClassifier>(&mut ebpf, "egress") {
            Ok(egress) => {
                if let Err(e) = egress.load() {
                    tracing::warn!("outbound counters off: {}", crate::error_chain(&e));
                    counts_sent = false;
                } else {
                    for interface in &interfaces {
                        if let Err(e) = egress.attach(interface, TcAttachType::Egress) {
                            tracing::warn!(
                                interface = %interface,
                                "outbound counters off: {}",
                                crate::error_chain(&e)
                            );
                            counts_sent = false;
                        }
                    }
                }
            }
            _ => counts_sent = false,
        }
        let mut plane = Self {
            hooks,
            counts_sent,
            ebpf,
            mode,
            interfaces,
            mesh_addr,
            allowed: BTreeSet::new(),
            denied: BTreeSet::new(),
        };
        plane.add_mesh_ports(mesh_ports)?;
        Ok(plane)
    }

    /// Filters these UDP ports of the mesh address too (endpoints the node binds after the
    /// start); ports already filtered are left as they are.
    pub fn add_mesh_ports(&mut self, ports: &[u16]) -> Result<(), DataPlaneError> {
        let map = self.ebpf.map_mut("endpoints").ok_or(DataPlaneError::Map {
            map: "endpoints",
            reason: "missing from the object".into(),
        })?;
        let mut filtered: HashMap<&mut MapData, Endpoint, u8> =
            HashMap::try_from(map).map_err(map_err("endpoints"))?;
        // The unspecified address stands for any (as `::` in the program).
        let addr = if self.mesh_addr.is_unspecified() {
            [0; 16]
        } else {
            addr_key(self.mesh_addr)
        };
        for &port in ports {
            let key = Endpoint { addr, port, pad: 0 };
            if filtered.get(&key, 0).is_err() {
                filtered.insert(key, 1, 0).map_err(map_err("endpoints"))?;
            }
        }
        Ok(())
    }

    /// How it runs (`On`/`Auto`: filtering, `Audit`: counting only).
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// The interfaces the admission filter is attached to.
    pub fn interfaces(&self) -> &[String] {
        &self.interfaces
    }

    /// Makes the kernel's allow-list `allowed` (members' addresses) and deny-list `denied`
    /// (revoked members' addresses); returns the changes applied.
    pub fn set_members(
        &mut self,
        allowed: &BTreeSet<IpAddr>,
        denied: &BTreeSet<IpAddr>,
    ) -> Result<Changes, DataPlaneError> {
        let changes = Changes::between(&self.allowed, &self.denied, allowed, denied);
        if changes.is_empty() {
            return Ok(changes);
        }
        {
            let map = self.ebpf.map_mut("denied").ok_or(DataPlaneError::Map {
                map: "denied",
                reason: "missing from the object".into(),
            })?;
            let mut deny: HashMap<&mut MapData, [u8; 16], u8> =
                HashMap::try_from(map).map_err(map_err("denied"))?;
            for a in &changes.deny {
                deny.insert(addr_key(*a), 1, 0).map_err(map_err("denied"))?;
                self.denied.insert(*a);
            }
            for a in &changes.undeny {
                let _ = deny.remove(&addr_key(*a));
                self.denied.remove(a);
            }
        }
        let map = self.ebpf.map_mut("allowed").ok_or(DataPlaneError::Map {
            map: "allowed",
            reason: "missing from the object".into(),
        })?;
        let mut allow: HashMap<&mut MapData, [u8; 16], u8> =
            HashMap::try_from(map).map_err(map_err("allowed"))?;
        for a in &changes.allow {
            allow
                .insert(addr_key(*a), 1, 0)
                .map_err(map_err("allowed"))?;
            self.allowed.insert(*a);
        }
        for a in &changes.disallow {
            let _ = allow.remove(&addr_key(*a));
            self.allowed.remove(a);
        }
        Ok(changes)
    }

    /// Where the admission filter runs on each of [`DataPlane::interfaces`].
    pub fn hooks(&self) -> &[Hook] {
        &self.hooks
    }

    /// Whether what the node sends is counted too (tc egress attached).
    pub fn counts_sent(&self) -> bool {
        self.counts_sent
    }

    /// What the node's mesh endpoints sent, per destination address: (packets, bytes).
    pub fn sent(&self) -> Vec<(IpAddr, u64, u64)> {
        let Some(map) = self.ebpf.map("sent") else {
            return Vec::new();
        };
        let Ok(sent) = HashMap::<&MapData, [u8; 16], [u64; 2]>::try_from(map) else {
            return Vec::new();
        };
        sent.iter()
            .filter_map(Result::ok)
            .map(|(key, [packets, bytes])| (key_addr(key), packets, bytes))
            .collect()
    }

    /// What the admission filter counted, per source address.
    pub fn sources(&self) -> Vec<(IpAddr, SourceStats)> {
        let Some(map) = self.ebpf.map("sources") else {
            return Vec::new();
        };
        let Ok(sources) = HashMap::<&MapData, [u8; 16], RawStats>::try_from(map) else {
            return Vec::new();
        };
        sources
            .iter()
            .filter_map(Result::ok)
            .map(|(key, s)| {
                (
                    key_addr(key),
                    SourceStats {
                        passed: s.passed,
                        dropped: s.dropped,
                        bytes: s.bytes,
                    },
                )
            })
            .collect()
    }
}

/// The program `name` of the object, as its type.
pub(crate) fn program<'a, T>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut T, DataPlaneError>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    ebpf.program_mut(name)
        .ok_or_else(|| DataPlaneError::Load(format!("no program `{name}` in the object")))?
        .try_into()
        .map_err(|e: aya::programs::ProgramError| DataPlaneError::Load(e.to_string()))
}

/// Attaches the XDP admission filter to `interface` (native, else generic).
fn attach_xdp(ebpf: &mut Ebpf, interface: &str) -> Result<(), DataPlaneError> {
    let program: &mut Xdp = program(ebpf, "admission")?;
    if program.fd().is_err() {
        program
            .load()
            .map_err(|e| DataPlaneError::Load(crate::error_chain(&e)))?;
    }
    program
        .attach(interface, XdpFlags::default())
        .or_else(|_| program.attach(interface, XdpFlags::SKB_MODE))
        .map(|_| ())
        .map_err(|e| DataPlaneError::Attach {
            interface: interface.to_string(),
            reason: crate::error_chain(&e),
        })
}

/// Attaches the tc-ingress admission filter to `interface`.
fn attach_tc(ebpf: &mut Ebpf, interface: &str) -> Result<(), DataPlaneError> {
    let program: &mut SchedClassifier = program(ebpf, "admission_tc")?;
    if program.fd().is_err() {
        program
            .load()
            .map_err(|e| DataPlaneError::Load(crate::error_chain(&e)))?;
    }
    program
        .attach(interface, TcAttachType::Ingress)
        .map(|_| ())
        .map_err(|e| DataPlaneError::Attach {
            interface: interface.to_string(),
            reason: crate::error_chain(&e),
        })
}

/// The interfaces that hold `addr` (in one of their networks), or every interface that is up
/// for an unspecified address.
fn interfaces_for(addr: IpAddr) -> Result<Vec<String>, DataPlaneError> {
    let mut found: BTreeSet<String> = BTreeSet::new();
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `list` with a linked list we free below.
    if unsafe { libc::getifaddrs(&mut list) } != 0 {
        return Err(DataPlaneError::NoInterface(addr));
    }
    let mut cursor = list;
    while !cursor.is_null() {
        // SAFETY: a node of the list getifaddrs returned, valid until freeifaddrs.
        let entry = unsafe { &*cursor };
        cursor = entry.ifa_next;
        if entry.ifa_addr.is_null() || entry.ifa_name.is_null() {
            continue;
        }
        // SAFETY: a NUL-terminated name from getifaddrs.
        let name = unsafe { CStr::from_ptr(entry.ifa_name) }
            .to_string_lossy()
            .into_owned();
        let up = entry.ifa_flags & (libc::IFF_UP as u32) != 0;
        if addr.is_unspecified() {
            if up {
                found.insert(name);
            }
            continue;
        }
        // SAFETY: ifa_addr and ifa_netmask point to sockaddrs of the family ifa_addr gives.
        let (ip, mask) = unsafe { (sockaddr_ip(entry.ifa_addr), sockaddr_ip(entry.ifa_netmask)) };
        if let (Some(ip), Some(mask)) = (ip, mask)
            && same_network(ip, addr, mask)
        {
            found.insert(name);
        }
    }
    // SAFETY: the list getifaddrs allocated.
    unsafe { libc::freeifaddrs(list) };
    if found.is_empty() {
        return Err(DataPlaneError::NoInterface(addr));
    }
    Ok(found.into_iter().collect())
}

/// The address in a sockaddr, for IPv4 and IPv6.
///
/// # Safety
/// `sa` is null or points to a valid sockaddr of the family it names.
unsafe fn sockaddr_ip(sa: *const libc::sockaddr) -> Option<IpAddr> {
    if sa.is_null() {
        return None;
    }
    // SAFETY: per the function's contract.
    match i32::from(unsafe { (*sa).sa_family }) {
        libc::AF_INET => {
            // SAFETY: the family says sockaddr_in.
            let sin = unsafe { &*(sa as *const libc::sockaddr_in) };
            Some(IpAddr::from(
                u32::from_be(sin.sin_addr.s_addr).to_be_bytes(),
            ))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says sockaddr_in6.
            let sin6 = unsafe { &*(sa as *const libc::sockaddr_in6) };
            Some(IpAddr::from(sin6.sin6_addr.s6_addr))
        }
        _ => None,
    }
}

fn same_network(a: IpAddr, b: IpAddr, mask: IpAddr) -> bool {
    match (a, b, mask) {
        (IpAddr::V4(a), IpAddr::V4(b), IpAddr::V4(m)) => {
            let m = u32::from(m);
            u32::from(a) & m == u32::from(b) & m
        }
        (IpAddr::V6(a), IpAddr::V6(b), IpAddr::V6(m)) => {
            let m = u128::from(m);
            u128::from(a) & m == u128::from(b) & m
        }
        _ => false,
    }
}
