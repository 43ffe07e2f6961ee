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
    println!(
        "{:<20} {:<8} {:>9} {:>10}  {:<14} ROUTES",
        "NAME", "STATE", "INSTANCES", "REQUESTS", "HASH"
    );
    for c in components {
        println!(
            "{:<20} {:<8} {:>9} {:>10}  {:<14} {}",
            c.name,
            c.state,
            format!("{}/{}", c.instances, c.max_concurrency),
            c.requests,
            &c.content_hash[..c.content_hash.len().min(12)],
            c.routes.join(" ")
        );
    }
}

/// Prints `alkahest nodes` as a table, the answering node marked with `*`.
pub fn print_members(members: &[aether_admin::types::MemberJson]) {
    println!(
        "  {:<22} {:<8} {:<12} {:>8} {:>4} {:>9} {:>8}  MESH",
        "ID", "STATE", "REGION", "RTT", "INC", "INSTANCES", "REQ/S"
    );
    for m in members {
        let id = m.id.trim_start_matches("ed25519:");
        let short = &id[..id.len().min(22)];
        let rtt = m
            .rtt_ms
            .map_or_else(|| "-".to_string(), |r| format!("{r:.1}ms"));
        println!(
            "{} {:<22} {:<8} {:<12} {:>8} {:>4} {:>9} {:>8.1}  {}",
            if m.is_self { "*" } else { " " },
            short,
            m.state,
            if m.region.is_empty() { "-" } else { &m.region },
            rtt,
            m.incarnation,
            m.load.instances,
            m.load.request_rate,
            m.mesh_addr
        );
    }
}
