//! The engine on the deterministic simulator: 5 nodes that replicate workflow records by push and
//! anti-entropy (last writer wins per key, as the lattice state does), detect deaths by
//! heartbeats, and run steps that take virtual time. Crashes at every step boundary and inside
//! steps, partitions, clock skew and random schedules: every workflow ends, every node holds the
//! same journal, and in a connected lattice no step's effect happens twice.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use aether_sim::{NetConfig, NodeId as SimId, Outbox, Process, SimTime, Simulation};
use aether_workflow::{
    Action, Config, Engine, Next, NodeId, Outcome, PlanContext, Planner, Record, Saga, StepRecord,
    StepResult, Task,
};
use rand010::rngs::StdRng;
use rand010::{RngExt, SeedableRng};
use serde_json::{Value, json};

const NODES: u32 = 5;
const HEARTBEAT: Duration = Duration::from_millis(200);
const DEAD_AFTER: Duration = Duration::from_millis(1500);
const SYNC_EVERY: Duration = Duration::from_millis(500);
/// Engine time is "Unix" milliseconds: local virtual time plus this.
const EPOCH_MS: u64 = 1_700_000_000_000;

/// A rollout-shaped workflow: `steps` forward steps; the one at `fail_at` fails; a failure or a
/// cancel undoes the done steps newest first.
struct TestPlanner;

impl Planner for TestPlanner {
    fn next(&self, input: &Value, steps: &[&StepRecord], ctx: &PlanContext) -> Next {
        let total = input["steps"].as_u64().unwrap_or(0) as usize;
        let names: Vec<String> = (0..total).map(|i| format!("s{i}")).collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let saga = Saga::of(steps);
        if let Some(next) = saga.next_forward(&names, ctx.cancel_requested) {
            return next;
        }
        if let Some(next) = saga.next_undo(|s| s.result.is_ok().then(|| format!("undo-{}", s.name)))
        {
            return next;
        }
        let failed = saga.failure.is_some();
        Next::End {
            outcome: if failed {
                Outcome::RolledBack
            } else {
                Outcome::Cancelled
            },
            reason: if failed {
                "a step failed".into()
            } else {
                "cancelled".into()
            },
        }
    }
}

/// What happened, seen from outside the nodes.
#[derive(Default)]
struct World {
    /// Steps started: (workflow, step name) → (node, epoch n) per attempt.
    started: BTreeMap<(String, String), Vec<(u32, u64)>>,
    /// Effects that completed: (workflow, step name) → (node, epoch n) per completion.
    effects: BTreeMap<(String, String), Vec<(u32, u64)>>,
    /// A step that ran while its node knew of a higher epoch (must never happen).
    stale_starts: Vec<String>,
    /// How long steps take.
    step_ms: u64,
}

#[derive(Clone, Debug)]
enum Msg {
    Heartbeat,
    /// Records: (key, value, stamp) where the stamp orders writes of one key.
    Records(Vec<(String, Vec<u8>, (u64, u32))>),
}

struct SimNode {
    id: u32,
    engine: Engine,
    store: BTreeMap<String, (Vec<u8>, (u64, u32))>,
    last_heard: BTreeMap<u32, SimTime>,
    running: Vec<(Task, u64, SimTime)>,
    world: Rc<RefCell<World>>,
    next_beat: SimTime,
    next_sync: SimTime,
    sync_peer: u32,
}

fn node_id(i: u32) -> NodeId {
    let mut b = [0u8; 32];
    b[0] = 0xa0;
    b[1] = i as u8;
    NodeId(b)
}

fn ms(t: SimTime) -> u64 {
    EPOCH_MS + t.as_millis() as u64
}

fn config() -> Config {
    Config {
        lease_ttl_ms: 4_000,
        renew_every_ms: 1_000,
        grace_ms: 1_500,
        startup_hold_ms: 2_000,
    }
}

