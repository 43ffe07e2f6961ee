//! `alkahest`: build, seal, deploy and watch Aether components.

mod commands;
mod node_addr;
mod output;
mod project;
mod rollouts;
mod top;
mod up;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Build, seal, deploy and watch WebAssembly components on an Aether lattice.
#[derive(Debug, Parser)]
#[command(name = "alkahest", version, propagate_version = true)]
struct Cli {
    /// Admin address of the node to talk to (`IP`, `IP:PORT` or `HOST:PORT`).
    /// Default: the node `alkahest up` started, else 127.0.0.1:7070.
    #[arg(long, global = true, env = "ALKAHEST_NODE")]
    node: Option<String>,
    #[command(subcommand)]
    command: Command,
}

/// How a rollout moves traffic, overriding the Aetherfile's `[rollout]` section.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct StrategyArgs {
    /// `all-at-once` or `canary`.
    #[arg(long, value_parser = ["all-at-once", "canary"])]
    pub strategy: Option<String>,
    /// Hold the rollout before this step (e.g. `switch`: staged and compiled everywhere, the
    /// old version still serving) until `alkahest rollout resume ID`.
    #[arg(long)]
    pub pause_before: Option<String>,
    /// Canary shares of requests in percent, e.g. `5,25,100`.
    #[arg(long)]
    pub steps: Option<String>,
    /// How long each canary share is held, e.g. `30s`.
    #[arg(long)]
    pub interval: Option<String>,
}

