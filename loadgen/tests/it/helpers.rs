//! Starting servers, parsing flags, scratch files.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use clap::Parser;
use loadgen::{BareServer, Cli, Command, RunConfig};
use tokio::sync::oneshot;

/// A server on a free port; stops when dropped.
pub struct TestServer {
    pub url: String,
    _shutdown: oneshot::Sender<()>,
}

pub async fn bare_server() -> TestServer {
    let addr: SocketAddr = "127.0.0.1:0".parse().expect("address");
    let server = BareServer::bind(addr).await.expect("bind");
    let url = format!("http://{}", server.address());
    let (shutdown, stopped) = oneshot::channel::<()>();
    tokio::spawn(server.run(async move {
        let _ = stopped.await;
    }));
    TestServer {
        url,
        _shutdown: shutdown,
    }
}

/// `router` served on a free port until the returned server is dropped: the fake APIs' server.
pub async fn serve(router: axum::Router) -> TestServer {
    let addr: SocketAddr = "127.0.0.1:0".parse().expect("address");
    let listener = tokio::net::TcpListener::bind(addr).await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("local address"));
    let (shutdown, stopped) = oneshot::channel::<()>();
    tokio::spawn(async move {
        let _ = axum::serve(listener, router)
            .with_graceful_shutdown(async move {
                let _ = stopped.await;
            })
            .await;
    });
    TestServer {
        url,
        _shutdown: shutdown,
    }
}

/// `loadgen run` with these flags, as the binary would parse them.
pub fn run_config(args: &[&str]) -> RunConfig {
    let mut all = vec!["loadgen", "run"];
    all.extend_from_slice(args);
    match Cli::try_parse_from(all).expect("flags parse").command {
        Command::Run(config) => *config,
        other => panic!("not a run: {other:?}"),
    }
}

/// A fresh directory for a test's files.
pub fn scratch_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "loadgen-it-{name}-{}-{}",
        std::process::id(),
        uuid::Uuid::now_v7().simple()
    ));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

/// Checks the file is well-formed XML and returns its text.
pub fn read_svg(path: &Path) -> String {
    let text = std::fs::read_to_string(path).expect("the SVG was written");
    let mut reader = quick_xml::Reader::from_str(&text);
    let mut open = 0i32;
    loop {
        match reader.read_event().expect("well-formed XML") {
            quick_xml::events::Event::Eof => break,
            quick_xml::events::Event::Start(_) => open += 1,
            quick_xml::events::Event::End(_) => open -= 1,
            _ => {}
        }
    }
    assert_eq!(open, 0, "every element is closed");
    text
}
