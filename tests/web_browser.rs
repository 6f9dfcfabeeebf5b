//! The web page in a real browser: headless Chromium (Debian's `chromium`, which `.ci/run`
//! installs) loads `/` from a live bank's `controller --web`, runs its JavaScript, follows the
//! live stream, and the rendered DOM must show the bank's total and the latest snapshots with
//! their verdicts; clicking a snapshot must show its full report. A screenshot is saved under
//! the test's temporary directory (and copied to `$SNAPBANK_WEB_SCREENSHOT` when set).
//!
//! The browser is driven over the DevTools protocol on a pipe (`--remote-debugging-pipe`:
//! commands on fd 3, answers on fd 4, each a JSON message ended by a NUL byte), which needs no
//! WebSocket client and no network port. Without Chromium the test fails, saying how to install
//! it: it is never skipped silently.

mod web_common;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use web_common::WebBank;

/// A headless Chromium driven over the DevTools pipe; closed and killed on drop.
struct Browser {
    child: Child,
    commands: ChildStdin,
    answers: mpsc::Receiver<Value>,
    next_id: u64,
    /// The page's session.
    session: String,
}

fn chromium() -> PathBuf {
    for candidate in ["chromium", "chromium-browser"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {candidate}")])
            .output()
            .ok()
            .filter(|out| out.status.success())
            .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_string());
        if let Some(path) = found.filter(|p| !p.is_empty()) {
            return PathBuf::from(path);
        }
    }
    panic!(
        "\n\n*** Chromium is not installed: the browser test cannot run. ***\n\
         Install Debian's package: `apt-get install -y chromium` (.ci/run does this).\n\n"
    );
}

