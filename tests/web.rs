//! The web view over HTTP, against a live bank of real branch processes and the real
//! `controller --web`: every endpoint's status and JSON shape, `HEAD` on each, `/metrics` as
//! valid Prometheus text, the live stream delivering snapshots, a clear error when the address
//! is taken, a client that never reads its stream not holding the controller back, a viewer
//! beyond the stream cap getting in, and a connection flood leaving memory bounded.

mod common;
mod web_common;

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::process::Command;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use common::RunLimited;
use serde_json::Value;
use snapbank::web::MAX_STREAM_CLIENTS;
use web_common::{CONTROLLER, EventStream, WebBank, request};

/// Held by every test that runs a bank: their banks send as fast as they can and some tests
/// add a flood or dozens of stream clients, so two at once on a small machine would slow each
/// other past their time bounds.
static BANK: Mutex<()> = Mutex::new(());

fn one_bank_at_a_time() -> MutexGuard<'static, ()> {
    BANK.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The issue's acceptance run: a bank of 4, `--interval-ms 200`: within 3 s, five ok snapshots
/// summing to 4000; then every endpoint.
#[test]
fn every_endpoint_serves_the_live_bank() {
    let _bank = one_bank_at_a_time();
    let web = WebBank::start(4, 4000, &["--interval-ms", "200"]);
    let list = web.wait_for_snapshots(Duration::from_secs(3), |list| {
        list.iter()
            .filter(|s| s["verdict"] == "ok" && s["total"] == 4000)
            .count()
            >= 5
    });
    check_snapshot_list(&list);
    check_one_snapshot(&web, &list[0]);
    check_history_overview_and_bank(&web);
    check_metrics(&web);
    check_stream(&web);
    check_page_and_errors(&web);
}

fn check_snapshot_list(list: &[Value]) {
    let ids: Vec<u64> = list
        .iter()
        .map(|s| s["snapshot_id"].as_u64().unwrap())
        .collect();
    assert!(ids.windows(2).all(|w| w[0] > w[1]), "newest first: {ids:?}");
    for snapshot in list {
        // The `--format json` object...
        for key in [
            "snapshot_id",
            "initiator",
            "elapsed_ms",
            "branches",
            "total",
            "expected_total",
            "verdict",
            "consistency",
        ] {
            assert!(snapshot.get(key).is_some(), "{key} missing: {snapshot}");
        }
        assert_eq!(snapshot["expected_total"], 4000);
        let branches = snapshot["branches"].as_array().unwrap();
        assert_eq!(branches.len(), 4);
        for branch in branches {
            assert_eq!(branch["channels"].as_array().unwrap().len(), 3, "{branch}");
            assert!(branch["transfers_sent"].as_u64().is_some(), "{branch}");
        }
        if snapshot["verdict"] == "ok" {
            let balances: u64 = branches
                .iter()
                .map(|b| b["balance"].as_u64().unwrap())
                .sum();
            let in_transit: u64 = branches
                .iter()
                .flat_map(|b| b["channels"].as_array().unwrap())
                .map(|c| c["amount"].as_u64().unwrap())
                .sum();
            assert_eq!(balances + in_transit, 4000);
            assert_eq!(snapshot["consistency"]["checked_channels"], 12);
            // ...plus the view's section.
            let view = &snapshot["view"];
            assert_eq!(view["in_transit"].as_u64(), Some(in_transit));
            assert!(view["started_at_ms"].as_f64().unwrap() > 1.6e12, "{view}");
            let record_ms = view["record_ms"].as_array().unwrap();
            assert_eq!(record_ms.len(), 4);
            assert!(record_ms.iter().all(|t| t.as_f64().is_some()), "{view}");
            assert!(view["reason"].is_null());
        }
    }
}

