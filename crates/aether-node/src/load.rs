//! Measures this node's load (instances, request rate, CPU) every few
//! seconds and hands it to the mesh, which advertises it to the members.

use std::sync::Arc;
use std::time::{Duration, Instant};

use aether_membership::Load;
use aether_mesh::MeshHandle;

use crate::deployments::Deployments;

/// How often the load is measured.
const PERIOD: Duration = Duration::from_secs(2);

/// CPU time this process has used (user + system), from `/proc/self/stat`.
fn process_cpu_time() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let ticks = u64::try_from(ticks).ok().filter(|t| *t > 0)?;
    Some(Duration::from_secs_f64(
        (utime + stime) as f64 / ticks as f64,
    ))
}

/// Runs until aborted.
pub(crate) async fn report(mesh: MeshHandle, deployments: Arc<Deployments>) {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let mut last = Instant::now();
    let mut last_requests = 0u64;
    let mut last_cpu = process_cpu_time();
    let mut tick = tokio::time::interval(PERIOD);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let now = Instant::now();
        let elapsed = now.duration_since(last).as_secs_f64().max(1e-3);
        let list = deployments.list();
        let statuses: Vec<_> = list.iter().map(|d| deployments.status(d)).collect();
        let instances = statuses.iter().map(|s| s.instances).sum::<usize>();
        let requests = statuses.iter().map(|s| s.requests).sum::<u64>();
        let rate = requests.saturating_sub(last_requests) as f64 / elapsed;
        let cpu = process_cpu_time();
        let cpu_percent = match (last_cpu, cpu) {
            (Some(a), Some(b)) => {
                (b.saturating_sub(a).as_secs_f64() / elapsed / cores * 100.0).clamp(0.0, 100.0)
            }
            _ => 0.0,
        };
        mesh.set_load(Load {
            instances: u32::try_from(instances).unwrap_or(u32::MAX),
            request_rate: rate as f32,
            cpu_percent: cpu_percent as f32,
        });
        last = now;
        last_requests = requests;
        last_cpu = cpu;
    }
}
