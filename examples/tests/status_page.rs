//! The status page of `deal-worker run --metrics-addr`, read in a real headless browser
//! (Debian's chromium): it lists the worker's projections with their state and lease holder
//! and draws each one's lag as an SVG chart, from `/status.json`, with nothing but the page.
//!
//! chromium must be installed: scripts/test installs it (scripts/lib/chromium.sh); set
//! `CHROMIUM` to use another binary. Without it this test fails, saying so.

#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use es_examples::deal::{load, LoadOptions};
use es_postgres::testing::TestDatabase;

/// The chromium binary: `$CHROMIUM`, else `chromium` or `chromium-browser` on the PATH.
fn chromium() -> PathBuf {
    if let Some(path) = std::env::var_os("CHROMIUM") {
        return PathBuf::from(path);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        for name in ["chromium", "chromium-browser"] {
            let candidate = dir.join(name);
            if candidate.is_file() {
                return candidate;
            }
        }
    }
    panic!(
        "chromium is not installed, and this test reads the status page in it: run the tests \
         with scripts/test (it installs Debian's chromium), `apt-get install chromium`, or set \
         CHROMIUM to a chromium binary"
    );
}

/// The DOM of `url` after its scripts ran for (virtual) five seconds.
fn dump_dom(url: &str) -> String {
    let profile = tempdir();
    let browser = chromium();
    let output = Command::new(&browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--virtual-time-budget=5000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(["--dump-dom", url])
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run chromium at {}: {e} (scripts/test installs Debian's chromium)",
                browser.display()
            )
        });
    let _ = std::fs::remove_dir_all(&profile);
    assert!(
        output.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

fn tempdir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("es-status-page-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Runs the worker with the metrics address on a free port; returns it and the address it
/// printed.
fn run_worker(url: &str) -> (Child, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_deal-worker"))
        .args([
            "run",
            "--poll-ms",
            "20",
            "--metrics-addr",
            "127.0.0.1:0",
            "--stall-secs",
            "2",
        ])
        .env("DATABASE_URL", url)
        .env_remove("NATS_URL")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let addr = loop {
        let line = lines
            .next()
            .expect("the worker exited before serving")
            .unwrap();
        if let Some(rest) = line.strip_prefix("metrics on http://") {
            break rest.split('/').next().unwrap().to_string();
        }
    };
    // Keep draining stderr so that the worker never blocks on a full pipe.
    std::thread::spawn(move || lines.for_each(drop));
    (child, addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_shows_projections_and_their_lag_in_a_browser() {
    let browser = chromium();
    let db = TestDatabase::with_max_connections(10).await;
    let (mut worker, addr) = run_worker(&db.url);
    // Events arrive while it runs: its lag rises and falls in the samples.
    let options = LoadOptions {
        deals: 40,
        events: 1_500,
        concurrency: 2,
        append_batch: 50,
    };
    load(&db.pool, &options, |_| {}).await.unwrap();
    let head = es_postgres::log_head(&db.pool).await.unwrap();
    es_projections::wait_for(&db.pool, "deals", head, Duration::from_secs(60))
        .await
        .unwrap();
    es_projections::wait_for(&db.pool, "wires", head, Duration::from_secs(60))
        .await
        .unwrap();
    // A few samples after the catch-up (the sampler runs every 400 ms with a 2 s stall time).
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let deadline = Instant::now() + Duration::from_secs(60);
    let dom = loop {
        let dom = dump_dom(&format!("http://{addr}/"));
        if dom.contains("log head") {
            break dom;
        }
        assert!(
            Instant::now() < deadline,
            "{} never rendered the status: {dom}",
            browser.display()
        );
    };
    let _ = Command::new("kill")
        .args(["-TERM", &worker.id().to_string()])
        .status();
    let _ = worker.wait();

    assert!(
        dom.contains(&format!("ready · log head {}", head.0)),
        "{dom}"
    );
    for name in ["deals", "wires"] {
        let card = card(&dom, name);
        assert!(card.contains(&format!("<h2>{name}</h2>")), "{card}");
        assert!(
            card.contains(r#"<dd class="state ok">running</dd>"#),
            "{card}"
        );
        assert!(card.contains("(this process)</dd>"), "{card}");
        assert!(
            card.contains(r#"<dd class="lag">0 events, 0.0 s</dd>"#),
            "{card}"
        );
        // The chart: an inline SVG with a line through the sampled lag.
        let points = card
            .split("<polyline points=\"")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .unwrap_or_else(|| panic!("no chart line for {name}: {card}"));
        let points: Vec<(f64, f64)> = points
            .split(' ')
            .map(|p| {
                let (x, y) = p.split_once(',').unwrap();
                (x.parse().unwrap(), y.parse().unwrap())
            })
            .collect();
        assert!(points.len() >= 3, "{points:?}");
        // The last point is at lag 0 (the bottom); x grows with time.
        assert!(points.windows(2).all(|w| w[0].0 <= w[1].0), "{points:?}");
        assert_eq!(points.last().unwrap().1, 116.0, "{points:?}");
    }
    let deals = card(&dom, "deals");
    assert!(
        deals.contains("<dd>projection</dd>") && card(&dom, "wires").contains("<dd>reactor</dd>"),
        "{dom}"
    );
}

/// The card of projection `name` in the dumped DOM.
fn card<'a>(dom: &'a str, name: &str) -> &'a str {
    let start = dom
        .find(&format!(r#"class="card running" data-projection="{name}""#))
        .or_else(|| dom.find(&format!(r#"data-projection="{name}""#)))
        .unwrap_or_else(|| panic!("no card for {name}: {dom}"));
    let rest = &dom[start..];
    let end = rest[1..]
        .find("class=\"card ")
        .map_or(rest.len(), |i| i + 1);
    &rest[..end]
}
