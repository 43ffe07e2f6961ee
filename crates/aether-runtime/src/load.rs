//! Turning component bytes and a manifest into something that serves.

use std::sync::Arc;
use std::time::{Duration, Instant};

use aether_manifest::Manifest;
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;
use wasmtime::component::{Component, Linker, types::ComponentItem};
use wasmtime_wasi_config::WasiConfigVariables;
use wasmtime_wasi_http::p2::bindings::ProxyPre;

use crate::cache::CacheOutcome;
use crate::capabilities::OutboundPolicy;
use crate::engine::Runtime;
use crate::host::{self, HostState};
use crate::keyvalue::KeyValueGrants;
use crate::logs::{LogSink, LogStream};
use crate::metrics::{ComponentLabel, ComponentMetrics};

/// Lines of output kept per component for `alkahest logs`.
const LOG_LINES_KEPT: usize = 10_000;

/// Why a component cannot be loaded. Each message says what to do next.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The bytes are not WebAssembly at all.
    #[error("`{name}` is not a WebAssembly file (it does not start with `\\0asm`)")]
    NotWasm {
        /// Component name.
        name: String,
    },
    /// A core module was given where a component is needed.
    #[error(
        "`{name}` is a core WebAssembly module, not a component; build for the \
         `wasm32-wasip2` target, or wrap it with `wasm-tools component new`"
    )]
    CoreModule {
        /// Component name.
        name: String,
    },
    /// The component imports interfaces this node does not provide.
    #[error(
        "`{name}` imports interfaces this node does not provide: {}; \
         remove them or build against the `wasi:http/proxy` world",
        missing.join(", ")
    )]
    MissingImports {
        /// Component name.
        name: String,
        /// Every unsatisfied import, as `ns:pkg/interface@version`.
        missing: Vec<String>,
    },
    /// The component does not export `wasi:http/incoming-handler`.
    #[error(
        "`{name}` does not export `wasi:http/incoming-handler@0.2.x`, so it cannot serve \
         HTTP: {reason}"
    )]
    NotHttp {
        /// Component name.
        name: String,
        /// The linker's explanation.
        reason: String,
    },
    /// Compiling or linking failed.
    #[error("`{name}` is not a valid component: {reason}")]
    Invalid {
        /// Component name.
        name: String,
        /// The engine's explanation.
        reason: String,
    },
}

/// Where a loaded component's bytes are kept for activating it again: a file in the compile
/// cache (an 18 MB component then costs the idle node nothing), or memory without a cache.
#[derive(Clone)]
pub(crate) enum StoredWasm {
    Memory(Arc<[u8]>),
    File(std::path::PathBuf),
}

impl StoredWasm {
    /// The bytes, read from disk when they are kept there.
    fn read(&self, name: &str) -> Result<Arc<[u8]>, LoadError> {
        match self {
            Self::Memory(bytes) => Ok(bytes.clone()),
            Self::File(path) => {
                std::fs::read(path)
                    .map(Arc::from)
                    .map_err(|e| LoadError::Invalid {
                        name: name.to_string(),
                        reason: format!(
                            "its bytes at {} cannot be read ({e}); deploy it again",
                            path.display()
                        ),
                    })
            }
        }
    }
}

/// Hex SHA-256 of component bytes: the key of the compile cache and of essences.
pub fn content_hash(wasm: &[u8]) -> String {
    hex::encode(Sha256::digest(wasm))
}

/// A component ready to serve: compiled, linked, pre-instantiated, with its
/// limits and grants from the manifest.
#[derive(Clone)]
pub struct LoadedComponent {
    pub(crate) inner: Arc<ComponentInner>,
}

pub(crate) struct ComponentInner {
    pub(crate) name: Arc<str>,
    pub(crate) label: ComponentLabel,
    pub(crate) stats: ComponentMetrics,
    pub(crate) hash: String,
    pub(crate) runtime: Runtime,
    /// The pre-instantiated component; `None` while scaled to zero.
    pub(crate) pre: arc_swap::ArcSwapOption<ProxyPre<HostState>>,
    /// For components that may scale to zero (`replicas.min = 0`): how long
    /// they may stay idle.
    pub(crate) idle_timeout: Option<Duration>,
    /// The component's bytes, to activate it again after it was unloaded
    /// (compiled code then comes from the cache).
    pub(crate) wasm: StoredWasm,
    /// When a request last arrived, in ms since [`clock_start`].
    pub(crate) last_used_ms: std::sync::atomic::AtomicU64,
    /// Serialises activations from zero.
    pub(crate) activating: tokio::sync::Mutex<()>,
    pub(crate) manifest: Manifest,
    pub(crate) env: Vec<(String, String)>,
    pub(crate) config: Arc<WasiConfigVariables>,
    pub(crate) outbound: Arc<OutboundPolicy>,
    pub(crate) keyvalue: Arc<KeyValueGrants>,
    pub(crate) logs: LogSink,
    pub(crate) slots: Arc<Semaphore>,
    pub(crate) cache: CacheOutcome,
    pub(crate) activation: Duration,
}

