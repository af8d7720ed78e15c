use clap::Parser;
use projector::{Application, Config};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    service_kit::telemetry::init(config.log_format);
    let app = Application::build(config).await?;
    tracing::info!(addr = %app.local_addr()?, "projector listening");
    app.run(service_kit::shutdown::signal()).await
}
