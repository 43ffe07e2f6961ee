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