/// Default idle period before a `replicas.min = 0` component scales to zero.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(300);

/// The process-wide instant request times are measured from.
pub(crate) fn clock_start() -> Instant {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *START.get_or_init(Instant::now)
}

pub(crate) fn now_ms() -> u64 {
    clock_start().elapsed().as_millis() as u64
}

impl Runtime {
    /// The compile worker for a component compiled with or without metering, if configured.
    pub(crate) fn compile_worker(&self, metered: bool) -> Option<crate::compile::Worker<'_>> {
        let inner = &self.inner;
        if inner
            .worker_unavailable
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            return None;
        }
        inner
            .config
            .compile_worker
            .as_deref()
            .map(|program| crate::compile::Worker {
                program,
                config: &inner.config,
                metered,
                unavailable: &inner.worker_unavailable,
            })
    }

    /// Compiles (or loads from the cache), checks imports, links and
    /// pre-instantiates one component.
    fn prepare(
        &self,
        name: &str,
        hash: &str,
        wasm: &[u8],
        metered: bool,
    ) -> Result<(ProxyPre<HostState>, CacheOutcome), LoadError> {
        let invalid = |reason: String| LoadError::Invalid {
            name: name.to_string(),
            reason,
        };
        let engine = self
            .engine_for(metered)
            .map_err(|e| invalid(format!("{e:#}")))?;
        let (component, cache) = self
            .inner
            .cache
            .get_or_compile(engine, hash, wasm, name, self.compile_worker(metered))
            .map_err(|e| invalid(format!("{e:#}")))?;
        match cache {
            CacheOutcome::Hit => self.inner.metrics.cache_hits.inc(),
            CacheOutcome::Miss | CacheOutcome::Uncached => self.inner.metrics.cache_misses.inc(),
        };
        let missing = missing_imports(&component, engine);
        if !missing.is_empty() {
            return Err(LoadError::MissingImports {
                name: name.to_string(),
                missing,
            });
        }
        let mut linker = Linker::<HostState>::new(engine);
        host::link(&mut linker).map_err(|e| invalid(format!("linking host interfaces: {e:#}")))?;
        let instance_pre = linker
            .instantiate_pre(&component)
            .map_err(|e| invalid(format!("{e:#}")))?;
        let pre = ProxyPre::new(instance_pre).map_err(|e| LoadError::NotHttp {
            name: name.to_string(),
            reason: format!("{e:#}"),
        })?;
        Ok((pre, cache))
    }

    /// Validates and compiles a component into the compiled-code cache (or finds it there),
    /// checking its imports, without keeping it loaded: a later [`Runtime::load`] of the same
    /// bytes is a cache hit. Blocking, like `load`.
    pub fn precompile(&self, manifest: &Manifest, wasm: &[u8]) -> Result<CacheOutcome, LoadError> {
        check_header(&manifest.name, wasm)?;
        let hash = content_hash(wasm);
        let metered = manifest.limits.fuel.is_some();
        let (_, cache) = self.prepare(&manifest.name, &hash, wasm, metered)?;
        Ok(cache)
    }

    /// Validates, compiles (or loads from the cache) and pre-instantiates a
    /// component. Blocking: call from a blocking-capable context for large
    /// components that may need compiling.
    pub fn load(&self, manifest: &Manifest, wasm: &[u8]) -> Result<LoadedComponent, LoadError> {
        self.load_with_logs(manifest, wasm, None)
    }

    /// Like [`Runtime::load`], but keeps an existing log sink (so a redeploy
    /// of the same name keeps its history).
    pub fn load_with_logs(
        &self,
        manifest: &Manifest,
        wasm: &[u8],
        logs: Option<LogSink>,
    ) -> Result<LoadedComponent, LoadError> {
        let started = Instant::now();
        let name = manifest.name.clone();
        check_header(&name, wasm)?;
        let hash = content_hash(wasm);
        let metered = manifest.limits.fuel.is_some();
        let (pre, cache) = self.prepare(&name, &hash, wasm, metered)?;
        let stored = match self.inner.cache.store_wasm(&hash, wasm) {
            Some(path) => StoredWasm::File(path),
            None => StoredWasm::Memory(wasm.into()),
        };

        let mut env: Vec<(String, String)> = manifest
            .env
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for var in &manifest.capabilities.env_from_host {
            if let Ok(value) = std::env::var(var) {
                env.push((var.clone(), value));
            }
        }
        let config: WasiConfigVariables = manifest
            .config
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let label = ComponentLabel {
            component: name.clone(),
        };
        let activation = started.elapsed();
        self.inner
            .metrics
            .activation
            .get_or_create(&label)
            .observe(activation.as_secs_f64());
        let logs = logs.unwrap_or_else(|| LogSink::new(&name, LOG_LINES_KEPT));
        logs.push(
            LogStream::Host,
            format!(
                "activated {} ({}) in {:.1} ms, compiled code {}",
                name,
                &hash[..12],
                activation.as_secs_f64() * 1000.0,
                match cache {
                    CacheOutcome::Hit => "from cache",
                    CacheOutcome::Miss => "compiled and cached",
                    CacheOutcome::Uncached => "compiled, not cached",
                }
            ),
        );
        let keyvalue = Arc::new(KeyValueGrants {
            component: name.as_str().into(),
            buckets: manifest.capabilities.keyvalue.clone(),
            backend: self.inner.config.keyvalue.clone(),
            logs: logs.clone(),
        });
        let max_concurrency = usize::try_from(manifest.limits.max_concurrency).unwrap_or(1);
        let stats = self.inner.metrics.for_component(&label);
        Ok(LoadedComponent {
            inner: Arc::new(ComponentInner {
                name: name.as_str().into(),
                label,
                stats,
                hash,
                runtime: self.clone(),
                pre: arc_swap::ArcSwapOption::from_pointee(pre),
                idle_timeout: matches!(
                    manifest.intent.replicas,
                    aether_manifest::Replicas::Range { min: 0, .. }
                )
                .then(|| {
                    manifest
                        .intent
                        .idle_timeout
                        .map_or(DEFAULT_IDLE_TIMEOUT, |d| d.0)
                }),
                wasm: stored,
                last_used_ms: std::sync::atomic::AtomicU64::new(now_ms()),
                activating: tokio::sync::Mutex::new(()),
                env,
                config: Arc::new(config),
                outbound: Arc::new(OutboundPolicy::new(&manifest.capabilities.outbound_http)),
                keyvalue,
                logs,
                slots: Arc::new(Semaphore::new(max_concurrency)),
                cache,
                activation,
                manifest: manifest.clone(),
            }),
        })
    }
}

