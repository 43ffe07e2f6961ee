//! Lifeguard local health awareness (Dadgar et al., "Lifeguard: Local Health Awareness for More
//! Accurate Failure Detection"; memberlist's `awareness.go`).
//!
//! A node keeps a Local Health Multiplier (LHM) in `0..=max`. Evidence that the node itself is
//! slow raises it, evidence of health lowers it, and its probe timers (foca's `probe_period` and
//! `probe_rtt`) are scaled by `LHM + 1`, so a node that cannot keep up with its own timeouts
//! stops accusing healthy members. foca knows nothing of this: the evidence is read from the
//! headers of the SWIM packets going in and out, and the scaling is applied when foca hands its
//! probe timers to the runtime.
//!
//! The rule (see the crate docs):
//! - **+1** each time this node raises its own SWIM incarnation (it refuted a suspicion about
//!   itself, seen on the headers it sends) and each time it rejoins after being declared down;
//! - **+1** for a probe whose direct ping went unanswered within the (scaled) probe timeout
//!   but that succeeded anyway, by a late direct ack or through the indirect probes: the target
//!   answered, this node just did not hear it in time;
//! - **−1** for a probe answered directly within the (scaled) probe timeout;
//! - a probe that fails outright changes nothing: foca has no nacks, so the node cannot tell a
//!   dead target (or a partition) from its own slowness, and a partition must not slow every
//!   node's failure detection down.

use std::time::Duration;

use foca::{Header, Message, ProbeNumber};

use crate::Identity;

/// The probe in progress, as seen on the wire.
#[derive(Debug)]
struct Probe {
    target: Identity,
    number: ProbeNumber,
    /// Acked directly before the indirect stage.
    direct: bool,
    /// The probe timeout passed without a direct ack.
    indirect_stage: bool,
    /// Acked after the probe timeout (late direct ack, or forwarded by an indirect prober).
    late: bool,
}

/// The Local Health Multiplier and the evidence it is built from.
#[derive(Debug)]
pub(crate) struct Awareness {
    enabled: bool,
    max: u32,
    score: u32,
    /// Our (bump, SWIM incarnation) as last seen on a header we sent.
    incarnation: Option<(u32, u16)>,
    probe: Option<Probe>,
}

impl Awareness {
    pub(crate) fn new(enabled: bool, max: u32) -> Self {
        Self {
            enabled,
            max,
            score: 0,
            incarnation: None,
            probe: None,
        }
    }

    /// The current LHM (always 0 when disabled).
    pub(crate) fn score(&self) -> u32 {
        self.score
    }

    /// `after` scaled by `LHM + 1`.
    pub(crate) fn scale(&self, after: Duration) -> Duration {
        after.saturating_mul(self.score.saturating_add(1))
    }

    fn apply(&mut self, delta: i32) {
        if !self.enabled {
            return;
        }
        self.score = self.score.saturating_add_signed(delta).min(self.max);
    }

    /// This node rejoined under a new identity after being declared down.
    pub(crate) fn on_rejoin(&mut self) {
        self.apply(1);
    }

    /// A SWIM packet this node sends. Returns true when it shows that our own incarnation went
    /// up (a refutation).
    pub(crate) fn on_sent(&mut self, header: &Header<Identity>) -> bool {
        let mut refuted = false;
        let now = (header.src.bump, header.src_incarnation);
        match self.incarnation {
            Some((bump, inc)) if bump == now.0 && now.1 > inc => {
                refuted = true;
                self.apply(1);
                self.incarnation = Some(now);
            }
            Some((bump, _)) if bump == now.0 => {}
            _ => self.incarnation = Some(now),
        }
        // foca sends a `Ping` only to start a probe: the previous one is over.
        if let Message::Ping(number) = header.message {
            self.conclude();
            self.probe = Some(Probe {
                target: header.dst,
                number,
                direct: false,
                indirect_stage: false,
                late: false,
            });
        }
        refuted
    }

    /// A SWIM packet addressed to this node.
    pub(crate) fn on_received(&mut self, header: &Header<Identity>) {
        let Some(p) = self.probe.as_mut() else {
            return;
        };
        match &header.message {
            Message::Ack(n) if *n == p.number && header.src == p.target => {
                if p.indirect_stage {
                    p.late = true;
                } else {
                    p.direct = true;
                }
            }
            Message::ForwardedAck {
                origin,
                probe_number,
            } if *probe_number == p.number && *origin == p.target => p.late = true,
            _ => {}
        }
    }

