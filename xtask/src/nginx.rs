//! Several instances of each service, nginx in front of the two APIs: the load balancer of
//! `up --instances N` and `chaos`, with the rules of `deploy/nginx/` that the compose stack
//! shares. nginx runs in the foreground of a child process (no daemon, no system nginx), every
//! file it writes in the stack's own directory and log directory.

use std::fmt::Write as _;
use std::path::Path;
use std::process::Stdio;

use anyhow::{Context, bail};
use tokio::process::Command;

use crate::layout::{repo_root, shown};
use crate::output::{say, show_log_tail};
use crate::process::{instance_port, probe_target, require, wait_for_port};
use crate::stack::{Launch, Stack};

/// Fails unless nginx is installed.
pub fn require_nginx() -> anyhow::Result<()> {
    require(
        "nginx",
        "several instances run behind it as a load balancer (apt-get install nginx-light)",
    )
    .map(drop)
}

/// Writes `dir/nginx.conf`: nginx on `command_listen` and `query_listen` in front of the command
/// and query API instances, its logs in `log_dir`.
pub fn write_config(
    dir: &Path,
    log_dir: &Path,
    command_listen: &str,
    query_listen: &str,
    command_addrs: &[String],
    query_addrs: &[String],
) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir.join("tmp"))
        .with_context(|| format!("cannot create {}", dir.join("tmp").display()))?;
    std::fs::write(
        dir.join("nginx.conf"),
        config(
            dir,
            log_dir,
            command_listen,
            query_listen,
            command_addrs,
            query_addrs,
        ),
    )
    .with_context(|| format!("cannot write {}", dir.join("nginx.conf").display()))
}

fn config(
    dir: &Path,
    log_dir: &Path,
    command_listen: &str,
    query_listen: &str,
    command_addrs: &[String],
    query_addrs: &[String],
) -> String {
    // A failed connection or timeout takes an instance out for 2 s (then one request tries it
    // again), so that a dead instance costs one retried request, not one per request.
    let servers = |addrs: &[String]| {
        addrs.iter().fold(String::new(), |mut out, addr| {
            let _ = writeln!(out, "        server {addr} max_fails=1 fail_timeout=2s;");
            out
        })
    };
    let (dir, logs) = (dir.display(), log_dir.display());
    let rules = repo_root().join("deploy/nginx");
    let rules = rules.display();
    let (command_servers, query_servers) = (servers(command_addrs), servers(query_addrs));
    format!(
        r#"# Written by ./dev for this stack; the rules are in deploy/nginx/, shared with docker-compose.yml.
worker_processes 1;
pid "{dir}/nginx.pid";
error_log "{logs}/nginx.log" warn;
events {{
    worker_connections 1024;
}}
http {{
    client_body_temp_path "{dir}/tmp/body";
    proxy_temp_path "{dir}/tmp/proxy";
    fastcgi_temp_path "{dir}/tmp/fastcgi";
    uwsgi_temp_path "{dir}/tmp/uwsgi";
    scgi_temp_path "{dir}/tmp/scgi";
    include "{rules}/api-http.conf";
    access_log "{logs}/nginx-access.log" api;

    upstream command_api {{
{command_servers}        keepalive 32;
    }}
    upstream query_api {{
{query_servers}        keepalive 32;
    }}
    server {{
        listen {command_listen};
        set $api command_api;
        include "{rules}/api-server.conf";
    }}
    server {{
        listen {query_listen};
        set $api query_api;
        include "{rules}/api-server.conf";
    }}
}}
"#
    )
}

