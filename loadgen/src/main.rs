//! The `loadgen` binary: parse the command line, then run it until done or stopped. Exit status
//! 2 when it could not run; `loadgen chaos` also answers 1 when a check failed.

use std::process::ExitCode;

use clap::Parser;
use loadgen::Cli;

#[tokio::main]
async fn main() -> ExitCode {
    match loadgen::execute(Cli::parse()).await {
        Ok(code) => code,
        Err(error) => {
            eprintln!("Error: {error:?}");
            ExitCode::from(2)
        }
    }
}
