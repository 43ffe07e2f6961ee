//! The shell around this node's workflow engine: journal records in and out of the lattice
//! state, the member view from the mesh, steps run on tasks, the time from the clock.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use aether_kv::KvHandle;
use aether_mesh::{MemberStatus, MeshHandle};
use aether_workflow::{Action, BUCKET, Config, Engine, NodeId, Record};
use bytes::Bytes;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::sync::Notify;

use super::plan::{KIND, RolloutPlanner};
use super::records::now_ms;
use super::steps::{self, StepContext};
use crate::deployments::Deployments;
use crate::replication::Replication;

/// How often the member view is read.
const MEMBERS_EVERY: Duration = Duration::from_millis(250);

/// Workflow metrics (`aether_workflow_*`).
#[derive(Default)]
pub(crate) struct WorkflowMetrics {
    running: Gauge,
    steps: Counter,
    takeovers: Counter,
    rollbacks: Counter,
    renewals: Counter,
    last: Mutex<aether_workflow::Counters>,
}

impl WorkflowMetrics {
    /// Adds them to `registry`.
    pub(crate) fn register(&self, registry: &mut Registry) {
        registry.register(
            "aether_workflow_running",
            "Workflows not ended, as this node sees them",
            self.running.clone(),
        );
        registry.register(
            "aether_workflow_steps",
            "Workflow steps this node ran",
            self.steps.clone(),
        );
        registry.register(
            "aether_workflow_takeovers",
            "Workflows this node took over from a dead, lapsed or earlier holder",
            self.takeovers.clone(),
        );
        registry.register(
            "aether_workflow_rollbacks",
            "Workflows this node ended rolled back or cancelled",
            self.rollbacks.clone(),
        );
        registry.register(
            "aether_workflow_lease_renewals",
            "Lease renewals this node wrote",
            self.renewals.clone(),
        );
    }

    fn update(&self, engine: &Engine) {
        let now = engine.counters();
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        self.steps.inc_by(now.steps_started - last.steps_started);
        self.takeovers.inc_by(now.takeovers - last.takeovers);
        self.rollbacks
            .inc_by(now.ended_rolled_back - last.ended_rolled_back);
        self.renewals
            .inc_by(now.lease_renewals - last.lease_renewals);
        *last = now;
        self.running.set(engine.running() as i64);
    }
}

/// This node's workflows.
pub(crate) struct Workflows {
    engine: Arc<Mutex<Engine>>,
    kv: KvHandle,
    wake: Notify,
    /// Held while the engine's actions are carried out, so writes leave in the engine's order.
    turning: tokio::sync::Mutex<()>,
    steps: Arc<StepContext>,
    /// Its metrics.
    pub(crate) metrics: WorkflowMetrics,
}

fn node_id(key: &aether_identity::PublicKey) -> NodeId {
    NodeId(*key.as_bytes())
}