impl SimNode {
    fn new(id: u32, persisted: Option<&[u8]>, world: Rc<RefCell<World>>) -> Self {
        let mut engine = Engine::new(node_id(id), config());
        engine.register("test", Arc::new(TestPlanner));
        let store: BTreeMap<String, (Vec<u8>, (u64, u32))> = persisted
            .and_then(|b| serde_json::from_slice::<Vec<(String, String, (u64, u32))>>(b).ok())
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v, s)| (k, (v.into_bytes(), s)))
            .collect();
        SimNode {
            id,
            engine,
            store,
            last_heard: BTreeMap::new(),
            running: Vec::new(),
            world,
            next_beat: Duration::ZERO,
            next_sync: Duration::ZERO,
            sync_peer: (id + 1) % NODES,
        }
    }

    fn persist(&self, out: &mut Outbox<Msg>) {
        let rows: Vec<(String, String, (u64, u32))> = self
            .store
            .iter()
            .map(|(k, (v, s))| (k.clone(), String::from_utf8_lossy(v).into_owned(), *s))
            .collect();
        out.persist(serde_json::to_vec(&rows).unwrap_or_default());
    }

    /// Stores a record if newer than what is held; tells whether it was.
    fn store_record(
        &mut self,
        key: String,
        value: Vec<u8>,
        stamp: (u64, u32),
        now: SimTime,
    ) -> bool {
        if self.store.get(&key).is_some_and(|(_, s)| *s >= stamp) {
            return false;
        }
        if let Ok(record) = Record::decode(&key, &value) {
            self.engine.apply(record, ms(now));
        }
        self.store.insert(key, (value, stamp));
        true
    }

    /// Carries out what the engine asked.
    fn flush(&mut self, now: SimTime, out: &mut Outbox<Msg>) {
        let mut written = Vec::new();
        while let Some(action) = self.engine.poll_action() {
            match action {
                Action::Write(record) => {
                    let stamp = (ms(now), self.id);
                    let (key, value) = (record.key(), record.encode());
                    // Renewals of one lease within a millisecond: keep the stamp increasing.
                    let stamp = match self.store.get(&key) {
                        Some((_, old)) if *old >= stamp => (old.0 + 1, self.id),
                        _ => stamp,
                    };
                    self.store.insert(key.clone(), (value.clone(), stamp));
                    written.push((key, value, stamp));
                }
                Action::Execute(task) => {
                    let epoch_known = self
                        .engine
                        .journal(&task.workflow)
                        .and_then(|j| j.max_epoch())
                        .is_some_and(|max| max > task.epoch);
                    let mut world = self.world.borrow_mut();
                    if epoch_known {
                        world
                            .stale_starts
                            .push(format!("{} {} on n{}", task.workflow, task.name, self.id));
                    }
                    world
                        .started
                        .entry((task.workflow.clone(), task.name.clone()))
                        .or_default()
                        .push((self.id, task.epoch.n));
                    let done_at = now + Duration::from_millis(world.step_ms);
                    self.running.push((task, ms(now), done_at));
                }
            }
        }
        if !written.is_empty() {
            for peer in 0..NODES {
                if peer != self.id {
                    out.send(SimId(peer), Msg::Records(written.clone()));
                }
            }
            self.persist(out);
        }
    }

    fn alive_view(&self, now: SimTime) -> Vec<NodeId> {
        self.last_heard
            .iter()
            .filter(|(_, t)| now.saturating_sub(**t) < DEAD_AFTER)
            .map(|(n, _)| node_id(*n))
            .collect()
    }
}

impl Process for SimNode {
    type Message = Msg;

    fn on_start(&mut self, now: SimTime, out: &mut Outbox<Msg>) {
        let rows: Vec<(String, Vec<u8>)> = self
            .store
            .iter()
            .map(|(k, (v, _))| (k.clone(), v.clone()))
            .collect();
        for (k, v) in rows {
            if let Ok(record) = Record::decode(&k, &v) {
                self.engine.apply(record, ms(now));
            }
        }
        // Until heartbeats arrive, believe every member alive.
        for n in 0..NODES {
            self.last_heard.insert(n, now);
        }
        self.next_beat = now;
        self.next_sync = now + SYNC_EVERY;
        let alive = self.alive_view(now);
        self.engine.set_alive(alive);
        self.engine.poll(ms(now));
        self.flush(now, out);
    }

    fn on_message(&mut self, now: SimTime, from: SimId, msg: Msg, out: &mut Outbox<Msg>) {
        self.last_heard.insert(from.0, now);
        if let Msg::Records(rows) = msg {
            let mut changed = false;
            for (k, v, s) in rows {
                changed |= self.store_record(k, v, s, now);
            }
            if changed {
                self.persist(out);
                self.engine.poll(ms(now));
                self.flush(now, out);
            }
        }
    }

