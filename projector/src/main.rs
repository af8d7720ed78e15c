//! The projector binary: the live projector until Ctrl-C or SIGTERM, or one of its
//! subcommands; then the last spans out when traces are on.

use std::process::ExitCode;

use clap::Parser;
use projector::config::Command;
use projector::{Application, Config, generations, rebuild, switch, verify};

#[tokio::main]
async fn main() -> anyhow::Result<ExitCode> {
    let config = Config::parse();
    let telemetry = service_kit::telemetry::init(config.log_format)?;
    let outcome = run(config).await;
    telemetry.shutdown().await;
    outcome
}

async fn run(config: Config) -> anyhow::Result<ExitCode> {
    match &config.command {
        Some(Command::Verify(args)) => {
            Ok(verify::run(&config, args, service_kit::shutdown::signal()).await)
        }
        Some(Command::Rebuild(args)) => {
            Ok(rebuild::run(&config, args, service_kit::shutdown::signal()).await)
        }
        Some(Command::Generations) => Ok(generations::run_list(&config).await),
        Some(Command::DropGeneration(args)) => Ok(generations::run_drop(&config, args).await),
        Some(Command::Switch(args)) => {
            Ok(switch::run(&config, args, service_kit::shutdown::signal()).await)
        }
        None => {
            let app = Application::build(config).await?;
            tracing::info!(addr = %app.local_addr()?, "projector listening");
            app.run(service_kit::shutdown::signal()).await?;
            Ok(ExitCode::SUCCESS)
        }
    }
}
