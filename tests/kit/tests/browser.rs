//! The browser harness against pages served here: each kind of error is reported, a clean page
//! reports none, and eval, wait_for, hover, click, screenshot, transferred bytes and offline
//! pages do what they say.
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::time::Duration;

use pagealloc_testkit::browser::{Browser, output_dir};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(10);

/// Serves `pages` (path, HTML) on loopback, 404 for any other path; each request's path is sent
/// on the receiver as soon as it is read, before the answer.
fn serve(pages: Vec<(&'static str, String)>) -> (SocketAddr, Receiver<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    let (seen, requests) = channel();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { break };
            answer(stream, &pages, &seen);
        }
    });
    (address, requests)
}

/// One request, one answer, the connection closed.
fn answer(mut stream: TcpStream, pages: &[(&str, String)], seen: &Sender<String>) -> Option<()> {
    let mut reader = BufReader::new(stream.try_clone().ok()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line).ok()?;
    let path = request_line.split(' ').nth(1)?.to_string();
    // The test may be over: nobody to tell.
    let _ = seen.send(path.clone());
    // The headers, up to the blank line.
    for line in reader.lines() {
        if line.ok()?.is_empty() {
            break;
        }
    }
    let (status, body) = match pages.iter().find(|(p, _)| *p == path) {
        Some((_, html)) => ("200 OK", html.as_str()),
        None => ("404 Not Found", "no such page"),
    };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/html\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).ok()?;
    stream.write_all(body.as_bytes()).ok()
}

const CLEAN: &str = r#"<!doctype html><html><head><title>clean</title><link rel="icon" href="data:,"></head><body>
<button id="go">go</button>
<canvas id="heap" width="200" height="100" style="display:block; margin-top: 1500px"></canvas>
<p id="moved"></p><p id="clicked">0</p>
<script>
document.addEventListener('mousemove', e => {
  const box = e.target.getBoundingClientRect();
  document.querySelector('#moved').textContent = e.target.id === 'heap'
    ? 'canvas ' + Math.round(e.clientX - box.left) + ',' + Math.round(e.clientY - box.top)
    : e.clientX + ',' + e.clientY;
});
document.querySelector('#go').addEventListener('click', () => { const c = document.querySelector('#clicked'); c.textContent = Number(c.textContent) + 1; });
</script></body></html>"#;

#[test]
fn a_clean_page_reports_no_error_and_answers_eval_hover_click() {
    let (address, _requests) = serve(vec![("/", CLEAN.to_string())]);
    let browser = Browser::launch();
    let page = browser.open(&format!("http://{address}/"));
    page.set_viewport(800, 600);

    assert_eq!(page.eval("document.title"), json!("clean"));
    assert_eq!(page.eval("Promise.resolve(6 * 7)"), json!(42));
    assert_eq!(page.eval("undefined"), json!(null));
    assert_eq!(page.eval("({a: [1, 'b']})"), json!({"a": [1, "b"]}));

    page.hover(120.0, 45.0);
    assert_eq!(
        page.wait_for("document.querySelector('#moved').textContent", WAIT),
        json!("120,45")
    );
    // The canvas is below the fold: hover_in scrolls it into view first.
    page.hover_in("#heap", 0.25, 0.5);
    assert_eq!(
        page.wait_for(
            "document.querySelector('#moved').textContent.startsWith('canvas') && document.querySelector('#moved').textContent",
            WAIT
        ),
        json!("canvas 50,50")
    );
    page.click("#go");
    page.click("#go");
    assert_eq!(
        page.wait_for(
            "document.querySelector('#clicked').textContent === '2' && 'two clicks'",
            WAIT
        ),
        json!("two clicks")
    );

    let shot = output_dir("browser_self_test").join("clean.png");
    page.screenshot(&shot);
    let png = std::fs::read(&shot).unwrap();
    assert!(
        png.starts_with(b"\x89PNG\r\n\x1a\n"),
        "{} is no PNG",
        shot.display()
    );
    // The whole page, beyond the 600 px viewport: the PNG header's height.
    let height = u32::from_be_bytes(png[20..24].try_into().unwrap());
    assert!(height > 1500, "the screenshot is {height} px high");

    // The page with its headers, and nothing else (the icon is a data: URL).
    let bytes = page.transferred_bytes();
    assert!(
        (CLEAN.len() as u64..CLEAN.len() as u64 + 200).contains(&bytes),
        "{bytes} bytes for a page of {} and its headers",
        CLEAN.len()
    );
    assert_eq!(page.errors(), Vec::<String>::new());
}

