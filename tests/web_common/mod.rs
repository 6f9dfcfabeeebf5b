//! Helpers for the web view's tests: a live bank with a controller serving `--web`, a minimal
//! blocking HTTP/1.1 client, and a Server-Sent Events reader. Everything started is killed on
//! drop.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use snapbank::local_bank::LocalBank;

pub const BRANCH: &str = env!("CARGO_BIN_EXE_branch");
pub const CONTROLLER: &str = env!("CARGO_BIN_EXE_controller");

/// A bank of `branches` processes plus a controller with `--web 127.0.0.1:0`; both stopped
/// when dropped.
pub struct WebBank {
    pub bank: LocalBank,
    controller: Child,
    /// Where the web view listens (read from the controller's `web view at` line).
    pub addr: SocketAddr,
    /// When the controller was started.
    pub started: Instant,
    /// The controller's stderr lines after the URL.
    stderr: mpsc::Receiver<String>,
}

impl WebBank {
    /// Starts the bank (fast transfers) and the controller with `total` and `args` added.
    pub fn start(branches: usize, total: u64, args: &[&str]) -> Self {
        let branch_args = ["--max-interval-ms", "1"].map(String::from);
        let bank = LocalBank::start(BRANCH.as_ref(), branches, &branch_args).expect("branches");
        let started = Instant::now();
        let mut controller = Command::new(CONTROLLER)
            .arg(total.to_string())
            .arg(bank.branches_file())
            .args(["--web", "127.0.0.1:0"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the controller");
        let (lines, stderr) = mpsc::channel();
        let pipe = controller.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                if lines.send(line).is_err() {
                    break;
                }
            }
        });
        let mut web = Self {
            bank,
            controller,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            started,
            stderr,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match web.stderr.recv_timeout(left) {
                Ok(line) => {
                    if let Some(url) = line.strip_prefix("controller: web view at http://") {
                        web.addr = url.trim_end_matches('/').parse().expect("an address");
                        return web;
                    }
                    eprintln!("controller: {line}");
                }
                Err(_) => panic!("the controller never printed its web view's URL"),
            }
        }
    }

    /// The controller's process id.
    pub fn controller_pid(&self) -> u32 {
        self.controller.id()
    }

    /// The controller's resident memory now, in KiB (`VmRSS` in `/proc/<pid>/status`).
    pub fn controller_rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.controller.id()))
            .expect("the controller's /proc status");
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("a VmRSS line")
    }

    /// The page's URL.
    pub fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }

    /// GET `path` from the web view.
    pub fn get(&self, path: &str) -> Response {
        get(self.addr, path)
    }

    /// GET `path` and parse its body as JSON, expecting 200.
    pub fn json(&self, path: &str) -> serde_json::Value {
        let response = self.get(path);
        assert_eq!(response.status, 200, "{path}: {}", response.body);
        serde_json::from_str(&response.body).unwrap_or_else(|err| panic!("{path}: {err}"))
    }

    /// Polls `/api/snapshots` until `done` holds for it, or panics after `limit` from the
    /// controller's start.
    pub fn wait_for_snapshots(
        &self,
        limit: Duration,
        done: impl Fn(&[serde_json::Value]) -> bool,
    ) -> Vec<serde_json::Value> {
        loop {
            let list = self.json("/api/snapshots");
            let list = list.as_array().unwrap().clone();
            if done(&list) {
                return list;
            }
            assert!(
                self.started.elapsed() < limit,
                "condition not met within {limit:?}; /api/snapshots holds {} snapshot(s), the newest: {:?}",
                list.len(),
                list.first()
                    .map(|newest| (&newest["snapshot_id"], &newest["verdict"]))
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for WebBank {
    fn drop(&mut self) {
        let _ = self.controller.kill();
        let _ = self.controller.wait();
    }
}

/// An HTTP response.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    /// Header lines, names lowercased.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }
}

/// One `GET` with `Connection: close`, read to the end (5 s at most).
pub fn get(addr: SocketAddr, path: &str) -> Response {
    request(addr, "GET", path)
}

/// One request with `method` and `Connection: close`, read to the end (5 s at most).
pub fn request(addr: SocketAddr, method: &str, path: &str) -> Response {
    let mut stream = TcpStream::connect(addr).expect("connect to the web view");
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).expect("read the response");
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a header block");
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut body = raw[split + 4..].to_vec();
    let mut lines = head.lines();
    let status: u16 = lines
        .next()
        .and_then(|line| line.split(' ').nth(1))
        .and_then(|code| code.parse().ok())
        .expect("a status line");
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(key, value)| (key.trim().to_ascii_lowercase(), value.trim().to_string()))
        .collect();
    let chunked = headers
        .iter()
        .any(|(key, value)| key == "transfer-encoding" && value.contains("chunked"));
    if chunked {
        body = dechunk(&body);
    }
    Response {
        status,
        headers,
        body: String::from_utf8(body).expect("UTF-8 body"),
    }
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(end) = data.windows(2).position(|w| w == b"\r\n") else {
            return out;
        };
        let size = usize::from_str_radix(
            String::from_utf8_lossy(&data[..end])
                .split(';')
                .next()
                .unwrap()
                .trim(),
            16,
        )
        .expect("a chunk size");
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&data[end + 2..end + 2 + size]);
        data = &data[end + 2 + size + 2..];
    }
}