    /// foca's probe timeout for `probed` is due (its indirect stage).
    pub(crate) fn on_indirect_stage(&mut self, probed: &Identity) {
        if let Some(p) = self.probe.as_mut()
            && p.target == *probed
            && !p.direct
        {
            p.indirect_stage = true;
        }
    }

    fn conclude(&mut self) {
        match self.probe.take() {
            Some(p) if p.direct => self.apply(-1),
            Some(p) if p.indirect_stage && p.late => self.apply(1),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::NodeId;

    fn id(i: u8, bump: u32) -> Identity {
        Identity {
            id: NodeId([i; 32]),
            addr: format!("10.0.0.{i}:7946").parse().unwrap(),
            bump,
        }
    }

    fn header(
        src: Identity,
        inc: u16,
        dst: Identity,
        message: Message<Identity>,
    ) -> Header<Identity> {
        Header {
            src,
            src_incarnation: inc,
            dst,
            message,
        }
    }

    #[test]
    fn refutations_raise_and_direct_acks_lower() {
        let (me, a, b) = (id(1, 0), id(2, 0), id(3, 0));
        let mut aw = Awareness::new(true, 8);
        assert!(!aw.on_sent(&header(me, 0, a, Message::Gossip)));
        // Our incarnation went up twice: two refutations.
        assert!(aw.on_sent(&header(me, 1, a, Message::Gossip)));
        assert!(!aw.on_sent(&header(me, 1, b, Message::Gossip)));
        assert!(aw.on_sent(&header(me, 3, b, Message::Gossip)));
        assert_eq!(aw.score(), 2);
        assert_eq!(
            aw.scale(Duration::from_millis(500)),
            Duration::from_millis(1500)
        );
        // A rejoin resets the incarnation: not a refutation by itself.
        assert!(!aw.on_sent(&header(id(1, 1), 0, a, Message::Gossip)));
        // A probe answered in time lowers the LHM, once it is concluded by the next probe.
        aw.on_sent(&header(me, 3, a, Message::Ping(7)));
        aw.on_received(&header(a, 0, me, Message::Ack(7)));
        aw.on_indirect_stage(&a);
        assert_eq!(aw.score(), 2);
        aw.on_sent(&header(me, 3, b, Message::Ping(8)));
        assert_eq!(aw.score(), 1);
    }

    #[test]
    fn late_answers_raise_and_outright_failures_do_not() {
        let (me, a, b, c) = (id(1, 0), id(2, 0), id(3, 0), id(4, 0));
        let mut aw = Awareness::new(true, 2);
        // Direct ack after the probe timeout.
        aw.on_sent(&header(me, 0, a, Message::Ping(1)));
        aw.on_indirect_stage(&a);
        aw.on_received(&header(a, 0, me, Message::Ack(1)));
        // Forwarded by an indirect prober.
        aw.on_sent(&header(me, 0, b, Message::Ping(2)));
        aw.on_indirect_stage(&b);
        aw.on_received(&header(
            c,
            0,
            me,
            Message::ForwardedAck {
                origin: b,
                probe_number: 2,
            },
        ));
        assert_eq!(aw.score(), 1);
        // An ack for another probe number or from another member does not count.
        aw.on_sent(&header(me, 0, c, Message::Ping(3)));
        assert_eq!(aw.score(), 2);
        aw.on_indirect_stage(&c);
        aw.on_received(&header(c, 0, me, Message::Ack(2)));
        aw.on_received(&header(a, 0, me, Message::Ack(3)));
        // Capped at max; an outright failure changes nothing.
        aw.on_sent(&header(me, 0, a, Message::Ping(4)));
        assert_eq!(aw.score(), 2);
        aw.on_rejoin();
        assert_eq!(aw.score(), 2);
    }

    #[test]
    fn disabled_stays_at_zero() {
        let (me, a) = (id(1, 0), id(2, 0));
        let mut aw = Awareness::new(false, 8);
        aw.on_sent(&header(me, 0, a, Message::Gossip));
        assert!(aw.on_sent(&header(me, 1, a, Message::Ping(1))));
        aw.on_indirect_stage(&a);
        aw.on_received(&header(a, 0, me, Message::Ack(1)));
        aw.on_sent(&header(me, 1, a, Message::Ping(2)));
        aw.on_rejoin();
        assert_eq!(aw.score(), 0);
        assert_eq!(aw.scale(Duration::from_secs(1)), Duration::from_secs(1));
    }
}
