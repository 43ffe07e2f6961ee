//! `alkahest top`: the lattice in the terminal, refreshed live. Members (state, region, round
//! trip, load, reachability) as the asked node sees them, and components with their replicas
//! and request rates summed over every member whose admin API answers (each advertises it as the
//! label `admin-addr`). `q`, Esc or Ctrl-C quits.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use aether_admin::client::AdminClient;
use aether_admin::types::{MemberJson, NodeStatus};
use aether_identity::SecretKey;
use bytes::Bytes;
use http::Method;
use ratatui::Frame;
use ratatui::crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};
use ratatui::layout::{Constraint, Layout};
use ratatui::style::{Modifier, Style};
use ratatui::text::Line;
use ratatui::widgets::{Block, Row, Table};

/// How long one member's status may take before this refresh goes without it.
const ASK_TIMEOUT: Duration = Duration::from_millis(800);

/// One component across the lattice.
#[derive(Default)]
struct ComponentRow {
    state_here: String,
    /// Replicas running and wanted, in a lattice.
    replicas: Option<(u32, u32)>,
    hosts: Vec<String>,
    instances: usize,
    requests: u64,
    rate: Option<f64>,
}

/// What one refresh saw.
#[derive(Default)]
struct Snapshot {
    node: String,
    members: Vec<MemberJson>,
    components: BTreeMap<String, ComponentRow>,
    asked: usize,
    answered: usize,
    error: Option<String>,
}

fn short(id: &str) -> String {
    id.trim_start_matches("ed25519:").chars().take(12).collect()
}

/// Asks the node and every member it knows, and computes rates against `previous`.
async fn refresh(
    client: &AdminClient,
    key: &SecretKey,
    previous: Option<&(Instant, Snapshot)>,
) -> Snapshot {
    let mut snap = Snapshot {
        node: client.addr().to_string(),
        ..Snapshot::default()
    };
    match client
        .json::<Vec<MemberJson>>(Method::GET, "/v1/nodes", Bytes::new())
        .await
    {
        Ok(members) => snap.members = members,
        Err(e) => {
            snap.error = Some(format!("{e:#}"));
            return snap;
        }
    }
    // Every live member's admin API; the asked node through its own client.
    let mut targets: Vec<(bool, SocketAddr)> = vec![(true, client.addr())];
    for m in &snap.members {
        if m.is_self || m.state != "alive" {
            continue;
        }
        if let Some(addr) = m.labels.get("admin-addr").and_then(|a| a.parse().ok()) {
            targets.push((false, addr));
        }
    }
    snap.asked = targets.len();
    let asks = targets.iter().map(|(_, addr)| {
        let c = AdminClient::new(*addr, key.clone());
        async move {
            tokio::time::timeout(
                ASK_TIMEOUT,
                c.json::<NodeStatus>(Method::GET, "/v1/status", Bytes::new()),
            )
            .await
            .ok()
            .and_then(Result::ok)
        }
    });
    let statuses = futures::future::join_all(asks).await;
    for ((is_here, _), status) in targets.iter().zip(statuses) {
        let Some(status) = status else {
            continue;
        };
        snap.answered += 1;
        for c in status.components {
            let row = snap.components.entry(c.name.clone()).or_default();
            row.instances += c.instances;
            row.requests += c.requests;
            if *is_here {
                row.state_here = c.state.clone();
                if let Some(p) = &c.placement {
                    row.replicas = Some((p.running, p.desired));
                    row.hosts = p.hosts.iter().map(|h| short(&h.node)).collect();
                }
            }
        }
    }
    if let Some((at, before)) = previous {
        let secs = at.elapsed().as_secs_f64().max(0.001);
        for (name, row) in &mut snap.components {
            if let Some(old) = before.components.get(name)
                && row.requests >= old.requests
            {
                row.rate = Some((row.requests - old.requests) as f64 / secs);
            }
        }
    }
    snap
}

