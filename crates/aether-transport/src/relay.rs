//! Relaying on the node's UDP socket (see `aether_nat::relay`): a wrapper around the socket
//! quinn uses that
//!
//! - sends datagrams for a peer reached through a relay (a *virtual address*, `240.x.y.z:1`,
//!   that quinn uses as the peer's address) to the relay, in an envelope naming the peer;
//! - passes on, as a relay, envelopes between two peers it has connections with, within a byte
//!   budget per pair;
//! - unwraps envelopes a relay passed on to it and hands quinn the datagram as coming from the
//!   virtual address of (relay, origin).
//!
//! Every other datagram goes through untouched. The QUIC connection through a relay is the
//! same end-to-end connection (mutual TLS, admission) as a direct one.

use std::collections::HashMap;
use std::fmt;
use std::io::{self, IoSliceMut};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Instant;

use aether_identity::NodeId;
use aether_nat::relay::{self as envelope, HEADER, Kind, PairLimiter};
use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, UdpPoller};

/// First octet of virtual addresses (240.0.0.0/8 is reserved: never a real peer's).
const VIRTUAL_OCTET: u8 = 240;

/// Whether `addr` is a virtual address (a peer reached through a relay).
pub(crate) fn is_virtual(addr: &SocketAddr) -> bool {
    matches!(addr.ip(), IpAddr::V4(ip) if ip.octets()[0] == VIRTUAL_OCTET)
}

/// Counters of what this node relayed for others.
#[derive(Debug, Default)]
pub struct RelayMetrics {
    /// Datagrams passed on between two other members.
    pub relayed_packets: AtomicU64,
    /// Their bytes.
    pub relayed_bytes: AtomicU64,
    /// Envelopes dropped: relaying off, an unknown sender or destination, or over a pair's
    /// budget.
    pub dropped_packets: AtomicU64,
}

/// What the relay socket and the endpoint share: the peers with connections (by address and by
/// id), the virtual addresses, the budget per pair.
pub(crate) struct RelayTable {
    relaying: bool,
    /// Whether any virtual address was ever made: until then no connection goes through a
    /// relay, and asking costs no lock.
    in_use: std::sync::atomic::AtomicBool,
    /// Tests only: flip a byte in each of the next this many datagrams passed on, as a relay
    /// that tampers would.
    #[cfg(test)]
    pub(crate) to_damage: AtomicU64,
    started: Instant,
    state: Mutex<RelayState>,
    pub(crate) metrics: RelayMetrics,
}

struct RelayState {
    by_addr: HashMap<SocketAddr, NodeId>,
    by_node: HashMap<NodeId, SocketAddr>,
    /// Virtual address → (relay's address, peer).
    virtual_to: HashMap<SocketAddr, (SocketAddr, NodeId)>,
    virtual_of: HashMap<(SocketAddr, NodeId), SocketAddr>,
    next: u32,
    limiter: PairLimiter,
}

impl fmt::Debug for RelayTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RelayTable")
            .field("relaying", &self.relaying)
            .finish_non_exhaustive()
    }
}

