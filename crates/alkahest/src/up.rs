//! `alkahest up`: build, start a local lattice (or one node) in this process, deploy once,
//! print the URLs, drain on Ctrl-C.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Instant;

use aether_identity::TrustedKeys;
use aether_identity::home::Home;
use aether_node::{Node, NodeConfig};
use anyhow::Context as _;

use crate::output::{print_urls, spinner};
use crate::project::{Project, publisher_key, seal};

/// What `up` needs first: the project, the lattice keys (created when
/// missing) and the sealed essence.
fn project_for_up(home: &Home, dir: &Path, no_build: bool) -> anyhow::Result<(Project, Vec<u8>)> {
    let project = Project::load(dir)?;
    if !home.is_initialised() {
        let outcome = home.init().context("creating the lattice keys")?;
        eprintln!(
            "Created lattice keys in {} (root {})",
            home.dir().display(),
            outcome.root
        );
    }
    let essence = seal(home, &project, no_build)?;
    Ok((project, essence))
}

pub(crate) async fn up(
    home: &Home,
    dir: &Path,
    listen: SocketAddr,
    admin_listen: Option<SocketAddr>,
    no_build: bool,
) -> anyhow::Result<()> {
    let (project, essence) = project_for_up(home, dir, no_build)?;

    let data_dir = home
        .dir()
        .join("up")
        .join(listen.to_string().replace([':', '[', ']'], "_"));
    let mut config = NodeConfig::new(data_dir);
    config.restore = false;
    config.cache_dir = Some(home.dir().join("compile-cache"));
    config.http_addr = listen;
    config.admin_keys = [home.root_key()?.public()].into_iter().collect();
    config.publishers = [publisher_key(home)?.public()]
        .into_iter()
        .collect::<TrustedKeys>();
    config.admin_addr =
        admin_listen.unwrap_or_else(|| admin_addr_on(std::net::Ipv4Addr::LOCALHOST.into()));

    let node = Node::start(config).await?;
    let bar = spinner(&format!("Activating {}", project.manifest.name));
    let started = Instant::now();
    let deployed = node.deployments().deploy(essence).await;
    bar.finish_and_clear();
    let (deployment, _) = match deployed {
        Ok(d) => d,
        Err(e) => {
            node.shutdown().await;
            return Err(e.into());
        }
    };
    let status = node.deployments().status(&deployment);
    let _ = std::fs::write(home.node_file(), node.admin_addr().to_string());
    println!(
        "Serving {} at http://{}/ (activated in {} ms, compiled code {})",
        status.name,
        node.http_addr(),
        started.elapsed().as_millis(),
        status.compile_cache
    );
    print_urls(&node.http_addr().to_string(), &status);
    println!(
        "Admin API on {}; `alkahest logs {}` shows its output. Press Ctrl-C to stop.",
        node.admin_addr(),
        status.name
    );

    // Echo the component's output to the terminal while it runs.
    let mut live = deployment.component.logs().follow();
    let name = status.name.clone();
    let echo = tokio::spawn(async move {
        while let Ok(line) = live.recv().await {
            eprintln!("[{name} {}] {}", line.stream.as_str(), line.text);
        }
    });

    aether_node::shutdown_signal().await;
    eprintln!("Stopping: draining in-flight requests");
    echo.abort();
    let admin = node.admin_addr().to_string();
    node.shutdown().await;
    if std::fs::read_to_string(home.node_file()).is_ok_and(|t| t.trim() == admin) {
        let _ = std::fs::remove_file(home.node_file());
    }
    eprintln!("Stopped");
    Ok(())
}

/// The HTTP port `up` serves on by default.
pub(crate) const DEFAULT_UP_PORT: u16 = 8080;

/// The admin address `up` uses on `ip`: port 7070 when free there, else any.
fn admin_addr_on(ip: std::net::IpAddr) -> SocketAddr {
    let preferred = SocketAddr::new(ip, aether_admin::DEFAULT_ADMIN_PORT);
    if std::net::TcpListener::bind(preferred).is_ok() {
        preferred
    } else {
        SocketAddr::new(ip, 0)
    }
}

