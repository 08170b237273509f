//! `cargo bench --bench transform`: the cost of the WIT design, per event, on the standard
//! 30-field Account event with a Rust mask transform, and the mask in hash mode in each
//! language, as `sfzb-host transform bench` measures it.
//!
//! - chosen: the event is a host resource; the guest gets and sets only what it touches
//!   (`wit/transform.wit`, through the real chain: the same code a run uses).
//! - rejected: the whole event is lowered into the guest as a typed record and lifted back
//!   (`benches/wit-record/record.wit`), including the host-side conversions both ways.
//! - hash mode: two fields pseudonymised with the host's `hmac-sha256`, in Rust, Python
//!   (componentize-py) and JavaScript (componentize-js).

// The tests' guest builder.
#[path = "../tests/all/guests.rs"]
mod guests;

use std::time::Instant;

use sfzb_host::config::file::TransformSection;
use sfzb_host::event::Value;
use sfzb_host::sim::catalog::Entity;
use sfzb_host::sim::generator::standard_account_event;
use sfzb_host::transform::{Chain, Keys, OnError, Runtime, RuntimeOptions, TransformSpec};
use wasmtime::component::{Component, Linker};
use wasmtime::{Config, Engine, Store};

mod record {
    wasmtime::component::bindgen!({ path: "benches/wit-record", world: "transform-record" });
}

const EVENTS: usize = 50_000;

struct Wasi {
    ctx: wasmtime_wasi::WasiCtx,
    table: wasmtime::component::ResourceTable,
}

impl wasmtime_wasi::WasiView for Wasi {
    fn ctx(&mut self) -> wasmtime_wasi::WasiCtxView<'_> {
        wasmtime_wasi::WasiCtxView {
            ctx: &mut self.ctx,
            table: &mut self.table,
        }
    }
}

/// A non-null leaf value in the record design's type.
fn leaf(value: &Value) -> Option<record::Value> {
    Some(match value {
        Value::Null | Value::Record(_) => return None,
        Value::Bool(b) => record::Value::Boolean(*b),
        Value::Int(i) => record::Value::Integer(*i),
        Value::Float(f) => record::Value::Float(*f),
        Value::Text(t) => record::Value::Text(t.to_string()),
        Value::Bytes(b) => record::Value::Bytes(b.clone()),
    })
}

fn main() {
    let entity = Entity::load("Account").unwrap().unwrap();
    let standard = standard_account_event(&entity);
    let fields = "PersonEmail,Phone";
    let resource_us = resource_design(&standard, fields);
    let record_us = record_design(&standard);
    println!("Rust mask ({fields}) on the standard 30-field Account event, {EVENTS} events:");
    println!("  chosen   (event as a host resource): {resource_us:.2} µs/event (target ≤ 3 µs)");
    println!("  rejected (event as a typed record):  {record_us:.2} µs/event");
    println!("mask mode=hash ({fields}, the host's hmac-sha256), as `transform bench` measures:");
    let cache = guests::dir().join("../compile-cache");
    for (lang, component, events, target) in [
        ("Rust", guests::component("mask"), 50_000, 5),
        ("Python", guests::polyglot("python", "mask"), 20_000, 20),
        ("JavaScript", guests::polyglot("js", "mask"), 5_000, 100),
    ] {
        let spec = TransformSpec {
            name: "mask".into(),
            path: component,
            config: vec![
                ("fields".into(), fields.into()),
                ("mode".into(), "hash".into()),
                ("key".into(), "pii".into()),
            ],
            on_error: OnError::DeadLetter,
            limits: TransformSection::default().limits(),
            allow_tables: vec![],
            keys: Keys::default().with("pii", b"bench-key"),
            scope: None,
        };
        let report = sfzb_host::authoring::bench(&spec, events, Some(cache.clone())).unwrap();
        println!(
            "  {lang:<10} {:>7.2} µs/event over {} events (target ≤ {target} µs)",
            report.us_per_event, report.events
        );
    }
}

