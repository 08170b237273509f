//! `cargo bench --bench pipeline`: prints per-event costs and end-to-end throughput.
//!
//! 1. Decode: Avro payload → `ChangeEvent` (bitmaps included), µs per event.
//! 2. Row: `ChangeEvent` → 16-column row → JSON line, µs per event.
//! 3. End to end: `sfzb-host sim` in its own process → this process's subscriber → decode →
//!    Rust mask transform → sink: events/s, host CPU µs per event, peak RSS.
//!
//! `SFZB_BENCH_EVENTS` sets the end-to-end event count (default 200000); `SFZB_BENCH_SINK`
//! the sink (default `jsonl:/dev/null`; `delta:/tmp/bench-table`, emptied first;
//! `zerobus:main.bench.events` to the Zerobus test server of the simulator's process);
//! `SFZB_BENCH_LAYOUT=typed` runs the typed layout too, after the reference layout, and
//! prints both (`typed-only`: the typed layout alone, for profiling); `SFZB_BENCH_ROUNDS` the
//! rounds of the per-event phases (default 10).
//!
//! The mask transform is compiled into a compile cache before the end-to-end runs, as a
//! deployment's `transform-cache-dir` holds it after its first start: the runs measure the
//! per-event cost, not Cranelift compiling the component once (~50 ms, a quarter of a µs
//! over 200,000 events).

// The tests' guest builder; the bench uses only its Rust components.
#[allow(dead_code)]
#[path = "../tests/all/guests.rs"]
mod guests;
mod measure;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Parser;
use sfzb_host::cli::{Cli, Command as Cmd};
use sfzb_host::event::ReplayId;
use sfzb_host::salesforce::schema::{EventMeta, decode_event};
use sfzb_host::sim::catalog::Entity;
use sfzb_host::sim::generator::{Position, generate};
use sfzb_host::sink::Row;
use sfzb_host::sink::typed::{Layout, TypedTable};