/// `alkahest up --nodes N`: N in-process nodes on consecutive loopback
/// addresses, joined in one lattice; the component is deployed once, through
/// the first node, and every node serves it.
pub(crate) async fn up_lattice(
    home: &Home,
    dir: &Path,
    listen: SocketAddr,
    admin_listen: Option<SocketAddr>,
    no_build: bool,
    count: usize,
) -> anyhow::Result<()> {
    use aether_identity::{Invite, InviteConstraints, LatticeId};
    let std::net::IpAddr::V4(first_ip) = listen.ip() else {
        anyhow::bail!("--nodes needs an IPv4 --listen address (nodes take consecutive addresses)");
    };
    let (project, essence) = project_for_up(home, dir, no_build)?;
    let root = home.root_key()?;
    let publisher = publisher_key(home)?.public();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let invite = Invite::issue(
        &root,
        LatticeId::of_root(&root.public()),
        InviteConstraints::default(),
        now + 3600,
        false,
        now,
    )?;
    // Fresh data directories: a local lattice starts empty every time.
    let scratch = tempfile::Builder::new()
        .prefix("alkahest-up-")
        .tempdir()
        .context("creating the nodes' data directories")?;
    let bar = spinner(&format!("Starting {count} nodes"));
    let mut nodes: Vec<aether_node::NodeHandle> = Vec::new();
    let mut seed_mesh = None;
    for i in 0..count {
        let ip = std::net::Ipv4Addr::from(u32::from(first_ip).wrapping_add(i as u32));
        let mut config = NodeConfig::new(scratch.path().join(format!("node-{}", i + 1)));
        config.restore = false;
        config.cache_dir = Some(home.dir().join("compile-cache"));
        config.http_addr = SocketAddr::new(ip.into(), listen.port());
        config.admin_addr = match admin_listen {
            Some(addr) if i == 0 => addr,
            _ => admin_addr_on(ip.into()),
        };
        config.admin_keys = [root.public()].into_iter().collect();
        config.publishers = [publisher].into_iter().collect::<TrustedKeys>();
        // The default mesh port when free on this address, else any.
        let mut mesh_addr = SocketAddr::new(ip.into(), aether_mesh::DEFAULT_MESH_PORT);
        if std::net::UdpSocket::bind(mesh_addr).is_err() {
            mesh_addr.set_port(0);
        }
        let mut mesh = aether_mesh::MeshConfig::new(config.data_dir.clone(), mesh_addr);
        mesh.join = seed_mesh.into_iter().collect();
        config.mesh = Some(aether_node::MeshSetup {
            config: mesh,
            invite: (i > 0).then(|| invite.clone()),
            root_key: (i == 0).then(|| root.clone()),
            region: None,
            labels: Vec::new(),
        });
        match Node::start(config).await {
            Ok(node) => {
                if seed_mesh.is_none() {
                    seed_mesh = node.mesh().map(|m| m.local_addr());
                }
                nodes.push(node);
            }
            Err(e) => {
                bar.finish_and_clear();
                for node in nodes {
                    node.shutdown().await;
                }
                return Err(e.context(format!("starting node {} on {ip}", i + 1)));
            }
        }
    }
    bar.finish_and_clear();
    let bar = spinner(&format!(
        "Deploying {} to the lattice",
        project.manifest.name
    ));
    let started = Instant::now();
    let deployed = nodes[0].deploy(essence).await;
    let result = match deployed {
        Ok((d, _)) => {
            let name = d.component.name().to_string();
            let hash = d.essence_hash.clone();
            let deadline = Instant::now() + std::time::Duration::from_secs(60);
            loop {
                let ready = nodes.iter().all(|n| {
                    n.deployments()
                        .get(&name)
                        .is_some_and(|x| x.essence_hash == hash)
                });
                if ready || Instant::now() > deadline {
                    break Ok((d, ready));
                }
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
        Err(e) => Err(e),
    };
    bar.finish_and_clear();
    let (deployment, all_ready) = match result {
        Ok(r) => r,
        Err(e) => {
            for node in nodes {
                node.shutdown().await;
            }
            return Err(e.into());
        }
    };
    let status = nodes[0].deployments().status(&deployment);
    let _ = std::fs::write(home.node_file(), nodes[0].admin_addr().to_string());
    println!(
        "Serving {} at http://{}/ on a local lattice of {count} nodes (deployed once, on every node after {} ms):",
        status.name,
        nodes[0].http_addr(),
        started.elapsed().as_millis()
    );
    if !all_ready {
        eprintln!("warning: not every node had the component after 60 s; see their logs");
    }
    for (i, node) in nodes.iter().enumerate() {
        println!(
            "  node {}: http://{}/  (admin {})",
            i + 1,
            node.http_addr(),
            node.admin_addr()
        );
    }
    // Where placement put it: the nodes that host a replica.
    let deadline = Instant::now() + std::time::Duration::from_secs(5);
    let wanted =
        aether_node::desired_replicas(&deployment.component.manifest().intent.replicas, None)
            as usize;
    let hosts = loop {
        let hosts: Vec<usize> = nodes
            .iter()
            .enumerate()
            .filter(|(_, n)| {
                n.deployments()
                    .get(&status.name)
                    .is_some_and(|d| d.is_hosted())
            })
            .map(|(i, _)| i + 1)
            .collect();
        if hosts.len() == wanted.min(count) || Instant::now() > deadline {
            break hosts;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    let hosts: Vec<String> = hosts.iter().map(|i| format!("node {i}")).collect();
    println!(
        "Placed on {}; the other nodes forward to it over the mesh.",
        hosts.join(", ")
    );
    println!(
        "`alkahest status {}` shows where it runs and why; `alkahest nodes` lists the members. Press Ctrl-C to stop.",
        status.name
    );
    // Echo the component's output on every node to the terminal.
    let mut echoes = Vec::new();
    for (i, node) in nodes.iter().enumerate() {
        if let Some(d) = node.deployments().get(&status.name) {
            let mut live = d.component.logs().follow();
            let name = status.name.clone();
            echoes.push(tokio::spawn(async move {
                while let Ok(line) = live.recv().await {
                    eprintln!(
                        "[{name} node {} {}] {}",
                        i + 1,
                        line.stream.as_str(),
                        line.text
                    );
                }
            }));
        }
    }
    aether_node::shutdown_signal().await;
    for echo in echoes {
        echo.abort();
    }
    eprintln!("Stopping {count} nodes");
    let admin = nodes[0].admin_addr().to_string();
    for node in nodes.into_iter().rev() {
        node.shutdown().await;
    }
    if std::fs::read_to_string(home.node_file()).is_ok_and(|t| t.trim() == admin) {
        let _ = std::fs::remove_file(home.node_file());
    }
    eprintln!("Stopped");
    Ok(())
}
