//! "Recovered with no manual step": after the faults, every process the run started is still
//! running (the run only ever restarted the killed one) and every service instance is ready.

use std::time::Duration;

use crate::output::{show_log_tail, warn};
use crate::process::is_running;
use crate::stack::Stack;

/// How long a survivor's ready path may take to answer.
const READY_TIMEOUT: Duration = Duration::from_secs(5);

/// True when every process of `stack` and its broker survived; warns (with the log's tail) about
/// each that did not.
pub async fn all_survived(stack: &mut Stack) -> bool {
    let mut survived = true;
    for index in 0..stack.processes.len() {
        let name = stack.processes[index].name.clone();
        let log = stack.log_of(&name);
        if !is_running(&mut stack.processes[index].child) {
            warn(format_args!("{name} exited during the run"));
            show_log_tail(&log);
            survived = false;
            continue;
        }
        let Some(launch) = stack.launch(&name) else {
            continue;
        };
        let url = launch.ready_url().unwrap_or_default();
        if !stack.is_ready(&name, READY_TIMEOUT).await {
            warn(format_args!("{name} is running but not ready ({url})"));
            show_log_tail(&log);
            survived = false;
        }
    }
    if !stack
        .broker
        .as_mut()
        .is_some_and(|broker| broker.is_running())
    {
        warn("the broker exited during the run");
        survived = false;
    }
    survived
}
