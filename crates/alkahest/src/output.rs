//! Printing results, errors and progress.

use std::time::Duration;

use aether_admin::types::ComponentStatus;
use indicatif::{ProgressBar, ProgressStyle};

/// A located manifest error, already rendered with its source snippet.
#[derive(Debug)]
pub struct Rendered(pub String);

impl std::fmt::Display for Rendered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Rendered {}

/// Prints an error chain to stderr; rendered diagnostics are printed as they are.
pub fn print_error(err: &anyhow::Error) {
    if let Some(r) = err.downcast_ref::<Rendered>() {
        eprintln!("{r}");
        return;
    }
    eprintln!("error: {err}");
    for cause in err.chain().skip(1) {
        eprintln!("  caused by: {cause}");
    }
}

/// A spinner on stderr that appears only if the work lasts more than a moment
/// and only when stderr is a terminal.
pub fn spinner(message: &str) -> ProgressBar {
    let bar = ProgressBar::new_spinner();
    if let Ok(style) = ProgressStyle::with_template("{spinner} {msg} {elapsed}") {
        bar.set_style(style);
    }
    bar.set_message(message.to_string());
    bar.enable_steady_tick(Duration::from_millis(120));
    bar
}

/// A status table.
pub fn print_components(components: &[ComponentStatus]) {
    if components.is_empty() {
        println!("no components deployed");
        return;
    }
    let lattice = components.iter().any(|c| c.placement.is_some());
    if lattice {
        println!(
            "{:<20} {:<14} {:>9} {:>8} {:>10}  {:<14} ROUTES",
            "NAME", "STATE HERE", "INSTANCES", "REPLICAS", "REQUESTS", "HASH"
        );
    } else {
        println!(
            "{:<20} {:<8} {:>9} {:>10}  {:<14} ROUTES",
            "NAME", "STATE", "INSTANCES", "REQUESTS", "HASH"
        );
    }
    for c in components {
        let hash = &c.content_hash[..c.content_hash.len().min(12)];
        let instances = format!("{}/{}", c.instances, c.max_concurrency);
        match &c.placement {
            Some(p) if lattice => println!(
                "{:<20} {:<14} {:>9} {:>8} {:>10}  {:<14} {}",
                c.name,
                c.state,
                instances,
                format!("{}/{}", p.placed, p.desired),
                c.requests,
                hash,
                c.routes.join(" ")
            ),
            _ => println!(
                "{:<20} {:<8} {:>9} {:>10}  {:<14} {}",
                c.name,
                c.state,
                instances,
                c.requests,
                hash,
                c.routes.join(" ")
            ),
        }
    }
}

fn short_id(id: &str) -> &str {
    let id = id.trim_start_matches("ed25519:");
    &id[..id.len().min(12)]
}

/// Prints where one component runs across the lattice, and why.
pub fn print_placement(p: &aether_admin::types::PlacementJson) {
    println!();
    println!(
        "replicas:   {} wanted, {} placed, {} running",
        p.desired, p.placed, p.running
    );
    for u in &p.unsatisfied {
        println!("UNSATISFIED {}: {}", u.constraint, u.detail);
    }
    if !p.hosts.is_empty() {
        println!();
        println!(
            "  {:<14} {:<12} {:>9} {:>8}  STATE",
            "HOST", "REGION", "INSTANCES", "RTT"
        );
        for h in &p.hosts {
            println!(
                "{} {:<14} {:<12} {:>9} {:>8}  {}",
                if h.is_self { "*" } else { " " },
                short_id(&h.node),
                if h.region.is_empty() { "-" } else { &h.region },
                h.instances,
                h.rtt_ms
                    .map_or_else(|| "-".to_string(), |r| format!("{r:.1}ms")),
                h.state
            );
        }
    }
    if !p.ranking.is_empty() {
        println!();
        println!("ranking (best first):");
        for (i, r) in p.ranking.iter().enumerate() {
            let why = match (&r.reason, r.hosts) {
                (_, true) => "hosts a replica".to_string(),
                (Some(reason), false) => format!("excluded: {reason}"),
                (None, false) => "eligible".to_string(),
            };
            let rtt = r
                .rtt_from_ms
                .map(|ms| format!(", {ms:.1} ms from the latency region"))
                .unwrap_or_default();
            println!(
                "  {:>2}. {:<14} {:<12} score {:>10.4}  {}{}",
                i + 1,
                short_id(&r.node),
                if r.region.is_empty() { "-" } else { &r.region },
                r.score,
                why,
                rtt
            );
        }
    }
    if !p.changes.is_empty() {
        println!();
        println!("recent placement changes:");
        for c in &p.changes {
            let added: Vec<&str> = c.added.iter().map(|a| short_id(a)).collect();
            let removed: Vec<&str> = c.removed.iter().map(|a| short_id(a)).collect();
            println!(
                "  {}  +[{}] -[{}]  {}",
                c.at,
                added.join(" "),
                removed.join(" "),
                c.reason
            );
        }
    }
}

/// Prints `alkahest nodes` as a table, the answering node marked with `*`.
pub fn print_members(members: &[aether_admin::types::MemberJson]) {
    println!(
        "  {:<22} {:<8} {:<12} {:>8} {:>4} {:>9} {:>8} {:<10} {:<20}  MESH",
        "ID", "STATE", "REGION", "RTT", "INC", "INSTANCES", "REQ/S", "DATA PLANE", "REACH"
    );
    for m in members {
        let id = m.id.trim_start_matches("ed25519:");
        let short = &id[..id.len().min(22)];
        let rtt = m
            .rtt_ms
            .map_or_else(|| "-".to_string(), |r| format!("{r:.1}ms"));
        println!(
            "{} {:<22} {:<8} {:<12} {:>8} {:>4} {:>9} {:>8.1} {:<10} {:<20}  {}{}",
            if m.is_self { "*" } else { " " },
            short,
            m.state,
            if m.region.is_empty() { "-" } else { &m.region },
            rtt,
            m.incarnation,
            m.load.instances,
            m.load.request_rate,
            m.data_plane,
            match (m.reachability.as_str(), m.path.as_str()) {
                ("", _) => "-".to_string(),
                (reach, "punched" | "none") => format!("{reach}/{}", m.path),
                (reach, path) if path.starts_with("relayed") => {
                    format!("{reach}/{}", path.replace("relayed via ", "via "))
                }
                (reach, _) => reach.to_string(),
            },
            m.mesh_addr,
            m.observed_addr
                .as_ref()
                .map(|a| format!(" (seen at {a})"))
                .unwrap_or_default()
        );
    }
}

/// Prints where a component answers.
pub fn print_urls(http_addr: &str, c: &ComponentStatus) {
    for route in &c.routes {
        if route.starts_with('/') {
            println!("  http://{http_addr}{route}");
        } else {
            println!("  http://{route} (via http://{http_addr}, Host: {route})");
        }
    }
    print_virtual_address(c);
}

/// Prints a component's virtual address, or why it has none here.
fn print_virtual_address(c: &ComponentStatus) {
    if let Some(vip) = &c.virtual_address {
        println!("  http://{vip} (virtual address, from processes in a node's cgroup)");
    }
    if let Some(why) = &c.virtual_address_unavailable {
        println!("  no virtual address on this node: {why}");
    }
}
