//! Compiling a component in a child process, so that the compiler's heap never stays in the
//! node's memory.
//!
//! Cranelift needs hundreds of MiB to compile a large component (an 18 MB Python one), and an
//! allocator rarely gives all of it back to the OS, so a node that compiled in-process stayed at
//! that size while idle. With a [`RuntimeConfig::compile_worker`] set, the node writes the
//! component to its cache directory, runs `PROGRAM __compile-worker ARGS` (the daemon's own
//! binary, which calls [`run_worker`]), and maps the compiled file the worker wrote. The worker
//! builds its engine from the same settings, so its code has the node engine's compatibility
//! hash; anything else is refused when the node maps the file, and the node then compiles
//! in-process as it did before.
//!
//! Exit codes of the worker: 0 compiled, [`EXIT_INVALID`] the component does not compile (the
//! reason on stderr; the node does not retry in-process), anything else a failure of the worker
//! itself (the node falls back to compiling in-process).

use std::ffi::OsString;
use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::engine::{RuntimeConfig, build_engine};

/// First argument that makes the daemon binary run [`run_worker`] instead of a node.
pub const WORKER_ARG: &str = "__compile-worker";

/// Exit code of a worker whose component does not compile.
pub const EXIT_INVALID: i32 = 2;

/// How to compile in a child process.
#[derive(Clone, Copy)]
pub(crate) struct Worker<'a> {
    /// The program that runs [`run_worker`].
    pub program: &'a Path,
    /// The node's settings, which the worker's engine is built from.
    pub config: &'a RuntimeConfig,
    /// Whether the component is compiled with fuel metering.
    pub metered: bool,
    /// Set when the worker cannot be started at all, so later compiles do not try again.
    pub unavailable: &'a std::sync::atomic::AtomicBool,
}

/// What a worker run ended with.
#[derive(Debug)]
pub(crate) enum WorkerOutcome {
    /// The compiled code is at the given path.
    Compiled,
    /// The component does not compile; the compiler's message.
    Invalid(String),
    /// The worker could not do its job (killed, wrong engine); compile in-process.
    Failed(String),
    /// The worker program cannot be run here at all (missing, not executable, an emulated
    /// binary the kernel cannot start again); compile in-process and stop trying.
    Unavailable(String),
}

/// The engine settings that decide the compiled code, as worker arguments.
fn settings_args(config: &RuntimeConfig, metered: bool) -> Vec<String> {
    vec![
        format!("max_instances={}", config.max_instances),
        format!("max_memory_per_instance={}", config.max_memory_per_instance),
        format!("memory_keep_resident={}", config.memory_keep_resident),
        format!("table_keep_resident={}", config.table_keep_resident),
        format!("async_stack_size={}", config.async_stack_size),
        format!("metered={}", u8::from(metered)),
    ]
}

/// Compiles `wasm` with `program` into `out`, via a copy of the bytes written beside it.
pub(crate) fn compile_in_worker(
    program: &Path,
    config: &RuntimeConfig,
    metered: bool,
    wasm: &[u8],
    out: &Path,
) -> WorkerOutcome {
    let input = out.with_extension("wasm-input");
    let written = fs::File::create(&input).and_then(|mut f| f.write_all(wasm));
    if let Err(e) = written {
        let _ = fs::remove_file(&input);
        return WorkerOutcome::Failed(format!("writing {}: {e}", input.display()));
    }
    let mut args: Vec<OsString> = vec![WORKER_ARG.into(), input.clone().into(), out.into()];
    args.extend(
        settings_args(config, metered)
            .into_iter()
            .map(OsString::from),
    );
    let result = Command::new(program)
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output();
    let _ = fs::remove_file(&input);
    let output = match result {
        Ok(output) => output,
        Err(e) => {
            return WorkerOutcome::Unavailable(format!("starting {}: {e}", program.display()));
        }
    };
    let stderr = String::from_utf8_lossy(&output.stderr).trim().to_string();
    match output.status.code() {
        Some(0) if out.exists() => WorkerOutcome::Compiled,
        Some(EXIT_INVALID) => WorkerOutcome::Invalid(stderr),
        // What a shell or exec wrapper answers for a program it cannot find or run.
        Some(code @ (126 | 127)) => {
            let _ = fs::remove_file(out);
            WorkerOutcome::Unavailable(format!("{} exited with {code} {stderr}", program.display()))
        }
        _ => {
            let _ = fs::remove_file(out);
            WorkerOutcome::Failed(format!(
                "the compile worker ended with {}: {stderr}",
                output.status
            ))
        }
    }
}

/// The worker's `main`: `__compile-worker INPUT.wasm OUTPUT.cwasm KEY=VALUE...` (the arguments
/// after [`WORKER_ARG`]). Returns the process exit code.
pub fn run_worker(args: impl IntoIterator<Item = OsString>) -> i32 {
    match worker(args.into_iter().collect()) {
        Ok(()) => 0,
        Err((code, message)) => {
            eprintln!("{message}");
            code
        }
    }
}

fn worker(args: Vec<OsString>) -> Result<(), (i32, String)> {
    let usage = || {
        (
            1,
            format!("usage: {WORKER_ARG} INPUT.wasm OUTPUT.cwasm KEY=VALUE..."),
        )
    };
    let [input, output, settings @ ..] = args.as_slice() else {
        return Err(usage());
    };
    let mut config = RuntimeConfig::default();
    let mut metered = false;
    for setting in settings {
        let text = setting.to_str().ok_or_else(usage)?;
        let (key, value) = text.split_once('=').ok_or_else(usage)?;
        let number = |v: &str| {
            v.parse::<u64>()
                .map_err(|_| (1, format!("{key}: `{v}` is not a number")))
        };
        match key {
            "max_instances" => config.max_instances = number(value)? as u32,
            "max_memory_per_instance" => config.max_memory_per_instance = number(value)?,
            "memory_keep_resident" => config.memory_keep_resident = number(value)? as usize,
            "table_keep_resident" => config.table_keep_resident = number(value)? as usize,
            "async_stack_size" => config.async_stack_size = number(value)? as usize,
            "metered" => metered = number(value)? == 1,
            _ => return Err((1, format!("unknown setting {key}"))),
        }
    }
    let engine = build_engine(&config, metered).map_err(|e| (1, format!("{e:#}")))?;
    let wasm =
        fs::read(input).map_err(|e| (1, format!("reading {}: {e}", Path::new(input).display())))?;
    let code = engine
        .precompile_component(&wasm)
        .map_err(|e| (EXIT_INVALID, format!("{e:#}")))?;
    drop(wasm);
    let out = PathBuf::from(output);
    fs::File::create(&out)
        .and_then(|mut f| {
            f.write_all(&code)?;
            f.sync_all()
        })
        .map_err(|e| (1, format!("writing {}: {e}", out.display())))
}