#[test]
fn each_kind_of_error_is_reported() {
    let closed = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let faulty = format!(
        r#"<!doctype html><html><head><meta http-equiv="Content-Security-Policy" content="img-src 'self'"></head><body>
<img src="data:image/gif;base64,R0lGODlhAQABAAAAACw=">
<button id="throw" onclick="document.body.dataset.clicked = 'yes'; throw new Error('thrown on click')">throw</button>
<img src="/missing.png">
<p id="fetched"></p>
<script>
console.error('logged', 'an error');
console.assert(1 === 2, 'one is not two');
fetch('http://{closed}/').catch(() => {{ document.querySelector('#fetched').textContent = 'failed'; }});
</script></body></html>"#
    );
    let (address, _requests) = serve(vec![("/", faulty)]);
    let browser = Browser::launch();
    let page = browser.open(&format!("http://{address}/"));
    page.wait_for(
        "document.querySelector('#fetched').textContent === 'failed'",
        WAIT,
    );
    page.click("#throw");
    // The exception comes right after the mark, before the answer to the next evaluation.
    page.wait_for("document.body.dataset.clicked === 'yes'", WAIT);
    let errors = page.errors();
    let has = |needle: &str| errors.iter().any(|e| e.contains(needle));
    assert!(has("uncaught: Error: thrown on click"), "{errors:#?}");
    assert!(has("console.error: logged an error"), "{errors:#?}");
    assert!(has("console.assert: one is not two"), "{errors:#?}");
    assert!(
        has(&format!("HTTP 404: http://{address}/missing.png")),
        "{errors:#?}"
    );
    assert!(
        has(&format!(
            "request failed: net::ERR_CONNECTION_REFUSED (http://{closed}/)"
        )),
        "{errors:#?}"
    );
    // The data: image breaks the page's img-src: only the log tells.
    assert!(
        errors
            .iter()
            .any(|e| e.starts_with("log: ") && e.contains("Content Security Policy")),
        "{errors:#?}"
    );

    let thrown = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        page.eval("nosuchname.x");
    }));
    let message = *thrown.unwrap_err().downcast::<String>().unwrap();
    assert!(
        message.contains("ReferenceError: nosuchname is not defined"),
        "{message}"
    );
}

#[test]
fn an_offline_page_makes_no_request() {
    let (address, requests) = serve(Vec::new());
    let report = tempfile::Builder::new().suffix(".html").tempfile().unwrap();
    std::fs::write(
        report.path(),
        format!(
            r#"<!doctype html><html><body><p id="fetched"></p><script>
fetch('http://{address}/data').then(() => 'answered', () => 'failed')
  .then(outcome => {{ document.querySelector('#fetched').textContent = outcome; }});
</script></body></html>"#
        ),
    )
    .unwrap();
    let browser = Browser::launch();
    let page = browser.open_offline(&format!("file://{}", report.path().display()));
    page.wait_for(
        "document.querySelector('#fetched').textContent === 'failed'",
        WAIT,
    );
    let errors = page.errors();
    assert!(
        errors
            .iter()
            .any(|e| e.contains(&format!("http://{address}/data"))),
        "{errors:#?}"
    );
    // The server is asked nothing: a request that reached it would be there by the time the
    // fetch failed.
    assert_eq!(requests.try_recv().ok(), None);
}
