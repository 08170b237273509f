//! The transform author's loop, outside any pipeline: run a component on sample events
//! (`sfzb-host transform test`) and measure it (`sfzb-host transform bench`), with the same
//! host, limits and re-encoding a run uses.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use base64::Engine;

use crate::cli::ComponentArgs;
use crate::clock::now_ms;
use crate::event::EventSchema;
use crate::event::{ChangeEvent, ReplayId};
use crate::salesforce::schema::{EventMeta, decode_event, parse_schema};
use crate::sink::Row;
use crate::transform::engine::LoadedFrom;
use crate::transform::{Chain, Runtime, RuntimeOptions, TransformSpec};

#[derive(Debug, thiserror::Error)]
pub enum AuthoringError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{path} line {line}: {detail}. Events are rows as the jsonl sink writes them (schema_json, payload_binary, …)"
    )]
    Event {
        path: PathBuf,
        line: usize,
        detail: String,
    },
    #[error(transparent)]
    Transform(#[from] crate::transform::TransformError),
    #[error("cannot write the output: {0}")]
    Output(#[from] std::io::Error),
}

#[derive(serde::Deserialize)]
struct SampleRow {
    event_id: String,
    schema_id: String,
    replay_id: String,
    payload_binary: String,
    schema_json: String,
    #[serde(default)]
    org_id: String,
    entity_name: String,
}

/// Reads sample events: rows as the jsonl sink writes them, one per line or one JSON object.
pub fn read_events(path: &Path) -> Result<Vec<ChangeEvent>, AuthoringError> {
    let text = std::fs::read_to_string(path).map_err(|source| AuthoringError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let mut schemas: HashMap<String, Arc<EventSchema>> = HashMap::new();
    let trimmed = text.trim_start();
    let documents: Vec<(usize, &str)> =
        if trimmed.starts_with('{') && serde_json::from_str::<serde_json::Value>(trimmed).is_ok() {
            vec![(1, trimmed)]
        } else {
            text.lines()
                .enumerate()
                .filter(|(_, l)| !l.trim().is_empty())
                .map(|(i, l)| (i + 1, l))
                .collect()
        };
    let mut events = Vec::new();
    for (line, document) in documents {
        let bad = |detail: String| AuthoringError::Event {
            path: path.to_path_buf(),
            line,
            detail,
        };
        let row: SampleRow = serde_json::from_str(document).map_err(|e| bad(e.to_string()))?;
        let schema = match schemas.get(&row.schema_id) {
            Some(s) => s.clone(),
            None => {
                let s = Arc::new(
                    parse_schema(&row.schema_id, &row.schema_json)
                        .map_err(|e| bad(e.to_string()))?,
                );
                schemas.insert(row.schema_id.clone(), s.clone());
                s
            }
        };
        let payload = base64::engine::general_purpose::STANDARD
            .decode(&row.payload_binary)
            .map_err(|e| bad(format!("payload_binary is not base64: {e}")))?;
        let replay_id =
            ReplayId::from_hex(&row.replay_id).map_err(|e| bad(format!("replay_id: {e}")))?;
        let meta = EventMeta {
            org_id: row.org_id.as_str().into(),
            channel: crate::sim::catalog::channel_for(&row.entity_name).into(),
            replay_id,
            event_id: row.event_id,
        };
        let event = decode_event(&schema, meta, payload.into()).map_err(|e| bad(e.to_string()))?;
        events.push(event);
    }
    Ok(events)
}

fn load(
    spec: &TransformSpec,
    cache_dir: Option<PathBuf>,
) -> Result<(Chain, f64, LoadedFrom), AuthoringError> {
    let runtime = Arc::new(Runtime::new(RuntimeOptions {
        cache_dir,
        fuel: spec.limits.fuel.is_some(),
    })?);
    let started = Instant::now();
    let (_, from) = runtime.component(&spec.path)?;
    let chain = Chain::load(runtime, std::slice::from_ref(spec))?;
    Ok((chain, started.elapsed().as_secs_f64() * 1e3, from))
}

/// Runs the component on each event and writes one JSON line per output (`table`, `row`)
/// or failure (`dead_letter`) to `out`.
pub fn test(
    spec: &TransformSpec,
    events_path: &Path,
    cache_dir: Option<PathBuf>,
    out: &mut dyn Write,
) -> Result<(), AuthoringError> {
    let events = read_events(events_path)?;
    let (mut chain, _, _) = load(spec, cache_dir)?;
    for event in events {
        let result = chain.run(vec![event]);
        for failed in result.failed.iter().chain(result.stop.iter()) {
            let letter = serde_json::json!({"dead_letter": {"transform": failed.transform, "error": failed.error, "replay_id": failed.replay_id.to_hex()}});
            writeln!(out, "{letter}")?;
        }
        for routed in result.routed {
            let mut event = routed.event;
            if let Err((by, error)) = event.reencode() {
                let letter = serde_json::json!({"dead_letter": {"transform": by.as_ref(), "error": error, "replay_id": event.replay_id.to_hex()}});
                writeln!(out, "{letter}")?;
                continue;
            }
            let line =
                serde_json::json!({"table": routed.table, "row": Row::from_event(event, now_ms())});
            writeln!(out, "{line}")?;
        }
    }
    let stats = &chain.stats()[0];
    eprintln!(
        "{}: {} in, {} out, {} dropped, {} dead-lettered",
        stats.name, stats.events_in, stats.events_out, stats.dropped, stats.dead_lettered
    );
    Ok(())
}

/// What `bench` measured.
#[derive(Clone, Debug)]
pub struct BenchReport {
    /// The transform's name.
    pub name: String,
    pub load_ms: f64,
    pub loaded_from: LoadedFrom,
    pub events: usize,
    pub us_per_event: f64,
}

impl std::fmt::Display for BenchReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let from = match self.loaded_from {
            LoadedFrom::Cache => "from the compile cache",
            LoadedFrom::Compiled => "compiled",
        };
        write!(
            f,
            "{}: loaded in {:.1} ms ({from}), {:.2} µs/event over {} standard 30-field Account events",
            self.name, self.load_ms, self.us_per_event, self.events
        )
    }
}

