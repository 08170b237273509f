use std::process::ExitCode;

use tokio_util::sync::CancellationToken;

use sfzb_host::cli::{Cli, Command, ConfigCommand, DeadLetterCommand, TransformCommand};

fn main() -> ExitCode {
    let cli = Cli::parse_args();
    sfzb_host::process::init_log(cli.log_format, cli.log.as_deref());
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
    tokio::spawn(sfzb_host::process::cancel_on_signal(cancel.clone()));
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
        Command::Healthcheck(args) => {
            print!(
                "{}",
                sfzb_host::probe::healthcheck(&args.address)
                    .await
                    .map_err(sfzb_host::Error::from)?
            );
        }
        Command::Status(args) => {
            print!(
                "{}",
                sfzb_host::probe::status(&args)
                    .await
                    .map_err(sfzb_host::Error::from)?
            );
        }
    }
    Ok(())
}
