//! `aether-d`: the node daemon. A thin shell over [`aether_node`].

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use aether_identity::home::Home;
use aether_identity::{PublicKey, TrustedKeys};
use aether_node::{Node, NodeConfig};
use anyhow::Context as _;
use clap::Parser;

/// Runs an Aether node: serves deployed WebAssembly components over HTTP and
/// accepts deployments on its admin API.
#[derive(Debug, Parser)]
#[command(name = "aether-d", version)]
struct Args {
    /// Directory for deployments and compiled code.
    #[arg(long, env = "AETHER_DATA_DIR", default_value = "aether-data")]
    data_dir: PathBuf,
    /// Address every listener binds to unless given one of its own.
    #[arg(long, default_value = "127.0.0.1")]
    bind: IpAddr,
    /// Port of the HTTP ingress on the bind address.
    #[arg(long, default_value_t = 8080)]
    http_port: u16,
    /// Port of the admin API on the bind address.
    #[arg(long, default_value_t = 7070)]
    admin_port: u16,
    /// Full address of the HTTP ingress (overrides --bind and --http-port).
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Full address of the admin API (overrides --bind and --admin-port).
    /// Keep it on loopback unless other machines must administer this node.
    #[arg(long)]
    admin_listen: Option<SocketAddr>,
    /// Key allowed to call the admin API (`ed25519:...` or a key file). Repeatable.
    /// Default: the lattice root key in ALKAHEST_HOME.
    #[arg(long = "admin-key")]
    admin_keys: Vec<String>,
    /// Publisher whose essences this node runs (`ed25519:...` or a key file).
    /// Repeatable. Default: the publisher key in ALKAHEST_HOME.
    #[arg(long = "trust-publisher")]
    publishers: Vec<String>,
    /// Compiled-code cache directory. Default: DATA_DIR/compile-cache.
    #[arg(long)]
    cache_dir: Option<PathBuf>,
    /// Ingress worker threads. Default: one per CPU.
    #[arg(long)]
    workers: Option<usize>,
    /// How long SIGTERM waits for in-flight requests before exiting.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    drain_timeout: Duration,
    /// Concurrent instances across all components (pool slots).
    #[arg(long, default_value_t = 1000)]
    max_instances: u32,
    /// Log format.
    #[arg(long, value_enum, default_value = "text")]
    log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn parse_key(text: &str) -> anyhow::Result<PublicKey> {
    if text.starts_with("ed25519:") {
        return text.parse().map_err(Into::into);
    }
    PublicKey::read(std::path::Path::new(text)).map_err(Into::into)
}

fn keys(
    given: &[String],
    fallback: impl FnOnce() -> Option<PublicKey>,
) -> anyhow::Result<TrustedKeys> {
    if given.is_empty() {
        return Ok(fallback().into_iter().collect());
    }
    given.iter().map(|k| parse_key(k)).collect()
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_env("AETHER_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match args.log_format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }

    let home = Home::locate();
    let admin_keys = keys(&args.admin_keys, || {
        home.root_key().ok().map(|k| k.public())
    })?;
    let publishers = keys(&args.publishers, || {
        home.publisher_key().ok().map(|k| k.public())
    })?;
    if admin_keys.is_empty() {
        anyhow::bail!(
            "no admin key: pass --admin-key ed25519:... or run `alkahest lattice init` \
             (looked in {})",
            home.dir().display()
        );
    }
    if publishers.is_empty() {
        anyhow::bail!(
            "no trusted publisher: pass --trust-publisher ed25519:... or run `alkahest lattice init` \
             (looked in {})",
            home.dir().display()
        );
    }

    let mut config = NodeConfig::new(args.data_dir.clone());
    config.http_addr = args
        .listen
        .unwrap_or(SocketAddr::new(args.bind, args.http_port));
    config.admin_addr = args
        .admin_listen
        .unwrap_or(SocketAddr::new(args.bind, args.admin_port));
    config.admin_keys = admin_keys;
    config.publishers = publishers;
    config.cache_dir = args.cache_dir.clone();
    if let Some(w) = args.workers {
        config.workers = w.max(1);
    }
    config.drain_timeout = args.drain_timeout;
    config.runtime.max_instances = args.max_instances;

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .context("starting the control runtime")?;
    rt.block_on(async move {
        let node = Node::start(config).await?;
        println!(
            "aether-d serving http://{} (admin API on {})",
            node.http_addr(),
            node.admin_addr()
        );
        aether_node::shutdown_signal().await;
        tracing::info!("shutting down: draining in-flight requests");
        node.shutdown().await;
        tracing::info!("stopped");
        anyhow::Ok(())
    })
}
