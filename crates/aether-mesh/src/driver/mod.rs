//! The driver task: owns the membership core and feeds it transport messages
//! and timer expiries; sends what it produces; keeps the admission ledger and
//! revocations in step with other members.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aether_identity::{AdmissionLedger, NodeId, Revocation, VerifiedRevocation};
use aether_membership::{Event, Load, MemberState, Membership, Metadata, Transmit};
use aether_transport::{Endpoint, Message};
use rand::seq::SliceRandom as _;
use tokio::sync::{Semaphore, mpsc};

use crate::admission::{self, NodeAdmission};
use crate::metrics::MeshMetrics;
use aether_nat::Reachability;

mod nat;
use crate::{
    CHANNEL_ADMISSION, CHANNEL_MEMBERSHIP, Command, Member, MemberStatus, MeshConfig, MeshError,
    RevokeOutcome, to_member_id, to_node_id,
};
use nat::{TAG_DIAL_BACK, TAG_DIAL_BACK_RESULT, TAG_INTRODUCE, TAG_OBSERVED, TAG_PUNCH};

/// Tag of an admission message carrying the ledger.
const TAG_LEDGER: u8 = 1;
/// Tag of an admission message carrying revocations.
const TAG_REVOCATIONS: u8 = 2;
pub(crate) struct Setup {
    pub config: MeshConfig,
    pub endpoint: Endpoint,
    pub admission: NodeAdmission,
    pub advertise: SocketAddr,
    pub incarnation: u32,
    pub metadata: Metadata,
    pub metrics: Arc<MeshMetrics>,
    pub commands: mpsc::Receiver<Command>,
}

struct Driver {
    config: MeshConfig,
    endpoint: Endpoint,
    admission: NodeAdmission,
    membership: Membership,
    started: Instant,
    metrics: Arc<MeshMetrics>,
    sends: Arc<Semaphore>,
    joined: bool,
    persisted_ledger: Vec<u8>,
    persisted_revocations: usize,
    channels: std::collections::HashMap<u8, mpsc::Sender<Message>>,
    /// The member count the SWIM timeouts were last sized for.
    sized_for: u32,
    /// How members reach this node.
    reachability: Reachability,
    /// When each member's last dial-back request was answered.
    dialled_back: std::collections::HashMap<NodeId, Instant>,
    /// How this node is getting through to each member it cannot dial (punches, relays).
    traversal: std::collections::HashMap<NodeId, nat::Traversal>,
}

pub(crate) fn spawn(setup: Setup) -> Result<tokio::task::JoinHandle<()>, MeshError> {
    let started = Instant::now();
    let identity = aether_membership::Identity {
        id: to_member_id(&setup.endpoint.node_id()),
        addr: setup.advertise,
        bump: setup.incarnation,
    };
    let membership = Membership::new(
        identity,
        setup.metadata,
        setup.config.membership.clone(),
        rand::random(),
        Duration::ZERO,
    )?;
    let persisted_ledger = ledger_bytes(&setup.endpoint).unwrap_or_default();
    let persisted_revocations = setup
        .endpoint
        .revocations()
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .len();
    let mut driver = Driver {
        sends: Arc::new(Semaphore::new(setup.config.max_sends_in_flight.max(1))),
        config: setup.config,
        endpoint: setup.endpoint,
        admission: setup.admission,
        membership,
        started,
        metrics: setup.metrics,
        joined: false,
        persisted_ledger,
        persisted_revocations,
        channels: std::collections::HashMap::new(),
        sized_for: 5,
        reachability: Reachability::new(setup.advertise),
        dialled_back: std::collections::HashMap::new(),
        traversal: std::collections::HashMap::new(),
    };
    driver.record_own_admission();
    let commands = setup.commands;
    Ok(tokio::spawn(async move { driver.run(commands).await }))
}

impl Driver {
    fn now(&self) -> Duration {
        self.started.elapsed()
    }

    /// Puts this node's own admission in its ledger, so the members it
    /// tells learn it even if they admitted it through another member.
    fn record_own_admission(&mut self) {
        let now = unix_now();
        let mut ledger = self
            .endpoint
            .ledger()
            .write()
            .unwrap_or_else(|p| p.into_inner());
        if let Err(e) = ledger.admit(&self.admission.admitted, now) {
            tracing::warn!("this node's own admission is refused by its ledger: {e}");
        }
    }

