//! The wasmtime engine and the settings it is built with.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::Duration;

use anyhow::Context as _;
use wasmtime::{Config, Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use crate::cache::CompileCache;
use crate::metrics::RuntimeMetrics;

/// Interval between epoch ticks. Deadlines are measured in these ticks, and a
/// busy guest yields to other requests on its thread at least this often.
pub(crate) const EPOCH_TICK: Duration = Duration::from_millis(5);

/// Node-wide runtime settings (the per-component ones come from the manifest).
#[derive(Debug, Clone)]
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
    pub(crate) engine: Engine,
    pub(crate) cache: CompileCache,
    pub(crate) metrics: RuntimeMetrics,
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
        let engine = Engine::new(&engine_config(&config)?)
            .map_err(|e| anyhow::anyhow!("{e:#}"))
            .context("building the wasm engine")?;
        let cache = CompileCache::new(config.cache_dir.clone(), &engine);
        let stop_ticker = Arc::new(AtomicBool::new(false));
        let ticker_engine = engine.weak();
        let stop = stop_ticker.clone();
        thread::Builder::new()
            .name("aether-epoch".into())
            .spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    thread::sleep(EPOCH_TICK);
                    match ticker_engine.upgrade() {
                        Some(engine) => engine.increment_epoch(),
                        None => break,
                    }
                }
            })
            .context("starting the epoch ticker")?;
        Ok(Self {
            inner: Arc::new(RuntimeInner {
                engine,
                cache,
                metrics: RuntimeMetrics::default(),
                stop_ticker,
            }),
        })
    }

    /// The engine every component of this node is compiled for.
    pub fn engine(&self) -> &Engine {
        &self.inner.engine
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

fn engine_config(config: &RuntimeConfig) -> anyhow::Result<Config> {
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
        .consume_fuel(true)
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
