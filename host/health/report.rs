//! What the log says of the subscriptions as they run, in a number of lines that does not
//! grow with the number of tenants: once per `health-interval-secs` one INFO summary of
//! the process (subscriptions by state, events/s, the oldest checkpoint), and each
//! subscription's own report, at INFO while there are a few, at debug once there are many;
//! every 10 s the progress of a backfill, per subscription while a few catch up, summed once
//! many do.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{Registry, Snapshot};

/// More subscriptions than this get one line together: their reports go to debug, their
/// backfill progress is summed.
const PROGRESS_LINES: usize = 10;

impl Snapshot {
    /// This subscription's report line; `quiet`, at debug (the summary speaks for all).
    pub fn log(&self, since: &Snapshot, window: Duration, quiet: bool) {
        let rate =
            self.received.saturating_sub(since.received) as f64 / window.as_secs_f64().max(0.001);
        let transforms: Vec<String> = self
            .transforms
            .iter()
            .map(|t| {
                format!(
                    "{}: {} in/{} out/{} dropped/{} dead-lettered",
                    t.name, t.events_in, t.events_out, t.dropped, t.dead_lettered
                )
            })
            .collect();
        macro_rules! report {
            ($level:expr) => {
                tracing::event!(
                    $level,
                    subscription = %self.name,
                    channel = %self.channel,
                    events_per_sec = format!("{rate:.1}"),
                    received = self.received,
                    written = self.written,
                    dropped = self.dropped,
                    dead_lettered = self.dead_lettered,
                    in_flight = self.queue_size,
                    checkpoint_age_secs = self.checkpoint_age_secs.map(|s| format!("{s:.1}")).unwrap_or_else(|| "none".into()),
                    lag_secs = self.lag_secs.map(|s| format!("{s:.1}")).unwrap_or_else(|| "none".into()),
                    reconnects = self.reconnects,
                    restarts = self.restarts,
                    transforms = %transforms.join("; "),
                    healthy = self.is_healthy,
                    problem = self.problem.as_deref().unwrap_or(""),
                    "Health report."
                )
            };
        }
        match quiet {
            true => report!(tracing::Level::DEBUG),
            false => report!(tracing::Level::INFO),
        }
    }
}

/// The process's line for `now` against `base`, `window` apart.
fn summary(now: &HashMap<String, Snapshot>, base: &HashMap<String, Snapshot>, window: Duration) {
    let mut states: BTreeMap<&str, usize> = BTreeMap::new();
    let (mut received, mut written, mut dead, mut unhealthy) = (0u64, 0u64, 0u64, 0usize);
    let mut oldest: Option<(&str, f64)> = None;
    for (name, s) in now {
        *states.entry(s.state.name()).or_default() += 1;
        let before = base.get(name);
        received += s.received.saturating_sub(before.map_or(0, |b| b.received));
        written += s.written.saturating_sub(before.map_or(0, |b| b.written));
        dead += s
            .dead_lettered
            .saturating_sub(before.map_or(0, |b| b.dead_lettered));
        unhealthy += usize::from(!s.is_healthy);
        if let Some(age) = s.checkpoint_age_secs
            && oldest.is_none_or(|(_, a)| age > a)
        {
            oldest = Some((name, age));
        }
    }
    let states: Vec<String> = states.iter().map(|(k, v)| format!("{v} {k}")).collect();
    let secs = window.as_secs_f64().max(0.001);
    tracing::info!(
        subscriptions = now.len(),
        states = %states.join(", "),
        unhealthy,
        events_per_sec = format!("{:.1}", received as f64 / secs),
        written_per_sec = format!("{:.1}", written as f64 / secs),
        dead_lettered = dead,
        oldest_checkpoint = oldest.map_or("none".to_string(), |(n, a)| format!("{n} ({a:.0} s)")),
        "Health: {} subscriptions ({}); {:.1} events/s received, {:.1} written.",
        now.len(),
        states.join(", "),
        received as f64 / secs,
        written as f64 / secs,
    );
}

