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
use crate::event::{ChangeEvent, EventSchema, ReplayId, Value};
use crate::salesforce::schema::{EventMeta, SchemaCache, decode_event, parse_schema};
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
        "{path} line {line}: {detail}. Events are rows as the jsonl sink writes them (schema_json, payload_binary, …) or dead letters (stage, payload, schema_id, …)"
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

/// Reads sample events: rows as the jsonl sink writes them, or dead letters (a dead-letter
/// file), one per line or one JSON object. A dead letter carries only its schema's id: the
/// schema comes from a row of the same file, or from `schemas`, where a run keeps each
/// schema it fetched.
pub fn read_events(path: &Path, schemas: &Path) -> Result<Vec<ChangeEvent>, AuthoringError> {
    let text = std::fs::read_to_string(path).map_err(|source| AuthoringError::Read {
        path: path.to_path_buf(),
        source,
    })?;
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
    let bad = |line: usize, detail: String| AuthoringError::Event {
        path: path.to_path_buf(),
        line,
        detail,
    };
    let mut samples = Vec::with_capacity(documents.len());
    for (line, document) in documents {
        let value: serde_json::Value =
            serde_json::from_str(document).map_err(|e| bad(line, e.to_string()))?;
        let sample = match value.get("payload_binary").is_none() && value.get("stage").is_some() {
            true => {
                Sample::Letter(serde_json::from_value(value).map_err(|e| bad(line, e.to_string()))?)
            }
            false => {
                Sample::Row(serde_json::from_value(value).map_err(|e| bad(line, e.to_string()))?)
            }
        };
        samples.push((line, sample));
    }
    // Every schema a row of the file carries, for the letters too.
    let mut parsed: HashMap<String, Arc<EventSchema>> = HashMap::new();
    for (line, sample) in &samples {
        if let Sample::Row(row) = sample
            && !parsed.contains_key(&row.schema_id)
        {
            let schema = parse_schema(&row.schema_id, &row.schema_json)
                .map_err(|e| bad(*line, e.to_string()))?;
            parsed.insert(row.schema_id.clone(), Arc::new(schema));
        }
    }
    let mut events = Vec::with_capacity(samples.len());
    for (line, sample) in samples {
        let bad = |detail: String| bad(line, detail);
        let (meta, schema_id, payload) = match sample {
            Sample::Row(row) => {
                let payload = base64::engine::general_purpose::STANDARD
                    .decode(&row.payload_binary)
                    .map_err(|e| bad(format!("payload_binary is not base64: {e}")))?;
                let meta = EventMeta {
                    org_id: row.org_id.as_str().into(),
                    channel: crate::sim::catalog::channel_for(&row.entity_name).into(),
                    replay_id: ReplayId::from_hex(&row.replay_id)
                        .map_err(|e| bad(format!("replay_id: {e}")))?,
                    event_id: row.event_id,
                };
                (meta, row.schema_id, payload)
            }
            // It holds a row the chain made (it did not fit its typed table): running the
            // chain on it again would transform it twice.
            Sample::Letter(letter) if letter.stage == crate::sink::Stage::Write => {
                eprintln!(
                    "{} line {line}: passed by, a dead letter of the write stage holds a row the chain already made (replay id {})",
                    path.display(),
                    letter.replay_id
                );
                continue;
            }
            Sample::Letter(letter) => {
                let meta = EventMeta {
                    org_id: letter.org_id.as_str().into(),
                    channel: letter.channel.as_str().into(),
                    replay_id: ReplayId::from_hex(&letter.replay_id)
                        .map_err(|e| bad(format!("replay_id: {e}")))?,
                    event_id: letter.event_id,
                };
                (meta, letter.schema_id, letter.payload)
            }
        };
        let schema = match parsed.get(&schema_id) {
            Some(schema) => schema.clone(),
            None => {
                let json = SchemaCache::kept(schemas, &schema_id).ok_or_else(|| {
                    bad(format!(
                        "schema {schema_id} is in neither a row of this file nor {}: give --schemas the run's state-dir/schemas (where a run keeps each schema it fetched), or add a row of that schema to the file",
                        schemas.display()
                    ))
                })?;
                let schema =
                    Arc::new(parse_schema(&schema_id, &json).map_err(|e| bad(e.to_string()))?);
                parsed.insert(schema_id, schema.clone());
                schema
            }
        };
        let event = decode_event(&schema, meta, payload.into()).map_err(|e| bad(e.to_string()))?;
        events.push(event);
    }
    Ok(events)
}