    fn on_timer(&mut self, now: SimTime, out: &mut Outbox<Msg>) {
        self.last_heard.insert(self.id, now);
        if now >= self.next_beat {
            for peer in 0..NODES {
                if peer != self.id {
                    out.send(SimId(peer), Msg::Heartbeat);
                }
            }
            self.next_beat = now + HEARTBEAT;
        }
        if now >= self.next_sync {
            // Anti-entropy: everything held, to the next peer in turn.
            let rows = self
                .store
                .iter()
                .map(|(k, (v, s))| (k.clone(), v.clone(), *s))
                .collect();
            out.send(SimId(self.sync_peer), Msg::Records(rows));
            self.sync_peer = (self.sync_peer + 1) % NODES;
            if self.sync_peer == self.id {
                self.sync_peer = (self.sync_peer + 1) % NODES;
            }
            self.next_sync = now + SYNC_EVERY;
        }
        let alive = self.alive_view(now);
        self.engine.set_alive(alive);
        let (done, rest): (Vec<_>, Vec<_>) =
            self.running.drain(..).partition(|(_, _, at)| *at <= now);
        self.running = rest;
        for (task, started, _) in done {
            let fails = task.compensates.is_none()
                && task.workflow_input["fail_at"].as_u64() == Some(u64::from(task.index));
            self.world
                .borrow_mut()
                .effects
                .entry((task.workflow.clone(), task.name.clone()))
                .or_default()
                .push((self.id, task.epoch.n));
            let result = if fails {
                StepResult::Err("injected failure".into())
            } else {
                StepResult::Ok(json!({ "by": self.id }))
            };
            self.engine.step_finished(&task, result, started, ms(now));
        }
        self.engine.poll(ms(now));
        self.flush(now, out);
    }

    fn next_timer(&self) -> Option<SimTime> {
        let engine = self
            .engine
            .next_wakeup()
            .map(|t| Duration::from_millis(t.saturating_sub(EPOCH_MS)));
        let steps = self.running.iter().map(|(_, _, at)| *at).min();
        [Some(self.next_beat), Some(self.next_sync), engine, steps]
            .into_iter()
            .flatten()
            .min()
    }
}

fn lattice(seed: u64, step_ms: u64) -> (Simulation<SimNode>, Rc<RefCell<World>>) {
    let world = Rc::new(RefCell::new(World {
        step_ms,
        ..World::default()
    }));
    let w = world.clone();
    let mut net = NetConfig::uniform(Duration::from_millis(10));
    net.jitter = 0.5;
    let mut sim = Simulation::new(seed, net, move |id, persisted| {
        SimNode::new(id.0, persisted, w.clone())
    });
    for _ in 0..NODES {
        sim.add_node(0);
    }
    sim.run_for(Duration::from_secs(1));
    (sim, world)
}

fn start(sim: &mut Simulation<SimNode>, on: u32, id: &str, input: Value) {
    sim.invoke(SimId(on), |n, now, out| {
        n.engine.start(id, "test", input, ms(now)).expect("starts");
        n.flush(now, out);
    });
}

fn steps_recorded(sim: &Simulation<SimNode>, on: u32, id: &str) -> usize {
    sim.node(SimId(on))
        .and_then(|n| n.engine.journal(id))
        .map_or(0, |j| j.steps().len())
}

fn ended_everywhere(sim: &Simulation<SimNode>, ids: &[&str]) -> bool {
    sim.node_ids().filter(|n| sim.is_up(*n)).all(|n| {
        let node = sim.node(n).expect("up");
        ids.iter()
            .all(|id| node.engine.journal(id).is_some_and(|j| j.end().is_some()))
    })
}

/// Every live node holds the same journal of each workflow; returns its outcome by workflow.
fn agree(sim: &Simulation<SimNode>, ids: &[&str]) -> BTreeMap<String, Outcome> {
    let mut outcomes = BTreeMap::new();
    for id in ids {
        let summaries: BTreeSet<String> = sim
            .node_ids()
            .filter(|n| sim.is_up(*n))
            .map(|n| {
                sim.node(n)
                    .and_then(|node| node.engine.journal(id))
                    .map(|j| j.summary())
                    .unwrap_or_default()
            })
            .collect();
        assert_eq!(summaries.len(), 1, "{id}: nodes disagree: {summaries:#?}");
        let node = sim
            .node_ids()
            .find(|n| sim.is_up(*n))
            .and_then(|n| sim.node(n))
            .expect("a node is up");
        let end = node
            .engine
            .journal(id)
            .and_then(|j| j.end())
            .expect("ended");
        outcomes.insert(id.to_string(), end.outcome);
    }
    outcomes
}

