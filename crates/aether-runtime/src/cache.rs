//! Compiled code cached on disk, keyed by content hash and engine settings.

use std::fs;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use wasmtime::Engine;
use wasmtime::component::Component;

/// How a component's compiled code was obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheOutcome {
    /// Loaded from the on-disk cache; nothing was compiled.
    Hit,
    /// Compiled now and written to the cache.
    Miss,
    /// Compiled now; the cache is disabled or could not be written (the
    /// component still runs, the failure is logged).
    Uncached,
}

/// An exclusive lock on `entry`'s lock file (`locks/<entry name>.lock` beside it), held until
/// dropped; `None` when it cannot be had (a read-only directory, say), which costs at most a
/// second compile.
fn lock_file(entry: &Path) -> Option<fs::File> {
    let dir = entry.parent()?.join("locks");
    fs::create_dir_all(&dir).ok()?;
    let mut name = entry.file_name()?.to_owned();
    name.push(".lock");
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join(name))
        .ok()?;
    file.lock().ok()?;
    Some(file)
}

/// A lock on one cache entry while it is looked up or compiled.
type EntryLock = Arc<std::sync::Mutex<()>>;

/// Directory of precompiled components.
///
/// File names are `<sha256 of the component>-<arch>-<os>-<engine fingerprint>.cwasm`,
/// so a different target, wasmtime version or engine settings never load code
/// compiled for another. The components' own bytes are kept beside them in
/// `wasm/<sha256>.wasm`, read again only to activate an unloaded component
/// whose compiled code is gone, so they need not stay in memory. Writes go to a temporary file renamed into place, so
/// a crash mid-write never leaves a truncated entry behind. An entry is looked up and compiled
/// under a lock (`locks/<entry>.lock`), so nodes sharing the directory compile it once.
#[derive(Debug, Clone)]
pub struct CompileCache {
    dir: Option<PathBuf>,
    /// One lock per cache entry being looked up or compiled, so that two loads of the same
    /// component at once (a rollout's precompile and a deploy, say) compile it once: the second
    /// waits and finds the first one's entry.
    compiling: Arc<std::sync::Mutex<std::collections::HashMap<PathBuf, EntryLock>>>,
}

impl CompileCache {
    /// A cache in `dir` (created on first write), or a disabled one for `None`.
    pub fn new(dir: Option<PathBuf>) -> Self {
        Self {
            dir,
            compiling: Arc::default(),
        }
    }

    /// The cache directory, if enabled.
    pub fn dir(&self) -> Option<&Path> {
        self.dir.as_deref()
    }

    /// Keeps a component's bytes on disk as `wasm/<content_hash>.wasm` and returns that path;
    /// `None` (the caller keeps them in memory) when the cache is disabled or the write fails.
    pub(crate) fn store_wasm(&self, content_hash: &str, wasm: &[u8]) -> Option<PathBuf> {
        let dir = self.dir.as_ref()?.join("wasm");
        let path = dir.join(format!("{content_hash}.wasm"));
        if fs::metadata(&path).is_ok_and(|m| m.len() == wasm.len() as u64) {
            return Some(path);
        }
        let written = fs::create_dir_all(&dir).and_then(|()| {
            let (tmp, mut file) = tempfile_in(&dir)?;
            let result = file
                .write_all(wasm)
                .and_then(|()| file.sync_all())
                .and_then(|()| fs::rename(&tmp, &path));
            if result.is_err() {
                let _ = fs::remove_file(&tmp);
            }
            result
        });
        match written {
            Ok(()) => Some(path),
            Err(err) => {
                tracing::warn!(
                    path = %path.display(),
                    "could not keep the component's bytes on disk, keeping them in memory: {err}"
                );
                None
            }
        }
    }

    fn entry(&self, engine: &Engine, content_hash: &str) -> Option<PathBuf> {
        let mut hasher = DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        let fingerprint = hasher.finish();
        self.dir
            .as_ref()
            .map(|d| d.join(entry_name(content_hash, fingerprint)))
    }

    /// Returns the compiled component, from disk when possible. When it must be compiled and a
    /// `worker` is given, the worker compiles it in a child process ([`crate::compile`]);
    /// otherwise, or when the worker fails, it is compiled here. Either way the code served is
    /// mapped from the cache file when there is one, so it is file-backed memory the kernel can
    /// page, not heap.
    pub(crate) fn get_or_compile(
        &self,
        engine: &Engine,
        content_hash: &str,
        wasm: &[u8],
        component_name: &str,
        worker: Option<crate::compile::Worker<'_>>,
    ) -> wasmtime::Result<(Component, CacheOutcome)> {
        let entry = self.entry(engine, content_hash);
        let lock = entry.as_ref().map(|path| {
            self.compiling
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .entry(path.clone())
                .or_default()
                .clone()
        });
        let result = {
            let _held = lock
                .as_ref()
                .map(|l| l.lock().unwrap_or_else(|p| p.into_inner()));
            // Nodes on one machine may share the cache directory: a file lock makes the others
            // wait for the one compiling and then map its entry, instead of compiling it again.
            let _file_lock = entry.as_deref().and_then(lock_file);
            self.get_or_compile_locked(engine, entry.as_deref(), wasm, component_name, worker)
        };
        if let (Some(lock), Some(path)) = (lock, &entry) {
            let mut compiling = self.compiling.lock().unwrap_or_else(|p| p.into_inner());
            // Forget the lock once nobody else holds or waits for it.
            if Arc::strong_count(&lock) == 2 {
                compiling.remove(path);
            }
        }
        result
    }