    async fn run(mut self, mut commands: mpsc::Receiver<Command>) {
        self.try_join();
        let mut sync = tokio::time::interval(self.config.sync_interval);
        sync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut retry = tokio::time::interval(self.config.join_retry);
        retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut housekeeping = tokio::time::interval(Duration::from_secs(1));
        housekeeping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let endpoint = self.endpoint.clone();
        loop {
            self.flush();
            let wait = self
                .membership
                .poll_timeout()
                .map_or(Duration::from_secs(1), |t| t.saturating_sub(self.now()));
            tokio::select! {
                command = commands.recv() => match command {
                    None => break,
                    Some(Command::Leave(done)) => {
                        self.leave().await;
                        let _ = done.send(());
                        break;
                    }
                    Some(command) => self.command(command).await,
                },
                message = endpoint.recv() => match message {
                    Some(message) => self.message(message),
                    None => break,
                },
                _ = tokio::time::sleep(wait) => {
                    let now = self.now();
                    self.membership.handle_timeout(now);
                }
                _ = sync.tick() => self.sync_round(),
                _ = retry.tick(), if !self.joined && !self.config.join.is_empty() => self.try_join(),
                _ = housekeeping.tick() => self.housekeeping(),
            }
        }
    }

    fn try_join(&mut self) {
        let now = self.now();
        for addr in self.config.join.clone() {
            if let Err(e) = self.membership.join(addr, now) {
                tracing::warn!(%addr, "cannot join through {addr}: {e}");
            }
        }
    }

    /// Sends every pending transmit and handles every pending event.
    fn flush(&mut self) {
        while let Some(t) = self.membership.poll_transmit() {
            self.dispatch(t);
        }
        while let Some(event) = self.membership.poll_event() {
            self.event(event);
        }
    }

    fn is_revoked(&self, node: &NodeId) -> bool {
        self.endpoint
            .revocations()
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .is_revoked(node)
    }

    /// Sends one membership datagram on its own task, bounded by the
    /// in-flight limit (beyond it the datagram is dropped, as UDP would).
    fn dispatch(&self, t: Transmit) {
        let expected = match t.node {
            Some(id) => match to_node_id(&id) {
                Some(node) => Some(node),
                None => return,
            },
            None => None,
        };
        if expected.is_some_and(|n| self.is_revoked(&n)) {
            return;
        }
        let Ok(permit) = self.sends.clone().try_acquire_owned() else {
            self.metrics.dropped();
            return;
        };
        let send = self.membership_send(t, expected);
        tokio::spawn(async move {
            let _permit = permit;
            send.await;
        });
    }

    /// Sends one membership datagram (connecting first when needed).
    fn membership_send(
        &self,
        t: Transmit,
        expected: Option<NodeId>,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        let endpoint = self.endpoint.clone();
        let metrics = self.metrics.clone();
        async move {
            send_to(
                &endpoint,
                &metrics,
                t.to,
                expected,
                CHANNEL_MEMBERSHIP,
                &t.data,
            )
            .await;
        }
    }

    fn event(&mut self, event: Event) {
        match event {
            Event::MemberUp(who) => {
                tracing::info!(member = %who.id, addr = %who.addr, incarnation = who.bump, "member up");
                if let Some(node) = to_node_id(&who.id) {
                    self.push_admission_state(node, who.addr);
                }
            }
            Event::MemberSuspect(who) => {
                tracing::info!(member = %who.id, "member suspected")
            }
            Event::MemberAlive(who) => {
                tracing::info!(member = %who.id, "suspected member refuted the suspicion")
            }
            Event::MemberDead(who) => {
                tracing::warn!(member = %who.id, "member declared dead");
                if let Some(node) = to_node_id(&who.id) {
                    self.reachability.forget(&node);
                }
            }
            Event::MemberLeft(who) => {
                tracing::info!(member = %who.id, "member left");
                if let Some(node) = to_node_id(&who.id) {
                    self.reachability.forget(&node);
                }
            }
            Event::MetadataChanged(_) => {}
            Event::Joined => {
                if !self.joined {
                    tracing::info!("joined the lattice");
                }
                self.joined = true;
            }
            Event::Idle => {
                tracing::warn!("no other member is reachable");
                self.joined = false;
            }
            Event::Rejoined(identity) => {
                tracing::info!(
                    incarnation = identity.bump,
                    "declared down by the lattice; rejoined with a new incarnation"
                );
                if let Err(e) = admission::store_incarnation(&self.config.data_dir, identity.bump) {
                    tracing::warn!("cannot store the incarnation: {e}");
                }
            }
        }
    }

