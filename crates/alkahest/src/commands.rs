//! One function per subcommand.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Instant;

use aether_admin::client::AdminClient;
use aether_admin::types::{
    ComponentStatus, DeployResponse, KvEntryJson, KvSummaryJson, LogLineJson, MemberJson,
    NodeStatus, RevokeResponse,
};
use aether_identity::home::Home;
use anyhow::Context as _;
use bytes::Bytes;
use http::Method;
use http_body_util::BodyExt as _;

use crate::output::{self, spinner};
use crate::project::{Project, TEMPLATE_LIB, seal};
use crate::{Cli, Command, KvCommand, LatticeCommand, SettingsCommand, node_addr};

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let home = Home::locate();
    let node = cli.node.clone();
    match cli.command {
        Command::New { name, dir } => new(&name, dir),
        Command::Build { dir } => {
            let project = Project::load(&dir)?;
            project.build()?;
            let bytes = project.read_component()?;
            println!(
                "{} ({} bytes)",
                project.component_path().display(),
                bytes.len()
            );
            Ok(())
        }
        Command::Up {
            dir,
            listen,
            admin_listen,
            no_build,
            nodes,
        } => {
            // A local lattice of 3 by default; a node of its own where the
            // caller chose the addresses.
            let explicit = listen.is_some() || admin_listen.is_some();
            let listen = listen.unwrap_or_else(|| {
                SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, crate::up::DEFAULT_UP_PORT))
            });
            let nodes = nodes.unwrap_or(if explicit { 1 } else { 3 });
            if nodes > 1 {
                crate::up::up_lattice(
                    &home,
                    &dir,
                    listen,
                    admin_listen,
                    no_build,
                    usize::from(nodes),
                )
                .await
            } else {
                crate::up::up(&home, &dir, listen, admin_listen, no_build).await
            }
        }
        Command::Seal {
            dir,
            output,
            no_build,
        } => {
            let project = Project::load(&dir)?;
            let essence = seal(&home, &project, no_build)?;
            let out = output.unwrap_or_else(|| {
                project
                    .dir
                    .join(format!("{}.essence", project.manifest.name))
            });
            std::fs::write(&out, &essence).with_context(|| format!("writing {}", out.display()))?;
            println!("Sealed {} into {}", project.manifest.name, out.display());
            Ok(())
        }
        Command::Deploy {
            target,
            no_build,
            json,
            detach,
            strategy,
        } => {
            let opts = DeployOptions {
                no_build,
                json,
                detach,
                strategy,
            };
            deploy(&home, node.as_deref(), &target, &opts).await
        }
        Command::Rollout { command } => {
            crate::rollouts::rollout(&client(&home, node.as_deref())?, command).await
        }
        Command::Drain {
            node: target,
            detach,
            json,
        } => {
            let client = client(&home, node.as_deref())?;
            let id = resolve_member(&client, &target).await?;
            crate::rollouts::drain(&client, &id.to_string(), detach, json).await
        }
        Command::Undrain { node: target, json } => {
            let client = client(&home, node.as_deref())?;
            let id = resolve_member(&client, &target).await?;
            crate::rollouts::undrain(&client, &id.to_string(), json).await
        }
        Command::History { name, json } => {
            crate::rollouts::history(&client(&home, node.as_deref())?, &name, json).await
        }
        Command::Rollback {
            name,
            to,
            detach,
            json,
            strategy,
        } => {
            let client = client(&home, node.as_deref())?;
            crate::rollouts::rollback(&client, &name, to, &strategy, detach, json).await
        }
        Command::Status { name, json } => status(&home, node.as_deref(), name, json).await,
        Command::Logs {
            name,
            follow,
            tail,
            json,
        } => logs(&home, node.as_deref(), &name, follow, tail, json).await,
        Command::Remove { name } => {
            let client = client(&home, node.as_deref())?;
            let _: serde_json::Value = client
                .json(
                    Method::DELETE,
                    &format!("/v1/components/{name}"),
                    Bytes::new(),
                )
                .await?;
            println!("Removed {name}");
            Ok(())
        }
        Command::Invite {
            expires,
            single_use,
            region,
            labels,
            json,
        } => invite(&home, &expires, single_use, region, &labels, json),
        Command::Nodes { json } => nodes(&home, node.as_deref(), json).await,
        Command::Revoke {
            target: id,
            reason,
            json,
        } => revoke(&home, node.as_deref(), &id, &reason, json).await,
        Command::Kv { command } => kv(&home, node.as_deref(), command).await,
        Command::Top { interval } => {
            let client = client(&home, node.as_deref())?;
            let key = home.root_key()?;
            crate::top::run(client, key, interval).await
        }
        Command::Settings { command, json } => {
            settings(&home, node.as_deref(), command, json).await
        }
        Command::Lattice {
            command: LatticeCommand::Init { json },
        } => {
            let outcome = home.init().context("creating the lattice keys")?;
            if json {
                println!(
                    "{}",
                    serde_json::json!({
                        "home": home.dir(),
                        "created": outcome.created,
                        "root": outcome.root.to_string(),
                        "publisher": outcome.publisher.to_string(),
                    })
                );
            } else {
                let verb = if outcome.created {
                    "Created"
                } else {
                    "Found existing"
                };
                println!("{verb} lattice keys in {}", home.dir().display());
                println!("  root (admin) key: {}", outcome.root);
                println!("  publisher key:    {}", outcome.publisher);
            }
            Ok(())
        }
    }
}

