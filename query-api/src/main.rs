//! The query-api binary: configuration in, server out (and the last spans, when traces are on);
//! everything else is in the library.

use clap::Parser;
use query_api::{Application, Config};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    let telemetry = service_kit::telemetry::init(config.log_format)?;
    let application = Application::build(config).await?;
    let stopped = application.run(service_kit::shutdown::signal()).await;
    telemetry.shutdown().await;
    stopped
}
