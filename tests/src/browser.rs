//! Headless Chromium driven over WebDriver, for the dashboard tests.
//!
//! Needs `chromium` and `chromedriver` (Debian: `chromium`,
//! `chromium-driver`); `./test.sh` installs them. A missing chromedriver
//! fails the test with that message; it is never skipped.

use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};

use crate::{eventually, free_port};

/// chromedriver in a process group of its own, killed with every browser it
/// started when the test ends, even by a failed assertion.
pub struct ChromeDriver {
    child: Child,
    port: u16,
}

impl ChromeDriver {
    pub fn start() -> Self {
        let port = free_port();
        let child = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver is missing: install chromium and chromium-driver (./test.sh does it)");
        ChromeDriver { child, port }
    }

    /// A new browser session: headless, no sandbox (tests run as root), plus
    /// `extra_args` for Chromium.
    pub async fn session(&self, extra_args: &[&str]) -> fantoccini::Client {
        let addr = format!("127.0.0.1:{}", self.port);
        eventually("chromedriver to listen", || {
            let addr = addr.clone();
            async move { tokio::net::TcpStream::connect(addr).await.ok().map(drop) }
        })
        .await;
        let mut args = vec!["--headless=new", "--no-sandbox", "--disable-dev-shm-usage"];
        args.extend_from_slice(extra_args);
        let mut caps = serde_json::Map::new();
        caps.insert("goog:chromeOptions".into(), serde_json::json!({ "args": args }));
        fantoccini::ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps)
            .connect(&format!("http://{addr}"))
            .await
            .expect("a WebDriver session with headless Chromium")
    }
}

impl Drop for ChromeDriver {
    fn drop(&mut self) {
        let group = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::killpg(group, nix::sys::signal::SIGKILL);
        let _ = self.child.wait();
    }
}

/// How many elements on the page match `css` (0 when the page is not there yet).
pub async fn count(browser: &fantoccini::Client, css: &str) -> usize {
    browser.find_all(fantoccini::Locator::Css(css)).await.map(|v| v.len()).unwrap_or(0)
}
