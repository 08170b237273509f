//! One subscription: its channel, sink, dead-letter place, start position and flow control.

use std::time::Duration;

use super::file::SubscriptionSection;
use super::{ConfigError, SubscriptionConfig, invalid, missing, rekey};
use crate::cli::TransformArgs;
use crate::event::ReplayId;
use crate::salesforce::pubsub::StartPosition;
use crate::sink::{Layout, SinkSpec};

pub(super) fn subscription_config(
    prefix: &str,
    section: SubscriptionSection,
    flags: &TransformArgs,
    org: &str,
) -> Result<SubscriptionConfig, ConfigError> {
    let key = |k: &str| format!("{prefix}{k}");
    let channel = section.channel.as_deref().ok_or_else(|| {
        missing(
            key("channel"),
            "pass --channel (e.g. AccountChangeEvent) or set channel in each [[subscription]] of sfzb.toml",
        )
    })?;
    let channel = normalize_channel(channel).map_err(|e| rekey(e, &key("channel")))?;
    let sink = sink_spec(&key("sink"), &section.sink())?;
    let layout = section.layout();
    check_layout(&key("layout"), layout, &channel, &sink)?;
    let snapshot = section.snapshot();
    if snapshot && layout != Layout::Typed {
        return Err(invalid(
            key("snapshot"),
            "true",
            "a snapshot fills a typed table (its records have columns, not change payloads): set layout = \"typed\"",
        ));
    }
    if snapshot && (section.replay.is_some() || !section.enable_replay_recovery()) {
        return Err(invalid(
            key("snapshot"),
            "true",
            "a snapshot hands over to the stream at the position it captured: leave replay unset and enable-replay-recovery on",
        ));
    }
    if snapshot && crate::event::object_of(&channel).is_none() {
        return Err(invalid(
            key("snapshot"),
            "true",
            format!(
                "{channel} is not the channel of one object: snapshot one object per subscription, e.g. /data/AccountChangeEvent"
            ),
        ));
    }
    let current_state = match &section.current_state {
        Some(spec) => Some(current_state_spec(
            &key("current-state"),
            spec,
            &channel,
            layout,
            &sink,
        )?),
        None => None,
    };
    let interval = section.current_state_interval_secs();
    if !(interval.is_finite() && interval >= 0.0) {
        return Err(invalid(
            key("current-state-interval-secs"),
            interval.to_string(),
            "give seconds, 0 or more",
        ));
    }
    let dead_letter = match &section.dead_letter {
        Some(spec) => Some(spec.parse().map_err(|e: crate::sink::SinkSpecError| {
            invalid(key("dead-letter"), spec, e.to_string())
        })?),
        None => None,
    };
    let replay = section
        .replay
        .as_deref()
        .map(parse_replay)
        .transpose()
        .map_err(|e| rekey(e, &key("replay")))?;
    let idle_timeout_secs = section.idle_timeout_secs();
    if idle_timeout_secs == 0 {
        return Err(invalid(
            key("idle-timeout-secs"),
            "0",
            "give a positive number of seconds (Salesforce sends a keepalive within 270 s)",
        ));
    }
    let batch_size = section.batch_size();
    if !(1..=100).contains(&batch_size) {
        return Err(invalid(
            key("batch-size"),
            batch_size.to_string(),
            "give 1 to 100 (Salesforce sends at most 100 events per request)",
        ));
    }
    Ok(SubscriptionConfig {
        channel,
        sink,
        layout,
        snapshot,
        current_state,
        current_state_deletes: section.current_state_deletes(),
        current_state_interval: Duration::from_secs_f64(interval),
        dead_letter,
        replay,
        backfill_historical: section.backfill_historical(),
        replay_recovery: section.enable_replay_recovery(),
        batch_size,
        idle_timeout: Duration::from_secs(idle_timeout_secs),
        max_timeouts: section.max_timeouts().max(1),
        on_invalid_replay: section.replay_invalid(),
        managed_subscription: section.managed_subscription.filter(|n| !n.is_empty()),
        transforms: super::chain::chain_specs(
            prefix,
            section.transforms.unwrap_or_default(),
            flags,
            org,
        )?,
    })
}

