//! A headless Chromium driven through the DevTools protocol, for the web UI's tests.
//!
//! A small synchronous client: one WebSocket to the browser, one flattened session per page, and
//! every call reads the socket until its answer comes, recording the events it passes on the way
//! into the state of the page they belong to (errors, bytes, load). Everything that goes wrong
//! panics with what is known: this is for tests.
//!
//! ```no_run
//! # use pagealloc_testkit::browser::Browser;
//! # use std::time::Duration;
//! let browser = Browser::launch();
//! let page = browser.open("http://127.0.0.1:8080/");
//! page.set_viewport(1280, 900);
//! page.wait_for("document.querySelectorAll('tr.process').length >= 2 && 1", Duration::from_secs(20));
//! assert_eq!(page.errors(), Vec::<String>::new());
//! ```
use std::cell::RefCell;
use std::collections::HashMap;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tungstenite::{Message, WebSocket};

use crate::lines::Lines;

const CHROMIUM: &str = "/usr/bin/chromium";
/// How long one protocol command may take before the test gives up on the browser.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);
/// How long chromium may take to close before it is killed.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
/// How often `wait_for` evaluates its expression again.
const POLL_INTERVAL: Duration = Duration::from_millis(25);

/// `<target dir>/test-output/<test>`: where a test leaves what a person looks at afterwards
/// (screenshots). The target dir is found from the test binary's path
/// (`<target dir>/<profile>/deps/<binary>`), so it follows `CARGO_TARGET_DIR`. Not created:
/// [`Page::screenshot`] creates the directories it writes into.
pub fn output_dir(test: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    let target = exe
        .ancestors()
        .find(|dir| dir.file_name().is_some_and(|name| name == "deps"))
        .and_then(|deps| deps.parent()?.parent())
        .unwrap_or_else(|| panic!("{} is not under <target>/<profile>/deps", exe.display()));
    target.join("test-output").join(test)
}

/// A headless Chromium with a fresh profile; killed, and its profile removed, on drop.
pub struct Browser {
    child: Child,
    /// Chromium's stderr, kept read so that it never blocks on a full pipe.
    _stderr: Lines,
    connection: RefCell<Connection>,
    _profile: tempfile::TempDir,
}

impl Browser {
    pub fn launch() -> Browser {
        if !Path::new(CHROMIUM).exists() {
            panic!("chromium is not installed: run `cargo xtask setup`");
        }
        let profile = tempfile::Builder::new()
            .prefix("pagealloc-chromium-")
            .tempdir()
            .expect("a temporary profile directory");
        let mut child = Command::new(CHROMIUM)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
                "--disable-default-apps",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {CHROMIUM}: {e}"));
        let mut stderr = Lines::new(child.stderr.take().expect("piped stderr"));
        let url = devtools_url(&mut stderr).unwrap_or_else(|seen| {
            let _ = child.kill();
            let _ = child.wait();
            panic!("chromium did not say where DevTools listens; its stderr:\n{seen}")
        });
        Browser {
            child,
            _stderr: stderr,
            connection: RefCell::new(Connection::open(&url)),
            _profile: profile,
        }
    }