/// The chosen design through the host's own chain: µs per event.
fn resource_design(standard: &sfzb_host::event::ChangeEvent, fields: &str) -> f64 {
    let runtime = std::sync::Arc::new(Runtime::new(RuntimeOptions::default()).unwrap());
    let spec = TransformSpec {
        name: "mask".into(),
        path: guests::component("mask"),
        config: vec![("fields".into(), fields.into())],
        on_error: OnError::DeadLetter,
        limits: TransformSection::default().limits(),
        allow_tables: vec![],
        keys: Default::default(),
        scope: None,
    };
    let mut chain = Chain::load(runtime, &[spec]).unwrap();
    chain.run(vec![standard.clone(); 200]);
    let mut elapsed = 0.0;
    for _ in 0..EVENTS / 500 {
        let batch = vec![standard.clone(); 500];
        let started = Instant::now();
        let out = chain.run(batch);
        elapsed += started.elapsed().as_secs_f64();
        assert_eq!(
            out.routed[0].event.get("PersonEmail"),
            Some(Value::Text("REDACTED".into()))
        );
    }
    elapsed * 1e6 / EVENTS as f64
}

/// The event as the record design's typed record: every leaf field, compound children by
/// their dotted names.
fn to_record(e: &sfzb_host::event::ChangeEvent) -> record::Event {
    let mut fields = Vec::with_capacity(32);
    for (at, value) in e.fields.iter() {
        let name = e.schema.names.top[at + 1];
        match value {
            Value::Record(children) => {
                for child in children {
                    if let Some(value) = leaf(&child.value) {
                        fields.push(record::Field {
                            name: format!("{name}.{}", child.name),
                            value,
                        });
                    }
                }
            }
            other => {
                if let Some(value) = leaf(other) {
                    fields.push(record::Field {
                        name: name.to_string(),
                        value,
                    });
                }
            }
        }
    }
    record::Event {
        org_id: e.org_id.to_string(),
        channel: e.channel.to_string(),
        event_id: e.event_id.clone(),
        replay_id: e.replay_id.to_hex(),
        schema_id: e.schema.id.clone(),
        entity_name: e.header.entity_name.clone(),
        change_type: e.header.change_type.to_string(),
        record_ids: e.header.record_ids.clone(),
        changed_fields: e
            .header
            .changed_fields
            .iter()
            .map(|n| n.to_string())
            .collect(),
        nulled_fields: e
            .header
            .nulled_fields
            .iter()
            .map(|n| n.to_string())
            .collect(),
        diff_fields: e.header.diff_fields.iter().map(|n| n.to_string()).collect(),
        commit_timestamp: e.header.commit_timestamp,
        fields,
    }
}

fn from_record(value: record::Value) -> Value {
    match value {
        record::Value::Null => Value::Null,
        record::Value::Boolean(b) => Value::Bool(b),
        record::Value::Integer(i) => Value::Int(i),
        record::Value::Float(f) => Value::Float(f),
        record::Value::Text(t) => Value::Text(t.into()),
        record::Value::Bytes(b) => Value::Bytes(b),
    }
}

/// The rejected design, a component taking and returning typed records: µs per event.
fn record_design(standard: &sfzb_host::event::ChangeEvent) -> f64 {
    let mut config = Config::new();
    config.wasm_component_model(true);
    config.epoch_interruption(true);
    let engine = Engine::new(&config).unwrap();
    let component = Component::from_file(&engine, guests::component("bench-record-mask")).unwrap();
    let mut linker: Linker<Wasi> = Linker::new(&engine);
    wasmtime_wasi::p2::add_to_linker_sync(&mut linker).unwrap();
    let mut store = Store::new(
        &engine,
        Wasi {
            ctx: wasmtime_wasi::WasiCtx::builder().build(),
            table: Default::default(),
        },
    );
    store.set_epoch_deadline(u64::MAX / 2);
    let bindings = record::TransformRecord::instantiate(&mut store, &component, &linker).unwrap();
    assert_eq!(to_record(standard).fields.len(), 30);
    let by: std::sync::Arc<str> = "mask".into();
    let started = Instant::now();
    for _ in 0..EVENTS {
        let mut event = standard.clone();
        let input = to_record(&event);
        let output = bindings.call_process(&mut store, &input).unwrap().unwrap();
        for field in output.into_iter().next().unwrap().fields {
            event.set(&field.name, from_record(field.value), &by);
        }
        assert_eq!(
            event.get("PersonEmail"),
            Some(Value::Text("REDACTED".into()))
        );
    }
    started.elapsed().as_secs_f64() * 1e6 / EVENTS as f64
}
