//! A real browser for tests: Debian's headless Chromium driven through `chromedriver` over the
//! W3C WebDriver protocol (plain JSON over HTTP, spoken here with `reqwest`: a few calls do not
//! warrant a client crate and its TLS stack).
//!
//! [`Browser::start`] fails the test when Chromium or its driver is missing, saying what to
//! install; `ALLOW_SKIP_BROWSER=1` turns that into a loud skip, refused under `REQUIRE_BROWSER=1`
//! or `CI` (CI's `scripts/test` installs `chromium` and `chromium-driver`).

use crate::process::free_port;
use serde_json::{json, Value};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The W3C element reference key.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// A WebDriver failure, with what the driver said.
#[derive(Debug, thiserror::Error)]
pub enum BrowserError {
    #[error("{0}")]
    Unavailable(String),
    #[error("webdriver {command}: {message}")]
    Driver { command: String, message: String },
    #[error("webdriver transport: {0}")]
    Transport(#[from] reqwest::Error),
}

/// One headless Chromium session; the driver is killed when dropped.
#[derive(Debug)]
pub struct Browser {
    driver: Child,
    base: String,
    http: reqwest::Client,
}

/// An element found on the page.
#[derive(Debug, Clone)]
pub struct Element(String);

/// Whether a test may skip for want of a browser: only with `ALLOW_SKIP_BROWSER=1`, and never
/// with `REQUIRE_BROWSER=1` or in CI (`CI` set).
pub fn may_skip() -> bool {
    let set = |k: &str| std::env::var(k).is_ok_and(|v| !v.is_empty() && v != "0");
    std::env::var("ALLOW_SKIP_BROWSER").is_ok_and(|v| v == "1")
        && !set("REQUIRE_BROWSER")
        && !set("CI")
}

impl Browser {
    /// Starts `chromedriver` and a headless Chromium session of `width`×`height`.
    /// `Ok(None)`: no browser here and skipping is allowed (a loud message says so).
    pub async fn start(width: u32, height: u32) -> Result<Option<Browser>, BrowserError> {
        let (Some(chrome), Some(driver)) = (
            ["chromium", "chromium-browser", "google-chrome"]
                .into_iter()
                .find_map(crate::which),
            crate::which("chromedriver"),
        ) else {
            let why = "no Chromium or chromedriver on PATH (Debian: apt-get install chromium chromium-driver)";
            if may_skip() {
                eprintln!("SKIPPED (no browser): {why}");
                return Ok(None);
            }
            return Err(BrowserError::Unavailable(format!(
                "{why}; ALLOW_SKIP_BROWSER=1 skips the browser tests outside CI"
            )));
        };
        let port = free_port();
        // Its own process group: the Chromium it starts joins it, and a test that fails
        // before `quit` still takes the browser down with the driver (see `Drop`).
        let child = Command::new(&driver)
            .process_group(0)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| BrowserError::Unavailable(format!("{driver}: {e}")))?;
        let mut browser = Browser {
            driver: child,
            base: format!("http://127.0.0.1:{port}"),
            http: reqwest::Client::new(),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while browser
            .http
            .get(format!("{}/status", browser.base))
            .send()
            .await
            .is_err()
        {
            if Instant::now() > deadline {
                return Err(BrowserError::Unavailable(
                    "chromedriver did not answer within 20 s".into(),
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let session = browser
            .call(
                reqwest::Method::POST,
                "/session",
                json!({"capabilities": {"alwaysMatch": {
                    "browserName": "chrome",
                    "goog:chromeOptions": {
                        "binary": chrome,
                        "args": [
                            "--headless=new", "--no-sandbox", "--disable-gpu",
                            "--disable-dev-shm-usage", "--no-first-run",
                            format!("--window-size={width},{height}"),
                        ],
                    },
                }}}),
            )
            .await?;
        let id = session["sessionId"]
            .as_str()
            .ok_or_else(|| BrowserError::Driver {
                command: "new session".into(),
                message: session.to_string(),
            })?
            .to_owned();
        browser.base = format!("{}/session/{id}", browser.base);
        Ok(Some(browser))
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Value,
    ) -> Result<Value, BrowserError> {
        let mut req = self
            .http
            .request(method.clone(), format!("{}{path}", self.base));
        if method != reqwest::Method::GET && method != reqwest::Method::DELETE {
            req = req.json(&body);
        }
        let answer: Value = req.send().await?.json().await?;
        let value = answer.get("value").cloned().unwrap_or(Value::Null);
        if let Some(error) = value.get("error").and_then(Value::as_str) {
            return Err(BrowserError::Driver {
                command: format!("{method} {path}"),
                message: format!("{error}: {}", value["message"].as_str().unwrap_or_default()),
            });
        }
        Ok(value)
    }

    pub async fn goto(&self, url: &str) -> Result<(), BrowserError> {
        self.call(reqwest::Method::POST, "/url", json!({ "url": url }))
            .await
            .map(drop)
    }

    pub async fn current_url(&self) -> Result<String, BrowserError> {
        Ok(self
            .call(reqwest::Method::GET, "/url", Value::Null)
            .await?
            .as_str()
            .unwrap_or_default()
            .to_owned())
    }

    /// The page's HTML as the browser holds it now.
    pub async fn source(&self) -> Result<String, BrowserError> {
        Ok(self
            .call(reqwest::Method::GET, "/source", Value::Null)
            .await?
            .as_str()
            .unwrap_or_default()
            .to_owned())
    }

    /// Every element `css` selects (none: empty).
    pub async fn find_all(&self, css: &str) -> Result<Vec<Element>, BrowserError> {
        let found = self
            .call(
                reqwest::Method::POST,
                "/elements",
                json!({"using": "css selector", "value": css}),
            )
            .await?;
        Ok(found
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| e[ELEMENT].as_str().map(|id| Element(id.to_owned())))
            .collect())
    }

    /// The first element `css` selects, waiting up to `wait` for one to appear.
    pub async fn find(&self, css: &str, wait: Duration) -> Result<Element, BrowserError> {
        let deadline = Instant::now() + wait;
        loop {
            if let Some(e) = self.find_all(css).await?.into_iter().next() {
                return Ok(e);
            }
            if Instant::now() > deadline {
                return Err(BrowserError::Driver {
                    command: format!("find {css:?}"),
                    message: format!("nothing matched within {wait:?}"),
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn click(&self, e: &Element) -> Result<(), BrowserError> {
        self.call(
            reqwest::Method::POST,
            &format!("/element/{}/click", e.0),
            json!({}),
        )
        .await
        .map(drop)
    }

    pub async fn type_into(&self, e: &Element, text: &str) -> Result<(), BrowserError> {
        self.call(
            reqwest::Method::POST,
            &format!("/element/{}/value", e.0),
            json!({ "text": text }),
        )
        .await
        .map(drop)
    }

    pub async fn text(&self, e: &Element) -> Result<String, BrowserError> {
        Ok(self
            .call(
                reqwest::Method::GET,
                &format!("/element/{}/text", e.0),
                Value::Null,
            )
            .await?
            .as_str()
            .unwrap_or_default()
            .to_owned())
    }

    pub async fn attribute(&self, e: &Element, name: &str) -> Result<Option<String>, BrowserError> {
        Ok(self
            .call(
                reqwest::Method::GET,
                &format!("/element/{}/attribute/{name}", e.0),
                Value::Null,
            )
            .await?
            .as_str()
            .map(str::to_owned))
    }

    /// Runs `script` (a function body; `return` gives the value) in the page.
    pub async fn execute(&self, script: &str) -> Result<Value, BrowserError> {
        self.call(
            reqwest::Method::POST,
            "/execute/sync",
            json!({"script": script, "args": []}),
        )
        .await
    }

    /// A PNG of the viewport.
    pub async fn screenshot(&self) -> Result<Vec<u8>, BrowserError> {
        use base64::Engine as _;
        let encoded = self
            .call(reqwest::Method::GET, "/screenshot", Value::Null)
            .await?;
        base64::engine::general_purpose::STANDARD
            .decode(encoded.as_str().unwrap_or_default())
            .map_err(|e| BrowserError::Driver {
                command: "screenshot".into(),
                message: e.to_string(),
            })
    }

    /// Resizes the window (a full-page screenshot: the page's height).
    pub async fn resize(&self, width: u32, height: u32) -> Result<(), BrowserError> {
        self.call(
            reqwest::Method::POST,
            "/window/rect",
            json!({"width": width, "height": height}),
        )
        .await
        .map(drop)
    }
}

impl Browser {
    /// Ends the session (its Chromium exits), then the driver.
    pub async fn quit(self) {
        let _ = self
            .http
            .delete(&self.base)
            .timeout(Duration::from_secs(10))
            .send()
            .await;
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // The driver and every Chromium process it started (one process group).
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(self.driver.id() as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}
