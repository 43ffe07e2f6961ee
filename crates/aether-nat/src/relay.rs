//! Relaying for members that cannot reach each other even through a punched hole (a NAT that
//! picks a new port for every peer): a reachable member passes their UDP datagrams on, opaque.
//! The QUIC connection and its TLS stay end to end, so a relay sees only ciphertext: it can drop
//! a datagram but never read, change or forge one (the peers' QUIC drops what fails its AEAD).
//!
//! A relayed datagram travels in an envelope on the same UDP sockets as QUIC, told apart by its
//! first byte: QUIC v1 sets the fixed bit (0x40) in every packet, an envelope starts with 0x00.
//!
//! ```text
//! envelope: u8 0x00 | u8 kind | [u8; 32] node id | datagram
//! kind 1, to:   sender → relay; the id is the destination
//! kind 2, from: relay → destination; the id is the origin
//! ```

use std::collections::HashMap;
use std::time::Duration;

use aether_identity::NodeId;

/// First byte of every envelope (a QUIC v1 packet never starts with it).
pub const MAGIC: u8 = 0x00;
/// Bytes before the datagram.
pub const HEADER: usize = 2 + 32;

/// Which way an envelope goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// From a member to its relay, for the member named.
    To,
    /// From the relay to its destination, from the member named.
    From,
}

/// Whether `datagram` is an envelope (rather than a QUIC packet).
pub fn is_envelope(datagram: &[u8]) -> bool {
    datagram.first() == Some(&MAGIC)
}

/// Writes the envelope header for `kind` and `node` into `out` (which must hold [`HEADER`]
/// bytes).
pub fn write_header(out: &mut [u8], kind: Kind, node: &NodeId) {
    out[0] = MAGIC;
    out[1] = match kind {
        Kind::To => 1,
        Kind::From => 2,
    };
    out[2..HEADER].copy_from_slice(node.as_bytes());
}

/// An envelope around `datagram`.
pub fn wrap(kind: Kind, node: &NodeId, datagram: &[u8]) -> Vec<u8> {
    let mut out = vec![0; HEADER + datagram.len()];
    write_header(&mut out, kind, node);
    out[HEADER..].copy_from_slice(datagram);
    out
}

/// The kind and node of an envelope, when `datagram` is a well-formed one.
pub fn read_header(datagram: &[u8]) -> Option<(Kind, NodeId)> {
    if datagram.len() <= HEADER || datagram[0] != MAGIC {
        return None;
    }
    let kind = match datagram[1] {
        1 => Kind::To,
        2 => Kind::From,
        _ => return None,
    };
    let bytes: [u8; 32] = datagram[2..HEADER].try_into().ok()?;
    let node = NodeId::from_bytes(&bytes).ok()?;
    Some((kind, node))
}

/// A byte budget per pair of members a relay passes datagrams between (a token bucket: `rate`
/// bytes a second, up to `burst` at once).
#[derive(Debug)]
pub struct PairLimiter {
    rate: f64,
    burst: f64,
    buckets: HashMap<(NodeId, NodeId), (f64, Duration)>,
}

impl PairLimiter {
    /// `rate` bytes a second per pair, bursts of `burst`.
    pub fn new(rate: u64, burst: u64) -> Self {
        Self {
            rate: rate as f64,
            burst: burst.max(1) as f64,
            buckets: HashMap::new(),
        }
    }

    /// Whether `bytes` from `from` to `to` fit the pair's budget at `now` (and takes them).
    pub fn allow(&mut self, from: NodeId, to: NodeId, bytes: usize, now: Duration) -> bool {
        if self.buckets.len() > 4096 {
            let (rate, burst) = (self.rate, self.burst);
            self.buckets.retain(|_, (tokens, at)| {
                *tokens + rate * now.saturating_sub(*at).as_secs_f64() < burst
            });
        }
        let (tokens, at) = self.buckets.entry((from, to)).or_insert((self.burst, now));
        *tokens = (*tokens + self.rate * now.saturating_sub(*at).as_secs_f64()).min(self.burst);
        *at = now;
        if *tokens >= bytes as f64 {
            *tokens -= bytes as f64;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> NodeId {
        aether_identity::SecretKey::from_bytes(&[n; 32]).public()
    }

    #[test]
    fn envelopes_round_trip_and_never_look_like_quic() {
        let e = wrap(Kind::To, &id(1), b"ciphertext");
        assert!(is_envelope(&e));
        assert_eq!(read_header(&e), Some((Kind::To, id(1))));
        assert_eq!(&e[HEADER..], b"ciphertext");
        // A QUIC v1 packet (long or short header) has the fixed bit set.
        assert!(!is_envelope(&[0xc3, 0, 0, 0, 1]));
        assert!(!is_envelope(&[0x41, 9, 9]));
        // Truncated, empty or of an unknown kind: not an envelope one can use.
        assert_eq!(read_header(&e[..HEADER]), None);
        let mut odd = e.clone();
        odd[1] = 9;
        assert_eq!(read_header(&odd), None);
    }

    #[test]
    fn each_pair_gets_its_own_budget() {
        let mut limiter = PairLimiter::new(1000, 1500);
        let t = Duration::from_secs(1);
        assert!(limiter.allow(id(1), id(2), 1200, t));
        assert!(!limiter.allow(id(1), id(2), 1200, t), "over the burst");
        assert!(limiter.allow(id(1), id(3), 1200, t), "another pair");
        assert!(limiter.allow(id(1), id(2), 1200, t + Duration::from_secs(1)));
    }
}
