//! The order in which forwarding tries a deployment's hosts: the nearest first, hosts about as
//! near sharing the load, and a host reached through a relay counted with its detour.

use std::time::Duration;

use aether_identity::NodeId;

use crate::schedule::Host;

/// What a host reached through a relay is assumed to add to its round trip when its own is
/// unknown.
const RELAY_DETOUR: Duration = Duration::from_millis(1);

/// `hosts` as forwarding ranks them: one this node reaches through a relay counts its round
/// trip twice (there and through the relay, which is chosen near both) plus
/// [`RELAY_DETOUR`], and the hosts are ordered again (healthy first, nearest first), so direct
/// and punched paths come before relayed ones to hosts about as near.
pub(super) fn with_relay_detours<'a>(
    hosts: &'a [Host],
    relayed: impl Fn(&NodeId) -> bool,
) -> std::borrow::Cow<'a, [Host]> {
    if !hosts.iter().any(|h| relayed(&h.id)) {
        return std::borrow::Cow::Borrowed(hosts);
    }
    let mut ranked: Vec<Host> = hosts
        .iter()
        .map(|h| {
            let mut h = h.clone();
            if relayed(&h.id) {
                h.rtt = Some(h.rtt.map_or(RELAY_DETOUR, |r| r * 2 + RELAY_DETOUR));
            }
            h
        })
        .collect();
    ranked.sort_by_key(|h| (!h.healthy, h.rtt.unwrap_or(Duration::MAX)));
    std::borrow::Cow::Owned(ranked)
}

/// How much farther than the nearest host a host may be and still share its
/// load: the larger of this and half the nearest host's round trip.
const NEAR_BAND: Duration = Duration::from_millis(2);

/// The order in which to try `hosts` (healthy first, nearest first, as the
/// schedule gives them): among the healthy hosts about as near as the
/// nearest (within [`NEAR_BAND`] or half its round trip), the one with the
/// fewest requests in flight from here per instance goes first, taking
/// turns when several tie; then the others in the schedule's order, as
/// fallbacks. So replicas at about the same distance share the load, and a
/// distant one is used only when the near ones fail.
pub(super) fn try_order(
    hosts: &[Host],
    in_flight: impl Fn(&NodeId) -> usize,
    turn: usize,
) -> Vec<usize> {
    let mut order: Vec<usize> = (0..hosts.len()).collect();
    let Some(nearest) = hosts.first().filter(|h| h.healthy) else {
        return order;
    };
    let near = |h: &Host| match (nearest.rtt, h.rtt) {
        (Some(best), Some(rtt)) => rtt <= best + NEAR_BAND.max(best / 2),
        (None, None) => true,
        _ => false,
    };
    let band = hosts.iter().take_while(|h| h.healthy && near(h)).count();
    if band > 1 {
        // Read once: other threads start and end requests meanwhile.
        let loads: Vec<u64> = hosts[..band]
            .iter()
            .map(|h| (in_flight(&h.id) as u64 * 1_000) / u64::from(h.instances.max(1)))
            .collect();
        let least = loads.iter().copied().min().unwrap_or(0);
        let tied: Vec<usize> = (0..band).filter(|i| loads[*i] == least).collect();
        if !tied.is_empty() {
            let first = tied[turn % tied.len()];
            order.remove(first);
            order.insert(0, first);
        }
    }
    order
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use super::*;

    fn id(n: u8) -> NodeId {
        aether_identity::SecretKey::from_bytes(&[n; 32]).public()
    }

    fn host(n: u8, rtt_ms: Option<u64>, healthy: bool, instances: u32) -> Host {
        Host {
            id: id(n),
            instances,
            mesh_addr: SocketAddr::from(([127, 0, 0, n], 7946)),
            incarnation: 0,
            rtt: rtt_ms.map(Duration::from_millis),
            healthy,
        }
    }

    #[test]
    fn a_host_behind_a_relay_comes_after_an_equally_near_direct_one() {
        let hosts = [host(1, Some(2), true, 1), host(2, Some(2), true, 1)];
        let ranked = with_relay_detours(&hosts, |id| *id == hosts[0].id);
        for turn in 0..4 {
            let first = &ranked[try_order(&ranked, |_| 0, turn)[0]];
            assert_eq!(first.id, hosts[1].id, "the direct host first");
        }
        let plain = with_relay_detours(&hosts, |_| false);
        assert!(matches!(plain, std::borrow::Cow::Borrowed(_)));
    }

    #[test]
    fn near_hosts_share_the_load_and_far_ones_are_fallbacks() {
        let hosts = [
            host(1, Some(1), true, 1),
            host(2, Some(2), true, 1),
            host(3, Some(40), true, 1),
        ];
        let idle = |_: &NodeId| 0;
        // Equally idle near hosts take turns; the far one is never first.
        let firsts: Vec<usize> = (0..4).map(|t| try_order(&hosts, idle, t)[0]).collect();
        assert_eq!(firsts, vec![0, 1, 0, 1]);
        assert_eq!(try_order(&hosts, idle, 1), vec![1, 0, 2]);
        // The less loaded near host goes first, whatever the turn.
        let busy_first = |h: &NodeId| if *h == id(1) { 5 } else { 1 };
        for turn in 0..4 {
            assert_eq!(try_order(&hosts, busy_first, turn)[0], 1);
        }
        // Load counts per instance.
        let weighted = [host(1, Some(1), true, 4), host(2, Some(1), true, 1)];
        let load = |h: &NodeId| if *h == id(1) { 3 } else { 1 };
        assert_eq!(try_order(&weighted, load, 1)[0], 0);
    }

    #[test]
    fn loads_changing_while_the_order_is_chosen_are_read_once() {
        // Other threads start and end requests meanwhile: every read differs.
        let hosts = [host(1, Some(1), true, 1), host(2, Some(1), true, 1)];
        let reads = std::cell::Cell::new(0usize);
        let moving = |_: &NodeId| {
            reads.set(reads.get() + 1);
            reads.get()
        };
        for turn in 0..4 {
            let order = try_order(&hosts, moving, turn);
            assert_eq!(order.len(), 2);
        }
        assert_eq!(reads.get(), 8, "one read per host per choice");
    }

    #[test]
    fn unhealthy_and_unknown_distance_hosts_keep_the_schedule_order() {
        let idle = |_: &NodeId| 0;
        let suspect_first = [host(1, Some(1), false, 1), host(2, Some(1), false, 1)];
        assert_eq!(try_order(&suspect_first, idle, 1), vec![0, 1]);
        let unknown = [host(1, None, true, 1), host(2, None, true, 1)];
        assert_eq!(try_order(&unknown, idle, 1), vec![1, 0]);
        let mixed = [host(1, Some(1), true, 1), host(2, None, true, 1)];
        assert_eq!(try_order(&mixed, idle, 1), vec![0, 1]);
        let healthy_then_not = [host(1, Some(1), true, 1), host(2, Some(1), false, 1)];
        assert_eq!(try_order(&healthy_then_not, idle, 1), vec![0, 1]);
        assert!(try_order(&[], idle, 0).is_empty());
    }
}