fn check_one_snapshot(web: &WebBank, newest: &Value) {
    let id = newest["snapshot_id"].as_u64().unwrap();
    assert_eq!(&web.json(&format!("/api/snapshots/{id}")), newest);
    let two = web.json("/api/snapshots?limit=2");
    assert_eq!(two.as_array().unwrap().len(), 2);
    for (path, status) in [
        ("/api/snapshots/4000000000", 404),
        ("/api/snapshots/abc", 400),
        ("/api/snapshots?limit=0", 400),
        ("/api/snapshots?limit=x", 400),
        ("/api/history?limit=-1", 400),
    ] {
        let response = web.get(path);
        assert_eq!(response.status, status, "{path}: {}", response.body);
        let error: Value = serde_json::from_str(&response.body).unwrap();
        assert!(error["error"].is_string(), "{path}: {error}");
    }
}

fn check_history_overview_and_bank(web: &WebBank) {
    let history = web.json("/api/history?limit=3");
    let history = history.as_array().unwrap();
    assert_eq!(history.len(), 3);
    for entry in history {
        assert_eq!(entry["balances"].as_array().unwrap().len(), 4, "{entry}");
        assert!(entry["view"]["started_at_ms"].is_number());
    }

    let overview = web.json("/api/overview");
    let ok = overview["ok"].as_u64().unwrap();
    assert!(ok >= 5, "{overview}");
    assert!(overview["started"].as_u64().unwrap() >= ok);
    assert!(overview["in_progress"].as_u64().unwrap() <= 2, "{overview}");
    assert_eq!(overview["incomplete"], 0);
    assert_eq!(overview["inconsistent"], 0);
    assert!(overview["latest_ok"]["snapshot_id"].is_u64());
    assert!(overview["latest_failed"].is_null());
    let duration = &overview["duration_ms"];
    assert!(duration["min"].as_f64() <= duration["avg"].as_f64());
    assert!(duration["avg"].as_f64() <= duration["max"].as_f64());
    assert_eq!(overview["keep"], 100);

    let bank = web.json("/api/bank");
    assert_eq!(bank["expected_total"], 4000);
    assert_eq!(bank["branches_up"], 4);
    let branches = bank["branches"].as_array().unwrap();
    let names: Vec<&str> = branches
        .iter()
        .map(|b| b["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["branch1", "branch2", "branch3", "branch4"]);
    for (branch, entry) in branches.iter().zip(web.bank.entries()) {
        assert_eq!(branch["link"], "up", "{branch}");
        assert_eq!(branch["addr"], entry.addr.to_string());
    }
    let balances: u64 = branches
        .iter()
        .map(|b| b["balance"].as_u64().unwrap())
        .sum();
    assert_eq!(balances + bank["in_transit"].as_u64().unwrap(), 4000);
}

/// One sample line of the text format: name, labels, value.
type Sample = (String, BTreeMap<String, String>, f64);

/// Parses Prometheus's text exposition format strictly: `# HELP`/`# TYPE` before a family's
/// samples, valid metric and label names, quoted and escaped label values, float values.
fn parse_prometheus(text: &str) -> (BTreeMap<String, String>, Vec<Sample>) {
    let valid_name = |name: &str| {
        !name.is_empty()
            && name.chars().enumerate().all(|(i, c)| {
                c.is_ascii_alphabetic() || c == '_' || c == ':' || (i > 0 && c.is_ascii_digit())
            })
    };
    let mut types = BTreeMap::new();
    let mut samples = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("# TYPE name kind");
            assert!(valid_name(name), "{line}");
            assert!(
                ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
                "{line}"
            );
            assert!(
                types.insert(name.to_string(), kind.to_string()).is_none(),
                "{line}"
            );
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            assert!(valid_name(rest.split(' ').next().unwrap()), "{line}");
            continue;
        }
        assert!(
            !line.starts_with('#') && !line.is_empty(),
            "stray line {line:?}"
        );
        let (series, value) = line.rsplit_once(' ').expect("name value");
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            "NaN" => f64::NAN,
            number => number
                .parse()
                .unwrap_or_else(|_| panic!("bad value in {line:?}")),
        };
        let (name, labels) = match series.split_once('{') {
            None => (series, BTreeMap::new()),
            Some((name, rest)) => {
                let body = rest.strip_suffix('}').expect("closing brace");
                let mut labels = BTreeMap::new();
                let mut chars = body.chars().peekable();
                while chars.peek().is_some() {
                    let key: String = chars.by_ref().take_while(|&c| c != '=').collect();
                    assert!(valid_name(&key), "{line}");
                    assert_eq!(chars.next(), Some('"'), "{line}");
                    let mut value = String::new();
                    loop {
                        match chars.next().expect("unterminated label value") {
                            '\\' => match chars.next() {
                                Some('n') => value.push('\n'),
                                Some(c @ ('\\' | '"')) => value.push(c),
                                other => panic!("bad escape {other:?} in {line}"),
                            },
                            '"' => break,
                            c => value.push(c),
                        }
                    }
                    labels.insert(key, value);
                    if chars.peek() == Some(&',') {
                        chars.next();
                    }
                }
                (name, labels)
            }
        };
        assert!(valid_name(name), "{line}");
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| {
                name.strip_suffix(suffix)
                    .filter(|f| types.get(*f).is_some_and(|k| k == "histogram"))
            })
            .unwrap_or(name);
        assert!(
            types.contains_key(family),
            "sample before its # TYPE: {line}"
        );
        samples.push((name.to_string(), labels, value));
    }
    (types, samples)
}