fn invite(
    home: &Home,
    expires: &str,
    single_use: bool,
    region: Option<String>,
    labels: &[String],
    json: bool,
) -> anyhow::Result<()> {
    use aether_identity::{Invite, InviteConstraints, Labels, Region, parse_duration_secs};
    let root = home.root_key().with_context(|| {
        format!(
            "no lattice root key in {}; run `alkahest lattice init` (or set ALKAHEST_HOME)",
            home.dir().display()
        )
    })?;
    let lifetime = parse_duration_secs(expires)
        .with_context(|| format!("`--expires {expires}`: use a duration such as 30m, 1h or 7d"))?;
    let mut constraints = InviteConstraints::default();
    if let Some(r) = region {
        constraints.region = Some(Region::new(&r).with_context(|| format!("`--region {r}`"))?);
    }
    let mut set = Labels::new();
    for pair in labels {
        set.insert_pair(pair)
            .with_context(|| format!("`--label {pair}`: expected key=value"))?;
    }
    constraints.labels = set;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let lattice = aether_identity::LatticeId::of_root(&root.public());
    let token = Invite::issue(&root, lattice, constraints, now + lifetime, single_use, now)?;
    let text = token.to_text();
    if json {
        println!(
            "{}",
            serde_json::json!({
                "invite": text,
                "id": token.id().to_string(),
                "lattice": lattice.to_string(),
                "expires_at": now + lifetime,
                "single_use": single_use,
            })
        );
    } else {
        println!("{text}");
        eprintln!(
            "Invite {} for lattice {} expires in {expires}{}.",
            token.id(),
            lattice,
            if single_use { ", single use" } else { "" }
        );
    }
    Ok(())
}

fn client(home: &Home, node: Option<&str>) -> anyhow::Result<AdminClient> {
    let addr = node_addr::resolve(node, home)?;
    let key = home.root_key().with_context(|| {
        format!(
            "no operator key in {}; run `alkahest lattice init` (or set ALKAHEST_HOME)",
            home.dir().display()
        )
    })?;
    Ok(AdminClient::new(addr, key))
}