/// A line of an events file.
enum Sample {
    Row(SampleRow),
    Letter(crate::sink::DeadLetter),
}

fn load(
    spec: &TransformSpec,
    cache_dir: Option<PathBuf>,
) -> Result<(Chain, f64, LoadedFrom), AuthoringError> {
    let runtime = Arc::new(Runtime::new(RuntimeOptions {
        cache_dir,
        fuel: spec.limits.fuel.is_some(),
        ..Default::default()
    })?);
    let started = Instant::now();
    // Loaded once per runtime: the chain below finds it loaded.
    let (_, from) = runtime.program(&spec.name, &spec.path)?;
    let chain = Chain::load(runtime, std::slice::from_ref(spec))?;
    Ok((chain, started.elapsed().as_secs_f64() * 1e3, from))
}

/// How `transform test` prints.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// For a person: per event, what the chain did and the fields it changed.
    Changes,
    /// One JSON line per output (`table`, `row`) or failure (`dead_letter`).
    Json,
}

/// A failure: the transform, its error, the event's replay id (hex).
type Failure = (String, String, String);

/// What the chain made of one event: its outputs (re-encoded as a run re-encodes them) and
/// its failures.
struct Outcome {
    outputs: Vec<(Option<String>, ChangeEvent)>,
    dead: Vec<Failure>,
}

fn outcome(result: crate::transform::ChainOutput) -> Outcome {
    let mut dead: Vec<Failure> = result
        .failed
        .into_iter()
        .chain(result.stop)
        .map(|f| (f.transform, f.error, f.replay_id.to_hex()))
        .collect();
    let mut outputs = Vec::new();
    for routed in result.routed {
        let mut event = routed.event;
        match event.reencode() {
            Ok(()) => outputs.push((routed.table, event)),
            Err((by, error)) => dead.push((by.to_string(), error, event.replay_id.to_hex())),
        }
    }
    Outcome { outputs, dead }
}

/// A value as `transform test` shows it: JSON-like, long text cut.
fn show(value: Option<Value>) -> String {
    match value {
        None | Some(Value::Record(_)) => "(none)".into(),
        Some(Value::Null) => "null".into(),
        Some(Value::Bool(b)) => b.to_string(),
        Some(Value::Int(i)) => i.to_string(),
        Some(Value::Float(f)) => f.to_string(),
        Some(Value::Text(t)) if t.chars().count() > 80 => {
            format!("{:?}…", t.chars().take(80).collect::<String>())
        }
        Some(Value::Text(t)) => format!("{t:?}"),
        Some(Value::Bytes(b)) => format!("<{} bytes>", b.len()),
    }
}

/// The fields (and `nulled_fields` entries) that differ between `before` and `after`.
fn changes(before: &ChangeEvent, after: &ChangeEvent) -> Vec<String> {
    let mut lines: Vec<String> = before
        .schema
        .names
        .data_field_names()
        .into_iter()
        .filter_map(|name| {
            let (a, b) = (before.get(&name), after.get(&name));
            (a != b).then(|| format!("{name}: {} → {}", show(a), show(b)))
        })
        .collect();
    let (was, is) = (&before.header.nulled_fields, &after.header.nulled_fields);
    let added: Vec<&str> = is.iter().filter(|n| !was.contains(n)).copied().collect();
    let removed: Vec<&str> = was.iter().filter(|n| !is.contains(n)).copied().collect();
    if !added.is_empty() || !removed.is_empty() {
        let mut line = "nulled_fields:".to_string();
        for n in added {
            line.push_str(&format!(" +{n}"));
        }
        for n in removed {
            line.push_str(&format!(" -{n}"));
        }
        lines.push(line);
    }
    lines
}

/// One event's outcome for a person: which event, then kept / dropped / fanned out /
/// routed / dead-lettered, and the fields each output changed.
fn write_changes(
    out: &mut dyn Write,
    n: usize,
    before: &ChangeEvent,
    outcome: &Outcome,
) -> std::io::Result<()> {
    writeln!(
        out,
        "#{n} {} {} {} (replay {})",
        before.header.entity_name,
        before.header.change_type.as_str(),
        before.first_record_id(),
        before.replay_id.to_hex()
    )?;
    for (transform, error, _) in &outcome.dead {
        writeln!(out, "  dead-lettered by {transform}: {error}")?;
    }
    match outcome.outputs.len() {
        0 if outcome.dead.is_empty() => writeln!(out, "  dropped")?,
        0 => {}
        1 => {}
        k => writeln!(out, "  fanned out to {k} outputs")?,
    }
    let many = outcome.outputs.len() > 1;
    for (i, (table, after)) in outcome.outputs.iter().enumerate() {
        let to = match table {
            Some(t) => format!("→ table {t}"),
            None => "→ its own table".to_string(),
        };
        let label = if many {
            format!("[{}] ", i + 1)
        } else {
            String::new()
        };
        let changed = changes(before, after);
        if changed.is_empty() {
            writeln!(out, "  {label}kept {to}, unchanged")?;
        } else {
            writeln!(out, "  {label}kept {to}, changed:")?;
            for line in changed {
                writeln!(out, "    {line}")?;
            }
        }
    }
    Ok(())
}