fn check_metrics(web: &WebBank) {
    let response = web.get("/metrics");
    assert_eq!(response.status, 200);
    assert!(
        response
            .header("content-type")
            .is_some_and(|t| t.starts_with("text/plain; version=0.0.4")),
        "{:?}",
        response.headers
    );
    let (types, samples) = parse_prometheus(&response.body);
    assert!(
        types.keys().all(|name| name.starts_with("snapbank_")),
        "{types:?}"
    );
    let value = |name: &str, label: Option<(&str, &str)>| {
        samples
            .iter()
            .find(|(n, labels, _)| {
                n == name && label.is_none_or(|(k, v)| labels.get(k).is_some_and(|l| l == v))
            })
            .map(|s| s.2)
            .unwrap_or_else(|| panic!("{name} {label:?} missing:\n{}", response.body))
    };
    assert_eq!(types["snapbank_snapshots_total"], "counter");
    assert!(value("snapbank_snapshots_total", Some(("verdict", "ok"))) >= 5.0);
    assert_eq!(
        value("snapbank_snapshots_total", Some(("verdict", "incomplete"))),
        0.0
    );
    assert_eq!(types["snapbank_snapshot_duration_seconds"], "histogram");
    let buckets: Vec<f64> = samples
        .iter()
        .filter(|(n, _, _)| n == "snapbank_snapshot_duration_seconds_bucket")
        .map(|s| s.2)
        .collect();
    assert!(
        buckets.windows(2).all(|w| w[0] <= w[1]),
        "cumulative buckets"
    );
    assert_eq!(
        buckets.last().copied(),
        Some(value("snapbank_snapshot_duration_seconds_count", None))
    );
    assert!(value("snapbank_snapshot_duration_seconds_sum", None) > 0.0);
    assert!(value("snapbank_transfers_per_second", None) > 0.0);
    assert!(value("snapbank_money_in_transit", None) >= 0.0);
    assert_eq!(value("snapbank_branches_up", None), 4.0);
    assert_eq!(value("snapbank_money_total", None), 4000.0);
    assert_eq!(
        value("snapbank_branch_up", Some(("branch", "branch3"))),
        1.0
    );
    let balances: f64 = samples
        .iter()
        .filter(|(n, _, _)| n == "snapbank_branch_balance")
        .map(|s| s.2)
        .sum();
    assert!(balances <= 4000.0 && balances > 0.0);
}

