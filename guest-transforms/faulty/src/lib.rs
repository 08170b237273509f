//! `faulty`: misbehaves on purpose, for testing that a bad transform never stops the stream.
//!
//! Config: `mode=trap|loop|alloc|error|malformed|bad-table|fanout` and `every=N` (misbehave on
//! every Nth event, pass the others through; default 1). `fanout` returns the event twice;
//! no mode at all is an error on every event.
//!
//! Hostile modes, each inside the memory and time limits, aimed at the host's memory, logs
//! and files: `set-bomb` (sets 20 text fields to strings of `kib=N` KiB, default 512: 10 MiB an
//! event, no one value over 1 MiB), `fanout-bomb` (2,000 copies), `stash` (keeps 50 copies of every event across
//! calls), `hoard` (keeps every event it is given, returns a copy), `log-flood` (3,000 lines),
//! `table-flood` (a new table for every event), `escape` (routes to `hr.payroll.salaries`),
//! `leak` (keeps 1 MiB of its own memory per event, and passes the event on), `print` (a
//! line on stdout and one on stderr per event, which the host logs). Other
//! settings are ignored, so it can stand in for another transform in reload tests.

use std::cell::{Cell, RefCell};

wit_bindgen::generate!({ path: "../../wit", world: "transform" });

use sfzb::transform::host::{Level, log};
use sfzb::transform::types::{Value, ValueKind};

struct Faulty;

thread_local! {
    static MODE: RefCell<String> = RefCell::new(String::new());
    static EVERY: Cell<u64> = const { Cell::new(1) };
    static KIB: Cell<usize> = const { Cell::new(512) };
    static SEEN: Cell<u64> = const { Cell::new(0) };
    static STASH: RefCell<Vec<Event>> = const { RefCell::new(Vec::new()) };
    static LEAK: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
}

impl Guest for Faulty {
    fn init(config: Vec<(String, String)>) -> Result<(), String> {
        for (key, value) in config {
            match key.as_str() {
                "mode" => MODE.with(|m| *m.borrow_mut() = value),
                "every" => {
                    let every = value.parse().map_err(|_| format!("every={value} is not a number"))?;
                    EVERY.with(|e| e.set(every));
                }
                "kib" => {
                    let kib = value.parse().map_err(|_| format!("kib={value} is not a number"))?;
                    KIB.with(|k| k.set(kib));
                }
                _ => {}
            }
        }
        Ok(())
    }

    fn process(event: Event) -> Result<Vec<Output>, String> {
        let seen = SEEN.with(|s| {
            s.set(s.get() + 1);
            s.get()
        });
        if seen % EVERY.with(Cell::get).max(1) != 0 {
            return Ok(vec![Output { event, table: None }]);
        }
        let mode = MODE.with(|m| m.borrow().clone());
        log(Level::Warn, &format!("misbehaving ({mode}) on event {}", event.replay_id()));
        match mode.as_str() {
            "trap" => core::arch::wasm32::unreachable(),
            "loop" => {
                let mut n: u64 = 0;
                loop {
                    n = std::hint::black_box(n.wrapping_add(1));
                }
            }
            "alloc" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![1u8; 1 << 20]);
                    std::hint::black_box(&hoard);
                }
            }
            "error" => Err(format!("refusing event {}", event.event_id())),
            "malformed" => {
                let name = event.field_names().into_iter().next().unwrap_or_default();
                event.set(&name, &Value::Bytes(vec![0xde, 0xad]))?;
                Ok(vec![Output { event, table: None }])
            }
            "bad-table" => Ok(vec![Output { event, table: Some("no such table!".into()) }]),
            "fanout" => {
                let copy = event.duplicate();
                Ok(vec![Output { event, table: None }, Output { event: copy, table: None }])
            }
            "set-bomb" => {
                let big = "x".repeat(KIB.with(Cell::get) << 10);
                // Text fields only: the event stays valid for its schema, just large.
                let text = |name: &String| {
                    event.field_type(name).is_some_and(|t| t.kind == ValueKind::Text)
                };
                for name in event.field_names().into_iter().filter(text).take(20) {
                    event.set(&name, &Value::Text(big.clone()))?;
                }
                Ok(vec![Output { event, table: None }])
            }
            "fanout-bomb" => {
                let mut out: Vec<Output> = (0..2000)
                    .map(|_| Output { event: event.duplicate(), table: None })
                    .collect();
                out.push(Output { event, table: None });
                Ok(out)
            }
            "hoard" => {
                let copy = event.duplicate();
                STASH.with(|s| s.borrow_mut().push(event));
                Ok(vec![Output { event: copy, table: None }])
            }
            "stash" => {
                STASH.with(|s| s.borrow_mut().extend((0..50).map(|_| event.duplicate())));
                Ok(vec![Output { event, table: None }])
            }
            "log-flood" => {
                for i in 0..3000 {
                    log(Level::Error, &format!("flood line {i} of event {}", event.replay_id()));
                }
                Ok(vec![Output { event, table: None }])
            }
            "print" => {
                println!("printed on stdout by event {}", event.replay_id());
                eprintln!("printed on stderr by event {}", event.replay_id());
                Ok(vec![Output { event, table: None }])
            }
            "table-flood" => {
                let table = format!("t_{}", event.replay_id());
                Ok(vec![Output { event, table: Some(table) }])
            }
            "escape" => Ok(vec![Output { event, table: Some("hr.payroll.salaries".into()) }]),
            "leak" => {
                LEAK.with(|l| l.borrow_mut().push(std::hint::black_box(vec![1u8; 1 << 20])));
                Ok(vec![Output { event, table: None }])
            }
            other => Err(format!("unknown mode {other}")),
        }
    }
}

export!(Faulty);