impl LoadedComponent {
    /// Component name from its manifest.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// Hex SHA-256 of the component bytes.
    pub fn content_hash(&self) -> &str {
        &self.inner.hash
    }

    /// The manifest it was loaded with.
    pub fn manifest(&self) -> &Manifest {
        &self.inner.manifest
    }

    /// Its captured output.
    pub fn logs(&self) -> &LogSink {
        &self.inner.logs
    }

    /// Whether its compiled code came from the cache.
    pub fn cache_outcome(&self) -> CacheOutcome {
        self.inner.cache
    }

    /// How long loading took (compile or cache load, link, pre-instantiate).
    pub fn activation_time(&self) -> Duration {
        self.inner.activation
    }

    /// Whether it is loaded (`false` while scaled to zero).
    pub fn is_active(&self) -> bool {
        self.inner.pre.load().is_some()
    }

    /// Whether it may scale to zero (`replicas.min = 0`), and after how long idle.
    pub fn idle_timeout(&self) -> Option<Duration> {
        self.inner.idle_timeout
    }

    /// How long since a request last arrived (or since it was loaded).
    pub fn idle_for(&self) -> Duration {
        let last = self
            .inner
            .last_used_ms
            .load(std::sync::atomic::Ordering::Relaxed);
        Duration::from_millis(now_ms().saturating_sub(last))
    }

    /// Unloads it now, unless an instance is running (returns whether it
    /// did): the node no longer hosts it. The next request, or
    /// [`LoadedComponent::activate`], loads it again from the compile cache.
    pub fn deactivate(&self) -> bool {
        if !self.is_active() || self.running_instances() > 0 {
            return false;
        }
        self.inner.pre.store(None);
        tracing::debug!(component = %self.inner.name, "unloaded: not hosted here");
        true
    }