/// Backfill progress over `window`: each subscription more than a minute behind that
/// moved, one line each while few do, one line for all once many do.
fn progress(pairs: &[(Snapshot, Snapshot)], window: f64) {
    let catching_up: Vec<(&Snapshot, u64)> = pairs
        .iter()
        .filter_map(|(s, before)| {
            // A subscription restarted since counts from zero again.
            let done = s.received.saturating_sub(before.received);
            (done > 0 && s.lag_secs.is_some_and(|lag| lag > 60.0)).then_some((s, done))
        })
        .collect();
    if catching_up.len() > PROGRESS_LINES {
        let done: u64 = catching_up.iter().map(|(_, d)| d).sum();
        let (furthest, lag) = catching_up
            .iter()
            .map(|(s, _)| (s.name.as_str(), s.lag_secs.unwrap_or_default()))
            .fold(("", 0.0), |a, b| if b.1 > a.1 { b } else { a });
        let behind = humanize(lag);
        tracing::info!(
            subscriptions = catching_up.len(),
            events_per_sec = format!("{:.0}", done as f64 / window),
            furthest = %furthest,
            behind = %behind,
            "Backfill progress: {} subscriptions catching up; the furthest, {furthest}, {behind} behind the newest event.",
            catching_up.len(),
        );
        return;
    }
    for (s, done) in catching_up {
        let behind = humanize(s.lag_secs.unwrap_or_default());
        tracing::info!(
            subscription = %s.name,
            channel = %s.channel,
            received = s.received,
            events_per_sec = format!("{:.0}", done as f64 / window),
            behind = %behind,
            "Backfill progress: {} events, {behind} behind the newest event.",
            s.received,
        );
    }
}

/// Logs the health summary every `interval`, and, every 10 s, progress for subscriptions
/// that are catching up (a backfill): done, rate, and how far behind.
pub async fn report(registry: Registry, interval: Option<Duration>, cancel: CancellationToken) {
    let progress_every = Duration::from_secs(10);
    let period = interval.map_or(progress_every, |i| i.min(progress_every));
    let start = tokio::time::Instant::now();
    let (mut last_report, mut last_progress) = (start, start);
    let snapshots = |registry: &Registry| -> HashMap<String, Snapshot> {
        registry
            .list()
            .iter()
            .map(|h| (h.name.clone(), h.snapshot()))
            .collect()
    };
    let mut report_base = snapshots(&registry);
    let mut progress_base = report_base.clone();
    let mut tick = tokio::time::interval_at(start + period, period);
    loop {
        // Intervals count between ticks, not from when the last report finished: taking
        // thousands of snapshots takes a while, and would otherwise skip every other turn.
        let at = tokio::select! {
            _ = cancel.cancelled() => return,
            at = tick.tick() => at,
        };
        let now = snapshots(&registry);
        // A subscription added since the last turn is reported from the next.
        let pairs = |base: &HashMap<String, Snapshot>| -> Vec<(Snapshot, Snapshot)> {
            now.iter()
                .filter_map(|(name, s)| Some((s.clone(), base.get(name)?.clone())))
                .collect()
        };
        if at - last_progress >= progress_every {
            progress(&pairs(&progress_base), (at - last_progress).as_secs_f64());
            progress_base = now.clone();
            last_progress = at;
        }
        if let Some(interval) = interval
            && at - last_report >= interval
        {
            let window = at - last_report;
            summary(&now, &report_base, window);
            let quiet = now.len() > PROGRESS_LINES;
            if !quiet || tracing::enabled!(tracing::Level::DEBUG) {
                for (s, before) in &pairs(&report_base) {
                    s.log(before, window, quiet);
                }
            }
            report_base = now;
            last_report = at;
        }
    }
}

fn humanize(secs: f64) -> String {
    let secs = secs as u64;
    match secs {
        0..60 => format!("{secs}s"),
        60..3600 => format!("{}m{}s", secs / 60, secs % 60),
        _ => format!("{}h{}m", secs / 3600, (secs % 3600) / 60),
    }
}
