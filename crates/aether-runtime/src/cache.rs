//! Compiled code cached on disk, keyed by content hash and engine settings.

use std::fs;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::io::Write as _;
use std::path::{Path, PathBuf};

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

/// Directory of precompiled components.
///
/// File names are `<sha256 of the component>-<engine fingerprint>.cwasm`, so
/// a different wasmtime version or different engine settings never load code
/// compiled for another. Writes go to a temporary file renamed into place, so
/// a crash mid-write never leaves a truncated entry behind.
#[derive(Debug, Clone)]
pub struct CompileCache {
    dir: Option<PathBuf>,
}

impl CompileCache {
    /// A cache in `dir` (created on first write), or a disabled one for `None`.
    pub fn new(dir: Option<PathBuf>) -> Self {
        Self { dir }
    }

    /// The cache directory, if enabled.
    pub fn dir(&self) -> Option<&Path> {
        self.dir.as_deref()
    }

    fn entry(&self, engine: &Engine, content_hash: &str) -> Option<PathBuf> {
        let mut hasher = DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        let fingerprint = hasher.finish();
        self.dir
            .as_ref()
            .map(|d| d.join(format!("{content_hash}-{fingerprint:016x}.cwasm")))
    }

    /// Returns the compiled component, from disk when possible.
    pub(crate) fn get_or_compile(
        &self,
        engine: &Engine,
        content_hash: &str,
        wasm: &[u8],
        component_name: &str,
    ) -> wasmtime::Result<(Component, CacheOutcome)> {
        if let Some(path) = self.entry(engine, content_hash)
            && path.exists()
        {
            // SAFETY: the file was written by `Component::serialize` of an
            // engine with the same compatibility hash (it is in the name), into
            // a directory owned by this node, and renamed into place atomically.
            match unsafe { Component::deserialize_file(engine, &path) } {
                Ok(component) => return Ok((component, CacheOutcome::Hit)),
                Err(err) => {
                    tracing::warn!(
                        component = component_name,
                        path = %path.display(),
                        "compiled-code cache entry unusable, recompiling: {err:#}"
                    );
                    let _ = fs::remove_file(&path);
                }
            }
        }
        let component = Component::new(engine, wasm)?;
        let outcome = match self.entry(engine, content_hash) {
            None => CacheOutcome::Uncached,
            Some(path) => match write_entry(&path, &component) {
                Ok(()) => CacheOutcome::Miss,
                Err(err) => {
                    tracing::warn!(
                        component = component_name,
                        path = %path.display(),
                        "could not write the compiled-code cache, serving without it: {err:#}"
                    );
                    CacheOutcome::Uncached
                }
            },
        };
        Ok((component, outcome))
    }
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