    /// Loads it if it is unloaded (from the compile cache), so the next
    /// request finds it ready.
    pub async fn activate(&self) -> Result<(), LoadError> {
        self.active_pre().await.map(|_| ())
    }

    /// Unloads it (keeping what is needed to activate it again) when it may
    /// scale to zero, runs no instance and has been idle for its idle
    /// period; returns whether it did. The next request activates it.
    pub fn scale_to_zero_if_idle(&self) -> bool {
        use std::sync::atomic::Ordering;
        let c = &self.inner;
        let Some(timeout) = c.idle_timeout else {
            return false;
        };
        let idle_for = now_ms().saturating_sub(c.last_used_ms.load(Ordering::Relaxed));
        if !self.is_active()
            || self.running_instances() > 0
            || u128::from(idle_for) < timeout.as_millis()
        {
            return false;
        }
        c.pre.store(None);
        c.logs.push(
            LogStream::Host,
            format!(
                "scaled {} to zero after {:.0} s idle; the next request activates it",
                c.name,
                idle_for as f64 / 1000.0
            ),
        );
        tracing::info!(component = %c.name, "scaled to zero after {idle_for} ms idle");
        true
    }

    /// The pre-instantiated component, activating it first when it was
    /// scaled to zero (from the compile cache: no recompilation).
    pub(crate) async fn active_pre(&self) -> Result<Arc<ProxyPre<HostState>>, LoadError> {
        let c = &self.inner;
        c.last_used_ms
            .store(now_ms(), std::sync::atomic::Ordering::Relaxed);
        if let Some(pre) = c.pre.load_full() {
            return Ok(pre);
        }
        let _guard = c.activating.lock().await;
        if let Some(pre) = c.pre.load_full() {
            return Ok(pre);
        }
        let started = Instant::now();
        let runtime = c.runtime.clone();
        let (name, hash, wasm) = (c.name.to_string(), c.hash.clone(), c.wasm.clone());
        let metered = c.manifest.limits.fuel.is_some();
        let (pre, cache) = tokio::task::spawn_blocking(move || {
            let wasm = wasm.read(&name)?;
            runtime.prepare(&name, &hash, &wasm, metered)
        })
        .await
        .map_err(|e| LoadError::Invalid {
            name: c.name.to_string(),
            reason: format!("activation stopped: {e}"),
        })??;
        let pre = Arc::new(pre);
        c.pre.store(Some(pre.clone()));
        let took = started.elapsed();
        c.runtime
            .inner
            .metrics
            .activation
            .get_or_create(&c.label)
            .observe(took.as_secs_f64());
        c.logs.push(
            LogStream::Host,
            format!(
                "activated {} from zero in {:.1} ms, compiled code {}",
                c.name,
                took.as_secs_f64() * 1000.0,
                match cache {
                    CacheOutcome::Hit => "from cache",
                    CacheOutcome::Miss => "compiled and cached",
                    CacheOutcome::Uncached => "compiled, not cached",
                }
            ),
        );
        Ok(pre)
    }

    /// Every instance slot is taken: a request now would be refused with
    /// 503 (see [`crate::OVERLOADED`]).
    pub fn is_at_capacity(&self) -> bool {
        self.inner.slots.available_permits() == 0
    }

    /// Instances running now.
    pub fn running_instances(&self) -> usize {
        usize::try_from(self.inner.manifest.limits.max_concurrency).unwrap_or(0)
            - self.inner.slots.available_permits()
    }
}

fn check_header(name: &str, wasm: &[u8]) -> Result<(), LoadError> {
    if wasm.len() < 8 || &wasm[..4] != b"\0asm" {
        return Err(LoadError::NotWasm {
            name: name.to_string(),
        });
    }
    // Bytes 4..8: version and layer. Core modules are layer 0, components layer 1.
    if wasm[6..8] == [0, 0] {
        return Err(LoadError::CoreModule {
            name: name.to_string(),
        });
    }
    Ok(())
}

fn missing_imports(component: &Component, engine: &wasmtime::Engine) -> Vec<String> {
    let ty = component.component_type();
    let mut missing = Vec::new();
    for (import, item) in ty.imports(engine) {
        let provided =
            host::provides(import) && matches!(item.ty, ComponentItem::ComponentInstance(_));
        if !provided {
            missing.push(import.to_string());
        }
    }
    missing
}