fn main() {
    let entity = Entity::load("Account").unwrap().unwrap();
    let events: Vec<_> = (0..2000)
        .map(|seq| {
            generate(
                &entity,
                &entity.schema,
                1,
                Position { index: seq, seq },
                false,
            )
        })
        .collect();
    let meta = |i: usize| EventMeta {
        org_id: Arc::from("00D"),
        channel: Arc::from("/data/AccountChangeEvent"),
        replay_id: ReplayId::new(Bytes::copy_from_slice(&(i as u64).to_be_bytes())),
        event_id: events[i].event_id.clone(),
    };
    let rounds: usize = std::env::var("SFZB_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let started = Instant::now();
    let mut decoded = Vec::new();
    for _ in 0..rounds {
        decoded.clear();
        for (i, e) in events.iter().enumerate() {
            decoded.push(decode_event(&entity.schema, meta(i), e.payload.clone()).unwrap());
        }
    }
    let decode_us = started.elapsed().as_secs_f64() * 1e6 / (rounds * events.len()) as f64;
    let mut bytes = 0usize;
    let mut row_time = Duration::ZERO;
    for _ in 0..rounds {
        // A row takes its event; the copies are made outside the timed part.
        let batch = decoded.clone();
        let started = Instant::now();
        for event in batch {
            let row = Row::from_event(event, 0);
            bytes += serde_json::to_vec(&row).unwrap().len();
        }
        row_time += started.elapsed();
    }
    let row_us = row_time.as_secs_f64() * 1e6 / (rounds * decoded.len()) as f64;
    let (mut typed_bytes, mut typed_time) = (0usize, Duration::ZERO);
    let mut table = TypedTable::default();
    for _ in 0..rounds {
        let batch = decoded.clone();
        let started = Instant::now();
        for event in batch {
            let row = Row::with_layout(event, 0, Layout::Typed);
            let plan = table.plan(&row.event.schema).unwrap();
            let mut line = Vec::new();
            table.write_json(&plan, &row, &mut line);
            typed_bytes += line.len();
        }
        typed_time += started.elapsed();
    }
    let typed_us = typed_time.as_secs_f64() * 1e6 / (rounds * decoded.len()) as f64;
    // Bytes of one Account row as protobuf, the record Zerobus carries, in each layout.
    let (mut reference_proto, mut typed_proto) = (0usize, 0usize);
    for event in decoded.iter().cloned() {
        let mut buf = Vec::new();
        let row = Row::from_event(event.clone(), 0);
        row.encode_proto(&mut buf);
        reference_proto += buf.len();
        buf.clear();
        let row = Row::with_layout(event, 0, Layout::Typed);
        let plan = table.plan(&row.event.schema).unwrap();
        sfzb_host::sink::zerobus::typed::encode(&plan, &row, table.columns().len(), &mut buf);
        typed_proto += buf.len();
    }
    let avg_payload = events.iter().map(|e| e.payload.len()).sum::<usize>() / events.len();
    println!(
        "decode (Account, {} fields, {avg_payload} B payload): {decode_us:.2} µs/event",
        entity.schema.names.top.len()
    );
    println!(
        "row + JSON line ({} B/row):                    {row_us:.2} µs/event",
        bytes / (rounds * decoded.len())
    );
    println!(
        "typed row + JSON line ({} B/row):               {typed_us:.2} µs/event",
        typed_bytes / (rounds * decoded.len())
    );
    println!(
        "Account row as protobuf (Zerobus record): reference {} B, typed {} B",
        reference_proto / decoded.len(),
        typed_proto / decoded.len()
    );

    let count: u64 = std::env::var("SFZB_BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000);
    let layouts: &[&str] = match std::env::var("SFZB_BENCH_LAYOUT").as_deref() {
        Ok("typed") => &["reference", "typed"],
        Ok("typed-only") => &["typed"],
        _ => &["reference"],
    };
    let cache = tempfile::tempdir().unwrap();
    let options = sfzb_host::transform::RuntimeOptions {
        cache_dir: Some(cache.path().to_path_buf()),
        ..Default::default()
    };
    sfzb_host::transform::Runtime::new(options)
        .and_then(|runtime| runtime.program("mask", &guests::component("mask")))
        .unwrap();
    for layout in layouts {
        end_to_end(count, layout, cache.path());
    }
    let compiled = std::fs::read_dir(cache.path()).unwrap().count();
    assert_eq!(
        compiled, 1,
        "the runs loaded the component compiled before them"
    );
}

fn end_to_end(count: u64, layout: &str, cache: &std::path::Path) {
    let sink = std::env::var("SFZB_BENCH_SINK").unwrap_or_else(|_| "jsonl:/dev/null".into());
    // A zerobus: sink writes to the Zerobus test server the simulator process also runs.
    let zerobus = sink.starts_with("zerobus:");
    let count_text = count.to_string();
    let mut args = vec![
        "--port",
        "0",
        "--login-port",
        "0",
        "--entities",
        "Account",
        "--events",
        &count_text,
    ];
    if zerobus {
        args.extend(["--zerobus-port", "0"]);
    }
    let (mut sim, urls) = measure::spawn_sim(&args);
    let state = tempfile::tempdir().unwrap();
    if let Some(path) = sink.strip_prefix("delta:") {
        let _ = std::fs::remove_dir_all(path);
    }
    // The pipeline: a Rust mask transform on every event (`SFZB_BENCH_MASK=0` to skip).
    let mask = std::env::var("SFZB_BENCH_MASK").map_or(true, |v| v != "0");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    // Typed tables through Zerobus are created through a SQL warehouse: a test workspace
    // in this process (a few statements; its CPU is in the host's figure).
    let workspace = (zerobus && layout == "typed").then(|| {
        runtime
            .block_on(sfzb_host::sim::databricks::WorkspaceServer::start())
            .unwrap()
    });
    let mut urls = urls;
    if let Some(workspace) = &workspace {
        urls.push(workspace.url());
    }
    let plan = host_plan(&urls, &sink, state.path(), mask, layout, cache);
    let sim_pid = sim.id().to_string();
    let (cpu_before, sim_before) = (measure::cpu_time(), measure::cpu_time_of(&sim_pid));
    let stats = runtime
        .block_on(sfzb_host::run(
            plan,
            tokio_util::sync::CancellationToken::new(),
        ))
        .and_then(sfzb_host::RunReport::into_result)
        .unwrap()
        .remove(0);
    let cpu = measure::cpu_time() - cpu_before;
    // Read before the kill: a reaped process has no /proc entry.
    let sim_cpu = measure::cpu_time_of(&sim_pid) - sim_before;
    let _ = sim.kill();
    let _ = sim.wait();
    assert_eq!(stats.received, count, "every event arrived");
    let active = Duration::from_millis(stats.active_ms.max(1)).as_secs_f64();
    // The idle wait at the end costs next to no CPU, so CPU over all events is fair.
    println!(
        "{layout:>9} layout: sim → subscribe → decode → {}{sink}, {count} events: {:.0} events/s, {:.1} µs host CPU/event, peak RSS {} MiB; simulator{} {:.1} µs CPU/event",
        if mask { "Rust mask → " } else { "" },
        count as f64 / active,
        cpu.as_secs_f64() * 1e6 / count as f64,
        measure::peak_rss_kib() / 1024,
        if zerobus {
            " and its Zerobus server"
        } else {
            ""
        },
        sim_cpu.as_secs_f64() * 1e6 / count as f64,
    );
}

/// `sfzb-host run` against the simulator's `urls` (Pub/Sub, login, then Zerobus if any).
fn host_plan(
    urls: &[String],
    sink: &str,
    state: &std::path::Path,
    mask: bool,
    layout: &str,
    cache: &std::path::Path,
) -> sfzb_host::config::RunPlan {
    let state_dir = state.display().to_string();
    let argv = [
        "sfzb-host",
        "run",
        "--pubsub-endpoint",
        &urls[0],
        "--instance-url",
        &urls[1],
        "--username",
        "u",
        "--password",
        "p",
        "--channel",
        "/data/AccountChangeEvent",
        "--sink",
        sink,
        "--dead-letter",
        "jsonl:/dev/null",
        "--state-dir",
        &state_dir,
        "--until-idle",
        "2",
        "--layout",
        layout,
    ];
    let mut argv: Vec<String> = argv.iter().map(|s| s.to_string()).collect();
    if mask {
        argv.extend([
            "--transform".to_string(),
            guests::component("mask").display().to_string(),
            "--transform-config".to_string(),
            "mask.fields=PersonEmail,Phone".to_string(),
            "--transform-cache-dir".to_string(),
            cache.display().to_string(),
        ]);
    }
    if let Some(url) = urls.get(2) {
        argv.extend(["--zerobus-endpoint".to_string(), url.clone()]);
    }
    if let Some(url) = urls.get(3) {
        argv.extend([
            "--databricks-workspace-url".to_string(),
            url.clone(),
            "--sql-warehouse-id".to_string(),
            "bench".to_string(),
        ]);
    }
    let Cmd::Run(args) = Cli::parse_from(argv).into_command() else {
        unreachable!()
    };
    args.plan().unwrap()
}
