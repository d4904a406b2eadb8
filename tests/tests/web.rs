//! The web view in a real headless Chromium, driven through the DevTools protocol: `serve`
//! following fixtures whose heaps the tests know, and the self-contained HTML report opened
//! with the network off. What the page shows is read from the DOM it drew (its cells' data
//! attributes, the tooltip, the canvases' placement) and compared with the fixtures' own
//! `mallinfo2()` and the chunks they hold.
use std::collections::{BTreeMap, HashMap};

use pagealloc_testkit::browser::{Browser, Page, output_dir};
use pagealloc_tests::serve::*;
use pagealloc_tests::*;
use serde_json::Value;

/// The first view of a process may take this many bytes on the wire, page, code and data.
const FIRST_VIEW_BYTES: u64 = 2 << 20;

/// Every figure the process view shows, by its cell's `data-key`, once it has drawn the whole
/// view (the page map is drawn last).
fn process_figures(page: &Page) -> BTreeMap<String, f64> {
    page.wait_for(
        "document.querySelector('#heap-figures') && document.querySelector('.heap-canvas') \
         && document.querySelector('.page-canvas') && true",
        WAIT,
    );
    let figures = page.eval(
        "Object.fromEntries([...document.querySelectorAll('#figures [data-key]')]\
         .filter((e) => Number.isFinite(Number(e.dataset.value)))\
         .map((e) => [e.dataset.key, Number(e.dataset.value)]))",
    );
    serde_json::from_value(figures).expect("figures by key")
}

/// The shown figures against the fixture's ground truth: each chunk state's bytes as
/// [`bytes_against_mallinfo`] has them, and the resident parts adding up to the RSS shown.
fn figures_against_fixture(figures: &BTreeMap<String, f64>, report: &HashMap<String, u64>) {
    let get = |key: &str| {
        let value = *figures
            .get(key)
            .unwrap_or_else(|| panic!("the page shows no {key}: {figures:?}"));
        assert!(value >= 0.0 && value.fract() == 0.0, "{key} = {value}");
        value as u64
    };
    let bytes = StateBytes {
        live: get("live_bytes"),
        tcache: get("tcache_bytes"),
        overhead: get("overhead_bytes"),
        unknown: get("unknown_bytes"),
        top: get("top_bytes"),
        fastbin: get("fastbin_bytes"),
        bin: get("bin_bytes"),
        mmapped: get("mmapped_bytes"),
    };
    let wrong = bytes_against_mallinfo(report, &bytes);
    assert!(wrong.is_empty(), "{wrong:#?}\nshown: {figures:?}");
    assert_eq!(get("system_bytes"), report["arena"], "system bytes (arena)");
    let parts = [
        "heap_live",
        "heap_free",
        "heap_overhead",
        "heap_unknown",
        "mmapped_chunks",
        "anon_other",
        "file",
    ];
    let sum: u64 = parts.iter().map(|part| get(part)).sum();
    assert_eq!(
        sum,
        get("rss_bytes"),
        "the resident parts add up to the RSS"
    );
}

/// Where the heap map draws `address` at the moment: the canvas showing it (a selector) and
/// the point at the centre of its pixel, as fractions of the canvas's width and height.
fn pixel_of(page: &Page, address: u64) -> (String, f64, f64) {
    let canvases = page.eval(
        "[...document.querySelectorAll('.heap-canvas')].map((c) => ({ segment: c.dataset.segment, \
         from: Number(c.dataset.from), to: Number(c.dataset.to), scale: Number(c.dataset.scale), \
         width: Number(c.dataset.width), rows: c.height }))",
    );
    let canvas = canvases
        .as_array()
        .expect("an array")
        .iter()
        .find(|c| c["from"].as_u64() <= Some(address) && Some(address) < c["to"].as_u64())
        .unwrap_or_else(|| panic!("no heap canvas shows {address:#x}: {canvases}"));
    let number = |key: &str| canvas[key].as_u64().unwrap();
    let index = (address - number("from")) / number("scale");
    let (x, y) = (index % number("width"), index / number("width"));
    (
        format!(
            ".heap-canvas[data-segment=\"{}\"]",
            canvas["segment"].as_str().unwrap()
        ),
        (x as f64 + 0.5) / number("width") as f64,
        (y as f64 + 0.5) / number("rows") as f64,
    )
}

