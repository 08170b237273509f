use std::io::Write;
use std::process::ExitCode;

use clap::Parser;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

use sfzb_host::cli::{Cli, Command, ConfigCommand, LogFormat, TransformCommand};

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(cli.log_format, cli.log.as_deref());
    let command = cli.into_command();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let code = match runtime.block_on(dispatch(command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", describe(&e.error));
            ExitCode::from(e.code)
        }
    };
    // A blocking write stuck on a dead disk or a stalled pipe must not hold the exit: the
    // checkpoints never passed what it was writing.
    runtime.shutdown_timeout(std::time::Duration::from_secs(5));
    code
}

struct Failed {
    error: sfzb_host::Error,
    code: u8,
}

impl From<sfzb_host::Error> for Failed {
    fn from(error: sfzb_host::Error) -> Self {
        Failed {
            code: error.exit_code(),
            error,
        }
    }
}

async fn dispatch(command: Command) -> Result<(), Failed> {
    let cancel = CancellationToken::new();
    tokio::spawn(cancel_on_signal(cancel.clone()));
    match command {
        Command::Run(args) => {
            let plan = args.plan().map_err(sfzb_host::Error::from)?;
            let report = sfzb_host::run(plan, cancel).await?;
            for outcome in &report.subscriptions {
                if let Ok(stats) = &outcome.result {
                    summarize(&outcome.name, stats);
                }
            }
            report.into_result()?;
        }
        Command::Demo(args) => {
            sfzb_host::demo::run(&args, cancel, &mut std::io::stdout()).await?;
        }
        Command::Config(ConfigCommand::Check { file, mut run }) => {
            if file.is_some() {
                run.config_file = file;
            }
            let plan = run.plan().map_err(sfzb_host::Error::from)?;
            let text = serde_json::to_string_pretty(&plan.describe()).expect("a plan serializes");
            println!("{text}");
            eprintln!(
                "{}: valid ({} subscription(s), {} org(s)).",
                plan.source
                    .as_ref()
                    .map_or("flags and environment".to_string(), |p| p
                        .display()
                        .to_string()),
                plan.subscriptions.len(),
                plan.orgs.len()
            );
        }
        Command::Transform(TransformCommand::Test { component, event }) => {
            let spec = component.spec().map_err(sfzb_host::Error::from)?;
            let cache = component.cache();
            tokio::task::spawn_blocking(move || {
                sfzb_host::authoring::test(&spec, &event, cache, &mut std::io::stdout().lock())
            })
            .await
            .expect("transform test does not panic")
            .map_err(sfzb_host::Error::from)?;
        }
        Command::Transform(TransformCommand::Init { lang, name, dir }) => {
            let made =
                sfzb_host::scaffold::init(lang, &name, &dir).map_err(sfzb_host::Error::from)?;
            println!("Created {}. Build and test it:", made.dir.display());
            println!("  cd {}", made.dir.display());
            for command in &made.build {
                println!("  {command}");
            }
            println!("  {}", made.test);
        }
        Command::Transform(TransformCommand::Bench { component, events }) => {
            let spec = component.spec().map_err(sfzb_host::Error::from)?;
            let cache = component.cache();
            let name = spec.name.clone();
            let report = tokio::task::spawn_blocking(move || {
                sfzb_host::authoring::bench(&spec, events, cache)
            })
            .await
            .expect("transform bench does not panic")
            .map_err(sfzb_host::Error::from)?;
            println!(
                "{name}: loaded in {:.1} ms ({}), {:.2} µs/event over {} standard 30-field Account events",
                report.load_ms,
                match report.loaded_from {
                    sfzb_host::transform::engine::LoadedFrom::Cache => "from the compile cache",
                    sfzb_host::transform::engine::LoadedFrom::Compiled => "compiled",
                },
                report.us_per_event,
                report.events
            );
        }
        Command::Sim(args) => {
            let config = args.config().map_err(sfzb_host::Error::from)?;
            let (host, zerobus_port) = (args.host, args.zerobus_port);
            let channels: Vec<String> = config
                .entities
                .iter()
                .map(|e| sfzb_host::sim::catalog::channel_for(e.trim()))
                .collect();
            let zerobus = match zerobus_port {
                Some(port) => Some(
                    sfzb_host::sim::zerobus::ZerobusServerHandle::start_on(
                        (host, port).into(),
                        Default::default(),
                    )
                    .await
                    .map_err(|source| {
                        sfzb_host::Error::from(sfzb_host::sim::SimError::Bind {
                            addr: (host, port).into(),
                            source,
                        })
                    })?,
                ),
                None => None,
            };
            let sim = sfzb_host::sim::Simulator::start(config)
                .await
                .map_err(sfzb_host::Error::from)?;
            // A reader that stops reading early must not take the simulator down.
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "Pub/Sub API: {}", sim.pubsub_url());
            let _ = writeln!(out, "Login:       {}", sim.login_url());
            if let Some(zerobus) = &zerobus {
                let _ = writeln!(out, "Zerobus:     {}", zerobus.url());
            }
            let _ = writeln!(out, "Org id:      {}", sim.org_id);
            let _ = writeln!(
                out,
                "Channels:    {}, /data/ChangeEvents",
                channels.join(", ")
            );
            let _ = writeln!(
                out,
                "Retained:    {} events (replay ids 1..{})",
                sim.bus.head(),
                sim.bus.head()
            );
            let _ = out.flush();
            drop(out);
            cancel.cancelled().await;
            sim.shutdown().await;
            if let Some(zerobus) = zerobus {
                zerobus.shutdown().await;
            }
        }
    }
    Ok(())
}

