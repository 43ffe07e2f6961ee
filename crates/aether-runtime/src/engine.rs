//! The wasmtime engine and the settings it is built with.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread;
use std::time::Duration;

use anyhow::Context as _;
use wasmtime::{Config, Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use crate::cache::CompileCache;
use crate::keyvalue::KeyValueBackend;
use crate::metrics::RuntimeMetrics;

/// Interval between epoch ticks. Deadlines are measured in these ticks, and a
/// busy guest yields to other requests on its thread at least this often.
pub(crate) const EPOCH_TICK: Duration = Duration::from_millis(5);

/// Node-wide runtime settings (the per-component ones come from the manifest).
#[derive(Clone)]
pub struct RuntimeConfig {
    /// Directory for compiled code; `None` disables the on-disk cache.
    /// Default: `DATA_DIR/compile-cache`.
    pub cache_dir: Option<PathBuf>,
    /// Concurrent instances across all components (pool slots). Default 1000:
    /// each slot reserves address space, not memory.
    pub max_instances: u32,
    /// Largest linear memory any component may ask for. Default 4 GiB, the
    /// manifest's upper bound; the pool reserves this much address space per slot.
    pub max_memory_per_instance: u64,
    /// Bytes of each linear memory kept resident (reset with `memset` or the
    /// kernel's page-map scan instead of `madvise`) when a slot is reused.
    /// Default 10 MiB: avoids the TLB shootdowns that dominate on small VMs.
    pub memory_keep_resident: usize,
    /// Bytes of each table and async stack kept resident likewise. Default 1 MiB.
    pub table_keep_resident: usize,
    /// Bytes of stack for each instance's host fiber. Default 1 MiB.
    pub async_stack_size: usize,
    /// A program that compiles components in a child process when given
    /// [`compile::WORKER_ARG`](crate::compile::WORKER_ARG) (the daemon sets its
    /// own binary), so the compiler's memory is returned to the OS when it
    /// exits. Needs the compile cache. Default `None`: compile in-process.
    pub compile_worker: Option<PathBuf>,
    /// The store behind `wasi:keyvalue` (the node's lattice state). Default
    /// `None`: components importing `wasi:keyvalue` still load, but opening a
    /// bucket fails with an error saying this node has no state store.
    pub keyvalue: Option<Arc<dyn KeyValueBackend>>,
}

impl std::fmt::Debug for RuntimeConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RuntimeConfig")
            .field("cache_dir", &self.cache_dir)
            .field("max_instances", &self.max_instances)
            .field("max_memory_per_instance", &self.max_memory_per_instance)
            .field("memory_keep_resident", &self.memory_keep_resident)
            .field("table_keep_resident", &self.table_keep_resident)
            .field("async_stack_size", &self.async_stack_size)
            .field("compile_worker", &self.compile_worker)
            .field("keyvalue", &self.keyvalue.as_ref().map(|_| "<backend>"))
            .finish()
    }
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self {
            cache_dir: None,
            max_instances: 1000,
            max_memory_per_instance: 4 << 30,
            memory_keep_resident: 10 << 20,
            table_keep_resident: 1 << 20,
            async_stack_size: 1 << 20,
            compile_worker: None,
            keyvalue: None,
        }
    }
}

/// One node's component runtime: the engine, the compile cache and the metrics.
///
/// Cheap to clone; all clones share the engine and its epoch ticker.
#[derive(Clone)]
pub struct Runtime {
    pub(crate) inner: Arc<RuntimeInner>,
}

pub(crate) struct RuntimeInner {
    /// Engine for components without a CPU budget: no fuel checks in their code.
    pub(crate) engine: Engine,
    /// Engine with fuel metering, built on first use by a component that
    /// sets `limits.fuel` (metering is an engine-wide compile setting).
    metered: OnceLock<Engine>,
    pub(crate) config: RuntimeConfig,
    pub(crate) cache: CompileCache,
    pub(crate) metrics: RuntimeMetrics,
    /// Set once the compile worker cannot be started at all (no such program, an emulator
    /// that cannot run its own binary): compiles stay in-process from then on.
    pub(crate) worker_unavailable: AtomicBool,
    stop_ticker: Arc<AtomicBool>,
}

