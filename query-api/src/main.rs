//! The query-api binary: configuration in, server out; everything else is in the library.

use clap::Parser;
use query_api::{Application, Config};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    service_kit::telemetry::init(config.log_format);
    let application = Application::build(config).await?;
    application.run(service_kit::shutdown::signal()).await
}
