//! The replay itself. Letters are grouped by org and channel; each group goes to the
//! subscription of the run's configuration that reads that channel of that org (an org is
//! known by the id its login returns), whose chain and sink it then uses: the letters'
//! schemas fetched from the org (a letter keeps only the schema id), decoded, run through
//! the chain one by one (so each output is its letter's), written, flushed, and only then
//! recorded in the ledger.
//!
//! A letter that failed in decode or in a transform holds the event as received, so it
//! runs through the whole chain again; one that failed in the write (it did not fit its
//! typed table) holds the row the chain made, written as it is to the sink's own table.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::ReplayError;
use super::ledger::{Key, Ledger};
use super::read::Source;
use crate::backoff::Backoff;
use crate::cli::ReplayArgs;
use crate::config::RunPlan;
use crate::event::{ChangeEvent, ReplayId};
use crate::pipeline::{PipelineError, open_sink, to_row};
use crate::salesforce::pubsub::PubSubConnection;
use crate::salesforce::schema::{EventMeta, SchemaCache, decode_event, kept_dir};
use crate::sink::zerobus::ZerobusPool;
use crate::sink::{DeadLetter, Row, Stage};
use crate::supervisor::connections::Connections;
use crate::transform::{Chain, OnError, Routed, Runtime};

/// How long a login may keep failing on what may pass before its org's letters are given up
/// for this replay.
const LOGIN_PATIENCE: Duration = Duration::from_secs(30);

/// Failing letters the summary lists one by one; the rest are counted.
const LISTED: usize = 20;

/// What a replay did.
#[derive(Debug, Default)]
pub struct Report {
    pub from: String,
    pub ledger: PathBuf,
    /// Letters read.
    pub read: usize,
    /// Letters the ledger holds: replayed before.
    pub already: usize,
    /// Letters read more than once (an event dead-lettered again after a restart).
    pub duplicates: usize,
    /// Letters replayed now: written, dropped by the chain, or holding no event.
    pub replayed: usize,
    /// Rows written for them.
    pub rows: usize,
    /// Of `replayed`, those the chain dropped.
    pub dropped: usize,
    /// Of `replayed`, those that held no event (a position the Pub/Sub API sent empty).
    pub empty: usize,
    pub failing: Vec<Failing>,
    pub targets: BTreeSet<String>,
}

/// A letter that failed again, and why.
#[derive(Debug)]
pub struct Failing {
    pub org_id: String,
    pub channel: String,
    pub replay_id: String,
    pub stage: String,
    pub reason: String,
}

impl Report {
    fn fail(&mut self, letter: &DeadLetter, reason: String) {
        tracing::warn!(org_id = %letter.org_id, channel = %letter.channel, replay_id = %letter.replay_id, %reason, "Dead letter still fails; it stays for the next replay.");
        self.failing.push(Failing {
            org_id: letter.org_id.clone(),
            channel: letter.channel.clone(),
            replay_id: letter.replay_id.clone(),
            stage: letter.stage.label(),
            reason,
        });
    }

    /// What a person reads: the counts, then each letter that still fails.
    pub fn summary(&self) -> String {
        let targets = match self.targets.is_empty() {
            true => "nowhere".to_string(),
            false => self.targets.iter().cloned().collect::<Vec<_>>().join(", "),
        };
        let mut text = format!(
            "Replayed {} of {} dead letters from {}: {} rows written to {targets}, {} dropped by the chain, {} held no event; {} already replayed, {} duplicates; {} still failing. Ledger: {}\n",
            self.replayed,
            self.read,
            self.from,
            self.rows,
            self.dropped,
            self.empty,
            self.already,
            self.duplicates,
            self.failing.len(),
            self.ledger.display(),
        );
        for f in self.failing.iter().take(LISTED) {
            text.push_str(&format!(
                "  still failing: org {} {} replay id {} ({}): {}\n",
                f.org_id, f.channel, f.replay_id, f.stage, f.reason
            ));
        }
        if self.failing.len() > LISTED {
            text.push_str(&format!(
                "  … and {} more (the log has each)\n",
                self.failing.len() - LISTED
            ));
        }
        text
    }

    /// An error when any letter still fails, so that scripts can tell.
    pub fn into_result(self) -> Result<Report, ReplayError> {
        match self.failing.len() {
            0 => Ok(self),
            count => Err(ReplayError::StillFailing {
                count,
                from: self.from,
            }),
        }
    }
}