impl Browser {
    /// Starts Chromium with its profile in `dir` and opens `url` in a 1400x1000 window.
    fn open(dir: &Path, url: &str) -> Self {
        let binary = chromium();
        let profile = dir.join("profile");
        let log = std::fs::File::create(dir.join("chromium.log")).unwrap();
        // fd 3 <- our commands (its stdin), fd 4 -> our answers (its stdout); Chromium's own
        // stdout goes to the log with its stderr.
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(r#"exec "$0" "$@" 3<&0 4>&1 0</dev/null 1>&2"#)
            .arg(&binary)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-extensions",
                "--remote-debugging-pipe",
                "--window-size=1400,1000",
                "--hide-scrollbars",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg("about:blank")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|err| panic!("cannot start {}: {err}", binary.display()));
        let commands = child.stdin.take().unwrap();
        let output = child.stdout.take().unwrap();
        let (send, answers) = mpsc::channel();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(output);
            let mut message = Vec::new();
            while reader.read_until(0, &mut message).is_ok_and(|n| n > 0) {
                if message.last() == Some(&0) {
                    message.pop();
                }
                if let Ok(value) = serde_json::from_slice::<Value>(&message)
                    && send.send(value).is_err()
                {
                    break;
                }
                message.clear();
            }
        });
        let mut browser = Self {
            child,
            commands,
            answers,
            next_id: 0,
            session: String::new(),
        };
        let target = browser.call("Target.createTarget", json!({ "url": url }), false);
        let target_id = target["targetId"].as_str().unwrap().to_string();
        let attached = browser.call(
            "Target.attachToTarget",
            json!({ "targetId": target_id, "flatten": true }),
            false,
        );
        browser.session = attached["sessionId"].as_str().unwrap().to_string();
        browser
    }

    /// Sends one DevTools command (to the page's session if `on_page`) and waits for its
    /// answer, 20 s at most.
    fn call(&mut self, method: &str, params: Value, on_page: bool) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut message = json!({ "id": id, "method": method, "params": params });
        if on_page {
            message["sessionId"] = json!(self.session);
        }
        let mut bytes = serde_json::to_vec(&message).unwrap();
        bytes.push(0);
        self.commands.write_all(&bytes).unwrap();
        self.commands.flush().unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let answer = self
                .answers
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("Chromium did not answer {method} within 20 s"));
            if answer["id"] == id {
                if let Some(error) = answer.get("error") {
                    panic!("{method}: {error}");
                }
                return answer["result"].clone();
            }
        }
    }

    /// Evaluates `expression` in the page and returns its value.
    fn eval(&mut self, expression: &str) -> Value {
        let result = self.call(
            "Runtime.evaluate",
            json!({ "expression": expression, "returnByValue": true, "awaitPromise": true }),
            true,
        );
        if let Some(exception) = result.get("exceptionDetails") {
            return json!({ "exception": exception });
        }
        result["result"]["value"].clone()
    }

    /// Polls `expression` until it is `true`, or fails after `limit` showing `context`.
    fn wait_until(&mut self, expression: &str, limit: Duration, context: &str) {
        let deadline = Instant::now() + limit;
        loop {
            if self.eval(expression) == json!(true) {
                return;
            }
            if Instant::now() > deadline {
                let state = self.eval(context);
                panic!("the page never satisfied `{expression}` within {limit:?}; {state}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// A PNG screenshot of the page.
    fn screenshot(&mut self) -> Vec<u8> {
        let shot = self.call(
            "Page.captureScreenshot",
            json!({ "format": "png", "captureBeyondViewport": false }),
            true,
        );
        decode_base64(shot["data"].as_str().unwrap())
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Ask politely, then make sure.
        let mut bytes = serde_json::to_vec(&json!({"id": 0, "method": "Browser.close"})).unwrap();
        bytes.push(0);
        let _ = self.commands.write_all(&bytes);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn decode_base64(text: &str) -> Vec<u8> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        _ => panic!("not base64: {c}"),
    };
    let digits: Vec<u8> = text
        .bytes()
        .filter(|&c| c != b'=' && !c.is_ascii_whitespace())
        .map(value)
        .collect();
    let mut out = Vec::with_capacity(digits.len() * 3 / 4);
    for chunk in digits.chunks(4) {
        let mut bits = 0u32;
        for (i, &d) in chunk.iter().enumerate() {
            bits |= u32::from(d) << (18 - 6 * i);
        }
        let bytes = bits.to_be_bytes();
        out.extend_from_slice(&bytes[1..chunk.len()]);
    }
    out
}

/// A scratch directory, removed when dropped.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn scratch(name: &str) -> Scratch {
    let dir = std::env::temp_dir().join(format!("snapbank-browser-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    Scratch(dir)
}

/// What the test reads back from the rendered page.
const PAGE_STATE: &str = r#"JSON.stringify({
  total: document.getElementById('bank-total').textContent,
  rows: [...document.querySelectorAll('#history tbody tr')].slice(0, 3).map(r => r.textContent),
  streamed: document.body.dataset.streamEvents,
  conn: document.getElementById('conn').textContent,
})"#;

/// The issue's acceptance run in a browser: a bank of 4, `--interval-ms 200`.
#[test]
fn chromium_renders_the_live_bank_and_its_snapshots() {
    let dir = scratch("four");
    let web = WebBank::start(4, 4000, &["--interval-ms", "200"]);
    let mut browser = Browser::open(&dir.0, &web.url());
    // The page ran its script, loaded the history and received live events from the stream.
    browser.wait_until(
        "document.querySelectorAll('#history tbody tr').length >= 5 \
         && Number(document.body.dataset.streamEvents || 0) >= 2",
        Duration::from_secs(15),
        PAGE_STATE,
    );
    // What the API says was reported by now; the page must show at least that, a moment later.
    let reported = web.json("/api/snapshots?limit=1")[0]["snapshot_id"]
        .as_u64()
        .unwrap();
    std::thread::sleep(Duration::from_millis(700));
    let dom = browser
        .eval("document.documentElement.outerHTML")
        .as_str()
        .unwrap()
        .to_string();
    std::fs::write(dir.0.join("page.html"), &dom).unwrap();

    assert!(
        dom.contains(r#"<b id="bank-total">4,000</b>"#),
        "the bank's total is shown"
    );
    assert!(dom.contains(r#"<b id="bank-members">4</b>"#));
    assert!(
        dom.contains(r#"class="conn live""#),
        "the stream is connected"
    );
    // History rows: `<tr data-id="N" ...><td class="num id">N</td><td>initiator</td>
    // <td class="verdict ok" ...>ok</td>...<td class="num total">4,000</td></tr>`.
    let rows: Vec<(u64, String, String)> = dom
        .split("<tr data-id=\"")
        .skip(1)
        .map(|row| {
            let id = row[..row.find('"').unwrap()].parse().unwrap();
            let verdict = between(row, "<td class=\"verdict ", "\"");
            let total = between(row, "<td class=\"num total\">", "<");
            (id, verdict, total)
        })
        .collect();
    assert!(rows.len() >= 5, "{rows:?}");
    let newest = rows[0].0;
    assert!(
        newest >= reported,
        "the page is live: newest row #{newest}, the API had #{reported} before the DOM was read"
    );
    let api: Value = web.json("/api/snapshots");
    for (id, verdict, total) in rows.iter().take(5) {
        let expected = api
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["snapshot_id"] == *id)
            .unwrap_or_else(|| panic!("row #{id} is not a retained snapshot"));
        assert_eq!(expected["verdict"], verdict.as_str(), "row #{id}");
        assert_eq!(verdict, "ok", "row #{id}");
        assert_eq!(total, "4,000", "row #{id}");
    }
    // The graph: four branches with balances, twelve channels.
    assert_eq!(dom.matches("<g class=\"node").count(), 4);
    assert_eq!(dom.matches("data-amount=").count(), 12);
    // The overview counts.
    let ok_count: u64 = between(
        &dom,
        "id=\"count-ok\"><div class=\"label\">ok</div><div class=\"value\">",
        "<",
    )
    .replace(',', "")
    .parse()
    .unwrap();
    assert!(ok_count >= 5, "{ok_count}");

    // Clicking a snapshot shows its full report.
    let clicked = rows[1].0;
    browser.eval(&format!(
        "document.querySelector('#history tbody tr[data-id=\"{clicked}\"]').click()"
    ));
    browser.wait_until(
        "!document.getElementById('detail').hidden \
         && document.getElementById('detail').textContent.includes('consistent-cut check')",
        Duration::from_secs(5),
        "document.getElementById('detail').outerHTML",
    );
    let detail = browser
        .eval("document.getElementById('detail').textContent")
        .as_str()
        .unwrap()
        .to_string();
    assert!(detail.contains(&format!("Snapshot #{clicked}")), "{detail}");
    assert!(detail.contains("12 of 12 channels checked"), "{detail}");
    assert!(detail.contains("branch3→branch1"), "{detail}");

    let png = browser.screenshot();
    assert!(
        png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 20_000,
        "a real picture"
    );
    let shot = dir.0.join("page.png");
    std::fs::write(&shot, &png).unwrap();
    eprintln!("screenshot: {} ({} bytes)", shot.display(), png.len());
    if let Ok(copy) = std::env::var("SNAPBANK_WEB_SCREENSHOT") {
        std::fs::write(&copy, &png).unwrap();
    }
}

/// A rollback is an event of the history: a row among the snapshots, saying why it happened
/// and to which checkpoint the bank went back.
#[test]
fn chromium_shows_a_rollback_among_the_snapshots_of_the_history() {
    let dir = scratch("rollback");
    let mut web = WebBank::start(
        3,
        3000,
        &["--interval-ms", "100", "--on-branch-loss", "rollback"],
    );
    let mut browser = Browser::open(&dir.0, &web.url());
    browser.wait_until(
        "document.querySelectorAll('#history tbody tr[data-id]').length >= 3",
        Duration::from_secs(15),
        PAGE_STATE,
    );
    web.bank.kill(1);
    web.bank.restart(1, &[]).expect("restart branch2 empty");
    // The rollback, then snapshots of the new epoch above it.
    browser.wait_until(
        "(() => { const rows = [...document.querySelectorAll('#history tbody tr')];          const at = rows.findIndex(r => r.classList.contains('rollback'));          return at >= 2 && rows.slice(0, at).every(r => r.dataset.id); })()",
        Duration::from_secs(30),
        PAGE_STATE,
    );
    let row = browser.eval("document.querySelector('#history tbody tr.rollback').textContent");
    let row = row.as_str().expect("text").to_string();
    let api = web.json("/api/overview");
    let latest = &api["rollbacks"]["recent"][0];
    let checkpoint = latest["checkpoint"].as_u64().expect("a checkpoint id");
    assert!(
        row.contains(&format!("rollback to #{checkpoint}, epoch 1")),
        "{row}"
    );
    assert!(row.contains("branch2 lost its state"), "{row}");
}

/// Above 12 branches the graph becomes a matrix of channels; the page stays live.
#[test]
fn chromium_shows_a_big_bank_as_a_channel_matrix() {
    let dir = scratch("big");
    let branches = 16;
    let web = WebBank::start(branches, 16_000, &["--interval-ms", "300"]);
    let mut browser = Browser::open(&dir.0, &web.url());
    browser.wait_until(
        "document.querySelectorAll('#history tbody tr').length >= 2 \
         && document.querySelectorAll('#graph rect.cell').length > 0",
        Duration::from_secs(20),
        PAGE_STATE,
    );
    let cells = browser.eval("document.querySelectorAll('#graph rect.cell').length");
    assert_eq!(cells, json!(branches * (branches - 1)));
    let total = browser.eval("document.getElementById('bank-total').textContent");
    assert_eq!(total, json!("16,000"));
    let verdicts = browser.eval(
        "[...document.querySelectorAll('#history tbody td.verdict')].map(td => td.textContent)",
    );
    assert!(
        verdicts.as_array().unwrap().iter().all(|v| v == "ok"),
        "{verdicts}"
    );
    if let Ok(copy) = std::env::var("SNAPBANK_WEB_SCREENSHOT_BIG") {
        std::fs::write(&copy, browser.screenshot()).unwrap();
    }
}

fn between(text: &str, start: &str, end: &str) -> String {
    let from = text
        .find(start)
        .unwrap_or_else(|| panic!("{start:?} not found"))
        + start.len();
    let to = text[from..].find(end).unwrap() + from;
    text[from..to].to_string()
}
