//! `cargo xtask broker`: the developer's broker (tansu on 127.0.0.1:9092, data in
//! `.stack/tansu`) in the foreground, unless one already listens there; Ctrl-C stops it.

use std::process::ExitCode;

use anyhow::bail;

use crate::layout::log_dir;
use crate::output::{say, show_log_tail};
use crate::process::{interrupted, port_accepts};
use crate::settings::Waits;
use crate::stack::Stack;
use crate::tansu::DEFAULT_BROKER_PORT;

pub async fn run() -> anyhow::Result<ExitCode> {
    if port_accepts("127.0.0.1", DEFAULT_BROKER_PORT).await {
        say(format_args!(
            "A broker already listens on 127.0.0.1:{DEFAULT_BROKER_PORT}; nothing to do"
        ));
        return Ok(ExitCode::SUCCESS);
    }
    let mut stack = Stack::new(log_dir(), Waits::from_env()?)?;
    let outcome = tokio::select! {
        outcome = serve(&mut stack) => outcome,
        code = interrupted() => Ok(code),
    };
    Ok(stack.close(outcome).await)
}

async fn serve(stack: &mut Stack) -> anyhow::Result<ExitCode> {
    stack
        .start_dev_broker(&format!(
            "Starting tansu on 127.0.0.1:{DEFAULT_BROKER_PORT} (data in .stack/tansu, log in \
             .stack/logs/tansu.log); Ctrl-C stops it"
        ))
        .await?;
    if let Some(broker) = &mut stack.broker {
        broker.exited().await;
        show_log_tail(&broker.log);
    }
    stack.broker = None;
    bail!("tansu exited")
}