fn no_effect_twice(world: &World) {
    for ((wf, step), done) in &world.effects {
        assert_eq!(
            done.len(),
            1,
            "{wf} {step} took effect {} times: {done:?}",
            done.len()
        );
    }
    assert!(
        world.stale_starts.is_empty(),
        "steps started by a replaced epoch: {:?}",
        world.stale_starts
    );
}

fn driver(sim: &Simulation<SimNode>, id: &str) -> Option<u32> {
    sim.node_ids()
        .filter(|n| sim.is_up(*n))
        .find(|n| {
            sim.node(*n)
                .is_some_and(|node| node.engine.driving(id).is_some())
        })
        .map(|n| n.0)
}

const STEPS: usize = 5;

#[test]
fn a_crash_at_every_step_boundary_is_resumed_elsewhere() {
    for k in 0..=STEPS {
        let (mut sim, world) = lattice(100 + k as u64, 300);
        start(&mut sim, 0, "wf", json!({ "steps": STEPS }));
        let deadline = sim.now() + Duration::from_secs(30);
        sim.run_until_pred(deadline, |s| steps_recorded(s, 0, "wf") >= k)
            .unwrap_or_else(|| panic!("step {k} recorded"));
        let driver_before = driver(&sim, "wf");
        sim.crash(SimId(0));
        let deadline = sim.now() + Duration::from_secs(60);
        sim.run_until_pred(deadline, |s| ended_everywhere(s, &["wf"]))
            .expect("ends");
        sim.restart(SimId(0));
        sim.run_for(Duration::from_secs(5));
        assert_eq!(
            agree(&sim, &["wf"])["wf"],
            Outcome::Finished,
            "crash after step {k}"
        );
        let world = world.borrow();
        no_effect_twice(&world);
        assert_eq!(world.effects.len(), STEPS, "every step took effect");
        let node = sim.node(SimId(1)).expect("up");
        let journal = node.engine.journal("wf").expect("journal");
        if k < STEPS && driver_before == Some(0) {
            assert!(
                journal.leases().count() >= 2,
                "crash after step {k}: a takeover is recorded"
            );
            assert!(
                journal
                    .lease()
                    .is_some_and(|l| l.epoch.holder != node_id(0))
            );
        }
    }
}

#[test]
fn a_crash_inside_each_step_runs_that_step_again_once() {
    for k in 0..STEPS {
        let (mut sim, world) = lattice(200 + k as u64, 2_000);
        start(&mut sim, 0, "wf", json!({ "steps": STEPS }));
        let name = format!("s{k}");
        let deadline = sim.now() + Duration::from_secs(60);
        sim.run_until_pred(deadline, |_| {
            world
                .borrow()
                .started
                .contains_key(&("wf".to_string(), name.clone()))
        })
        .expect("step started");
        let (runner, _) = world.borrow().started[&("wf".to_string(), name.clone())][0];
        sim.run_for(Duration::from_millis(700));
        sim.crash(SimId(runner));
        let deadline = sim.now() + Duration::from_secs(90);
        sim.run_until_pred(deadline, |s| ended_everywhere(s, &["wf"]))
            .expect("ends");
        sim.restart(SimId(runner));
        sim.run_for(Duration::from_secs(5));
        assert_eq!(agree(&sim, &["wf"])["wf"], Outcome::Finished);
        let world = world.borrow();
        no_effect_twice(&world);
        assert_eq!(
            world.started[&("wf".to_string(), name.clone())].len(),
            2,
            "{name} was started again"
        );
    }
}

