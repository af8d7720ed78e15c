//! The command API binary: settings from flags and environment, then the service until Ctrl-C
//! or SIGTERM.

use clap::Parser;
use command_api::{Application, Config};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    service_kit::telemetry::init(config.log_format);
    let application = Application::build(config).await?;
    application.run(service_kit::shutdown::signal()).await
}
