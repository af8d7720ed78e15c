//! Headless Chromium, driven over WebDriver (chromedriver's JSON over HTTP, with the test's
//! HTTP client): enough to open a page, read its DOM with a script, and take a screenshot.
//!
//! Needs `chromedriver` (Debian: `chromium-driver`) and `chromium`; `CHROMEDRIVER` and
//! `CHROMIUM` name other binaries. Without them [`Browser::start`] answers None, so that a
//! developer without a browser can run the rest of the suite, except under CI (`CI` set),
//! where a missing browser fails the test instead: CI installs it (`.ci/run`).
//!
//! The browser resolves no host name but the loopback's, so a page that needs the internet (a
//! CDN asset) fails to render here.

use std::io::{Read, Write as _};
use std::process::Stdio;
use std::time::Duration;

use base64::Engine as _;
use serde_json::{Value, json};
use tokio::process::{Child, Command};

/// The longest a page may take to show what a test waits for.
pub const PAGE_DEADLINE: Duration = Duration::from_secs(30);

/// A chromedriver process and one headless Chromium session on it.
pub struct Browser {
    driver: Child,
    session: String,
    base: String,
    client: reqwest::Client,
}

fn binary(variable: &str, default: &str) -> String {
    std::env::var(variable).unwrap_or_else(|_| default.to_owned())
}

impl Browser {
    /// A new session, or None when no browser is installed (outside CI only: see the module).
    pub async fn start() -> Option<Browser> {
        let driver_bin = binary("CHROMEDRIVER", "chromedriver");
        let chromium = binary("CHROMIUM", "/usr/bin/chromium");
        let installed = Command::new(&driver_bin)
            .arg("--version")
            .stdout(Stdio::null())
            .status()
            .await
            .is_ok_and(|s| s.success())
            && std::path::Path::new(&chromium).exists();
        if !installed {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI must install chromedriver ({driver_bin}) and chromium ({chromium}): see .ci/run"
            );
            eprintln!(
                "SKIPPED: no {driver_bin} or {chromium} (apt-get install chromium chromium-driver); \
                 under CI this fails"
            );
            return None;
        }
        let port = test_support::free_port();
        let driver = Command::new(&driver_bin)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("start chromedriver");
        let base = format!("http://127.0.0.1:{port}");
        let client = test_support::http();
        let deadline = tokio::time::Instant::now() + PAGE_DEADLINE;
        loop {
            let ready = client.get(format!("{base}/status")).send().await;
            if let Ok(answer) = ready
                && let Ok(status) = answer.json::<Value>().await
                && status["value"]["ready"] == true
            {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "chromedriver never became ready"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium,
                "args": [
                    "--headless=new",
                    // Tests run as root in CI, where Chromium's sandbox cannot start.
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-dev-shm-usage",
                    "--window-size=1280,720",
                    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
                ],
            },
        }}});
        let created = client
            .post(format!("{base}/session"))
            .json(&capabilities)
            .send()
            .await
            .expect("chromedriver answers");
        let created: Value = created.json().await.expect("a JSON answer");
        let session = created["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {created}"))
            .to_owned();
        Some(Browser {
            driver,
            session,
            base,
            client,
        })
    }

    async fn command(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let url = format!("{}/session/{}{path}", self.base, self.session);
        let mut request = self.client.request(method, url);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let answer = request.send().await.expect("chromedriver answers");
        let status = answer.status();
        let body: Value = answer.json().await.expect("a JSON answer");
        assert!(status.is_success(), "WebDriver {path}: {status} {body}");
        body["value"].clone()
    }

    pub async fn open(&self, url: &str) {
        self.command(reqwest::Method::POST, "/url", Some(json!({"url": url})))
            .await;
    }

    /// Runs `script` (a function body: `return ...;`) in the page and returns its value.
    pub async fn run(&self, script: &str) -> Value {
        self.command(
            reqwest::Method::POST,
            "/execute/sync",
            Some(json!({"script": script, "args": []})),
        )
        .await
    }

    /// Runs `script` until `done` holds for its value, and returns that value.
    pub async fn wait_for(&self, what: &str, script: &str, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = tokio::time::Instant::now() + PAGE_DEADLINE;
        loop {
            let value = self.run(script).await;
            if done(&value) {
                return value;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "gave up waiting for the page to show {what}; it shows {value}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The window as a PNG.
    pub async fn screenshot(&self) -> Vec<u8> {
        let encoded = self
            .command(reqwest::Method::GET, "/screenshot", None)
            .await;
        base64::engine::general_purpose::STANDARD
            .decode(encoded.as_str().expect("base64 text"))
            .expect("base64 PNG")
    }
}

impl Drop for Browser {
    /// Ends the session, which closes Chromium (killing chromedriver would leave it running),
    /// also when a test panics; then chromedriver is killed (`kill_on_drop`). Blocking, with
    /// a plain request on a socket: a drop cannot await.
    fn drop(&mut self) {
        let Some(address) = self.base.strip_prefix("http://") else {
            return;
        };
        let request = format!(
            "DELETE /session/{} HTTP/1.1\r\nHost: {address}\r\nContent-Length: 0\r\n\
             Connection: close\r\n\r\n",
            self.session
        );
        if let Ok(mut stream) = std::net::TcpStream::connect(address) {
            let _ = stream.set_read_timeout(Some(PAGE_DEADLINE));
            if stream.write_all(request.as_bytes()).is_ok() {
                // The answer comes once Chromium is gone.
                read_answer(&mut stream);
            }
        }
        let _ = self.driver.start_kill();
    }
}

/// Reads one HTTP answer with a `Content-Length` (chromedriver keeps the connection open).
fn read_answer(stream: &mut std::net::TcpStream) {
    let mut answer = Vec::new();
    let mut chunk = [0u8; 4096];
    while let Ok(n @ 1..) = stream.read(&mut chunk) {
        answer.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&answer);
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length = head
                .lines()
                .find_map(|line| {
                    let (name, value) = line.split_once(':')?;
                    name.eq_ignore_ascii_case("content-length")
                        .then(|| value.trim().parse::<usize>().ok())?
                })
                .unwrap_or(0);
            if body.len() >= length {
                return;
            }
        }
    }
}

/// True for PNG bytes: the signature, then an IHDR chunk of a non-empty image.
pub fn is_png(bytes: &[u8]) -> bool {
    let dimension = |at: usize| {
        bytes
            .get(at..at + 4)
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    };
    bytes.starts_with(b"\x89PNG\r\n\x1a\n")
        && bytes.get(12..16) == Some(b"IHDR")
        && dimension(16).is_some_and(|w| w > 0)
        && dimension(20).is_some_and(|h| h > 0)
}
