//! The command API binary: settings from flags and environment, then the service until Ctrl-C
//! or SIGTERM, then the last spans out when traces are on.

use clap::Parser;
use command_api::{Application, Config};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    let telemetry = service_kit::telemetry::init(config.log_format)?;
    let application = Application::build(config).await?;
    let stopped = application.run(service_kit::shutdown::signal()).await;
    telemetry.shutdown().await;
    stopped
}