/// Replays the letters of `args.from` that the ledger does not hold yet.
pub async fn replay(args: &ReplayArgs, cancel: CancellationToken) -> Result<Report, crate::Error> {
    let source: Source = args.from.parse()?;
    let plan = args.run.plan()?;
    let ledger_path = match &args.ledger {
        Some(path) => path.clone(),
        None => source.default_ledger()?,
    };
    let mut ledger = Ledger::open(&ledger_path)?;
    let letters = source.read().await?;
    let mut report = Report {
        from: source.to_string(),
        ledger: ledger_path,
        read: letters.len(),
        ..Report::default()
    };
    let mut groups: BTreeMap<(String, String), Vec<DeadLetter>> = BTreeMap::new();
    let mut seen = HashSet::new();
    for letter in letters {
        let key = Key::of(&letter);
        if ledger.contains(&key) {
            report.already += 1;
        } else if !seen.insert(key) {
            report.duplicates += 1;
        } else {
            groups
                .entry((letter.org_id.clone(), letter.channel.clone()))
                .or_default()
                .push(letter);
        }
    }
    if groups.is_empty() {
        return Ok(report);
    }
    let mut orgs = Orgs::new(&plan);
    let replay = Replay {
        plan: &plan,
        runtime: crate::supervisor::transform_runtime(&plan).await?,
        zerobus: Arc::new(ZerobusPool::new(
            &plan.options.zerobus,
            plan.options.sql.as_ref(),
        )),
        kept: kept_dir(&plan.options.state_dir),
        schemas: SchemaCache::keeping_in(kept_dir(&plan.options.state_dir)),
    };
    for ((org_id, channel), letters) in groups {
        if cancel.is_cancelled() {
            let reason = "not replayed: the replay was stopped".to_string();
            letters.iter().for_each(|l| report.fail(l, reason.clone()));
            continue;
        }
        let span = tracing::info_span!("replay", org_id = %org_id, channel = %channel);
        let found = orgs
            .find(&org_id, &channel, &cancel)
            .instrument(span.clone())
            .await;
        let (subscription, connection) = match found {
            Ok(found) => found,
            Err(reason) => {
                let _entered = span.enter();
                letters.iter().for_each(|l| report.fail(l, reason.clone()));
                continue;
            }
        };
        replay
            .group(subscription, &connection, letters, &mut ledger, &mut report)
            .instrument(span)
            .await?;
    }
    Ok(report)
}

/// The orgs of the plan, logged in on first need to learn their ids.
struct Orgs<'a> {
    plan: &'a RunPlan,
    connections: Connections,
    /// Per org (index into the plan's orgs), its session or why it could not log in.
    sessions: HashMap<usize, Result<PubSubConnection, String>>,
}

impl<'a> Orgs<'a> {
    fn new(plan: &'a RunPlan) -> Orgs<'a> {
        Orgs {
            plan,
            connections: Connections::new(),
            sessions: HashMap::new(),
        }
    }

    /// The subscription (index into the plan's) that reads `channel` of org `org_id`, and
    /// the org's session; or why there is none.
    async fn find(
        &mut self,
        org_id: &str,
        channel: &str,
        cancel: &CancellationToken,
    ) -> Result<(usize, PubSubConnection), String> {
        let candidates: Vec<usize> = (0..self.plan.subscriptions.len())
            .filter(|i| self.plan.subscriptions[*i].config.channel == channel)
            .collect();
        if candidates.is_empty() {
            return Err(format!(
                "no subscription of the configuration reads {channel}: give the run's configuration (--config) or --channel"
            ));
        }
        let mut failures = Vec::new();
        for i in candidates {
            let org = self.plan.subscriptions[i].org;
            match self.session(org, cancel).await {
                Ok(session) if session.org_id().as_deref() == Some(org_id) => {
                    return Ok((i, session));
                }
                Ok(_) => {}
                Err(error) => failures.push(format!("{}: {error}", self.plan.orgs[org].name)),
            }
        }
        Err(match failures.is_empty() {
            true => format!(
                "no org of the configuration that reads {channel} logged in as {org_id}: add that org (with its credentials) to the configuration"
            ),
            false => format!(
                "no org that logged in is {org_id}, and some could not log in: {}",
                failures.join("; ")
            ),
        })
    }

    async fn session(
        &mut self,
        org: usize,
        cancel: &CancellationToken,
    ) -> Result<PubSubConnection, String> {
        if let Some(known) = self.sessions.get(&org) {
            return known.clone();
        }
        let config = &self.plan.orgs[org];
        let session = match self.connections.assign(config) {
            Ok((session, _)) => {
                let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(5));
                session
                    .login_retrying(0, &mut backoff, cancel, Some(LOGIN_PATIENCE))
                    .await
                    .map(|_| session)
                    .map_err(|e| format!("login failed: {e}"))
            }
            Err(e) => Err(e.to_string()),
        };
        self.sessions.insert(org, session.clone());
        session
    }
}