    fn message(&mut self, message: Message) {
        if self.is_revoked(&message.from) {
            return;
        }
        let peer = message.from.to_string();
        self.metrics.peer_in(&peer, message.payload.len());
        match message.channel {
            CHANNEL_MEMBERSHIP => {
                let now = self.now();
                let sender = to_member_id(&message.from);
                if let Err(e) = self
                    .membership
                    .handle_data_from(sender, &message.payload, now)
                {
                    tracing::debug!(peer = %message.from, "membership message refused: {e}");
                }
            }
            CHANNEL_ADMISSION => self.admission_message(&message),
            other => match self.channels.get(&other) {
                Some(tx) => {
                    if let Err(mpsc::error::TrySendError::Full(_)) = tx.try_send(message) {
                        self.metrics.dropped();
                    }
                }
                None => tracing::debug!(
                    peer = %message.from,
                    channel = other,
                    "message on an unknown channel dropped"
                ),
            },
        }
    }

    fn admission_message(&mut self, message: &Message) {
        let Some((&tag, body)) = message.payload.split_first() else {
            return;
        };
        match tag {
            TAG_LEDGER => match AdmissionLedger::from_bytes(body) {
                Ok(ledger) => {
                    for node in self.endpoint.merge_ledger(&ledger) {
                        tracing::warn!(
                            node = %node,
                            "node refused: an earlier claim on its single-use invite won"
                        );
                    }
                    self.persist_ledger();
                }
                Err(e) => tracing::warn!(peer = %message.from, "malformed admission ledger: {e}"),
            },
            TAG_REVOCATIONS => match admission::decode_revocations(body) {
                Ok(list) => {
                    let mut fresh = Vec::new();
                    for r in list {
                        match r.verify(&self.admission.root) {
                            Ok(v) => {
                                if self.apply_revocation(v).new {
                                    fresh.push(r);
                                }
                            }
                            Err(e) => tracing::warn!(
                                peer = %message.from,
                                "revocation refused: {e}"
                            ),
                        }
                    }
                    if !fresh.is_empty() {
                        self.broadcast_revocations(&fresh);
                    }
                }
                Err(e) => tracing::warn!(peer = %message.from, "malformed revocations: {e}"),
            },
            TAG_OBSERVED => match std::str::from_utf8(body).ok().and_then(|t| t.parse().ok()) {
                Some(addr) => {
                    let now = self.now();
                    self.reachability.observed(message.from, addr, now);
                }
                None => tracing::debug!(peer = %message.from, "malformed observed address"),
            },
            TAG_DIAL_BACK => self.dial_back(message.from),
            TAG_INTRODUCE => self.introduce(message.from, body),
            TAG_PUNCH => self.punch(body),
            TAG_DIAL_BACK_RESULT => {
                let now = self.now();
                let reached = body.first() == Some(&1);
                tracing::debug!(peer = %message.from, reached, "dial-back result");
                self.reachability.dial_back(message.from, reached, now);
            }
            other => {
                tracing::debug!(peer = %message.from, tag = other, "unknown admission message")
            }
        }
    }

    /// Adds a verified revocation, closes the node's connections and stores
    /// the set.
    fn apply_revocation(&mut self, revocation: VerifiedRevocation) -> RevokeOutcome {
        let node = *revocation.revocation().node();
        let reason = revocation.revocation().reason().to_string();
        let closed = self.endpoint.close_peer(&node);
        let new = self.endpoint.revoke(revocation);
        if new {
            if node == self.endpoint.node_id() {
                tracing::error!(%reason, "this node was revoked by the lattice root; members refuse it");
            } else {
                tracing::warn!(node = %node, %reason, closed, "node revoked; its connections are closed and its packets refused");
            }
            self.persist_revocations();
        }
        RevokeOutcome {
            new,
            closed_connections: closed,
        }
    }

    fn live_members(&self) -> Vec<(NodeId, SocketAddr)> {
        self.membership
            .members()
            .into_iter()
            .filter(|m| matches!(m.state, MemberState::Alive | MemberState::Suspect))
            .filter_map(|m| Some((to_node_id(&m.id)?, m.addr)))
            .filter(|(n, _)| !self.is_revoked(n))
            .collect()
    }