/// Runs the component on each event and writes what it did to `out`, in `format`.
pub fn test(
    spec: &TransformSpec,
    events_path: &Path,
    schemas: &Path,
    cache_dir: Option<PathBuf>,
    format: Format,
    out: &mut dyn Write,
) -> Result<(), AuthoringError> {
    let events = read_events(events_path, schemas)?;
    let (mut chain, _, _) = load(spec, cache_dir)?;
    for (i, event) in events.into_iter().enumerate() {
        let before = (format == Format::Changes).then(|| event.clone());
        let result = outcome(chain.run(vec![event]));
        if let Some(before) = before {
            write_changes(out, i + 1, &before, &result)?;
            continue;
        }
        for (transform, error, replay_id) in &result.dead {
            let letter = serde_json::json!({"dead_letter": {"transform": transform, "error": error, "replay_id": replay_id}});
            writeln!(out, "{letter}")?;
        }
        for (table, event) in result.outputs {
            let line = serde_json::json!({"table": table, "row": Row::from_event(event, now_ms())});
            writeln!(out, "{line}")?;
        }
    }
    let stats = &chain.stats()[0];
    let mut summary = format!(
        "{}: {} in, {} out, {} dropped, {} dead-lettered",
        stats.name, stats.events_in, stats.events_out, stats.dropped, stats.dead_lettered
    );
    // The metrics it defines, as /metrics would show them.
    for (name, n) in &stats.metrics.counters {
        summary.push_str(&format!("; counter {name}={n}"));
    }
    for (name, v) in &stats.metrics.gauges {
        summary.push_str(&format!("; gauge {name}={v}"));
    }
    eprintln!("{summary}");
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
            LoadedFrom::Loaded => "already loaded",
        };
        write!(
            f,
            "{}: loaded in {:.1} ms ({from}), {:.2} µs/event over {} standard 30-field Account events",
            self.name, self.load_ms, self.us_per_event, self.events
        )
    }
}

/// `transform test`: the component of `args` on the events of `events` (dead letters' schemas
/// from `schemas`, by default the run's state directory's), off the async
/// workers (compiling takes seconds), what it did on standard output. With `watch`, again
/// each time the component or the events file changes, until interrupted; an error then
/// is printed and waited out, not fatal.
pub async fn test_command(
    args: &ComponentArgs,
    events: PathBuf,
    schemas: Option<PathBuf>,
    format: Format,
    watch: bool,
) -> Result<(), crate::Error> {
    // Where a run keeps its schemas when its state directory is the default or its
    // variable's.
    let schemas = schemas.unwrap_or_else(|| {
        let state = std::env::var_os("SFZB_STATE_DIR").unwrap_or_else(|| ".sfzb-state".into());
        crate::salesforce::schema::kept_dir(Path::new(&state))
    });
    let spec = args.spec()?;
    let cache = args.cache();
    let run = || {
        let (spec, events, cache) = (spec.clone(), events.clone(), cache.clone());
        let schemas = schemas.clone();
        async move {
            tokio::task::spawn_blocking(move || {
                let out = &mut std::io::stdout().lock();
                test(&spec, &events, &schemas, cache, format, out)
            })
            .await
            .expect("transform test does not panic")
        }
    };
    if !watch {
        return Ok(run().await?);
    }
    // Armed before the first run reads the files: a change made while it runs (or once its
    // output is out) is seen, not lost between the run and the watch.
    let cancel = tokio_util::sync::CancellationToken::new();
    let paths = vec![spec.path.clone(), events.clone()];
    let mut changed = crate::watch::changes(paths, "the transform and its events", cancel.clone());
    if let Err(error) = run().await {
        eprintln!("{error}");
    }
    eprintln!(
        "Watching {} and {}; Ctrl-C stops.",
        spec.path.display(),
        events.display()
    );
    while changed.recv().await.is_some() {
        println!("--- {} ---", spec.path.display());
        if let Err(error) = run().await {
            eprintln!("{error}");
        }
    }
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