fn check_stream(web: &WebBank) {
    let mut stream = EventStream::open(web.addr);
    assert_eq!(stream.status, 200);
    assert_eq!(stream.content_type, "text/event-stream");
    // The current status first, at once.
    let (event, data) = stream.next_event(Duration::from_secs(2));
    assert_eq!(event, "status");
    let status: Value = serde_json::from_str(&data).unwrap();
    assert_eq!(status["bank"]["expected_total"], 4000);
    // Then a new snapshot within a bounded time (one interval is 200 ms).
    let started = Instant::now();
    loop {
        let (event, data) = stream.next_event(Duration::from_secs(3));
        if event == "snapshot" {
            let snapshot: Value = serde_json::from_str(&data).unwrap();
            assert_eq!(snapshot["verdict"], "ok", "{snapshot}");
            assert_eq!(snapshot["total"], 4000);
            assert!(snapshot["view"].is_object());
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "no snapshot event"
        );
    }
}

fn check_page_and_errors(web: &WebBank) {
    let page = web.get("/");
    assert_eq!(page.status, 200);
    assert!(
        page.header("content-type")
            .unwrap()
            .starts_with("text/html")
    );
    assert!(page.body.contains(r#"<script src="/app.js">"#));
    let script = web.get("/app.js");
    assert_eq!(script.status, 200);
    assert!(
        script
            .header("content-type")
            .unwrap()
            .contains("javascript")
    );
    assert!(script.body.contains("new EventSource('/api/stream')"));
    let style = web.get("/style.css");
    assert_eq!(style.status, 200);
    // Nothing is loaded from anywhere but the controller (the SVG namespace is a name, not a
    // download).
    for asset in [&page.body, &script.body, &style.body] {
        let without_namespace = asset.replace("http://www.w3.org/2000/svg", "");
        assert!(
            !without_namespace.contains("http://") && !without_namespace.contains("https://"),
            "an external URL in an asset"
        );
    }
    let missing = web.get("/nope");
    assert_eq!(missing.status, 404);
}

#[test]
fn an_address_in_use_is_a_clear_error_at_start() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let dir = std::env::temp_dir().join(format!("snapbank-web-bind-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("branches.txt");
    // Branches that do not exist: the web view must fail before the controller dials them.
    std::fs::write(&file, "b1 127.0.0.1 9\nb2 127.0.0.1 10\n").unwrap();
    let started = Instant::now();
    let output = Command::new(CONTROLLER)
        .arg("100")
        .arg(&file)
        .args(["--web", &addr.to_string()])
        .run_limited();
    let _ = std::fs::remove_dir_all(&dir);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("error: cannot serve the web view on {addr}: ")),
        "{stderr}"
    );
    assert!(started.elapsed() < Duration::from_secs(3), "failed at once");
    drop(taken);
}

/// Clients that open the stream and stop reading, while the controller takes a snapshot every
/// 2 ms: about 2 MB of events each, far more than the socket buffers between them hold. The
/// controller still takes every snapshot, the view keeps answering with a bounded history, and
/// a stuck client that reads again is told to resync: the server dropped events for it rather
/// than queueing them.
#[test]
fn a_stuck_stream_client_does_not_hold_the_controller_back() {
    let _bank = one_bank_at_a_time();
    use std::io::{Read as _, Write as _};
    let web = WebBank::start(12, 12_000, &["--interval-ms", "4", "--web-history", "20"]);
    let mut stuck: Vec<_> = (0..2)
        .map(|_| {
            let mut stream = std::net::TcpStream::connect(web.addr).unwrap();
            write!(stream, "GET /api/stream HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
            stream
        })
        .collect();
    // 1200 snapshots' events are more than the stuck clients' kernel buffers hold. The deadline
    // only guards against a hang: how fast they come depends on the machine, not on the code.
    let list = web.wait_for_snapshots(Duration::from_secs(180), |list| {
        list.first()
            .is_some_and(|newest| newest["snapshot_id"].as_u64() >= Some(1200))
    });
    assert_eq!(list.len(), 20, "only --web-history snapshots are kept");
    let overview = web.json("/api/overview");
    assert!(overview["ok"].as_u64() >= Some(1200), "{overview}");
    assert_eq!(overview["incomplete"], 0, "{overview}");
    assert_eq!(overview["retained"], 20);
    // The first stuck client reads again: after what the kernel buffered, a resync.
    let client = &mut stuck[0];
    client
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let mut received = Vec::new();
    let mut chunk = vec![0u8; 1 << 16];
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        match client.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => received.extend_from_slice(&chunk[..n]),
        }
        if received.windows(13).any(|w| w == b"event: resync") {
            break;
        }
    }
    assert!(
        received.windows(13).any(|w| w == b"event: resync"),
        "no resync after {} bytes",
        received.len()
    );
}