/// A Server-Sent Events client on `/api/stream`.
pub struct EventStream {
    reader: BufReader<TcpStream>,
    pub status: u16,
    pub content_type: String,
}

impl EventStream {
    pub fn open(addr: SocketAddr) -> Self {
        let mut stream = TcpStream::connect(addr).expect("connect to the web view");
        write!(
            stream,
            "GET /api/stream HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n\r\n"
        )
        .unwrap();
        let mut reader = BufReader::new(stream);
        let mut status = 0;
        let mut content_type = String::new();
        let mut line = String::new();
        loop {
            line.clear();
            reader.read_line(&mut line).expect("a header line");
            let trimmed = line.trim_end();
            if trimmed.is_empty() {
                break;
            }
            if let Some(code) = trimmed.strip_prefix("HTTP/1.1 ") {
                status = code[..3].parse().unwrap();
            } else if let Some((key, value)) = trimmed.split_once(':')
                && key.eq_ignore_ascii_case("content-type")
            {
                content_type = value.trim().to_string();
            }
        }
        Self {
            reader,
            status,
            content_type,
        }
    }

    /// Whether the stream ends (the chunked body's last chunk, or the connection closed)
    /// within `limit`, whatever events come before.
    pub fn ends_within(&mut self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        let mut line = String::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            self.reader.get_ref().set_read_timeout(Some(left)).unwrap();
            line.clear();
            match self.reader.read_line(&mut line) {
                Ok(0) => return true,
                // The last chunk: a size line of 0 (event lines never are).
                Ok(_) if line.trim_end() == "0" => return true,
                Ok(_) => {}
                Err(err) => {
                    return !matches!(
                        err.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    );
                }
            }
        }
    }

    /// Whether the server closes the connection (end of file, or reset) within `limit`,
    /// whatever comes before: the end of the response alone does not count.
    pub fn closes_within(&mut self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        let mut chunk = vec![0u8; 1 << 16];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            self.reader.get_ref().set_read_timeout(Some(left)).unwrap();
            match self.reader.read(&mut chunk) {
                Ok(0) => return true,
                Ok(_) => {}
                Err(err) => {
                    return !matches!(
                        err.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    );
                }
            }
        }
    }

    /// The next event `(name, data)` within `limit` (chunked framing lines are skipped: only
    /// `event:` and `data:` lines count).
    pub fn next_event(&mut self, limit: Duration) -> (String, String) {
        let deadline = Instant::now() + limit;
        let mut event = String::new();
        let mut line = String::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "no event within {limit:?}");
            self.reader.get_ref().set_read_timeout(Some(left)).unwrap();
            line.clear();
            let read = self.reader.read_line(&mut line).expect("read the stream");
            assert!(read > 0, "the stream ended");
            let trimmed = line.trim_end();
            if let Some(name) = trimmed.strip_prefix("event: ") {
                event = name.to_string();
            } else if let Some(data) = trimmed.strip_prefix("data: ") {
                return (event, data.to_string());
            }
        }
    }
}