fn new(name: &str, dir: Option<PathBuf>) -> anyhow::Result<()> {
    let probe = format!("name = \"{name}\"\ncomponent = \"x.wasm\"\n");
    if let Err(e) = aether_manifest::parse(&probe, "NAME") {
        anyhow::bail!(
            "`{name}` cannot be a component name: {}",
            e.to_string().lines().next().unwrap_or("")
        );
    }
    let dir = dir.unwrap_or_else(|| PathBuf::from(name));
    if dir.exists() {
        anyhow::bail!(
            "{} already exists; choose another name or --dir",
            dir.display()
        );
    }
    let crate_name = name.replace('-', "_");
    std::fs::create_dir_all(dir.join("src"))?;
    std::fs::write(
        dir.join("Cargo.toml"),
        format!(
            "[package]\nname = \"{name}\"\nversion = \"0.1.0\"\nedition = \"2024\"\npublish = false\n\n\
             [lib]\ncrate-type = [\"cdylib\"]\n\n[dependencies]\nwasi = \"0.14.7\"\n\n\
             [profile.release]\nopt-level = \"s\"\nlto = true\nstrip = true\n"
        ),
    )?;
    std::fs::write(
        dir.join("src/lib.rs"),
        TEMPLATE_LIB.replace(
            "The Aether example component",
            &format!("The `{name}` component"),
        ),
    )?;
    std::fs::write(
        dir.join("Aetherfile"),
        format!(
            "name = \"{name}\"\n\n[component]\npath = \"target/wasm32-wasip2/release/{crate_name}.wasm\"\n\
             build = \"cargo build --target wasm32-wasip2 --release\"\n\n[http]\nroutes = [\"/\"]\n"
        ),
    )?;
    std::fs::write(dir.join(".gitignore"), "/target/\n*.essence\n")?;
    println!("Created {} in {}", name, dir.display());
    println!("Next: cd {} && alkahest up", dir.display());
    Ok(())
}

/// What `alkahest deploy` was asked besides the target.
struct DeployOptions {
    no_build: bool,
    json: bool,
    detach: bool,
    strategy: crate::StrategyArgs,
}

async fn deploy(
    home: &Home,
    node: Option<&str>,
    target: &Path,
    opts: &DeployOptions,
) -> anyhow::Result<()> {
    let &DeployOptions {
        no_build,
        json,
        detach,
        ..
    } = opts;
    let essence = if target.is_file()
        && std::fs::read(target)
            .map(|b| b.starts_with(aether_essence::MAGIC))
            .unwrap_or(false)
    {
        std::fs::read(target)?
    } else {
        let project = Project::load(target)?;
        seal(home, &project, no_build)?
    };
    let client = client(home, node)?;
    let started = Instant::now();
    // In a lattice a deploy is a rollout; a node on its own deploys at once.
    let query = opts.strategy.query();
    if let Some(rollout) = crate::rollouts::start(&client, essence.clone(), &query).await? {
        return crate::rollouts::after_start(&client, &rollout, detach, json, started).await;
    }
    if detach || !query.is_empty() {
        anyhow::bail!(
            "--detach and --strategy need a node in a lattice: {} deploys at once",
            client.addr()
        );
    }
    let bar = spinner("Deploying");
    let result: Result<DeployResponse, _> = client
        .json(Method::POST, "/v1/deploy", Bytes::from(essence))
        .await;
    bar.finish_and_clear();
    let resp = result?;
    if json {
        println!("{}", serde_json::to_string_pretty(&resp)?);
        return Ok(());
    }
    let status: NodeStatus = client.json(Method::GET, "/v1/status", Bytes::new()).await?;
    let c = &resp.component;
    println!(
        "Deployed {} ({}) to {} in {} ms{}",
        c.name,
        &c.content_hash[..12],
        client.addr(),
        started.elapsed().as_millis(),
        if resp.replaced {
            ", replacing the previous version"
        } else {
            ""
        }
    );
    output::print_urls(&status.http_addr, c);
    Ok(())
}

async fn status(
    home: &Home,
    node: Option<&str>,
    name: Option<String>,
    json: bool,
) -> anyhow::Result<()> {
    let client = client(home, node)?;
    match name {
        Some(name) => {
            let c: ComponentStatus = client
                .json(Method::GET, &format!("/v1/components/{name}"), Bytes::new())
                .await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&c)?);
            } else {
                output::print_components(std::slice::from_ref(&c));
                println!();
                println!("publisher:  {}", c.publisher);
                println!("hash:       {}", c.content_hash);
                println!(
                    "activation: {:.1} ms (compiled code: {})",
                    c.activation_ms, c.compile_cache
                );
                if let Some(vip) = &c.virtual_address {
                    println!("address:    {vip} (virtual, from processes in a node's cgroup)");
                }
                if let Some(why) = &c.virtual_address_unavailable {
                    println!("address:    none on this node: {why}");
                }
                if let Some(p) = &c.placement {
                    output::print_placement(p);
                }
            }
        }
        None => {
            let s: NodeStatus = client.json(Method::GET, "/v1/status", Bytes::new()).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&s)?);
            } else {
                println!(
                    "node {} (aether-d {}), HTTP on {}, up {} s",
                    s.admin_addr, s.version, s.http_addr, s.uptime_secs
                );
                output::print_components(&s.components);
            }
        }
    }
    Ok(())
}

