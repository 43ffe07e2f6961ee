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
    /// Threads of the control runtime: the mesh, the admin API and the
    /// requests other nodes forward here. Default: half the CPUs (at least
    /// one); on two cores one thread serves forwarded requests fastest.
    #[arg(long)]
    control_threads: Option<usize>,
    /// How long SIGTERM waits for in-flight requests before exiting.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    drain_timeout: Duration,
    /// Concurrent instances across all components (pool slots).
    #[arg(long, default_value_t = 1000)]
    max_instances: u32,
    /// Compile components inside the node process instead of a short-lived
    /// child (`aether-d __compile-worker`), which keeps the compiler's memory
    /// out of the idle node.
    #[arg(long)]
    compile_in_process: bool,
    /// Log format.
    #[arg(long, value_enum, default_value = "text")]
    log_format: LogFormat,
    /// Port of the mesh (QUIC over UDP) on the bind address; other nodes
    /// `--join` this address.
    #[arg(long, default_value_t = aether_mesh::DEFAULT_MESH_PORT)]
    mesh_port: u16,
    /// Full mesh address (overrides --bind and --mesh-port).
    #[arg(long)]
    mesh_listen: Option<SocketAddr>,
    /// Mesh address other members reach this node on, when it differs from
    /// the bound one (NAT, 0.0.0.0).
    #[arg(long)]
    advertise: Option<SocketAddr>,
    /// Join the lattice through a member's mesh address (HOST:PORT; the port
    /// defaults to 7946; with another port, HOST:7946 is tried as well).
    /// Repeatable.
    #[arg(long, value_name = "ADDR")]
    join: Vec<String>,
    /// Invite from `alkahest invite`, used on the first start to admit this
    /// node (later starts use the stored certificate).
    #[arg(long, env = "AETHER_INVITE", conflicts_with = "invite_file")]
    invite: Option<String>,
    /// File holding the invite (keeps it out of the process list).
    #[arg(long)]
    invite_file: Option<PathBuf>,
    /// Region this node is in (must match the invite's, when it sets one).
    #[arg(long)]
    region: Option<String>,
    /// Label `key=value` for this node. Repeatable. Every node also carries
    /// the built-in labels arch, os, cores and memory (e.g. arch=aarch64),
    /// which intents can select and `--label` cannot set.
    #[arg(long = "label", value_name = "KEY=VALUE")]
    labels: Vec<String>,
    /// Memory this node advertises to placement (e.g. 256MiB), when less than
    /// the machine (or its cgroup) has: a small device offers only part of
    /// itself. Default: all of it.
    #[arg(long, value_name = "SIZE")]
    max_memory: Option<aether_manifest::ByteSize>,
    /// Cores this node advertises, when fewer than it may use. Default: all.
    #[arg(long, value_name = "N")]
    max_cores: Option<u32>,
    /// Serve alone: no mesh, even when the node could be admitted.
    #[arg(long, conflicts_with_all = ["join", "invite", "invite_file"])]
    no_mesh: bool,
    /// The kernel data plane: `auto` loads the eBPF admission filter on the mesh's interfaces
    /// where the kernel allows it (else says why and admits in userspace), `on` makes a load
    /// failure fatal, `off` admits in userspace, `audit` counts what the filter would drop and
    /// drops nothing.
    #[arg(long, value_name = "MODE", default_value = "auto", value_parser = parse_ebpf)]
    ebpf: aether_ebpf::Mode,
    /// Range virtual addresses of components come from (`[http] virtual_address = true`).
    #[arg(long, value_name = "CIDR", default_value = "127.77.0.0/16", value_parser = parse_vip_range)]
    vip_range: aether_ebpf::VipRange,
    /// The cgroup (v2 directory) whose processes reach components by virtual address. Default:
    /// the node's own cgroup.
    #[arg(long, value_name = "DIR")]
    vip_cgroup: Option<PathBuf>,
    /// Do not relay for other members (pass on the datagrams of two members whose NATs keep
    /// them from reaching each other). This node can still be reached through a relay.
    #[arg(long)]
    no_relay: bool,
}

fn parse_vip_range(text: &str) -> Result<aether_ebpf::VipRange, String> {
    text.parse()
}

fn parse_ebpf(text: &str) -> Result<aether_ebpf::Mode, String> {
    text.parse()
}

/// Parses `HOST:PORT` or `HOST` (mesh port 7946).
fn parse_join(text: &str) -> anyhow::Result<SocketAddr> {
    use std::net::ToSocketAddrs as _;
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(addr);
    }
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, aether_mesh::DEFAULT_MESH_PORT));
    }
    let with_port = if text.contains(':') {
        text.to_string()
    } else {
        format!("{text}:{}", aether_mesh::DEFAULT_MESH_PORT)
    };
    with_port
        .to_socket_addrs()
        .with_context(|| format!("--join {text}: not an address"))?
        .next()
        .with_context(|| format!("--join {text}: the name resolves to no address"))
}