/// Starts nginx with the config [`write_config`] wrote into `dir` (after `nginx -t`), adds it to
/// the stack as `nginx`, and waits until it listens on both addresses.
pub async fn start(
    stack: &mut Stack,
    dir: &Path,
    command_listen: &str,
    query_listen: &str,
) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let log = stack.log_of("nginx");
    // As root nginx's workers run as an unprivileged user, which must reach its temp files.
    for path in [dir.to_path_buf(), dir.join("tmp")] {
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
            .with_context(|| format!("cannot open up {}", path.display()))?;
    }
    std::fs::write(&log, "").with_context(|| format!("cannot create {}", log.display()))?;
    let conf = dir.join("nginx.conf");
    // nginx writes its errors into `-e` from the start, and into error_log once it has read the
    // config: both are the log; what it prints besides repeats them.
    let nginx = |extra: &[&str]| {
        let mut command = Command::new("nginx");
        command
            .arg("-p")
            .arg(dir)
            .arg("-c")
            .arg(&conf)
            .arg("-e")
            .arg(&log)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        command
    };
    let tested = nginx(&["-t", "-q"])
        .status()
        .await
        .context("cannot run nginx")?;
    if !tested.success() {
        show_log_tail(&log);
        bail!("nginx rejected its config ({})", conf.display());
    }
    say(format_args!(
        "Starting nginx on {command_listen} (command API) and {query_listen} (query API) (log: {})",
        shown(&log)
    ));
    let child = nginx(&["-g", "daemon off;"])
        .kill_on_drop(true)
        .spawn()
        .context("cannot start nginx")?;
    stack.adopt("nginx", child);
    let ready = stack.waits.ready;
    let nginx = stack.find("nginx")?;
    for addr in [command_listen, query_listen] {
        let (host, port) = probe_target(addr)?;
        if !wait_for_port(&host, port, ready, Some(&mut nginx.child)).await {
            show_log_tail(&log);
            bail!("nginx did not listen on {addr}");
        }
    }
    Ok(())
}

/// Where [`start_instances_behind_nginx`] puts things.
#[derive(Debug, Clone)]
pub struct Instances<'a> {
    /// How many of each service (named `<service>-<n>`).
    pub count: usize,
    /// The directory of the service binaries.
    pub bin_dir: &'a Path,
    /// nginx's own directory (its config, pid, temp files).
    pub nginx_dir: &'a Path,
    /// nginx's command API address.
    pub command_listen: &'a str,
    /// nginx's query API address.
    pub query_listen: &'a str,
    /// The first projector's address, when it has a fixed one (`up`'s PROJECTOR_ADDR).
    pub projector_addr: Option<&'a str>,
    /// Settings of every command API instance (such as WRITE_RATE_PER_SEC=0).
    pub command_env: &'a [(&'a str, &'a str)],
}

/// Starts `count` instances of each service on ports of their own, then nginx in front of the
/// two APIs. The command API instances first (they create the topic), then the projectors (they
/// share one consumer group and split the partitions; they apply the migrations), then the query
/// APIs. The command API instances trust nginx's X-Forwarded-For for who a client is.
pub async fn start_instances_behind_nginx(
    stack: &mut Stack,
    instances: &Instances<'_>,
) -> anyhow::Result<()> {
    let mut command_addrs = Vec::new();
    let mut query_addrs = Vec::new();
    for i in 1..=instances.count {
        let addr = format!("127.0.0.1:{}", instance_port().await?);
        let mut env = vec![
            ("COMMAND_API_ADDR", addr.as_str()),
            ("TRUSTED_PROXIES", "127.0.0.1"),
        ];
        env.extend_from_slice(instances.command_env);
        let launch = Launch::service(instances.bin_dir, "command-api", &addr, &env);
        stack
            .start_service(&format!("command-api-{i}"), launch)
            .await?;
        command_addrs.push(addr);
    }
    for i in 1..=instances.count {
        let addr = match (i, instances.projector_addr) {
            (1, Some(addr)) => addr.to_owned(),
            _ => format!("127.0.0.1:{}", instance_port().await?),
        };
        let launch = Launch::service(
            instances.bin_dir,
            "projector",
            &addr,
            &[("PROJECTOR_ADDR", addr.as_str())],
        );
        stack
            .start_service(&format!("projector-{i}"), launch)
            .await?;
    }
    for i in 1..=instances.count {
        let addr = format!("127.0.0.1:{}", instance_port().await?);
        let launch = Launch::service(
            instances.bin_dir,
            "query-api",
            &addr,
            &[("QUERY_API_ADDR", addr.as_str())],
        );
        stack
            .start_service(&format!("query-api-{i}"), launch)
            .await?;
        query_addrs.push(addr);
    }
    let log_dir = stack.log_dir.clone();
    write_config(
        instances.nginx_dir,
        &log_dir,
        instances.command_listen,
        instances.query_listen,
        &command_addrs,
        &query_addrs,
    )?;
    start(
        stack,
        instances.nginx_dir,
        instances.command_listen,
        instances.query_listen,
    )
    .await
}