    fn get_or_compile_locked(
        &self,
        engine: &Engine,
        entry: Option<&Path>,
        wasm: &[u8],
        component_name: &str,
        worker: Option<crate::compile::Worker<'_>>,
    ) -> wasmtime::Result<(Component, CacheOutcome)> {
        if let Some(path) = entry
            && path.exists()
        {
            match map_entry(engine, path) {
                Ok(component) => return Ok((component, CacheOutcome::Hit)),
                Err(err) => {
                    tracing::warn!(
                        component = component_name,
                        path = %path.display(),
                        "compiled-code cache entry unusable, recompiling: {err:#}"
                    );
                    let _ = fs::remove_file(path);
                }
            }
        }
        if let (Some(worker), Some(path)) = (worker, entry) {
            let started = std::time::Instant::now();
            match compile_with_worker(engine, &worker, wasm, path) {
                Ok(component) => {
                    tracing::info!(
                        component = component_name,
                        ms = started.elapsed().as_millis() as u64,
                        "compiled in a worker process"
                    );
                    return Ok((component, CacheOutcome::Miss));
                }
                Err(WorkerError::Invalid(reason)) => return Err(wasmtime::Error::msg(reason)),
                Err(WorkerError::Failed(reason)) => tracing::warn!(
                    component = component_name,
                    "compiling in this process instead of a worker: {reason}"
                ),
                Err(WorkerError::Unavailable(reason)) => {
                    worker
                        .unavailable
                        .store(true, std::sync::atomic::Ordering::Relaxed);
                    tracing::warn!(
                        component = component_name,
                        "the compile worker cannot run here ({reason}); this node compiles \
                         in its own process from now on"
                    );
                }
            }
        }
        let component = Component::new(engine, wasm)?;
        let Some(path) = entry else {
            return Ok((component, CacheOutcome::Uncached));
        };
        if let Err(err) = write_entry(path, &component) {
            tracing::warn!(
                component = component_name,
                path = %path.display(),
                "could not write the compiled-code cache, serving without it: {err:#}"
            );
            return Ok((component, CacheOutcome::Uncached));
        }
        // Serve the mapped file rather than the heap copy the compiler left.
        match map_entry(engine, path) {
            Ok(mapped) => Ok((mapped, CacheOutcome::Miss)),
            Err(_) => Ok((component, CacheOutcome::Miss)),
        }
    }
}

/// A cache file name: `<sha256 of the component>-<arch>-<os>-<engine fingerprint>.cwasm`. The
/// architecture and OS this binary was built for are in the name as well as in the engine
/// fingerprint, so code compiled for one target is never even opened on another (a data
/// directory moved between machines, a cache directory shared by nodes of several kinds).
pub(crate) fn entry_name(content_hash: &str, fingerprint: u64) -> String {
    format!(
        "{content_hash}-{}-{}-{fingerprint:016x}.cwasm",
        std::env::consts::ARCH,
        std::env::consts::OS
    )
}

enum WorkerError {
    Invalid(String),
    Failed(String),
    Unavailable(String),
}

fn compile_with_worker(
    engine: &Engine,
    worker: &crate::compile::Worker<'_>,
    wasm: &[u8],
    path: &Path,
) -> Result<Component, WorkerError> {
    let dir = path
        .parent()
        .ok_or_else(|| WorkerError::Failed("cache path has no parent".into()))?;
    fs::create_dir_all(dir).map_err(|e| WorkerError::Failed(format!("{}: {e}", dir.display())))?;
    let (tmp, file) =
        tempfile_in(dir).map_err(|e| WorkerError::Failed(format!("{}: {e}", dir.display())))?;
    drop(file);
    let outcome = crate::compile::compile_in_worker(
        worker.program,
        worker.config,
        worker.metered,
        wasm,
        &tmp,
    );
    let result = match outcome {
        crate::compile::WorkerOutcome::Compiled => map_entry(engine, &tmp)
            .map_err(|e| WorkerError::Failed(format!("the worker's code does not load: {e:#}")))
            .and_then(|component| {
                fs::rename(&tmp, path)
                    .map(|()| component)
                    .map_err(|e| WorkerError::Failed(format!("{}: {e}", path.display())))
            }),
        crate::compile::WorkerOutcome::Invalid(reason) => Err(WorkerError::Invalid(reason)),
        crate::compile::WorkerOutcome::Failed(reason) => Err(WorkerError::Failed(reason)),
        crate::compile::WorkerOutcome::Unavailable(reason) => Err(WorkerError::Unavailable(reason)),
    };
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

fn map_entry(engine: &Engine, path: &Path) -> wasmtime::Result<Component> {
    // SAFETY: the file was written by `Component::serialize` or `Engine::precompile_component`
    // of an engine built from the same settings, into a directory owned by this node, and is
    // renamed into place only once complete; wasmtime checks its header and compatibility hash
    // before using it.
    unsafe { Component::deserialize_file(engine, path) }
}

fn write_entry(path: &Path, component: &Component) -> anyhow::Result<()> {
    let bytes = component
        .serialize()
        .map_err(|e| anyhow::anyhow!("serializing compiled code: {e}"))?;
    let dir = path
        .parent()
        .ok_or_else(|| anyhow::anyhow!("cache path has no parent"))?;
    fs::create_dir_all(dir)?;
    let mut tmp = tempfile_in(dir)?;
    tmp.1.write_all(&bytes)?;
    tmp.1.sync_all()?;
    drop(tmp.1);
    fs::rename(&tmp.0, path).inspect_err(|_| {
        let _ = fs::remove_file(&tmp.0);
    })?;
    Ok(())
}

fn tempfile_in(dir: &Path) -> std::io::Result<(PathBuf, fs::File)> {
    let name = format!(
        ".tmp-{}-{:x}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    );
    let path = dir.join(name);
    let file = fs::File::create(&path)?;
    Ok((path, file))
}