#[test]
fn a_failed_step_rolls_back_and_a_cancel_undoes_what_was_done() {
    let (mut sim, world) = lattice(7, 300);
    start(&mut sim, 1, "bad", json!({ "steps": STEPS, "fail_at": 3 }));
    start(&mut sim, 2, "cancelled", json!({ "steps": 50 }));
    let deadline = sim.now() + Duration::from_secs(30);
    sim.run_until_pred(deadline, |s| steps_recorded(s, 4, "cancelled") >= 3)
        .expect("progress");
    sim.invoke(SimId(4), |n, now, out| {
        assert!(n.engine.control("cancelled", None, true, ms(now)));
        n.flush(now, out);
    });
    let deadline = sim.now() + Duration::from_secs(60);
    sim.run_until_pred(deadline, |s| ended_everywhere(s, &["bad", "cancelled"]))
        .expect("ends");
    sim.run_for(Duration::from_secs(3));
    let outcomes = agree(&sim, &["bad", "cancelled"]);
    assert_eq!(outcomes["bad"], Outcome::RolledBack);
    assert_eq!(outcomes["cancelled"], Outcome::Cancelled);
    let world = world.borrow();
    no_effect_twice(&world);
    for s in ["s0", "s1", "s2"] {
        assert!(
            world
                .effects
                .contains_key(&("bad".to_string(), format!("undo-{s}"))),
            "{s} undone"
        );
    }
}

#[test]
fn a_hold_before_a_step_survives_its_driver_and_a_resume_lets_it_go_on() {
    let (mut sim, world) = lattice(11, 300);
    sim.invoke(SimId(0), |n, now, out| {
        n.engine
            .start("held", "test", json!({ "steps": STEPS }), ms(now))
            .expect("starts");
        assert!(n.engine.pause_before("held", Some("s3".into()), ms(now)));
        n.flush(now, out);
    });
    sim.run_for(Duration::from_secs(20));
    assert_eq!(steps_recorded(&sim, 2, "held"), 3, "held before s3");
    sim.crash(SimId(0));
    sim.run_for(Duration::from_secs(30));
    assert_eq!(
        steps_recorded(&sim, 2, "held"),
        3,
        "the node that took over holds too"
    );
    sim.invoke(SimId(3), |n, now, out| {
        assert!(n.engine.control("held", Some(false), false, ms(now)));
        n.flush(now, out);
    });
    let deadline = sim.now() + Duration::from_secs(60);
    sim.run_until_pred(deadline, |s| ended_everywhere(s, &["held"]))
        .expect("ends once resumed");
    assert_eq!(agree(&sim, &["held"])["held"], Outcome::Finished);
    let world = world.borrow();
    no_effect_twice(&world);
    assert_eq!(world.effects.len(), STEPS);
}

#[test]
fn a_partition_lets_both_sides_drive_and_the_journal_still_converges() {
    let (mut sim, world) = lattice(11, 500);
    start(&mut sim, 0, "wf", json!({ "steps": 12 }));
    let deadline = sim.now() + Duration::from_secs(30);
    sim.run_until_pred(deadline, |s| steps_recorded(s, 0, "wf") >= 2)
        .expect("progress");
    let (a, b) = ([SimId(0), SimId(1)], [SimId(2), SimId(3), SimId(4)]);
    sim.partition(&[&a, &b]);
    sim.run_for(Duration::from_secs(4));
    // The far side took over while the near side went on.
    let far = sim
        .node(SimId(3))
        .and_then(|n| n.engine.journal("wf"))
        .and_then(|j| j.max_epoch())
        .expect("epoch");
    assert!(
        far.n >= 2 && far.holder != node_id(0),
        "the far side took an epoch of its own"
    );
    assert!(driver(&sim, "wf").is_some());
    sim.heal();
    let deadline = sim.now() + Duration::from_secs(90);
    sim.run_until_pred(deadline, |s| ended_everywhere(s, &["wf"]))
        .expect("ends");
    sim.run_for(Duration::from_secs(5));
    assert_eq!(agree(&sim, &["wf"])["wf"], Outcome::Finished);
    for n in 0..NODES {
        assert!(
            sim.node(SimId(n))
                .is_some_and(|node| node.engine.driving("wf").is_none()),
            "n{n} stopped"
        );
    }
    // Steps run on both sides during the partition are the only ones that took effect twice.
    let world = world.borrow();
    assert!(world.stale_starts.is_empty(), "{:?}", world.stale_starts);
    let twice = world.effects.values().filter(|v| v.len() > 1).count();
    let journal = sim
        .node(SimId(2))
        .and_then(|n| n.engine.journal("wf"))
        .expect("journal");
    assert_eq!(
        twice,
        journal.overlapping_steps(),
        "every duplicate is visible in the journal"
    );
}

