use std::process::ExitCode;

use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

use sfzb_host::cli::{Cli, Command, ConfigCommand, DeadLetterCommand, LogFormat, TransformCommand};

fn main() -> ExitCode {
    let cli = Cli::parse_args();
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
            eprintln!("error: {}", e.error.describe());
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
            let report =
                sfzb_host::run_reloading(plan, Box::new(move || args.plan()), cancel).await?;
            eprint!("{}", report.summary());
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
            eprintln!("{}", plan.verdict().map_err(sfzb_host::Error::from)?);
        }
        Command::Config(ConfigCommand::Settings) => {
            print!("{}", sfzb_host::config::settings::reference_markdown());
        }
        Command::Transform(TransformCommand::Test {
            component,
            event,
            schemas,
            json,
            watch,
        }) => {
            let format = match json {
                true => sfzb_host::authoring::Format::Json,
                false => sfzb_host::authoring::Format::Changes,
            };
            sfzb_host::authoring::test_command(&component, event, schemas, format, watch).await?;
        }
        Command::Transform(TransformCommand::Init { lang, name, dir }) => {
            let made =
                sfzb_host::scaffold::init(lang, &name, &dir).map_err(sfzb_host::Error::from)?;
            print!("{made}");
        }
        Command::Transform(TransformCommand::Bench { component, events }) => {
            let report = sfzb_host::authoring::bench_command(&component, events).await?;
            println!("{report}");
        }
        Command::DeadLetter(DeadLetterCommand::Replay(args)) => {
            let report = sfzb_host::dead_letters::replay(&args, cancel).await?;
            print!("{}", report.summary());
            report.into_result().map_err(sfzb_host::Error::from)?;
        }
        Command::Sim(args) => {
            sfzb_host::sim::args::serve(&args, cancel, &mut std::io::stdout().lock()).await?;
        }
    }
    Ok(())
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
        // sfzb-host then creates: not an error for us. delta-rs warns on every flush that it
        // keeps no statistics for `payload_binary` (a binary column has none to keep), and on
        // every MERGE that a scan metric it derives instead is missing.
        None => EnvFilter::try_from_default_env().unwrap_or_else(|_| {
            EnvFilter::new(
                "info,buoyant_kernel=off,deltalake_core=warn,deltalake_core::writer::stats=error,deltalake_core::operations::merge=error",
            )
        }),
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