/// `HEAD` on every `GET` route answers like `GET` (status, content type, and the length of a
/// fixed body) with no body; `HEAD /api/stream` ends at once and takes no stream place.
#[test]
fn head_answers_every_get_route_like_get_without_a_body() {
    let _bank = one_bank_at_a_time();
    let web = WebBank::start(2, 200, &["--interval-ms", "50"]);
    let list = web.wait_for_snapshots(Duration::from_secs(10), |list| !list.is_empty());
    let id = list[0]["snapshot_id"].as_u64().unwrap();
    let one = format!("/api/snapshots/{id}");
    let fixed = ["/", "/index.html", "/app.js", "/style.css", "/favicon.ico"];
    let dynamic = [
        "/api/snapshots",
        "/api/snapshots?limit=1",
        one.as_str(),
        "/api/history",
        "/api/history?limit=2",
        "/api/overview",
        "/api/bank",
        "/metrics",
        "/api/snapshots/abc",
        "/api/history?limit=0",
        "/nope",
    ];
    for path in fixed.iter().chain(&dynamic) {
        let head = request(web.addr, "HEAD", path);
        let get = web.get(path);
        assert_eq!(head.status, get.status, "HEAD {path}");
        assert_eq!(
            head.header("content-type"),
            get.header("content-type"),
            "HEAD {path}"
        );
        assert!(head.body.is_empty(), "HEAD {path}: {}", head.body);
        if fixed.contains(path) {
            assert_eq!(
                head.header("content-length"),
                get.header("content-length"),
                "HEAD {path}"
            );
        }
    }
    let stream = EventStream::open(web.addr);
    let head = request(web.addr, "HEAD", "/api/stream");
    assert_eq!((head.status, stream.status), (200, 200));
    assert_eq!(
        head.header("content-type"),
        Some(stream.content_type.as_str())
    );
    assert!(head.body.is_empty(), "{}", head.body);
}

/// With every live-stream place taken by clients that sit there (the oldest has stopped
/// reading, with megabytes of events waiting for it), a new viewer still gets its stream and
/// the oldest's connection is shut down although it never reads again; the next viewer evicts
/// the next oldest, which is reading: it is told why (`evicted`) and its stream ends.
#[test]
fn a_viewer_beyond_the_stream_cap_gets_in_and_the_oldest_stream_is_closed() {
    let _bank = one_bank_at_a_time();
    let web = WebBank::start(4, 400, &["--interval-ms", "2"]);
    let mut streams: Vec<EventStream> = (0..MAX_STREAM_CLIENTS)
        .map(|_| {
            let mut stream = EventStream::open(web.addr);
            assert_eq!(stream.status, 200);
            assert_eq!(stream.next_event(Duration::from_secs(5)).0, "status");
            stream
        })
        .collect();
    let mut reading = streams.remove(1);
    let reader = std::thread::spawn(move || {
        while reading.next_event(Duration::from_secs(20)).0 != "evicted" {}
        reading.ends_within(Duration::from_secs(5))
    });
    // Far more events than the socket buffers hold go to the oldest, which never reads.
    std::thread::sleep(Duration::from_secs(3));

    let mut newest = EventStream::open(web.addr);
    let evicted = Instant::now();
    assert_eq!(
        newest.status, 200,
        "the viewer beyond the cap was turned away"
    );
    assert_eq!(newest.next_event(Duration::from_secs(5)).0, "status");
    let mut next = EventStream::open(web.addr);
    assert_eq!(next.status, 200);
    assert!(
        reader.join().unwrap(),
        "the evicted reading stream did not end"
    );
    // The oldest reads again only after the grace (and before an idle connection's keep-alive
    // would close it): what the kernel held, then the end of the connection.
    std::thread::sleep(
        (evicted + Duration::from_secs(2)).saturating_duration_since(Instant::now()),
    );
    assert!(
        streams[0].closes_within(Duration::from_secs(2)),
        "the evicted stream that stopped reading kept its connection"
    );
    for stream in [&mut newest, &mut next, &mut streams[1]] {
        let (event, _) = stream.next_event(Duration::from_secs(5));
        assert_ne!(
            event, "evicted",
            "a third stream was closed for two viewers"
        );
    }
}

