//! How the lattice reaches this node, learned rather than configured (sans-IO: fed with reports
//! and time). Members report the address they see this node's connection come from (as STUN
//! does); a member asked to dial this node back at the address it advertises tells whether the
//! handshake got through. A node some member reached that way is `direct`; one that every recent
//! dial-back missed sits behind NAT (or a firewall): members reach it only over the connections
//! it opens, which its keep-alives hold open.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use aether_identity::NodeId;

/// The label giving a node's reachability ([`Reach`]).
pub const REACHABILITY_LABEL: &str = "reachability";
/// The label giving the address members see a node at, when it differs from the advertised one.
pub const OBSERVED_LABEL: &str = "observed-addr";

/// Reports older than this no longer count.
const FRESH: Duration = Duration::from_secs(300);
/// How often a member is asked to dial back once the answer is known.
const ASK_EVERY: Duration = Duration::from_secs(60);
/// How often while it is not (no member answered yet).
const ASK_EVERY_UNKNOWN: Duration = Duration::from_secs(3);

/// Whether members can dial this node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reach {
    /// No member has dialled back yet.
    Unknown,
    /// A member reached it at its advertised address.
    Direct,
    /// Recent dial-backs all missed: reached only over the connections it opens.
    Nat,
}

impl Reach {
    /// The label value: `unknown`, `direct` or `nat`.
    pub fn as_str(self) -> &'static str {
        match self {
            Reach::Unknown => "unknown",
            Reach::Direct => "direct",
            Reach::Nat => "nat",
        }
    }
}

/// What this node has learned of its reachability.
#[derive(Debug)]
pub struct Reachability {
    advertised: SocketAddr,
    /// Reporter → the address it sees this node at, and when it said so.
    reports: BTreeMap<NodeId, (SocketAddr, Duration)>,
    /// Prober → whether its dial-back got through, and when.
    dial_backs: BTreeMap<NodeId, (bool, Duration)>,
    asked_at: Option<Duration>,
}

impl Reachability {
    /// Nothing learned yet about a node advertising `advertised`.
    pub fn new(advertised: SocketAddr) -> Self {
        Self {
            advertised,
            reports: BTreeMap::new(),
            dial_backs: BTreeMap::new(),
            asked_at: None,
        }
    }

    /// Member `from` sees this node at `addr`.
    pub fn observed(&mut self, from: NodeId, addr: SocketAddr, now: Duration) {
        self.reports.insert(from, (addr, now));
    }

    /// Member `from` dialled this node back at its advertised address: `reached` or not.
    pub fn dial_back(&mut self, from: NodeId, reached: bool, now: Duration) {
        self.dial_backs.insert(from, (reached, now));
    }

    /// Forgets what `node` said (it left or was declared dead).
    pub fn forget(&mut self, node: &NodeId) {
        self.reports.remove(node);
        self.dial_backs.remove(node);
    }

    /// The address most fresh reports agree on (the most recent among equals).
    pub fn observed_addr(&self, now: Duration) -> Option<SocketAddr> {
        let mut votes: BTreeMap<SocketAddr, (usize, Duration)> = BTreeMap::new();
        for (addr, at) in self.reports.values() {
            if now.saturating_sub(*at) <= FRESH {
                let v = votes.entry(*addr).or_default();
                v.0 += 1;
                v.1 = v.1.max(*at);
            }
        }
        votes
            .into_iter()
            .max_by_key(|(_, (count, at))| (*count, *at))
            .map(|(addr, _)| addr)
    }

    /// Direct when a fresh dial-back got through, NAT when fresh ones all missed.
    pub fn reach(&self, now: Duration) -> Reach {
        let fresh = self
            .dial_backs
            .values()
            .filter(|(_, at)| now.saturating_sub(*at) <= FRESH);
        let mut any = false;
        for (reached, _) in fresh {
            if *reached {
                return Reach::Direct;
            }
            any = true;
        }
        if any { Reach::Nat } else { Reach::Unknown }
    }

    /// Whether to ask a member to dial back now; the caller asks and calls [`Self::asked`].
    pub fn wants_dial_back(&self, now: Duration) -> bool {
        let every = if self.reach(now) == Reach::Unknown {
            ASK_EVERY_UNKNOWN
        } else {
            ASK_EVERY
        };
        self.asked_at
            .is_none_or(|at| now.saturating_sub(at) >= every)
    }

    /// A member was asked to dial back at `now`.
    pub fn asked(&mut self, now: Duration) {
        self.asked_at = Some(now);
    }

    /// The labels saying all this: `reachability`, and `observed-addr` when members see this
    /// node at another address than the one it advertises.
    pub fn labels(&self, now: Duration) -> Vec<(String, String)> {
        let mut labels = vec![(
            REACHABILITY_LABEL.to_string(),
            self.reach(now).as_str().to_string(),
        )];
        if let Some(addr) = self.observed_addr(now).filter(|a| *a != self.advertised) {
            labels.push((OBSERVED_LABEL.to_string(), addr.to_string()));
        }
        labels
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> NodeId {
        aether_identity::SecretKey::from_bytes(&[n; 32]).public()
    }

    fn at(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn a_node_behind_nat_learns_its_public_address_and_that_nobody_dials_it() {
        let advertised: SocketAddr = "192.168.1.2:7946".parse().unwrap();
        let public: SocketAddr = "10.237.0.11:40123".parse().unwrap();
        let mut r = Reachability::new(advertised);
        assert_eq!(r.reach(at(0)), Reach::Unknown);
        assert!(r.wants_dial_back(at(0)));
        r.asked(at(0));
        assert!(!r.wants_dial_back(at(1)));
        assert!(r.wants_dial_back(at(3)), "asks again soon while unknown");

        r.observed(id(1), public, at(1));
        r.observed(id(2), public, at(2));
        r.observed(id(3), "10.237.0.11:40999".parse().unwrap(), at(3));
        assert_eq!(r.observed_addr(at(3)), Some(public), "the majority");
        r.dial_back(id(1), false, at(4));
        assert_eq!(r.reach(at(4)), Reach::Nat);
        r.asked(at(4));
        assert!(!r.wants_dial_back(at(30)), "asks once a minute once known");
        assert_eq!(
            r.labels(at(4)),
            vec![
                ("reachability".to_string(), "nat".to_string()),
                ("observed-addr".to_string(), public.to_string())
            ]
        );
        // Old news stops counting.
        assert_eq!(r.reach(at(400)), Reach::Unknown);
        assert_eq!(r.observed_addr(at(400)), None);
    }

    #[test]
    fn one_dial_back_that_gets_through_makes_a_node_direct() {
        let advertised: SocketAddr = "10.237.0.1:7946".parse().unwrap();
        let mut r = Reachability::new(advertised);
        r.observed(id(1), advertised, at(1));
        r.dial_back(id(1), false, at(1));
        r.dial_back(id(2), true, at(2));
        assert_eq!(r.reach(at(2)), Reach::Direct);
        // Seen at the advertised address: no observed-addr label.
        assert_eq!(
            r.labels(at(2)),
            vec![("reachability".to_string(), "direct".to_string())]
        );
        r.forget(&id(2));
        assert_eq!(r.reach(at(3)), Reach::Nat);
    }
}