    /// A new tab on `url`, once its load event has fired.
    pub fn open(&self, url: &str) -> Page<'_> {
        self.open_page(url, false)
    }

    /// A new tab with the network emulated offline before it navigates to `url` (a `file://`
    /// page): any request that tries the network fails, and shows in [`Page::errors`].
    pub fn open_offline(&self, url: &str) -> Page<'_> {
        self.open_page(url, true)
    }

    fn open_page(&self, url: &str, offline: bool) -> Page<'_> {
        let mut connection = self.connection.borrow_mut();
        let target = connection.call(None, "Target.createTarget", json!({"url": "about:blank"}));
        let target_id = target["targetId"].as_str().expect("a targetId").to_string();
        let attached = connection.call(
            None,
            "Target.attachToTarget",
            json!({"targetId": target_id, "flatten": true}),
        );
        let session = attached["sessionId"]
            .as_str()
            .expect("a sessionId")
            .to_string();
        connection
            .pages
            .insert(session.clone(), PageState::default());
        for domain in ["Page", "Runtime", "Log", "Network"] {
            connection.call(Some(&session), &format!("{domain}.enable"), json!({}));
        }
        connection.call(
            Some(&session),
            "Page.setLifecycleEventsEnabled",
            json!({"enabled": true}),
        );
        if offline {
            connection.call(
                Some(&session),
                "Network.emulateNetworkConditions",
                json!({"offline": true, "latency": 0, "downloadThroughput": -1, "uploadThroughput": -1}),
            );
        }
        let navigation = connection.call(Some(&session), "Page.navigate", json!({"url": url}));
        if let Some(error) = navigation["errorText"].as_str() {
            panic!("navigating to {url}: {error}");
        }
        let loader = navigation["loaderId"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let deadline = Instant::now() + COMMAND_TIMEOUT;
        while !connection.pages[&session].loaded.contains(&loader) {
            if !connection.pump(deadline) {
                panic!(
                    "{url} did not fire its load event within {COMMAND_TIMEOUT:?}; errors: {:?}",
                    connection.pages[&session].errors
                );
            }
        }
        drop(connection);
        Page {
            browser: self,
            session,
            target_id,
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Closed, chromium ends its own helper processes before it exits: killed at once, they
        // would still write into the profile while it is removed.
        if let Ok(mut connection) = self.connection.try_borrow_mut() {
            let _ = connection.send(None, "Browser.close", json!({}));
        }
        let deadline = Instant::now() + CLOSE_TIMEOUT;
        while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Reads Chromium's stderr up to "DevTools listening on ws://..."; what it read otherwise.
fn devtools_url(stderr: &mut Lines) -> Result<String, String> {
    let mut seen = String::new();
    let deadline = Instant::now() + COMMAND_TIMEOUT;
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match stderr.next(left) {
            Ok(Some(line)) => match line.strip_prefix("DevTools listening on ") {
                Some(url) => return Ok(url.trim().to_string()),
                None => seen.push_str(&format!("{line}\n")),
            },
            Ok(None) | Err(_) => break,
        }
    }
    Err(seen)
}

/// What the events told about one page since it was opened.
#[derive(Default)]
struct PageState {
    /// The loader ids whose load lifecycle event fired.
    loaded: Vec<String>,
    errors: Vec<String>,
    transferred_bytes: u64,
    /// Request id -> URL, to name the requests that fail.
    requests: HashMap<String, String>,
}

impl PageState {
    fn record(&mut self, method: &str, params: &Value) {
        let text = |value: &Value| value.as_str().unwrap_or_default().to_string();
        match method {
            "Page.lifecycleEvent" if params["name"] == "load" => {
                self.loaded.push(text(&params["loaderId"]))
            }
            "Runtime.exceptionThrown" => {
                let details = &params["exceptionDetails"];
                let description = details["exception"]["description"]
                    .as_str()
                    .unwrap_or_else(|| details["text"].as_str().unwrap_or("exception"));
                self.errors.push(format!("uncaught: {description}"));
            }
            "Runtime.consoleAPICalled"
                if matches!(params["type"].as_str(), Some("error" | "assert")) =>
            {
                let arguments: Vec<String> = params["args"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|argument| match &argument["value"] {
                        Value::String(s) => s.clone(),
                        Value::Null => text(&argument["description"]),
                        value => value.to_string(),
                    })
                    .collect();
                self.errors.push(format!(
                    "console.{}: {}",
                    text(&params["type"]),
                    arguments.join(" ")
                ));
            }
            "Log.entryAdded" if params["entry"]["level"] == "error" => {
                let entry = &params["entry"];
                self.errors.push(format!(
                    "log: {} ({})",
                    text(&entry["text"]),
                    text(&entry["url"])
                ));
            }
            "Network.requestWillBeSent" => {
                self.requests
                    .insert(text(&params["requestId"]), text(&params["request"]["url"]));
            }
            "Network.responseReceived" => {
                let response = &params["response"];
                let status = response["status"].as_u64().unwrap_or(0);
                if status >= 400 {
                    self.errors
                        .push(format!("HTTP {status}: {}", text(&response["url"])));
                }
            }
            "Network.loadingFailed" => {
                let url = self
                    .requests
                    .get(params["requestId"].as_str().unwrap_or_default());
                self.errors.push(format!(
                    "request failed: {} ({})",
                    text(&params["errorText"]),
                    url.map_or("?", String::as_str)
                ));
            }
            "Network.loadingFinished" => {
                // A fractional count for data: URLs and the like: whole bytes are what matter.
                self.transferred_bytes +=
                    params["encodedDataLength"].as_f64().unwrap_or(0.0) as u64;
            }
            _ => {}
        }
    }
}

/// The browser's WebSocket, the commands' ids and the pages' states, fed as messages arrive.
struct Connection {
    socket: WebSocket<TcpStream>,
    next_id: u64,
    pages: HashMap<String, PageState>,
    /// Answers read by `pump`, each taken by the call that waits for it.
    answers: HashMap<u64, Value>,
}

impl Connection {
    fn open(url: &str) -> Connection {
        let address = url
            .strip_prefix("ws://")
            .and_then(|rest| rest.split('/').next())
            .unwrap_or_else(|| panic!("not a ws:// URL: {url}"));
        let stream =
            TcpStream::connect(address).unwrap_or_else(|e| panic!("connecting to {address}: {e}"));
        let (socket, _) = tungstenite::client(url, stream)
            .unwrap_or_else(|e| panic!("DevTools handshake at {url}: {e}"));
        Connection {
            socket,
            next_id: 1,
            pages: HashMap::new(),
            answers: HashMap::new(),
        }
    }

    /// Sends one command (to the browser, or to a page's session) and reads up to its answer;
    /// its `result`, or a panic with the protocol's error.
    fn call(&mut self, session: Option<&str>, method: &str, params: Value) -> Value {
        let id = self
            .send(session, method, params)
            .unwrap_or_else(|e| panic!("sending {method}: {e}"));
        let deadline = Instant::now() + COMMAND_TIMEOUT;
        loop {
            if let Some(answer) = self.answers.remove(&id) {
                if let Some(error) = answer.get("error") {
                    panic!("{method} failed: {error}");
                }
                return answer["result"].clone();
            }
            if !self.pump(deadline) {
                panic!("no answer to {method} within {COMMAND_TIMEOUT:?}");
            }
        }
    }

    /// Sends one command without waiting for its answer; its id.
    fn send(
        &mut self,
        session: Option<&str>,
        method: &str,
        params: Value,
    ) -> tungstenite::Result<u64> {
        let id = self.next_id;
        self.next_id += 1;
        let mut command = json!({"id": id, "method": method, "params": params});
        if let Some(session) = session {
            command["sessionId"] = json!(session);
        }
        self.socket.send(Message::text(command.to_string()))?;
        Ok(id)
    }

    /// Reads one message, if one comes before `deadline`, and files it: an answer by its id, an
    /// event into its page's state. False once the deadline has passed.
    fn pump(&mut self, deadline: Instant) -> bool {
        let Some(left) = deadline.checked_duration_since(Instant::now()) else {
            return false;
        };
        let stream = self.socket.get_ref();
        stream
            .set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .expect("a read timeout");
        let message = match self.socket.read() {
            Ok(message) => message,
            Err(tungstenite::Error::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return Instant::now() < deadline;
            }
            Err(e) => panic!("reading from DevTools: {e}"),
        };
        let Message::Text(text) = message else {
            return true;
        };
        let message: Value =
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("DevTools sent {text}: {e}"));
        if let Some(id) = message["id"].as_u64() {
            self.answers.insert(id, message);
        } else if let (Some(method), Some(session)) =
            (message["method"].as_str(), message["sessionId"].as_str())
            && let Some(page) = self.pages.get_mut(session)
        {
            page.record(method, &message["params"]);
        }
        true
    }
}