#[test]
fn clock_skew_within_the_grace_period_keeps_one_driver() {
    let world = Rc::new(RefCell::new(World {
        step_ms: 400,
        ..World::default()
    }));
    let w = world.clone();
    let mut net = NetConfig::uniform(Duration::from_millis(10));
    net.jitter = 0.5;
    let mut sim = Simulation::new(21, net, move |id, persisted| {
        SimNode::new(id.0, persisted, w.clone())
    });
    for (i, skew_ms) in [0i64, 600, 1_200, 300, 900].into_iter().enumerate() {
        let id = sim.add_node_skewed(0, skew_ms * 1_000_000);
        assert_eq!(id.0, i as u32);
    }
    sim.run_for(Duration::from_secs(1));
    start(&mut sim, 2, "wf", json!({ "steps": 8 }));
    for _ in 0..3 {
        let deadline = sim.now() + Duration::from_secs(60);
        sim.run_until_pred(deadline, |s| {
            driver(s, "wf").is_some() || ended_everywhere(s, &["wf"])
        })
        .expect("driven");
        let Some(d) = driver(&sim, "wf") else {
            break;
        };
        sim.run_for(Duration::from_millis(900));
        sim.crash(SimId(d));
        sim.run_for(Duration::from_secs(3));
        sim.restart(SimId(d));
    }
    let deadline = sim.now() + Duration::from_secs(120);
    sim.run_until_pred(deadline, |s| ended_everywhere(s, &["wf"]))
        .expect("ends");
    sim.run_for(Duration::from_secs(5));
    assert_eq!(agree(&sim, &["wf"])["wf"], Outcome::Finished);
    no_effect_twice(&world.borrow());
}

/// Random crashes, restarts, partitions and skew over many seeds: every workflow ends, with one
/// journal everywhere; without partitions, no effect twice.
#[test]
fn random_schedules_converge() {
    let seeds: u64 = std::env::var("AETHER_WORKFLOW_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(40);
    for seed in 0..seeds {
        let mut rng = StdRng::seed_from_u64(seed);
        let partitions = seed % 3 == 0;
        let (mut sim, world) = lattice(1_000 + seed, rng.random_range(100..800));
        let ids = ["w0", "w1", "w2"];
        start(
            &mut sim,
            rng.random_range(0..NODES),
            "w0",
            json!({ "steps": 6 }),
        );
        start(
            &mut sim,
            rng.random_range(0..NODES),
            "w1",
            json!({ "steps": 6, "fail_at": 4 }),
        );
        start(
            &mut sim,
            rng.random_range(0..NODES),
            "w2",
            json!({ "steps": 3 }),
        );
        let mut down: BTreeSet<u32> = BTreeSet::new();
        for _ in 0..rng.random_range(2..8) {
            sim.run_for(Duration::from_millis(rng.random_range(200..3_000)));
            match rng.random_range(0..4) {
                0 | 1 if down.len() < 2 => {
                    let n = rng.random_range(0..NODES);
                    if down.insert(n) {
                        sim.crash(SimId(n));
                    }
                }
                2 => {
                    if let Some(&n) = down.iter().next() {
                        down.remove(&n);
                        sim.restart(SimId(n));
                    }
                }
                _ if partitions => {
                    let cut = rng.random_range(1..NODES);
                    let a: Vec<SimId> = (0..cut).map(SimId).collect();
                    let b: Vec<SimId> = (cut..NODES).map(SimId).collect();
                    sim.partition(&[&a, &b]);
                    sim.run_for(Duration::from_millis(rng.random_range(500..6_000)));
                    sim.heal();
                }
                _ => {}
            }
        }
        for n in std::mem::take(&mut down) {
            sim.restart(SimId(n));
        }
        let deadline = sim.now() + Duration::from_secs(180);
        sim.run_until_pred(deadline, |s| ended_everywhere(s, &ids))
            .unwrap_or_else(|| panic!("seed {seed}: every workflow ends"));
        sim.run_for(Duration::from_secs(5));
        let outcomes = agree(&sim, &ids);
        assert_eq!(outcomes["w0"], Outcome::Finished, "seed {seed}");
        assert_eq!(outcomes["w1"], Outcome::RolledBack, "seed {seed}");
        assert_eq!(outcomes["w2"], Outcome::Finished, "seed {seed}");
        let world = world.borrow();
        assert!(
            world.stale_starts.is_empty(),
            "seed {seed}: {:?}",
            world.stale_starts
        );
        if !partitions {
            for ((wf, step), done) in &world.effects {
                assert_eq!(
                    done.len(),
                    1,
                    "seed {seed}: {wf} {step} took effect {done:?}"
                );
            }
        }
    }
}