impl StrategyArgs {
    /// The query string the admin API takes (empty when nothing is overridden).
    pub fn query(&self) -> String {
        let mut q = form_urlencoded::Serializer::new(String::new());
        for (key, value) in [
            ("strategy", &self.strategy),
            ("steps", &self.steps),
            ("interval", &self.interval),
            ("pause_before", &self.pause_before),
        ] {
            if let Some(v) = value {
                q.append_pair(key, v);
            }
        }
        q.finish()
    }
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create a new Rust wasi:http component from the template.
    New {
        /// Component name (lowercase letters, digits, '-').
        name: String,
        /// Directory to create. Default: ./NAME.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Run the Aetherfile's build command and check its output is a component.
    Build {
        /// Project directory (holding the Aetherfile). Default: current directory.
        #[arg(default_value = ".")]
        dir: PathBuf,
    },
    /// Build, start a local lattice (or one node) in the foreground, deploy,
    /// print the URLs. Ctrl-C stops cleanly.
    Up {
        /// Project directory (holding the Aetherfile). Default: current directory.
        #[arg(default_value = ".")]
        dir: PathBuf,
        /// Address the HTTP ingress listens on (the first node's, with
        /// --nodes). Default: 127.0.0.1:8080.
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// Address of the admin API. Default: 127.0.0.1:7070, or any free
        /// port when that one is taken.
        #[arg(long)]
        admin_listen: Option<SocketAddr>,
        /// Skip the build command; use the component as it is.
        #[arg(long)]
        no_build: bool,
        /// Start a local lattice of this many nodes (127.0.0.1, .2, … with
        /// the --listen port each), deploy once, and serve from every node.
        /// Default: 3, or 1 when --listen or --admin-listen is given.
        #[arg(long, value_parser = clap::value_parser!(u8).range(1..=32))]
        nodes: Option<u8>,
    },
    /// Seal the component and its manifest into a signed essence file.
    Seal {
        /// Project directory (holding the Aetherfile). Default: current directory.
        #[arg(default_value = ".")]
        dir: PathBuf,
        /// Output file. Default: DIR/NAME.essence.
        #[arg(short, long)]
        output: Option<PathBuf>,
        /// Skip the build command.
        #[arg(long)]
        no_build: bool,
    },
    /// Deploy a project directory (built and sealed on the way) or an essence file.
    Deploy {
        /// Project directory or `.essence` file. Default: current directory.
        #[arg(default_value = ".")]
        target: PathBuf,
        /// Skip the build command.
        #[arg(long)]
        no_build: bool,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
        /// Print the rollout's id and return instead of following it to its end.
        #[arg(long)]
        detach: bool,
        #[command(flatten)]
        strategy: StrategyArgs,
    },
    /// Show what a node runs.
    Status {
        /// Only this component.
        name: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print a component's captured stdout and stderr.
    Logs {
        /// Component name.
        name: String,
        /// Keep printing new lines as they come.
        #[arg(short, long)]
        follow: bool,
        /// Number of past lines to print first.
        #[arg(long, default_value_t = 100)]
        tail: usize,
        /// Print one JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// Stop serving a component and forget it.
    Remove {
        /// Component name.
        name: String,
    },
    /// Print an invite that admits one new machine (or several) to the lattice.
    /// Signed with the lattice root key; the new node passes it to
    /// `aether-d --invite TOKEN`.
    Invite {
        /// How long the invite stays valid (`30m`, `1h`, `7d`).
        #[arg(long, default_value = "1h")]
        expires: String,
        /// Admit at most one node with it.
        #[arg(long)]
        single_use: bool,
        /// Region the new node must declare.
        #[arg(long)]
        region: Option<String>,
        /// Label applied to the new node (`key=value`). Repeatable.
        #[arg(long = "label")]
        labels: Vec<String>,
        /// Print the invite and its details as JSON.
        #[arg(long)]
        json: bool,
    },
    /// List the lattice's members as the node sees them: id, state, region,
    /// estimated round-trip time, incarnation, load.
    Nodes {
        /// Print a JSON array.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a node (signed with the lattice root key): every member closes
    /// its connections and refuses it from then on.
    Revoke {
        /// Node id (`ed25519:...`) or a unique prefix of it, as `alkahest nodes` prints.
        #[arg(value_name = "NODE")]
        target: String,
        /// Why, recorded with the revocation.
        #[arg(long, default_value = "revoked by the operator")]
        reason: String,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Read and write the lattice state (replicated key-value store). Writes
    /// are durable on the node asked and reach every node eventually.
    Kv {
        #[command(subcommand)]
        command: KvCommand,
    },
    /// Rollouts: list them, read one, follow one, pause, resume or cancel one.
    Rollout {
        #[command(subcommand)]
        command: RolloutCommand,
    },
    /// Move every replica off a node (placement stops using it), as a workflow; then it is
    /// marked drained until `undrain`.
    Drain {
        /// The node's id or a unique prefix of it (`alkahest nodes`).
        node: String,
        /// Print the workflow's id and return instead of following it.
        #[arg(long)]
        detach: bool,
        #[arg(long)]
        json: bool,
    },
    /// Let placement use a drained node again (cancels a drain still running).
    Undrain {
        node: String,
        #[arg(long)]
        json: bool,
    },
    /// The versions a component has had, oldest first; `*` marks the current one.
    History {
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// Roll a component back to an earlier version (default: the one before the current one),
    /// as a rollout.
    Rollback {
        name: String,
        /// The version to go back to (`alkahest history NAME` lists them).
        #[arg(long)]
        to: Option<u32>,
        /// Print the rollout's id and return instead of following it.
        #[arg(long)]
        detach: bool,
        #[arg(long)]
        json: bool,
        /// A rollback goes all at once unless these ask for a canary.
        #[command(flatten)]
        strategy: StrategyArgs,
    },
    /// A live view of the lattice in the terminal: members and components with their rates.
    /// `q` quits.
    Top {
        /// How often to refresh (e.g. 500ms, 2s).
        #[arg(long, default_value = "1s", value_parser = top::parse_interval)]
        interval: std::time::Duration,
    },
    /// The lattice-wide settings every node follows: print them, or change one with `set`.
    Settings {
        #[command(subcommand)]
        command: Option<SettingsCommand>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Manage the lattice's keys.
    Lattice {
        #[command(subcommand)]
        command: LatticeCommand,
    },
}

#[derive(Debug, Subcommand)]
enum KvCommand {
    /// Print a value (raw bytes), or the entry as JSON.
    Get {
        /// Bucket.
        bucket: String,
        /// Key.
        key: String,
        /// Print the entry (value, timestamp, origin, version) as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Write a value: the VALUE argument, or stdin with `-`.
    Put {
        /// Bucket.
        bucket: String,
        /// Key.
        key: String,
        /// The value; `-` reads it from stdin.
        value: String,
        /// Print the stored entry as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Delete an entry (writes a tombstone).
    Del {
        /// Bucket.
        bucket: String,
        /// Key.
        key: String,
    },
    /// List the live entries of a bucket.
    List {
        /// Bucket.
        bucket: String,
        /// Only keys starting with this.
        #[arg(long, default_value = "")]
        prefix: String,
        /// At most this many.
        #[arg(long, default_value_t = 1000)]
        limit: usize,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Every stored update of one entry, oldest first.
    History {
        /// Bucket.
        bucket: String,
        /// Key.
        key: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// The node's replica: entries, digest (equal on converged nodes), counters.
    Status {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// `alkahest rollout …`.
#[derive(Debug, Subcommand)]
enum RolloutCommand {
    /// Every rollout this node knows of, oldest first.
    List {
        #[arg(long)]
        json: bool,
    },
    /// One rollout: state, steps, takeovers, each node's progress.
    Status {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Follow a running rollout to its end (from any node).
    Watch {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Start no new step until resumed (with --before: go on until that step, hold there).
    Pause {
        id: String,
        /// The step to hold before, e.g. `switch`.
        #[arg(long)]
        before: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Go on after a pause.
    Resume {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Undo what the rollout did and end it as cancelled.
    Cancel {
        id: String,
        #[arg(long)]
        json: bool,
    },
}

/// `alkahest settings …`.
#[derive(Debug, Subcommand)]
enum SettingsCommand {
    /// Change one setting on every node: `virtual-addresses on|off` (every component gets a
    /// virtual address, as if its Aetherfile said `[http] virtual_address = true`).
    Set {
        /// The setting's name.
        name: String,
        /// Its new value.
        value: String,
    },
}

#[derive(Debug, Subcommand)]
enum LatticeCommand {
    /// Create the lattice root key and the publisher key (0600 files in
    /// ALKAHEST_HOME). Does nothing if they exist.
    Init {
        /// Print the public keys as JSON.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    // Like other Unix tools, stop quietly when the reader of stdout goes away
    // (`alkahest logs x | head`) instead of panicking on the failed write.
    // SAFETY: called first thing in main, before any thread exists; restoring
    // the default disposition of SIGPIPE has no other effect on the process.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(commands::run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            output::print_error(&e);
            ExitCode::FAILURE
        }
    }
}
