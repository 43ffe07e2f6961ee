//! A project directory: its Aetherfile, its build, its component.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use aether_identity::SecretKey;
use aether_identity::home::Home;
use aether_manifest::Manifest;
use anyhow::Context as _;

use crate::output::{Rendered, spinner};

/// A loaded project.
pub struct Project {
    /// Directory holding the Aetherfile.
    pub dir: PathBuf,
    /// The parsed manifest.
    pub manifest: Manifest,
}

impl Project {
    /// Loads `DIR/Aetherfile` (or the file itself if a file is given).
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let (dir, file) = if path.is_file() {
            (
                path.parent().unwrap_or(Path::new(".")).to_path_buf(),
                path.to_path_buf(),
            )
        } else {
            (path.to_path_buf(), path.join("Aetherfile"))
        };
        if !file.exists() {
            anyhow::bail!(
                "no Aetherfile in {}; create one (see `alkahest new NAME`) or pass the project directory",
                dir.display()
            );
        }
        let manifest = aether_manifest::load(&file)
            .map_err(|e| Rendered(format!("{:?}", miette::Report::new(e))))?;
        Ok(Self { dir, manifest })
    }

    /// Absolute path of the component file.
    pub fn component_path(&self) -> PathBuf {
        let p = self.manifest.component.path();
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.dir.join(p)
        }
    }

    /// Runs the build command, if any, with a spinner; on failure shows the
    /// end of its output and what to do next.
    pub fn build(&self) -> anyhow::Result<()> {
        let Some(command) = self.manifest.component.build_command() else {
            return Ok(());
        };
        let workdir = match self.manifest.component.workdir() {
            Some(w) if w.is_absolute() => w.to_path_buf(),
            Some(w) => self.dir.join(w),
            None => self.dir.clone(),
        };
        let bar = spinner(&format!("Building {} ({command})", self.manifest.name));
        let output = std::process::Command::new("sh")
            .arg("-c")
            .arg(command)
            .current_dir(&workdir)
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("running `{command}` in {}", workdir.display()))?;
        bar.finish_and_clear();
        if !output.status.success() {
            let stderr = String::from_utf8_lossy(&output.stderr);
            let stdout = String::from_utf8_lossy(&output.stdout);
            let tail: Vec<&str> = stderr.lines().chain(stdout.lines()).collect();
            let shown = tail[tail.len().saturating_sub(30)..].join("\n");
            let hint = build_hint(&stderr);
            anyhow::bail!(
                "build command `{command}` failed ({})\n{shown}{}",
                output.status,
                hint.map(|h| format!("\nhint: {h}")).unwrap_or_default()
            );
        }
        eprintln!("Built {}", self.manifest.name);
        Ok(())
    }

    /// Reads the component, checking it is a WebAssembly component.
    pub fn read_component(&self) -> anyhow::Result<Vec<u8>> {
        let path = self.component_path();
        let bytes = std::fs::read(&path).with_context(|| {
            if self.manifest.component.build_command().is_some() {
                format!(
                    "reading the component {} (did the build write it there? check `component.path`)",
                    path.display()
                )
            } else {
                format!("reading the component {}", path.display())
            }
        })?;
        if bytes.len() < 8 || &bytes[..4] != b"\0asm" {
            anyhow::bail!("{} is not a WebAssembly file", path.display());
        }
        if bytes[6..8] == [0, 0] {
            anyhow::bail!(
                "{} is a core WebAssembly module, not a component; build for `wasm32-wasip2` \
                 or wrap it with `wasm-tools component new`",
                path.display()
            );
        }
        Ok(bytes)
    }
}

fn build_hint(stderr: &str) -> Option<&'static str> {
    if stderr.contains("wasm32-wasip2")
        && (stderr.contains("may not be installed")
            || stderr.contains("target not found")
            || stderr.contains("can't find crate for `core`")
            || stderr.contains("can't find crate for `std`"))
    {
        return Some("the Rust target is missing; run `rustup target add wasm32-wasip2`");
    }
    if stderr.contains("cargo: not found") || stderr.contains("cargo: command not found") {
        return Some("Rust is not installed; install it with rustup (https://rustup.rs)");
    }
    if stderr.contains("componentize-py: not found") {
        return Some("install componentize-py with `pip install componentize-py`");
    }
    None
}

/// Template files for `alkahest new`, taken from the example component.
pub const TEMPLATE_LIB: &str = include_str!("../../../examples/hello/src/lib.rs");

/// The publisher key in `home`, or how to make one.
pub(crate) fn publisher_key(home: &Home) -> anyhow::Result<SecretKey> {
    home.publisher_key().with_context(|| {
        format!(
            "no publisher key in {}; run `alkahest lattice init` (or set ALKAHEST_HOME)",
            home.dir().display()
        )
    })
}

/// Builds the project (unless `no_build`) and seals it with the publisher key.
pub(crate) fn seal(home: &Home, project: &Project, no_build: bool) -> anyhow::Result<Vec<u8>> {
    if !no_build {
        project.build()?;
    }
    let wasm = project.read_component()?;
    let key = publisher_key(home)?;
    Ok(aether_essence::seal(&project.manifest, &wasm, &key))
}