fn render(frame: &mut Frame, snap: &Snapshot, interval: Duration) {
    let [head, members, components, foot] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Length(snap.members.len() as u16 + 3),
        Constraint::Min(4),
        Constraint::Length(1),
    ])
    .areas(frame.area());
    let bold = Style::default().add_modifier(Modifier::BOLD);
    let alive = snap.members.iter().filter(|m| m.state == "alive").count();
    frame.render_widget(
        Line::from(format!(
            "alkahest top: {} · {alive}/{} members alive · {} components · {}/{} nodes answered",
            snap.node,
            snap.members.len(),
            snap.components.len(),
            snap.answered,
            snap.asked
        ))
        .style(bold),
        head,
    );
    let member_rows = snap.members.iter().map(|m| {
        Row::new(vec![
            format!("{}{}", if m.is_self { "*" } else { " " }, short(&m.id)),
            m.state.clone(),
            if m.region.is_empty() {
                "-".into()
            } else {
                m.region.clone()
            },
            m.rtt_ms.map_or("-".into(), |r| format!("{r:.1}ms")),
            m.load.instances.to_string(),
            format!("{:.1}", m.load.request_rate),
            format!("{:.0}%", m.load.cpu_percent),
            if m.path.is_empty() || m.path == "self" || m.path == "direct" {
                m.reachability.clone()
            } else {
                format!("{}/{}", m.reachability, m.path)
            },
            m.version.clone(),
        ])
    });
    frame.render_widget(
        Table::new(
            member_rows,
            [
                Constraint::Length(14),
                Constraint::Length(8),
                Constraint::Length(12),
                Constraint::Length(9),
                Constraint::Length(9),
                Constraint::Length(8),
                Constraint::Length(5),
                Constraint::Length(26),
                Constraint::Min(8),
            ],
        )
        .header(
            Row::new([
                "ID",
                "STATE",
                "REGION",
                "RTT",
                "INSTANCES",
                "REQ/S",
                "CPU",
                "REACH",
                "VERSION",
            ])
            .style(bold),
        )
        .block(Block::bordered().title(" members ")),
        members,
    );
    let component_rows = snap.components.iter().map(|(name, c)| {
        Row::new(vec![
            name.clone(),
            c.state_here.clone(),
            c.replicas.map_or("-".into(), |(running, desired)| {
                format!("{running}/{desired}")
            }),
            c.instances.to_string(),
            c.rate.map_or("-".into(), |r| format!("{r:.1}")),
            c.requests.to_string(),
            c.hosts.join(" "),
        ])
    });
    frame.render_widget(
        Table::new(
            component_rows,
            [
                Constraint::Length(20),
                Constraint::Length(15),
                Constraint::Length(9),
                Constraint::Length(9),
                Constraint::Length(8),
                Constraint::Length(10),
                Constraint::Min(12),
            ],
        )
        .header(
            Row::new([
                "NAME",
                "HERE",
                "RUNNING",
                "INSTANCES",
                "REQ/S",
                "REQUESTS",
                "HOSTS",
            ])
            .style(bold),
        )
        .block(Block::bordered().title(" components ")),
        components,
    );
    let footer = match &snap.error {
        Some(e) => format!("cannot reach the node: {e}"),
        None => format!("every {:?} · q quits", interval),
    };
    frame.render_widget(Line::from(footer), foot);
}

/// An interval such as `500ms`, `1s` or `2.5s` (100 ms to 60 s).
pub fn parse_interval(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let (number, scale) = match t.strip_suffix("ms") {
        Some(n) => (n, 0.001),
        None => (t.strip_suffix('s').unwrap_or(t), 1.0),
    };
    let secs = number
        .trim()
        .parse::<f64>()
        .map_err(|_| format!("`{text}` is not an interval (e.g. 500ms, 1s, 2.5s)"))?
        * scale;
    if !(0.1..=60.0).contains(&secs) {
        return Err(format!(
            "`{text}`: the interval must be between 100ms and 60s"
        ));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Runs the view until `q`, Esc or Ctrl-C.
pub async fn run(client: AdminClient, key: SecretKey, interval: Duration) -> anyhow::Result<()> {
    let (quit_tx, mut quit) = tokio::sync::mpsc::channel::<()>(1);
    std::thread::spawn(move || {
        loop {
            match event::poll(Duration::from_millis(100)) {
                Ok(true) => {
                    if let Ok(Event::Key(k)) = event::read()
                        && k.kind == KeyEventKind::Press
                        && (matches!(k.code, KeyCode::Char('q') | KeyCode::Esc)
                            || (k.code == KeyCode::Char('c')
                                && k.modifiers.contains(KeyModifiers::CONTROL)))
                    {
                        let _ = quit_tx.blocking_send(());
                        return;
                    }
                }
                Ok(false) if quit_tx.is_closed() => return,
                Ok(false) => {}
                Err(_) => {
                    let _ = quit_tx.blocking_send(());
                    return;
                }
            }
        }
    });
    let mut terminal = ratatui::init();
    let mut previous: Option<(Instant, Snapshot)> = None;
    let outcome = loop {
        let snap = refresh(&client, &key, previous.as_ref()).await;
        if let Err(e) = terminal.draw(|f| render(f, &snap, interval)) {
            break Err(anyhow::Error::from(e).context("drawing the terminal"));
        }
        previous = Some((Instant::now(), snap));
        tokio::select! {
            _ = quit.recv() => break Ok(()),
            _ = tokio::time::sleep(interval) => {}
        }
    };
    ratatui::restore();
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals_read_the_usual_units_and_refuse_the_rest() {
        assert_eq!(parse_interval("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_interval("2"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_interval("1.5s"), Ok(Duration::from_millis(1500)));
        assert!(parse_interval("10ms").is_err());
        assert!(parse_interval("soon").is_err());
    }
}
