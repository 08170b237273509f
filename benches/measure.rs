//! What the benchmarks share: the simulator in its own process, this process's CPU time
//! and peak RSS (Linux `/proc`).

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// `sfzb-host sim` with `args`, and the URLs its banner prints (Pub/Sub, login, then
/// Zerobus when asked for), in order. The rest of its output is drained.
pub fn spawn_sim(args: &[&str]) -> (Child, Vec<String>) {
    let mut sim = Command::new(env!("CARGO_BIN_EXE_sfzb-host"))
        .arg("sim")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("sfzb-host sim starts");
    let mut lines = BufReader::new(sim.stdout.take().unwrap()).lines();
    let mut urls = Vec::new();
    for line in lines.by_ref() {
        let line = line.expect("the banner is text");
        if let Some((_, value)) = line.split_once(": ")
            && value.trim().starts_with("http://")
        {
            urls.push(value.trim().to_string());
        }
        if line.starts_with("Retained:") {
            break;
        }
    }
    std::thread::spawn(move || lines.for_each(drop));
    (sim, urls)
}

/// User + system CPU time of this process.
pub fn cpu_time() -> Duration {
    cpu_time_of("self")
}

/// User + system CPU time of process `pid` (`self`: this one), from `/proc/<pid>/stat`.
pub fn cpu_time_of(pid: &str) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: u64 = fields.get(11).and_then(|v| v.parse().ok()).unwrap_or(0)
        + fields.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
    Duration::from_millis(ticks * 10)
}

/// The most resident memory this process has had, KiB.
pub fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}