/// `transform test`: the component of `args` on the events of `events`, off the async
/// workers (compiling takes seconds), its outputs on standard output.
pub async fn test_command(args: &ComponentArgs, events: PathBuf) -> Result<(), crate::Error> {
    let spec = args.spec()?;
    let cache = args.cache();
    tokio::task::spawn_blocking(move || test(&spec, &events, cache, &mut std::io::stdout().lock()))
        .await
        .expect("transform test does not panic")?;
    Ok(())
}

/// `transform bench`: the component of `args` timed on `events` events.
pub async fn bench_command(
    args: &ComponentArgs,
    events: usize,
) -> Result<BenchReport, crate::Error> {
    let spec = args.spec()?;
    let cache = args.cache();
    let report = tokio::task::spawn_blocking(move || bench(&spec, events, cache))
        .await
        .expect("transform bench does not panic")?;
    Ok(report)
}

/// Times the component on the standard 30-field Account event.
pub fn bench(
    spec: &TransformSpec,
    events: usize,
    cache_dir: Option<PathBuf>,
) -> Result<BenchReport, AuthoringError> {
    let (mut chain, load_ms, loaded_from) = load(spec, cache_dir)?;
    let entity = crate::sim::catalog::Entity::load("Account")
        .expect("Account is bundled")
        .expect("the bundled Account schema parses");
    let standard = crate::sim::generator::standard_account_event(&entity);
    chain.run(vec![standard.clone(); 100]);
    let batch = 500;
    let mut elapsed = 0.0;
    let mut done = 0;
    while done < events {
        let inputs = vec![standard.clone(); batch.min(events - done)];
        done += inputs.len();
        let started = Instant::now();
        let output = chain.run(inputs);
        elapsed += started.elapsed().as_secs_f64();
        drop(output);
    }
    Ok(BenchReport {
        name: spec.name.clone(),
        load_ms,
        loaded_from,
        events: done,
        us_per_event: elapsed * 1e6 / done.max(1) as f64,
    })
}