async fn logs(
    home: &Home,
    node: Option<&str>,
    name: &str,
    follow: bool,
    tail: usize,
    json: bool,
) -> anyhow::Result<()> {
    let client = client(home, node)?;
    let path = format!("/v1/logs/{name}?tail={tail}&follow={follow}");
    let resp = client.send(Method::GET, &path, Bytes::new()).await?;
    let mut body = resp.into_body();
    let mut pending = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.context("log stream interrupted")?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        pending.extend_from_slice(&data);
        while let Some(pos) = pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = pending.drain(..=pos).collect();
            if json {
                print!("{}", String::from_utf8_lossy(&line));
                continue;
            }
            match serde_json::from_slice::<LogLineJson>(&line) {
                Ok(l) => println!("{} {:<6} {}", format_time(l.time_ms), l.stream, l.text),
                Err(_) => print!("{}", String::from_utf8_lossy(&line)),
            }
        }
    }
    Ok(())
}

fn format_time(ms: u64) -> String {
    let secs = ms / 1000;
    let (h, m, s) = ((secs / 3600) % 24, (secs / 60) % 60, secs % 60);
    format!("{h:02}:{m:02}:{s:02}.{:03}Z", ms % 1000)
}

async fn nodes(home: &Home, node: Option<&str>, json: bool) -> anyhow::Result<()> {
    let client = client(home, node)?;
    let members: Vec<MemberJson> = client.json(Method::GET, "/v1/nodes", Bytes::new()).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&members)?);
    } else {
        output::print_members(&members);
    }
    Ok(())
}

/// A member's key from its full id or a unique prefix of it.
pub(crate) async fn resolve_member(
    client: &AdminClient,
    id: &str,
) -> anyhow::Result<aether_identity::PublicKey> {
    if id.starts_with("ed25519:") && id.len() > 50 {
        return id
            .parse()
            .with_context(|| format!("`{id}` is not a node id"));
    }
    let members: Vec<MemberJson> = client.json(Method::GET, "/v1/nodes", Bytes::new()).await?;
    let matches: Vec<&MemberJson> = members
        .iter()
        .filter(|m| m.id.starts_with(id) || m.id.trim_start_matches("ed25519:").starts_with(id))
        .collect();
    match matches.as_slice() {
        [one] => Ok(one.id.parse()?),
        [] => anyhow::bail!("no member's id starts with `{id}` (see `alkahest nodes`)"),
        many => anyhow::bail!("`{id}` matches {} members; give more of the id", many.len()),
    }
}

async fn settings(
    home: &Home,
    node: Option<&str>,
    command: Option<SettingsCommand>,
    json: bool,
) -> anyhow::Result<()> {
    let client = client(home, node)?;
    let settings: aether_admin::types::LatticeSettings = match command {
        None => {
            client
                .json(Method::GET, "/v1/settings", Bytes::new())
                .await?
        }
        Some(SettingsCommand::Set { name, value }) => {
            client
                .json(
                    Method::PUT,
                    &format!("/v1/settings/{name}"),
                    Bytes::from(value),
                )
                .await?
        }
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&settings)?);
    } else {
        let on = |b: bool| if b { "on" } else { "off" };
        println!("virtual-addresses  {}", on(settings.virtual_addresses));
    }
    Ok(())
}

async fn revoke(
    home: &Home,
    node: Option<&str>,
    id: &str,
    reason: &str,
    json: bool,
) -> anyhow::Result<()> {
    let client = client(home, node)?;
    let root = home.root_key().with_context(|| {
        format!(
            "revoking needs the lattice root key, which is not in {}",
            home.dir().display()
        )
    })?;
    let target = resolve_member(&client, id).await?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let revocation = aether_identity::Revocation::issue(&root, &target, reason, now)?;
    let outcome: RevokeResponse = client
        .json(
            Method::POST,
            "/v1/revoke",
            Bytes::from(revocation.to_bytes()),
        )
        .await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&outcome)?);
    } else {
        println!(
            "Revoked {}{}; the lattice refuses it from now on.",
            outcome.node,
            if outcome.new {
                ""
            } else {
                " (already revoked)"
            }
        );
    }
    Ok(())
}