/// What every group of a replay uses.
struct Replay<'a> {
    plan: &'a RunPlan,
    runtime: Option<Arc<Runtime>>,
    zerobus: Arc<ZerobusPool>,
    /// Where the run keeps its schemas: read before asking the org, and kept in.
    kept: PathBuf,
    schemas: SchemaCache,
}

/// A letter decoded, with what the chain made of it.
struct Decoded {
    letter: DeadLetter,
    outcome: Result<Vec<Routed>, String>,
}

impl Replay<'_> {
    /// The letters of one org and channel, through `subscription`'s chain to its sink.
    async fn group(
        &self,
        subscription: usize,
        connection: &PubSubConnection,
        letters: Vec<DeadLetter>,
        ledger: &mut Ledger,
        report: &mut Report,
    ) -> Result<(), crate::Error> {
        let config = &self.plan.subscriptions[subscription].config;
        tracing::info!(letters = letters.len(), sink = %config.sink, "Replaying dead letters.");
        let mut decoded = Vec::with_capacity(letters.len());
        let mut done = Vec::new();
        for letter in letters {
            if letter.schema_id.is_empty() && letter.payload.is_empty() {
                done.push((Key::of(&letter), letter.stage.label()));
                continue;
            }
            match self.decode(connection, &letter).await {
                Ok(event) => decoded.push((letter, event)),
                Err(reason) => report.fail(&letter, reason),
            }
        }
        report.empty += done.len();
        let mut outcomes = Vec::new();
        match self.chain(config).await {
            Ok(chain) => outcomes = run_chain(chain, decoded).await,
            Err(error) => {
                let reason = format!("the chain did not load: {}", error.describe());
                decoded
                    .iter()
                    .for_each(|(l, _)| report.fail(l, reason.clone()));
            }
        }
        if !outcomes.is_empty() {
            match self.write(config, &mut outcomes).await {
                Ok(written) => {
                    for (d, rows) in outcomes.iter().zip(written) {
                        match &d.outcome {
                            Err(reason) => report.fail(&d.letter, reason.clone()),
                            Ok(_) => {
                                done.push((Key::of(&d.letter), d.letter.stage.label()));
                                report.rows += rows;
                                report.dropped += usize::from(rows == 0);
                            }
                        }
                    }
                }
                Err(error) => {
                    let reason = format!(
                        "cannot write to {}: {}; rows sent before the failure may be written again by the next replay",
                        config.sink,
                        crate::Error::from(error).describe()
                    );
                    outcomes
                        .iter()
                        .for_each(|d| report.fail(&d.letter, reason.clone()));
                }
            }
        }
        report.replayed += done.len();
        if !done.is_empty() {
            report.targets.insert(config.sink.to_string());
        }
        // Durable: recorded now, so that no later replay writes them again.
        ledger.record(done, &config.sink.to_string())?;
        Ok(())
    }

    /// The subscription's chain, loaded for a replay: a transform's failure keeps its letter
    /// (`on-error = stop` would end the replay for one event).
    async fn chain(
        &self,
        config: &crate::config::SubscriptionConfig,
    ) -> Result<Option<Chain>, crate::Error> {
        let Some(runtime) = self
            .runtime
            .as_ref()
            .filter(|_| !config.transforms.is_empty())
        else {
            return Ok(None);
        };
        let specs: Vec<_> = config
            .transforms
            .iter()
            .cloned()
            .map(|mut spec| {
                if spec.on_error == OnError::Stop {
                    spec.on_error = OnError::DeadLetter;
                }
                spec
            })
            .collect();
        let mut chain = crate::supervisor::load_chain_with(runtime.clone(), &specs).await?;
        if let Some(chain) = chain.as_mut() {
            chain.set_home(config.sink.home_schema());
        }
        Ok(chain)
    }

    /// Each letter's outputs as rows to the subscription's sink, flushed: how many rows of
    /// each letter were written. A letter one of whose outputs cannot be a row writes none;
    /// one that gets a misfit (a typed table) becomes failed, its other rows written.
    async fn write(
        &self,
        config: &crate::config::SubscriptionConfig,
        outcomes: &mut [Decoded],
    ) -> Result<Vec<usize>, PipelineError> {
        // The replay's own writer: a Delta sink keeps the pipeline's checkpoint under the
        // subscription's id, which a replay must not move.
        let first = &outcomes[0].letter;
        let app_id = format!("sfzb-replay:{}:{}", first.org_id, first.channel);
        let mut sink = open_sink(config, &self.plan.options, &self.zerobus, &app_id).await?;
        let processed = crate::clock::now_ms();
        // Per table, its rows and the letter each came from.
        let mut tables: Vec<(Option<String>, Vec<Row>, Vec<usize>)> = Vec::new();
        for (n, d) in outcomes.iter_mut().enumerate() {
            let outputs = match &mut d.outcome {
                Ok(outputs) => std::mem::take(outputs),
                Err(_) => continue,
            };
            let rows: Result<Vec<_>, _> = outputs
                .into_iter()
                .map(|routed| to_row(&sink, routed, processed))
                .collect();
            match rows {
                Err(letter) => d.outcome = Err(letter.error),
                Ok(rows) => {
                    for (table, row) in rows {
                        match tables.iter_mut().find(|(t, ..)| *t == table) {
                            Some((_, rows, from)) => {
                                rows.push(row);
                                from.push(n);
                            }
                            None => tables.push((table, vec![row], vec![n])),
                        }
                    }
                }
            }
        }
        let mut written = vec![0usize; outcomes.len()];
        for (table, rows, from) in &tables {
            let misfits = sink.write(table.as_deref(), rows).await?;
            from.iter().for_each(|n| written[*n] += 1);
            for (i, misfit) in misfits {
                let n = from[i];
                written[n] -= 1;
                outcomes[n].outcome = Err(format!("does not fit its typed table: {misfit}"));
            }
        }
        let ids: Vec<ReplayId> = outcomes
            .iter()
            .filter_map(|d| ReplayId::from_hex(&d.letter.replay_id).ok())
            .collect();
        sink.processed(&ids);
        if let Some(last) = ids.iter().max() {
            sink.flush(last).await?;
        }
        Ok(written)
    }

    /// The letter's event, with its writer schema fetched from the org when not yet known.
    async fn decode(
        &self,
        connection: &PubSubConnection,
        letter: &DeadLetter,
    ) -> Result<ChangeEvent, String> {
        let id = &letter.schema_id;
        let schema = match self.schemas.get(id) {
            Some(schema) => schema,
            None => {
                // A schema id is its schema's fingerprint: the run's copy is the schema.
                let json = match SchemaCache::kept(&self.kept, id) {
                    Some(json) => json,
                    None => connection
                        .schema_json(id)
                        .await
                        .map_err(|s| format!("cannot fetch schema {id}: {}", s.message()))?,
                };
                self.schemas
                    .insert(id, &json)
                    .map_err(|e| format!("schema {id} cannot be used: {e}"))?
            }
        };
        let replay_id = ReplayId::from_hex(&letter.replay_id)
            .map_err(|e| format!("replay_id {:?} is not hex: {e}", letter.replay_id))?;
        let meta = EventMeta {
            org_id: letter.org_id.as_str().into(),
            channel: letter.channel.as_str().into(),
            replay_id,
            event_id: letter.event_id.clone(),
        };
        decode_event(&schema, meta, letter.payload.clone().into())
            .map_err(|e| format!("cannot decode: {e}"))
    }
}

/// Each event through the chain on its own, off the async workers; a letter of the write
/// stage passes by it, already transformed.
async fn run_chain(chain: Option<Chain>, decoded: Vec<(DeadLetter, ChangeEvent)>) -> Vec<Decoded> {
    let run = move || {
        let mut chain = chain;
        decoded
            .into_iter()
            .map(|(letter, event)| {
                let outcome = match (&letter.stage, chain.as_mut()) {
                    (Stage::Write, _) | (_, None) => Ok(vec![Routed { table: None, event }]),
                    (_, Some(chain)) => {
                        let output = chain.run(vec![event]);
                        match output.stop.into_iter().chain(output.failed).next() {
                            Some(failed) => Err(failed.error),
                            None => Ok(output.routed),
                        }
                    }
                };
                Decoded { letter, outcome }
            })
            .collect::<Vec<_>>()
    };
    tokio::task::spawn_blocking(run)
        .await
        .expect("running the chain does not panic")
}