impl Workflows {
    /// Loads every journal from the lattice state and starts following it.
    pub(crate) async fn start(
        kv: KvHandle,
        mesh: MeshHandle,
        me: aether_identity::PublicKey,
        deployments: Arc<Deployments>,
        replication: Arc<Replication>,
        schedule: Arc<crate::schedule::Schedule>,
    ) -> anyhow::Result<Arc<Self>> {
        let mut engine = Engine::new(node_id(&me), Config::default());
        engine.register(KIND, Arc::new(RolloutPlanner));
        engine.register(super::drain::KIND, Arc::new(super::drain::DrainPlanner));
        let engine = Arc::new(Mutex::new(engine));
        let watch = kv.watch(BUCKET, b"", 4096).await?;
        let this = Arc::new(Workflows {
            engine: engine.clone(),
            kv: kv.clone(),
            wake: Notify::new(),
            turning: tokio::sync::Mutex::new(()),
            steps: Arc::new(StepContext {
                kv: kv.clone(),
                mesh: mesh.clone(),
                deployments: deployments.clone(),
                replication: replication.clone(),
                engine,
                schedule: schedule.clone(),
            }),
            metrics: WorkflowMetrics::default(),
        });
        this.load_all().await;
        tokio::spawn(this.clone().run(watch, mesh.clone()));
        tokio::spawn(super::traffic::follow(
            kv.clone(),
            me.to_string(),
            deployments.clone(),
        ));
        tokio::spawn(super::stage::follow(
            kv.clone(),
            me.to_string(),
            deployments,
            replication,
        ));
        tokio::spawn(super::drain::follow(kv.clone(), schedule));
        let engine = this.engine.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(super::reconcile::EVERY);
            loop {
                tick.tick().await;
                super::reconcile::once(&kv, &engine).await;
            }
        });
        Ok(this)
    }

    /// The engine, for reading journals.
    pub(crate) fn engine(&self) -> std::sync::MutexGuard<'_, Engine> {
        self.engine.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// What the steps run with on this node.
    pub(crate) fn steps(&self) -> &StepContext {
        &self.steps
    }

    /// The lattice state (the records beside the journals, for status reads).
    pub(crate) fn kv(&self) -> &KvHandle {
        &self.kv
    }

    /// Wakes the loop after a change made through [`engine`](Self::engine).
    pub(crate) fn wake(&self) {
        self.wake.notify_one();
    }

    async fn load_all(&self) {
        let Ok(entries) = self.kv.list(BUCKET, b"", 1_000_000).await else {
            return;
        };
        let now = now_ms();
        let mut engine = self.engine();
        for entry in entries {
            let (Ok(key), Some(value)) = (std::str::from_utf8(entry.winner().key()), entry.value())
            else {
                continue;
            };
            match Record::decode(key, value) {
                Ok(record) => engine.apply(record, now),
                Err(e) => tracing::warn!("workflow record ignored: {e}"),
            }
        }
    }

    async fn run(
        self: Arc<Self>,
        mut watch: tokio::sync::mpsc::Receiver<aether_kv::Change>,
        mesh: MeshHandle,
    ) {
        let mut members = tokio::time::interval(MEMBERS_EVERY);
        loop {
            let sleep = {
                let engine = self.engine();
                engine
                    .next_wakeup()
                    .map(|t| Duration::from_millis(t.saturating_sub(now_ms())))
                    .unwrap_or(Duration::from_secs(1))
            };
            tokio::select! {
                change = watch.recv() => match change {
                    Some(change) => {
                        let u = change.update;
                        if let (Ok(key), Some(value)) = (std::str::from_utf8(u.key()), u.value()) {
                            match Record::decode(key, value) {
                                Ok(record) => self.engine().apply(record, now_ms()),
                                Err(e) => tracing::warn!("workflow record ignored: {e}"),
                            }
                        }
                    }
                    None => {
                        tracing::warn!("the workflow watch lagged; following it again");
                        match self.kv.watch(BUCKET, b"", 4096).await {
                            Ok(w) => {
                                watch = w;
                                self.load_all().await;
                            }
                            Err(_) => tokio::time::sleep(Duration::from_secs(1)).await,
                        }
                    }
                },
                _ = members.tick() => {
                    if let Ok(list) = mesh.members().await {
                        let alive = list
                            .iter()
                            .filter(|m| matches!(m.status, MemberStatus::Alive | MemberStatus::Suspect))
                            .map(|m| node_id(&m.id));
                        self.engine().set_alive(alive);
                    }
                }
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(sleep) => {}
            }
            self.turn().await;
        }
    }

    /// Carries out at once what the engine asks, and returns once its records are durable on
    /// this node (a new workflow's definition and lease, before its id is handed out).
    pub(crate) async fn flush(self: &Arc<Self>) {
        self.turn().await;
    }

    /// Polls the engine and carries out what it asks.
    async fn turn(self: &Arc<Self>) {
        let _turning = self.turning.lock().await;
        let actions: Vec<Action> = {
            let mut engine = self.engine();
            engine.poll(now_ms());
            self.metrics.update(&engine);
            std::iter::from_fn(|| engine.poll_action()).collect()
        };
        for action in actions {
            match action {
                Action::Write(record) => {
                    let value = Bytes::from(record.encode());
                    if let Err(e) = self
                        .kv
                        .put(BUCKET, record.key().as_bytes(), Some(value))
                        .await
                    {
                        tracing::warn!(
                            workflow = record.workflow(),
                            "workflow record not written: {e}"
                        );
                    }
                }
                Action::Execute(task) => {
                    let this = self.clone();
                    tokio::spawn(async move {
                        let started = now_ms();
                        tracing::info!(workflow = %task.workflow, step = %task.name, epoch = task.epoch.n, "workflow step");
                        let result = steps::run(&this.steps, &task).await;
                        if let aether_workflow::StepResult::Err(e) = &result {
                            tracing::warn!(workflow = %task.workflow, step = %task.name, "workflow step failed: {e}");
                        }
                        this.engine()
                            .step_finished(&task, result, started, now_ms());
                        this.wake();
                    });
                }
            }
        }
    }
}