/// The error and its causes, each cause once: our messages often quote their source already.
fn describe(error: &sfzb_host::Error) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

fn summarize(name: &str, stats: &sfzb_host::pipeline::SubscriptionStats) {
    let active = (stats.active_ms as f64 / 1000.0).max(0.001);
    eprintln!(
        "{name} ({}): {} received, {} written to {}, {} dropped, {} dead-lettered in {:.1} s ({:.0} events/s while events flowed); checkpoint {}",
        stats.channel,
        stats.received,
        stats.written,
        stats.target,
        stats.dropped,
        stats.dead_lettered,
        stats.elapsed_ms as f64 / 1000.0,
        stats.received as f64 / active,
        stats.checkpoint.as_deref().unwrap_or("none"),
    );
    for t in &stats.transforms {
        eprintln!(
            "  transform {}: {} in, {} out, {} dropped, {} dead-lettered, {} skipped, {} restarts",
            t.name, t.events_in, t.events_out, t.dropped, t.dead_lettered, t.skipped, t.recycled
        );
    }
}

/// The first SIGINT/SIGTERM stops gracefully; a second exits at once (nothing past the
/// last committed checkpoint is lost: the checkpoint only ever trails durable writes).
async fn cancel_on_signal(cancel: CancellationToken) {
    let mut signals = 0;
    loop {
        wait_for_signal().await;
        signals += 1;
        if signals == 1 {
            tracing::info!("Stopping: finishing in-flight work (signal again to exit at once).");
            cancel.cancel();
        } else {
            eprintln!("Exiting at once on second signal.");
            std::process::exit(130);
        }
    }
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            },
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

fn init_tracing(format: LogFormat, filter: Option<&str>) {
    let filter = match filter {
        Some(f) => EnvFilter::new(f),
        // delta-kernel logs an ERROR when probing a table that does not exist yet, which
        // sfzb-host then creates: not an error for us.
        None => EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| EnvFilter::new("info,buoyant_kernel=off,deltalake_core=warn")),
    };
    // Escape codes only for a person at a terminal, not for files and log collectors.
    let builder = tracing_subscriber::fmt()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