    /// Sends `revocations` to every live member.
    fn broadcast_revocations(&self, revocations: &[Revocation]) {
        let mut payload = vec![TAG_REVOCATIONS];
        payload.extend(admission::encode_revocations(revocations.iter()));
        for (node, addr) in self.live_members() {
            self.send_admission(node, addr, payload.clone());
        }
    }

    fn send_admission(&self, node: NodeId, addr: SocketAddr, payload: Vec<u8>) {
        let endpoint = self.endpoint.clone();
        let metrics = self.metrics.clone();
        tokio::spawn(async move {
            send_to(
                &endpoint,
                &metrics,
                addr,
                Some(node),
                CHANNEL_ADMISSION,
                &payload,
            )
            .await;
        });
    }

    /// Sends the ledger and the revocations to `node`.
    fn push_admission_state(&self, node: NodeId, addr: SocketAddr) {
        let (ledger, revocations) = {
            let ledger = ledger_bytes(&self.endpoint);
            let set = self
                .endpoint
                .revocations()
                .read()
                .unwrap_or_else(|p| p.into_inner());
            (ledger, admission::encode_revocations(set.iter()))
        };
        if let Some(ledger) = ledger {
            let mut l = vec![TAG_LEDGER];
            l.extend(ledger);
            self.send_admission(node, addr, l);
        }
        let mut r = vec![TAG_REVOCATIONS];
        r.extend(revocations);
        self.send_admission(node, addr, r);
        if let Some(seen) = self.endpoint.remote_addr(&node) {
            let mut o = vec![TAG_OBSERVED];
            o.extend(seen.to_string().into_bytes());
            self.send_admission(node, addr, o);
        }
    }

    /// Anti-entropy: exchange admission state with one random live member.
    fn sync_round(&self) {
        let members = self.live_members();
        if let Some((node, addr)) = members.choose(&mut rand::thread_rng()) {
            self.push_admission_state(*node, *addr);
        }
    }

    fn persist_ledger(&mut self) {
        let Some(bytes) = ledger_bytes(&self.endpoint) else {
            return;
        };
        if bytes == self.persisted_ledger {
            return;
        }
        match admission::write_atomic(&self.config.data_dir, "admissions", &bytes) {
            Ok(()) => self.persisted_ledger = bytes,
            Err(e) => tracing::warn!("cannot store the admission ledger: {e}"),
        }
    }

    fn persist_revocations(&mut self) {
        let (bytes, len) = {
            let set = self
                .endpoint
                .revocations()
                .read()
                .unwrap_or_else(|p| p.into_inner());
            (admission::encode_revocations(set.iter()), set.len())
        };
        match admission::write_atomic(&self.config.data_dir, "revocations", &bytes) {
            Ok(()) => self.persisted_revocations = len,
            Err(e) => tracing::warn!("cannot store the revocations: {e}"),
        }
    }

    /// Once a second: store the ledger if handshakes changed it, and update
    /// the metrics.
    fn housekeeping(&mut self) {
        self.persist_ledger();
        self.follow_reachability();
        self.punch_holes();
        let revoked = self
            .endpoint
            .revocations()
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .len();
        if revoked != self.persisted_revocations {
            self.persist_revocations();
        }
        let members = self.member_list();
        // Size the SWIM timeouts for the lattice as it is (memberlist's rule
        // grows with log10 N); resize only when N has changed by half or more.
        let size = members
            .iter()
            .filter(|m| matches!(m.status, MemberStatus::Alive | MemberStatus::Suspect))
            .count()
            .max(1) as u32;
        if size * 2 < self.sized_for || size > self.sized_for + self.sized_for / 2 {
            self.membership.set_cluster_size(size.max(5));
            self.sized_for = size.max(5);
        }
        let mut counts = [
            ("alive", 0i64),
            ("suspect", 0),
            ("dead", 0),
            ("left", 0),
            ("revoked", 0),
        ];
        for m in &members {
            counts[m.status as usize].1 += 1;
        }
        self.metrics.update(
            self.membership.stats(),
            &counts,
            self.endpoint.metrics(),
            revoked,
        );
        if let Some(relay) = self.endpoint.relay_metrics() {
            self.metrics.update_relay(relay);
        }
    }