/// Hovers the heap map's pixel of `address`; the tooltip's pixel state, and the chunk there
/// (address, state) once the server has answered.
fn hover_heap(page: &Page, address: u64) -> (String, u64, String) {
    let (canvas, fx, fy) = pixel_of(page, address);
    page.hover_in(&canvas, fx, fy);
    let tooltip = page.wait_for(
        "(() => { const t = document.getElementById('tooltip'); \
         return !t.hidden && t.dataset.chunkState && { ...t.dataset }; })()",
        WAIT,
    );
    let text = |key: &str| tooltip[key].as_str().unwrap_or_default().to_string();
    let shown_at: u64 = text("address").parse().expect("the pixel's address");
    let scale = page.eval(&format!(
        "Number(document.querySelector('{}').dataset.scale)",
        canvas.replace('\'', "\\'")
    ));
    let scale = scale.as_u64().unwrap();
    assert!(
        shown_at <= address && address < shown_at + scale,
        "hovered {address:#x}, the tooltip says {shown_at:#x} (+{scale})"
    );
    (
        text("pixel"),
        text("chunk").parse().expect("the chunk's address"),
        text("chunkState"),
    )
}

fn no_errors(page: &Page) {
    let errors = page.errors();
    assert!(errors.is_empty(), "the page went wrong: {errors:#?}");
}

/// One process followed: the figures shown are its ground truth, hovering the pixels of a
/// chunk it holds and of one it freed says so, the over-time charts gain a point when the next
/// sample comes, in place, and the first view stays under 2 MB on the wire.
#[test]
fn root_process_view_shows_the_fixture() {
    require_root();
    let fixture = Fixture::spawn(fixture_path!("WEB_TARGET"), &["3000"]);
    let pid = fixture.pid().to_string();
    let serve = Serve::start(&["--pid", &pid, "--interval", "1s"]);
    serve.metrics_when("the fixture sampled", |m| {
        m.get("pagealloc_heap_bytes", &[("pid", &pid), ("state", "live")])
            .map(|_| ())
            .ok_or_else(|| "not yet".to_string())
    });

    let browser = Browser::launch();
    let page = browser.open(&format!("http://{}/#/process/{pid}", serve.address));
    page.set_viewport(1400, 1000);
    let figures = process_figures(&page);
    figures_against_fixture(&figures, &fixture.report);
    let first_view = page.transferred_bytes();
    assert!(
        first_view < FIRST_VIEW_BYTES,
        "the first view took {first_view} bytes"
    );

    // The middle of each large chunk: whole pixels of its state at the scale the page starts.
    let middle = fixture.get("large_bytes") / 2;
    let live = fixture.get("live_chunk");
    let (pixel, chunk, state) = hover_heap(&page, live + middle);
    assert_eq!(
        (pixel.as_str(), chunk, state.as_str()),
        ("live 8/8", live, "live")
    );
    let freed = fixture.get("bin_chunk");
    let (pixel, chunk, state) = hover_heap(&page, freed + middle);
    assert_eq!(
        (pixel.as_str(), chunk, state.as_str()),
        ("bin", freed, "bin")
    );

    // The next sample: both charts gain a point, and the page was not reloaded for it.
    page.eval("window.pageallocNotReloaded = true");
    let points = |id: &str| {
        page.eval(&format!(
            "Number(document.getElementById('{id}').dataset.points)"
        ))
        .as_u64()
        .unwrap()
    };
    let before = points("chart-resident");
    page.wait_for(
        &format!(
            "Number(document.getElementById('chart-resident').dataset.points) > {before} \
             && Number(document.getElementById('chart-heap').dataset.points) > {before}"
        ),
        WAIT,
    );
    assert_eq!(page.eval("window.pageallocNotReloaded === true"), true);
    figures_against_fixture(&process_figures(&page), &fixture.report);

    page.screenshot(&output_dir("root_process_view_shows_the_fixture").join("process.png"));
    no_errors(&page);
}