/// A sink this binary can write: a Delta table on an object store needs the `cloud`
/// feature, and a Zerobus table its full name.
fn sink_spec(key: &str, text: &str) -> Result<SinkSpec, ConfigError> {
    let sink: SinkSpec = text
        .parse()
        .map_err(|e: crate::sink::SinkSpecError| invalid(key, text, e.to_string()))?;
    if let SinkSpec::Delta(target) = &sink
        && target.contains("://")
        && !target.starts_with("file://")
        && !cfg!(feature = "cloud")
    {
        return Err(invalid(
            key,
            text,
            "object store tables (s3://, abfss://, gs://) are not built into this binary: build it with `cargo build --release --features cloud`, write to a local path, or use zerobus:catalog.schema.table for Databricks",
        ));
    }
    if let SinkSpec::Zerobus(table) = &sink
        && (table.split('.').count() != 3 || table.split('.').any(str::is_empty))
    {
        return Err(invalid(
            key,
            text,
            "Zerobus tables are named in full: zerobus:catalog.schema.table",
        ));
    }
    Ok(sink)
}

/// A current-state table: a local Delta table following the subscription's typed Delta
/// table of one object.
fn current_state_spec(
    key: &str,
    text: &str,
    channel: &str,
    layout: Layout,
    sink: &SinkSpec,
) -> Result<SinkSpec, ConfigError> {
    // One object per subscription: `{object}` is the channel's.
    let text = match crate::event::object_of(channel) {
        Some(object) => text.replace("{object}", &object),
        None => text.to_string(),
    };
    let text = text.as_str();
    let spec = sink_spec(key, text)?;
    if !matches!(spec, SinkSpec::Delta(_)) {
        return Err(invalid(
            key,
            text,
            "a current-state table is a Delta table: delta:PATH",
        ));
    }
    if layout != Layout::Typed || !matches!(sink, SinkSpec::Delta(_)) {
        return Err(invalid(
            key,
            text,
            "a current-state table follows a typed change table in Delta: set layout = \"typed\" and sink = \"delta:PATH\" (the Databricks pipeline builds it from a Zerobus table, see deploy/)",
        ));
    }
    if crate::event::object_of(channel).is_none() {
        return Err(invalid(
            key,
            text,
            format!(
                "{channel} is not the channel of one object: keep the current state of one object per subscription, e.g. /data/AccountChangeEvent"
            ),
        ));
    }
    Ok(spec)
}

/// A typed table holds one object; a table per object through Zerobus is typed.
fn check_layout(
    key: &str,
    layout: Layout,
    channel: &str,
    sink: &SinkSpec,
) -> Result<(), ConfigError> {
    if layout != Layout::Typed {
        if matches!(sink, SinkSpec::Zerobus(_)) && sink.object_template().is_some() {
            return Err(invalid(
                key,
                "reference",
                "{object} in a Zerobus table name (a table per object) is for layout = \"typed\", which creates the tables; name one table for the reference layout",
            ));
        }
        return Ok(());
    }
    let one_object = channel.ends_with("ChangeEvent") && channel.starts_with("/data/");
    if !one_object && sink.object_template().is_none() {
        return Err(invalid(
            key,
            "typed",
            format!(
                "{channel} carries several objects and a typed table holds one: put {{object}} in the sink's table name ({})",
                match sink {
                    SinkSpec::Jsonl(_) => "jsonl:./out/{object}.jsonl",
                    SinkSpec::Zerobus(_) => "zerobus:main.salesforce.{object}",
                    SinkSpec::Delta(_) => "delta:./tables/{object}",
                }
            ),
        ));
    }
    Ok(())
}

/// `AccountChangeEvent` → `/data/AccountChangeEvent`; full channel names are kept.
pub fn normalize_channel(channel: &str) -> Result<String, ConfigError> {
    let channel = channel.trim();
    if channel.is_empty() || channel.contains(char::is_whitespace) {
        return Err(invalid(
            "channel",
            channel,
            "name a channel such as /data/AccountChangeEvent or /data/ChangeEvents",
        ));
    }
    if channel.starts_with('/') {
        let parts: Vec<&str> = channel.split('/').collect();
        if parts.len() != 3 || parts[2].is_empty() || !matches!(parts[1], "data" | "event") {
            return Err(invalid(
                "channel",
                channel,
                "channels look like /data/AccountChangeEvent, /data/ChangeEvents, /data/Foo__chn or /event/Foo__e",
            ));
        }
        return Ok(channel.to_string());
    }
    Ok(format!("/data/{channel}"))
}

pub fn parse_replay(text: &str) -> Result<StartPosition, ConfigError> {
    match text.to_ascii_lowercase().as_str() {
        "earliest" => Ok(StartPosition::Earliest),
        "latest" => Ok(StartPosition::Latest),
        _ => ReplayId::from_hex(text)
            .map(StartPosition::Custom)
            .map_err(|_| {
                invalid(
                    "replay",
                    text,
                    "use earliest, latest, or a replay id in hex as shown in the logs",
                )
            }),
    }
}