    fn member_list(&self) -> Vec<Member> {
        let me = self.membership.identity();
        let mut out = vec![Member {
            id: self.endpoint.node_id(),
            status: if self.is_revoked(&self.endpoint.node_id()) {
                MemberStatus::Revoked
            } else {
                MemberStatus::Alive
            },
            incarnation: me.bump,
            mesh_addr: me.addr,
            metadata: Some(self.membership.metadata().clone()),
            rtt: Some(Duration::ZERO),
            coordinate: Some(*self.membership.coordinate()),
            is_self: true,
        }];
        for m in self.membership.members() {
            let Some(id) = to_node_id(&m.id) else {
                continue;
            };
            let status = if self.is_revoked(&id) {
                MemberStatus::Revoked
            } else {
                match m.state {
                    MemberState::Alive => MemberStatus::Alive,
                    MemberState::Suspect => MemberStatus::Suspect,
                    MemberState::Dead => MemberStatus::Dead,
                    MemberState::Left => MemberStatus::Left,
                }
            };
            out.push(Member {
                id,
                status,
                incarnation: m.incarnation,
                mesh_addr: m.addr,
                metadata: m.metadata,
                rtt: m.rtt,
                coordinate: m.coordinate,
                is_self: false,
            });
        }
        out
    }

    async fn command(&mut self, command: Command) {
        match command {
            Command::Members(reply) => {
                let _ = reply.send(self.member_list());
            }
            Command::Revoke(revocation, reply) => {
                let result = match revocation.verify(&self.admission.root) {
                    Ok(v) => {
                        let outcome = self.apply_revocation(v);
                        self.broadcast_revocations(std::slice::from_ref(&*revocation));
                        Ok(outcome)
                    }
                    Err(e) => Err(MeshError::Revocation(e.to_string())),
                };
                let _ = reply.send(result);
            }
            Command::Load(load) => {
                let current = &self.membership.metadata().load;
                if load_changed(current, &load) {
                    let mut metadata = self.membership.metadata().clone();
                    metadata.load = load;
                    let now = self.now();
                    if let Err(e) = self.membership.update_metadata(metadata, now) {
                        tracing::debug!("metadata update refused: {e}");
                    }
                }
            }
            Command::Subscribe(channel, tx) => {
                self.channels.insert(channel, tx);
            }
            Command::Leave(_) => {}
        }
    }

    /// Tells the members this node leaves and waits (briefly) for the
    /// messages to go out.
    async fn leave(&mut self) {
        let now = self.now();
        if let Err(e) = self.membership.leave(now) {
            tracing::debug!("leave: {e}");
        }
        let mut sends = Vec::new();
        while let Some(t) = self.membership.poll_transmit() {
            let expected = t.node.and_then(|id| to_node_id(&id));
            sends.push(self.membership_send(t, expected));
        }
        let _ =
            tokio::time::timeout(Duration::from_secs(2), futures::future::join_all(sends)).await;
        // Let the streams' last packets leave before the endpoint closes.
        tokio::time::sleep(Duration::from_millis(200)).await;
        tracing::info!("left the lattice");
    }
}

fn load_changed(old: &Load, new: &Load) -> bool {
    let rel = |a: f32, b: f32| (a - b).abs() > 0.1 * a.abs().max(b.abs()).max(1.0);
    old.instances != new.instances
        || rel(old.request_rate, new.request_rate)
        || (old.cpu_percent - new.cpu_percent).abs() > 5.0
}

/// The ledger's encoding (`None`, logged, when it outgrew its bound).
fn ledger_bytes(endpoint: &Endpoint) -> Option<Vec<u8>> {
    let ledger = endpoint.ledger().read().unwrap_or_else(|p| p.into_inner());
    match ledger.to_bytes() {
        Ok(bytes) => Some(bytes),
        Err(e) => {
            tracing::warn!("the admission ledger cannot be encoded: {e}");
            None
        }
    }
}

/// Connects (reusing a cached connection) and sends one message.
async fn send_to(
    endpoint: &Endpoint,
    metrics: &MeshMetrics,
    addr: SocketAddr,
    expected: Option<NodeId>,
    channel: u8,
    payload: &[u8],
) {
    let node = match endpoint.connect(addr, expected).await {
        Ok(node) => node,
        Err(e) => {
            metrics.dropped();
            tracing::debug!(%addr, "cannot reach member: {e}");
            return;
        }
    };
    match endpoint.send(&node, channel, payload).await {
        Ok(()) => metrics.peer_out(&node.to_string(), payload.len()),
        Err(e) => {
            metrics.dropped();
            tracing::debug!(%addr, "send failed: {e}");
        }
    }
}

pub(crate) fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