/// A flood of 12,000 connections, each sending a request and never reading the answer, then
/// closing: the controller's resident memory stays within a bound (before the server's
/// connection limits it grew by over 100 MB, one buffer set per connection, and kept it), and
/// the view still answers afterwards.
#[test]
fn a_connection_flood_leaves_the_controllers_memory_bounded() {
    const FLOOD: usize = 12_000;
    /// Far above what `MAX_CONNECTIONS` connections can cost, far below a buffer set for
    /// every connection of the flood.
    const BOUND_KIB: u64 = 40 * 1024;
    let _bank = one_bank_at_a_time();
    let web = WebBank::start(2, 200, &["--interval-ms", "100"]);
    web.wait_for_snapshots(Duration::from_secs(10), |list| !list.is_empty());
    let before = web.controller_rss_kib();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (connected, failed, peak) = runtime.block_on(async {
        use tokio::io::AsyncWriteExt;
        let (release, held) = tokio::sync::watch::channel(false);
        let tasks: Vec<_> = (0..FLOOD)
            .map(|_| {
                let mut held = held.clone();
                let addr = web.addr;
                tokio::spawn(async move {
                    // Beyond the server's backlog a connection attempt is left unanswered:
                    // that is a timeout, not a failure of the flood.
                    let connect = tokio::net::TcpStream::connect(addr);
                    let mut stream =
                        match tokio::time::timeout(Duration::from_secs(3), connect).await {
                            Err(_) => return Ok(false),
                            Ok(Err(err)) => return Err(err),
                            Ok(Ok(stream)) => stream,
                        };
                    let request = b"GET /api/overview HTTP/1.1\r\nHost: x\r\n\r\n";
                    let _ = stream.write_all(request).await;
                    let _ = held.wait_for(|released| *released).await;
                    Ok(true)
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_secs(4)).await;
        let peak = web.controller_rss_kib();
        let _ = release.send(true);
        let (mut connected, mut failed) = (0, Vec::new());
        for task in tasks {
            match task.await.expect("a flood task") {
                Ok(true) => connected += 1,
                Ok(false) => {}
                Err(err) => failed.push(err.to_string()),
            }
        }
        (connected, failed, peak)
    });
    assert!(
        failed.is_empty(),
        "{} of the flood's {FLOOD} connections could not be opened (raise `ulimit -n` above \
         {FLOOD}?), e.g. {:?}",
        failed.len(),
        failed.first()
    );
    std::thread::sleep(Duration::from_secs(3));
    let after = web.controller_rss_kib();
    eprintln!(
        "{connected} of {FLOOD} connected; RSS {before} KiB before, {peak} KiB during, {after} KiB after"
    );
    assert!(
        peak.max(after) < before + BOUND_KIB,
        "RSS {before} KiB before, {peak} KiB during, {after} KiB after a flood of {FLOOD}"
    );
    assert_eq!(web.get("/api/overview").status, 200);
}