fn kv_path(bucket: &str, params: &[(&str, &str)]) -> String {
    let mut query = form_urlencoded::Serializer::new(String::new());
    for (k, v) in params {
        query.append_pair(k, v);
    }
    let bucket: String = form_urlencoded::byte_serialize(bucket.as_bytes()).collect();
    format!("/v1/kv/{bucket}?{}", query.finish())
}

fn print_entry_line(e: &KvEntryJson) {
    println!(
        "{}\t{}\t{}",
        e.key,
        e.value.as_deref().unwrap_or("(deleted)"),
        e.timestamp_ms
    );
}

async fn kv(home: &Home, node: Option<&str>, command: KvCommand) -> anyhow::Result<()> {
    use std::io::{Read as _, Write as _};
    let client = client(home, node)?;
    match command {
        KvCommand::Get { bucket, key, json } => {
            let e: KvEntryJson = client
                .json(
                    Method::GET,
                    &kv_path(&bucket, &[("key", &key)]),
                    Bytes::new(),
                )
                .await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&e)?);
            } else {
                use base64::Engine as _;
                let raw = e
                    .value_base64
                    .as_deref()
                    .map(|v| base64::engine::general_purpose::STANDARD.decode(v))
                    .transpose()
                    .context("the node sent a value that is not base64")?
                    .unwrap_or_default();
                let mut out = std::io::stdout().lock();
                out.write_all(&raw)?;
                if std::io::IsTerminal::is_terminal(&out) && !raw.ends_with(b"\n") {
                    out.write_all(b"\n")?;
                }
            }
        }
        KvCommand::Put {
            bucket,
            key,
            value,
            json,
        } => {
            let body = if value == "-" {
                let mut buf = Vec::new();
                std::io::stdin()
                    .read_to_end(&mut buf)
                    .context("reading the value from stdin")?;
                buf
            } else {
                value.into_bytes()
            };
            let e: KvEntryJson = client
                .json(
                    Method::PUT,
                    &kv_path(&bucket, &[("key", &key)]),
                    Bytes::from(body),
                )
                .await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&e)?);
            } else {
                println!(
                    "Stored {bucket}/{key} (durable on this node; other nodes see it shortly)"
                );
            }
        }
        KvCommand::Del { bucket, key } => {
            let _: KvEntryJson = client
                .json(
                    Method::DELETE,
                    &kv_path(&bucket, &[("key", &key)]),
                    Bytes::new(),
                )
                .await?;
            println!("Deleted {bucket}/{key}");
        }
        KvCommand::List {
            bucket,
            prefix,
            limit,
            json,
        } => {
            let limit = limit.to_string();
            let list: Vec<KvEntryJson> = client
                .json(
                    Method::GET,
                    &kv_path(&bucket, &[("prefix", &prefix), ("limit", &limit)]),
                    Bytes::new(),
                )
                .await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else {
                for e in &list {
                    print_entry_line(e);
                }
            }
        }
        KvCommand::History { bucket, key, json } => {
            let bucket_path: String = form_urlencoded::byte_serialize(bucket.as_bytes()).collect();
            let query: String = form_urlencoded::Serializer::new(String::new())
                .append_pair("key", &key)
                .finish();
            let list: Vec<KvEntryJson> = client
                .json(
                    Method::GET,
                    &format!("/v1/kv/{bucket_path}/history?{query}"),
                    Bytes::new(),
                )
                .await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else {
                for e in &list {
                    println!(
                        "{}.{}\t{}\t{}",
                        e.timestamp_ms,
                        e.logical,
                        e.origin,
                        e.value.as_deref().unwrap_or("(deleted)")
                    );
                }
            }
        }
        KvCommand::Status { json } => {
            let s: KvSummaryJson = client.json(Method::GET, "/v1/kv", Bytes::new()).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&s)?);
            } else {
                println!(
                    "{} entries, digest {}, {} pending, {} applied from peers, {} forged and {} from unknown or revoked nodes dropped",
                    s.entries,
                    s.digest,
                    s.pending,
                    s.applied,
                    s.forged,
                    s.unknown_or_revoked_origin
                );
            }
        }
    }
    Ok(())
}
