//! The `loadgen` binary: parse the command line, then run it until done or Ctrl-C.

use clap::Parser;
use loadgen::Cli;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    loadgen::execute(Cli::parse()).await
}