/// The machine's capacity, lowered to `--max-memory` and `--max-cores`.
fn advertised_capacity(
    machine: aether_membership::Capacity,
    args: &Args,
) -> anyhow::Result<aether_membership::Capacity> {
    let mut capacity = machine.clone();
    if let Some(max) = args.max_memory {
        if max.0 == 0 {
            anyhow::bail!("--max-memory must be more than 0");
        }
        if machine.memory_bytes > 0 && max.0 > machine.memory_bytes {
            anyhow::bail!(
                "--max-memory {max} is more than this machine offers ({} MiB); a node may \
                 advertise less than it has, never more",
                machine.memory_bytes >> 20
            );
        }
        capacity.memory_bytes = max.0;
    }
    if let Some(max) = args.max_cores {
        if max == 0 || max > machine.cores {
            anyhow::bail!(
                "--max-cores {max}: must be between 1 and this machine's {} cores",
                machine.cores
            );
        }
        capacity.cores = max;
    }
    Ok(capacity)
}

fn read_invite(args: &Args) -> anyhow::Result<Option<aether_identity::InviteToken>> {
    let text = match (&args.invite, &args.invite_file) {
        (Some(text), _) => text.clone(),
        (None, Some(path)) => std::fs::read_to_string(path)
            .with_context(|| format!("reading the invite file {}", path.display()))?,
        (None, None) => return Ok(None),
    };
    aether_identity::InviteToken::from_text(&text)
        .map(Some)
        .context("--invite: not a valid invite (copy the whole `aether-invite-v1:...` line that `alkahest invite` printed)")
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
    // The node runs its compiles in a child process of this same binary (see
    // aether_runtime::compile); that child takes this branch and never starts a node.
    let mut argv = std::env::args_os();
    if argv
        .nth(1)
        .is_some_and(|a| a == aether_runtime::compile::WORKER_ARG)
    {
        std::process::exit(aether_runtime::compile::run_worker(argv));
    }
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
    let invite = read_invite(&args)?;
    // The lattice root this node trusts: from ALKAHEST_HOME, else from the
    // invite, else from an earlier admission stored in the data directory.
    let stored_root = std::fs::read_to_string(args.data_dir.join("lattice.pub"))
        .ok()
        .and_then(|t| t.trim().parse::<PublicKey>().ok());
    let lattice_root = home
        .root_public()
        .ok()
        .or_else(|| invite.as_ref().map(|t| *t.root()))
        .or(stored_root);
    let admin_keys = keys(&args.admin_keys, || lattice_root)?;
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
        if lattice_root.is_none() {
            anyhow::bail!(
                "no trusted publisher: pass --trust-publisher ed25519:... or run `alkahest lattice init` \
                 (looked in {})",
                home.dir().display()
            );
        }
        tracing::warn!(
            "no trusted publisher (pass --trust-publisher ed25519:...): deployments to this node \
             will be refused"
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
    config.ebpf = args.ebpf;
    config.vip_range = args.vip_range;
    config.vip_cgroup = args.vip_cgroup.clone();
    config.runtime.max_instances = args.max_instances;
    if !args.compile_in_process {
        config.runtime.compile_worker = std::env::current_exe().ok();
    }
    if !args.no_mesh {
        let listen = args
            .mesh_listen
            .unwrap_or(SocketAddr::new(args.bind, args.mesh_port));
        let mut mesh = aether_mesh::MeshConfig::new(args.data_dir.clone(), listen);
        mesh.advertise = args.advertise;
        mesh.transport.relay = !args.no_relay;
        mesh.capacity = advertised_capacity(mesh.capacity, &args)?;
        for text in &args.join {
            let addr = parse_join(text)?;
            mesh.join.push(addr);
            // Given another port of a node (its admin or HTTP port, say), also try
            // the default mesh port on that host: only members of this lattice
            // pass the handshake, so a wrong guess costs nothing.
            if addr.port() != aether_mesh::DEFAULT_MESH_PORT {
                mesh.join
                    .push(SocketAddr::new(addr.ip(), aether_mesh::DEFAULT_MESH_PORT));
            }
        }
        mesh.join.dedup();
        config.mesh = Some(aether_node::MeshSetup {
            config: mesh,
            invite,
            root_key: home.root_key().ok(),
            region: args.region.clone(),
            labels: args.labels.clone(),
        });
    }

    let control_threads = args
        .control_threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get() / 2))
        .max(1);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(control_threads)
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