impl RelayTable {
    /// A table for a node that relays for others when `relaying`, `rate` bytes a second per
    /// pair.
    pub(crate) fn new(relaying: bool, rate: u64) -> Self {
        Self {
            relaying,
            in_use: std::sync::atomic::AtomicBool::new(false),
            started: Instant::now(),
            state: Mutex::new(RelayState {
                by_addr: HashMap::new(),
                by_node: HashMap::new(),
                virtual_to: HashMap::new(),
                virtual_of: HashMap::new(),
                next: 1,
                limiter: PairLimiter::new(rate, rate.max(1 << 20)),
            }),
            metrics: RelayMetrics::default(),
            #[cfg(test)]
            to_damage: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, RelayState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A connection with `node` from `addr` is up.
    pub(crate) fn peer_up(&self, addr: SocketAddr, node: NodeId) {
        if is_virtual(&addr) {
            return;
        }
        let mut s = self.lock();
        s.by_addr.insert(addr, node);
        s.by_node.insert(node, addr);
    }

    /// The connection with `node` from `addr` is gone; returns the virtual addresses that went
    /// through it (their connections lost their relay).
    pub(crate) fn peer_down(&self, addr: SocketAddr, node: NodeId) -> Vec<SocketAddr> {
        let mut s = self.lock();
        if s.by_addr.get(&addr) == Some(&node) {
            s.by_addr.remove(&addr);
        }
        if s.by_node.get(&node) == Some(&addr) {
            s.by_node.remove(&node);
        }
        s.virtual_to
            .iter()
            .filter(|(_, (relay, _))| *relay == addr)
            .map(|(v, _)| *v)
            .collect()
    }

    /// The virtual address of `peer` through the relay at `relay` (made on first use).
    pub(crate) fn virtual_addr(&self, relay: SocketAddr, peer: NodeId) -> SocketAddr {
        let mut s = self.lock();
        if let Some(v) = s.virtual_of.get(&(relay, peer)) {
            return *v;
        }
        self.in_use.store(true, Ordering::Relaxed);
        let n = s.next;
        s.next = s.next.wrapping_add(1).max(1) & 0x00ff_ffff;
        let [_, a, b, c] = n.to_be_bytes();
        let v = SocketAddr::from((Ipv4Addr::new(VIRTUAL_OCTET, a, b, c), 1));
        if let Some((old_relay, old_peer)) = s.virtual_to.insert(v, (relay, peer)) {
            s.virtual_of.remove(&(old_relay, old_peer));
        }
        s.virtual_of.insert((relay, peer), v);
        v
    }

    /// The address of the connection with `node`, when there is one.
    pub(crate) fn addr_of(&self, node: &NodeId) -> Option<SocketAddr> {
        self.lock().by_node.get(node).copied()
    }

    /// Whether any connection may go through a relay (a lock-free look).
    pub(crate) fn in_use(&self) -> bool {
        self.in_use.load(Ordering::Relaxed)
    }

    /// The relay (its id) a virtual address goes through.
    pub(crate) fn relay_of(&self, virtual_addr: &SocketAddr) -> Option<NodeId> {
        let s = self.lock();
        let (relay, _) = s.virtual_to.get(virtual_addr)?;
        s.by_addr.get(relay).copied()
    }

    fn target(&self, virtual_addr: &SocketAddr) -> Option<(SocketAddr, NodeId)> {
        self.lock().virtual_to.get(virtual_addr).copied()
    }
}

/// The node's UDP socket with relaying (see the module's documentation).
#[derive(Debug)]
pub(crate) struct RelaySocket {
    pub(crate) inner: Arc<dyn AsyncUdpSocket>,
    pub(crate) table: Arc<RelayTable>,
}

impl RelaySocket {
    /// Passes an envelope for `to` from the peer at `from` on, when this node relays and both
    /// are peers with connections here, within their budget.
    fn pass_on(&self, from: SocketAddr, to: NodeId, datagram: &[u8]) {
        let m = &self.table.metrics;
        let route = {
            let mut s = self.table.lock();
            let origin = s.by_addr.get(&from).copied();
            let dest = s.by_node.get(&to).copied();
            match (self.table.relaying, origin, dest) {
                (true, Some(origin), Some(dest)) => {
                    let now = self.table.started.elapsed();
                    s.limiter
                        .allow(origin, to, datagram.len(), now)
                        .then_some((origin, dest))
                }
                _ => None,
            }
        };
        let Some((origin, dest)) = route else {
            m.dropped_packets.fetch_add(1, Ordering::Relaxed);
            return;
        };
        #[allow(unused_mut)]
        let mut wrapped = envelope::wrap(Kind::From, &origin, datagram);
        #[cfg(test)]
        if self
            .table
            .to_damage
            .try_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
            .is_ok()
        {
            let middle = HEADER + datagram.len() / 2;
            wrapped[middle] ^= 0x01;
        }
        let sent = self.inner.try_send(&Transmit {
            destination: dest,
            ecn: None,
            contents: &wrapped,
            segment_size: None,
            src_ip: None,
        });
        if sent.is_ok() {
            m.relayed_packets.fetch_add(1, Ordering::Relaxed);
            m.relayed_bytes
                .fetch_add(datagram.len() as u64, Ordering::Relaxed);
        } else {
            m.dropped_packets.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Handles received buffer `i`, an envelope (or several, coalesced): passes on what is for
    /// others; unwraps what a relay sent here into buffer `i` or, for coalesced ones, free slots
    /// from `*used` on. Sets `meta[i].len` to 0 when nothing of it is left for quinn.
    fn unwrap(
        &self,
        i: usize,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
        used: &mut usize,
    ) {
        let (from, len) = (meta[i].addr, meta[i].len);
        let stride = meta[i].stride.clamp(1, len.max(1));
        let known_relay = self.table.lock().by_addr.contains_key(&from);
        let mut kept_here = false;
        let mut start = 0;
        while start < len {
            let end = (start + stride).min(len);
            let segment_range = start..end;
            start = end;
            let Some((kind, node)) = envelope::read_header(&bufs[i][segment_range.clone()]) else {
                continue;
            };
            match kind {
                Kind::To => self.pass_on(from, node, &bufs[i][segment_range.start + HEADER..end]),
                Kind::From if known_relay => {
                    let virtual_addr = self.table.virtual_addr(from, node);
                    let size = end - segment_range.start - HEADER;
                    if !kept_here && segment_range.start == 0 {
                        // The first datagram stays in buffer `i`.
                        bufs[i].copy_within(HEADER..end, 0);
                        meta[i].addr = virtual_addr;
                        meta[i].len = size;
                        meta[i].stride = size;
                        kept_here = true;
                    } else if *used < bufs.len().min(meta.len()) {
                        let j = *used;
                        *used += 1;
                        let (head, tail) = bufs.split_at_mut(j);
                        tail[0][..size]
                            .copy_from_slice(&head[i][segment_range.start + HEADER..end]);
                        meta[j] = RecvMeta {
                            addr: virtual_addr,
                            len: size,
                            stride: size,
                            ecn: meta[i].ecn,
                            dst_ip: meta[i].dst_ip,
                        };
                    }
                }
                Kind::From => {
                    self.table
                        .metrics
                        .dropped_packets
                        .fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        if !kept_here {
            meta[i].len = 0;
        }
    }
}

impl AsyncUdpSocket for RelaySocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        self.inner.clone().create_io_poller()
    }

    fn try_send(&self, transmit: &Transmit) -> io::Result<()> {
        if !is_virtual(&transmit.destination) {
            return self.inner.try_send(transmit);
        }
        let Some((relay, peer)) = self.table.target(&transmit.destination) else {
            // A virtual address whose relay is gone: lost, as on a dead path.
            return Ok(());
        };
        let segment = transmit
            .segment_size
            .unwrap_or(transmit.contents.len())
            .max(1);
        for datagram in transmit.contents.chunks(segment) {
            let wrapped = envelope::wrap(Kind::To, &peer, datagram);
            self.inner.try_send(&Transmit {
                destination: relay,
                ecn: transmit.ecn,
                contents: &wrapped,
                segment_size: None,
                src_ip: transmit.src_ip,
            })?;
        }
        Ok(())
    }

    fn poll_recv(
        &self,
        cx: &mut Context,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        loop {
            let n = match self.inner.poll_recv(cx, bufs, meta) {
                Poll::Ready(Ok(n)) => n,
                other => return other,
            };
            let mut used = n;
            for i in 0..n {
                if meta[i].len > 0 && envelope::is_envelope(&bufs[i][..meta[i].len]) {
                    self.unwrap(i, bufs, meta, &mut used);
                }
            }
            if (0..used).any(|i| meta[i].len > 0) {
                return Poll::Ready(Ok(used));
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    fn max_transmit_segments(&self) -> usize {
        self.inner.max_transmit_segments()
    }

    fn max_receive_segments(&self) -> usize {
        self.inner.max_receive_segments()
    }

    fn may_fragment(&self) -> bool {
        self.inner.may_fragment()
    }
}
