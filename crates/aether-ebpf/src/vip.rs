//! Virtual addresses in the kernel: the cgroup programs of `bpf/vip.c`, attached to a cgroup,
//! and the maps from each virtual address to the node's listener for its component.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::{Path, PathBuf};

use aya::maps::{HashMap, MapData};
use aya::programs::{CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, CgroupSockAddr};
use aya::{Ebpf, EbpfLoader, Pod};

use crate::{DataPlaneError, Traffic, error_chain};

/// The cgroup programs, as clang built them (empty when clang was missing).
static VIP: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/vip.o"));

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Ipv4Port {
    addr: u32,
    port: u16,
    pad: u16,
}

// SAFETY: plain old data, the layout of `struct ipv4_port` in vip.c.
unsafe impl Pod for Ipv4Port {}

impl From<SocketAddrV4> for Ipv4Port {
    fn from(a: SocketAddrV4) -> Self {
        Ipv4Port {
            // The program reads the address as the kernel holds it: network order.
            addr: u32::from_ne_bytes(a.ip().octets()),
            port: a.port(),
            pad: 0,
        }
    }
}

impl From<Ipv4Port> for SocketAddrV4 {
    fn from(k: Ipv4Port) -> Self {
        SocketAddrV4::new(Ipv4Addr::from(k.addr.to_ne_bytes()), k.port)
    }
}

// SAFETY: plain old data, the layout of `struct traffic` in vip.c.
unsafe impl Pod for Traffic {}

/// The virtual-address programs attached to one cgroup.
pub struct VirtualAddresses {
    ebpf: Ebpf,
    cgroup: PathBuf,
    current: BTreeMap<SocketAddrV4, SocketAddrV4>,
}

fn map_err(map: &'static str) -> impl Fn(aya::maps::MapError) -> DataPlaneError {
    move |e| DataPlaneError::Map {
        map,
        reason: e.to_string(),
    }
}

impl VirtualAddresses {
    /// Loads the programs and attaches them to the cgroup at `cgroup` (a cgroup v2 directory):
    /// processes in it (and its descendants) reach virtual addresses.
    pub fn attach(cgroup: &Path) -> Result<Self, DataPlaneError> {
        if VIP.is_empty() {
            return Err(DataPlaneError::NotBuilt);
        }
        let dir = std::fs::File::open(cgroup).map_err(|e| DataPlaneError::AttachCgroup {
            cgroup: cgroup.display().to_string(),
            reason: e.to_string(),
        })?;
        let mut ebpf = EbpfLoader::new()
            .load(VIP)
            .map_err(|e| DataPlaneError::Load(format!("{e:#}")))?;
        for name in ["connect4", "getpeername4"] {
            let program: &mut CgroupSockAddr = crate::loader::program(&mut ebpf, name)?;
            program
                .load()
                .map_err(|e| DataPlaneError::Load(format!("{name}: {e:#}")))?;
            program
                .attach(&dir, CgroupAttachMode::Single)
                .map_err(|e| DataPlaneError::AttachCgroup {
                    cgroup: cgroup.display().to_string(),
                    reason: format!("{name}: {}", error_chain(&e)),
                })?;
        }
        for (name, direction) in [
            ("traffic_out", CgroupSkbAttachType::Egress),
            ("traffic_in", CgroupSkbAttachType::Ingress),
        ] {
            let program: &mut CgroupSkb = crate::loader::program(&mut ebpf, name)?;
            program
                .load()
                .map_err(|e| DataPlaneError::Load(format!("{name}: {e:#}")))?;
            program
                .attach(&dir, direction, CgroupAttachMode::Single)
                .map_err(|e| DataPlaneError::AttachCgroup {
                    cgroup: cgroup.display().to_string(),
                    reason: format!("{name}: {}", error_chain(&e)),
                })?;
        }
        Ok(Self {
            ebpf,
            cgroup: cgroup.to_path_buf(),
            current: BTreeMap::new(),
        })
    }

    /// The cgroup the programs are attached to.
    pub fn cgroup(&self) -> &Path {
        &self.cgroup
    }

    /// Makes the kernel's table `wanted`: virtual address and port → the listener to connect to.
    pub fn set(
        &mut self,
        wanted: &BTreeMap<SocketAddrV4, SocketAddrV4>,
    ) -> Result<(), DataPlaneError> {
        if *wanted == self.current {
            return Ok(());
        }
        for (forward, name) in [(true, "vips"), (false, "vips_back")] {
            let map = self.ebpf.map_mut(name).ok_or(DataPlaneError::Map {
                map: if forward { "vips" } else { "vips_back" },
                reason: "missing from the object".into(),
            })?;
            let label = if forward { "vips" } else { "vips_back" };
            let mut table: HashMap<&mut MapData, Ipv4Port, Ipv4Port> =
                HashMap::try_from(map).map_err(map_err(label))?;
            let entry = |vip: &SocketAddrV4, target: &SocketAddrV4| {
                if forward {
                    (Ipv4Port::from(*vip), Ipv4Port::from(*target))
                } else {
                    (Ipv4Port::from(*target), Ipv4Port::from(*vip))
                }
            };
            for (vip, target) in &self.current {
                if wanted.get(vip) != Some(target) {
                    let _ = table.remove(&entry(vip, target).0);
                }
            }
            for (vip, target) in wanted {
                let (k, v) = entry(vip, target);
                table.insert(k, v, 0).map_err(map_err(label))?;
            }
        }
        self.current = wanted.clone();
        Ok(())
    }

    /// Connections made through each virtual address since the programs were loaded.
    pub fn connections(&self) -> Vec<(SocketAddrV4, u64)> {
        let Some(map) = self.ebpf.map("vip_connections") else {
            return Vec::new();
        };
        let Ok(table) = HashMap::<&MapData, Ipv4Port, u64>::try_from(map) else {
            return Vec::new();
        };
        table
            .iter()
            .filter_map(Result::ok)
            .map(|(k, n)| (SocketAddrV4::from(k), n))
            .collect()
    }

    /// What went through each virtual address since the programs were loaded.
    pub fn traffic(&self) -> Vec<(SocketAddrV4, Traffic)> {
        let Some(map) = self.ebpf.map("vip_traffic") else {
            return Vec::new();
        };
        let Ok(table) = HashMap::<&MapData, Ipv4Port, Traffic>::try_from(map) else {
            return Vec::new();
        };
        table
            .iter()
            .filter_map(Result::ok)
            .map(|(k, t)| (SocketAddrV4::from(k), t))
            .collect()
    }
}