/// The list of processes followed: each row's figures are its process's, sorting by a column
/// orders the rows by it, and a process that exits leaves the list while the page stays open.
#[test]
fn root_process_list_follows_processes() {
    require_root();
    let (_dir, name, exe) = fixture_named(fixture_path!("WEB_TARGET"), "paw");
    let small = Fixture::spawn(exe.to_str().unwrap(), &["1000"]);
    let mut large = Fixture::spawn(exe.to_str().unwrap(), &["6000"]);
    let serve = Serve::start(&["--comm", &format!("^{name}$"), "--interval", "1s"]);

    let browser = Browser::launch();
    let page = browser.open(&format!("http://{}/", serve.address));
    page.set_viewport(1400, 800);
    let rows = || {
        let rows = page.eval(
            "[...document.querySelectorAll('#processes tr.process')].map((r) => \
             Object.fromEntries([...r.querySelectorAll('td[data-key]')]\
             .map((d) => [d.dataset.key, d.dataset.value])))",
        );
        rows.as_array().unwrap().clone()
    };
    page.wait_for(
        "document.querySelectorAll('#processes tr.process').length === 2",
        WAIT,
    );
    let value = |row: &Value, key: &str| -> u64 {
        row[key]
            .as_str()
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {key} in {row}"))
    };
    for row in rows() {
        let fixture = [&small, &large]
            .into_iter()
            .find(|f| f.pid() as u64 == value(&row, "pid"))
            .unwrap_or_else(|| panic!("a row of another process: {row}"));
        let (live, held) = (value(&row, "live_bytes"), fixture.get("held_bytes"));
        assert!(
            live >= held && live - held <= LIBC_INTERNAL_BYTES,
            "process {}: live {live}, held {held}",
            fixture.pid()
        );
        assert_eq!(row["comm"], name.as_str());
        assert!(value(&row, "rss_bytes") > 0);
    }

    // Sorted by the live bytes, descending, then ascending.
    let order = || -> Vec<u64> { rows().iter().map(|r| value(r, "pid")).collect() };
    page.click("th[data-sort='live_bytes']");
    assert_eq!(order(), [large.pid() as u64, small.pid() as u64]);
    page.click("th[data-sort='live_bytes']");
    assert_eq!(order(), [small.pid() as u64, large.pid() as u64]);

    large.send("q");
    page.wait_for(
        &format!(
            "(() => {{ const rows = [...document.querySelectorAll('#processes tr.process')]; \
             return rows.length === 1 && rows[0].dataset.pid === '{}'; }})()",
            small.pid()
        ),
        WAIT,
    );
    page.screenshot(&output_dir("root_process_list_follows_processes").join("list.png"));
    no_errors(&page);
}

/// `snapshot --format html`: one file that opens with the network off and shows the same
/// figures, and whose heap map says what lies at a pixel without asking anyone.
#[test]
fn root_html_report_opens_offline() {
    require_root();
    let fixture = Fixture::spawn(fixture_path!("WEB_TARGET"), &["3000"]);
    let dir = TempDir::new("report");
    let file = dir.0.join("report.html");
    let pid = fixture.pid().to_string();
    let output = pagealloc(&[
        "snapshot",
        &pid,
        "--format",
        "html",
        "-o",
        file.to_str().unwrap(),
    ]);
    assert!(output.status.success(), "{output:?}");
    let html = std::fs::read_to_string(&file).expect("the report");
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "the report names no address on the network"
    );

    let browser = Browser::launch();
    let page = browser.open_offline(&format!("file://{}", file.display()));
    page.set_viewport(1400, 1000);
    figures_against_fixture(&process_figures(&page), &fixture.report);
    let freed = fixture.get("bin_chunk") + fixture.get("large_bytes") / 2;
    let (canvas, fx, fy) = pixel_of(&page, freed);
    page.hover_in(&canvas, fx, fy);
    let pixel = page.wait_for(
        "(() => { const t = document.getElementById('tooltip'); \
         return !t.hidden && t.dataset.pixel; })()",
        WAIT,
    );
    assert_eq!(pixel, "bin");
    page.screenshot(&output_dir("root_html_report_opens_offline").join("report.png"));
    no_errors(&page);
    // Offline, any request beyond the file itself would have failed, and shown in the errors.
    let transferred = page.transferred_bytes();
    assert!(
        transferred <= html.len() as u64,
        "{transferred} bytes read for a report of {}",
        html.len()
    );
}