/// One tab, closed on drop.
pub struct Page<'b> {
    browser: &'b Browser,
    session: String,
    target_id: String,
}

impl Page<'_> {
    fn call(&self, method: &str, params: Value) -> Value {
        self.browser
            .connection
            .borrow_mut()
            .call(Some(&self.session), method, params)
    }

    /// Reads the events already there, so that the page's state is up to date.
    fn catch_up(&self) {
        let mut connection = self.browser.connection.borrow_mut();
        let now = Instant::now() + Duration::from_millis(1);
        while connection.pump(now) {}
    }

    fn state<T>(&self, read: impl FnOnce(&PageState) -> T) -> T {
        self.catch_up();
        read(&self.browser.connection.borrow().pages[&self.session])
    }

    /// The viewport's size in CSS pixels (device scale factor 1).
    pub fn set_viewport(&self, width: u32, height: u32) {
        self.call(
            "Emulation.setDeviceMetricsOverride",
            json!({"width": width, "height": height, "deviceScaleFactor": 1, "mobile": false}),
        );
    }

    /// The value of a JavaScript expression, a promise awaited, returned by value (`null` for
    /// `undefined`). An exception panics with its text.
    pub fn eval(&self, expression: &str) -> Value {
        self.try_eval(expression)
            .unwrap_or_else(|exception| panic!("`{expression}` threw: {exception}"))
    }

    fn try_eval(&self, expression: &str) -> Result<Value, String> {
        let answer = self.call(
            "Runtime.evaluate",
            json!({"expression": expression, "awaitPromise": true, "returnByValue": true}),
        );
        if let Some(details) = answer.get("exceptionDetails") {
            let description = details["exception"]["description"].as_str();
            return Err(description
                .unwrap_or_else(|| details["text"].as_str().unwrap_or("?"))
                .to_string());
        }
        Ok(answer["result"]
            .get("value")
            .cloned()
            .unwrap_or(Value::Null))
    }

    /// Evaluates `expression` every 25 ms until it is truthy, and returns that value. On timeout,
    /// panics with the expression, its last value (or exception) and the page's errors.
    pub fn wait_for(&self, expression: &str, timeout: Duration) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let value = self.try_eval(expression);
            if let Ok(value) = &value
                && truthy(value)
            {
                return value.clone();
            }
            if Instant::now() >= deadline {
                panic!(
                    "`{expression}` not truthy within {timeout:?}: last {value:?}; page errors: {:?}",
                    self.errors()
                );
            }
            // Reads events meanwhile instead of sleeping blind.
            let mut connection = self.browser.connection.borrow_mut();
            let next = (Instant::now() + POLL_INTERVAL).min(deadline);
            while connection.pump(next) {}
        }
    }

    /// Moves the mouse to (x, y), in CSS pixels of the viewport.
    pub fn hover(&self, x: f64, y: f64) {
        self.mouse("mouseMoved", x, y, "none");
    }

    /// Moves the mouse to a point of the first element matching `selector`, after scrolling it
    /// into view: `fx`, `fy` are fractions of its bounding box's width and height (0.5, 0.5 is
    /// its centre).
    pub fn hover_in(&self, selector: &str, fx: f64, fy: f64) {
        let (x, y) = self.point_in(selector, fx, fy);
        self.hover(x, y);
    }

    /// A left click at the centre of the first element matching `selector` (scrolled into view),
    /// with real mouse events: the page sees move, down, up and click.
    pub fn click(&self, selector: &str) {
        let (x, y) = self.point_in(selector, 0.5, 0.5);
        self.hover(x, y);
        self.mouse("mousePressed", x, y, "left");
        self.mouse("mouseReleased", x, y, "left");
    }

    fn mouse(&self, kind: &str, x: f64, y: f64, button: &str) {
        self.call(
            "Input.dispatchMouseEvent",
            json!({"type": kind, "x": x, "y": y, "button": button, "clickCount": 1}),
        );
    }

    fn point_in(&self, selector: &str, fx: f64, fy: f64) -> (f64, f64) {
        let selector_literal = Value::String(selector.to_string());
        let bounds = self.eval(&format!(
            "(() => {{ const element = document.querySelector({selector_literal}); \
             if (!element) throw new Error('no element matches ' + {selector_literal}); \
             element.scrollIntoView({{block: 'center', inline: 'center'}}); \
             const box = element.getBoundingClientRect(); \
             return [box.left, box.top, box.width, box.height]; }})()"
        ));
        let number = |i: usize| bounds[i].as_f64().expect("a bounding box");
        (number(0) + fx * number(2), number(1) + fy * number(3))
    }

    /// A PNG of the whole page, beyond the viewport, written to `path` (its directories created).
    pub fn screenshot(&self, path: &Path) {
        let metrics = self.call("Page.getLayoutMetrics", json!({}));
        let size = &metrics["cssContentSize"];
        let shot = self.call(
            "Page.captureScreenshot",
            json!({
                "format": "png",
                "captureBeyondViewport": true,
                "clip": {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1},
            }),
        );
        let png = data_encoding::BASE64
            .decode(shot["data"].as_str().unwrap_or_default().as_bytes())
            .expect("a base64 screenshot");
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
        }
        std::fs::write(path, png).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    }

    /// Everything that went wrong since the page was opened: uncaught exceptions,
    /// console.error and console.assert, log entries of level error (CSP violations among them),
    /// failed requests and answers with an HTTP status of 400 or more. Chromium asks for
    /// `/favicon.ico` after the load unless the page names its icon (`<link rel="icon" ...>`):
    /// a server without one shows a 404 here, sooner or later.
    pub fn errors(&self) -> Vec<String> {
        self.state(|page| page.errors.clone())
    }

    /// The bytes the page's requests took on the wire since it was opened (the sum of their
    /// `encodedDataLength`).
    pub fn transferred_bytes(&self) -> u64 {
        self.state(|page| page.transferred_bytes)
    }
}

impl Drop for Page<'_> {
    fn drop(&mut self) {
        // Panicking, the browser may be what failed: it is killed on drop anyway.
        if let Ok(mut connection) = self.browser.connection.try_borrow_mut() {
            connection.pages.remove(&self.session);
            if !std::thread::panicking() {
                connection.call(
                    None,
                    "Target.closeTarget",
                    json!({"targetId": self.target_id}),
                );
            }
        }
    }
}

/// JavaScript's truthiness of a value passed back by value.
fn truthy(value: &Value) -> bool {
    match value {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|n| n != 0.0 && !n.is_nan()),
        Value::String(s) => !s.is_empty(),
        Value::Array(_) | Value::Object(_) => true,
    }
}