impl Drop for RuntimeInner {
    fn drop(&mut self) {
        self.stop_ticker.store(true, Ordering::Relaxed);
    }
}

impl Runtime {
    /// Builds the engine and starts its epoch ticker thread.
    pub fn new(config: RuntimeConfig) -> anyhow::Result<Self> {
        let engine = build_engine(&config, false)?;
        let cache = CompileCache::new(config.cache_dir.clone());
        let stop_ticker = Arc::new(AtomicBool::new(false));
        let inner = Arc::new(RuntimeInner {
            engine,
            metered: OnceLock::new(),
            config,
            cache,
            metrics: RuntimeMetrics::default(),
            worker_unavailable: AtomicBool::new(false),
            stop_ticker: stop_ticker.clone(),
        });
        let ticker = Arc::downgrade(&inner);
        let stop = stop_ticker;
        thread::Builder::new()
            .name("aether-epoch".into())
            .spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    thread::sleep(EPOCH_TICK);
                    let Some(inner) = ticker.upgrade() else { break };
                    inner.engine.increment_epoch();
                    if let Some(metered) = inner.metered.get() {
                        metered.increment_epoch();
                    }
                }
            })
            .context("starting the epoch ticker")?;
        Ok(Self { inner })
    }

    /// The engine components without a CPU budget are compiled for.
    pub fn engine(&self) -> &Engine {
        &self.inner.engine
    }

    /// The engine for a component: the metered one when it has a CPU budget.
    pub(crate) fn engine_for(&self, metered: bool) -> anyhow::Result<&Engine> {
        if !metered {
            return Ok(&self.inner.engine);
        }
        if let Some(engine) = self.inner.metered.get() {
            return Ok(engine);
        }
        let engine = build_engine(&self.inner.config, true)?;
        Ok(self.inner.metered.get_or_init(|| engine))
    }

    /// The on-disk cache of compiled code.
    pub fn cache(&self) -> &CompileCache {
        &self.inner.cache
    }

    /// Counters and histograms for `/metrics`.
    pub fn metrics(&self) -> &RuntimeMetrics {
        &self.inner.metrics
    }
}

pub(crate) fn build_engine(config: &RuntimeConfig, metered: bool) -> anyhow::Result<Engine> {
    Engine::new(&engine_config(config, metered)?)
        .map_err(|e| anyhow::anyhow!("{e:#}"))
        .context("building the wasm engine")
}

fn engine_config(config: &RuntimeConfig, metered: bool) -> anyhow::Result<Config> {
    let mut pool = PoolingAllocationConfig::new();
    pool.total_component_instances(config.max_instances)
        .total_memories(config.max_instances)
        .total_tables(config.max_instances)
        .total_stacks(config.max_instances)
        .total_core_instances(config.max_instances.saturating_mul(4))
        .max_memories_per_component(4)
        .max_tables_per_component(8)
        .max_core_instances_per_component(32)
        .max_component_instance_size(1 << 20)
        .max_core_instance_size(1 << 20)
        .table_elements(64 * 1024)
        .max_memory_size(
            usize::try_from(config.max_memory_per_instance).context("memory limit too large")?,
        )
        .linear_memory_keep_resident(config.memory_keep_resident)
        .table_keep_resident(config.table_keep_resident)
        .async_stack_keep_resident(config.table_keep_resident)
        .decommit_batch_size(64)
        .pagemap_scan(Enabled::Auto);

    let mut cfg = Config::new();
    cfg.wasm_component_model(true)
        .epoch_interruption(true)
        .consume_fuel(metered)
        .memory_init_cow(true)
        .parallel_compilation(true)
        .async_stack_size(config.async_stack_size)
        .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    // Large reservations with guard pages elide bounds checks; the pool sizes
    // its slots from the same numbers.
    cfg.memory_reservation(config.max_memory_per_instance)
        .memory_guard_size(32 << 20);
    Ok(cfg)
}
