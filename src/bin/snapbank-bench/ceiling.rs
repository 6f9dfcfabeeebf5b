//! The transport's own limits on this machine, measured in the same run as snapbank, so the
//! bench can report ratios that travel between machines:
//!
//! - [`mesh_ceiling`]: N processes in the same full mesh of loopback TCP that a bank of N uses,
//!   each pushing frames of a transfer's size to every other in 4 KiB writes, with no per-frame
//!   work at all: the most frames per second the kernel moves between N processes here.
//! - [`round_trip`]: a ping-pong of transfer-sized messages over one loopback connection, the
//!   floor under any exchange; a snapshot's latency is reported as a number of these.
//!
//! The mesh workers are this binary started again with [`WORKER_FLAG`]. Each binds port 0 and
//! tells the parent the port it got (no port is chosen in advance for another process to take
//! first); the parent then sends every worker the whole list and the time to start.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The first argument that makes this binary a mesh worker.
pub const WORKER_FLAG: &str = "--mesh-worker";

/// Bytes per write in the mesh: the batch size a busy branch's outbox reaches.
const WRITE_BYTES: usize = 4096;

/// Milliseconds since the Unix epoch: the clock the parent and its workers share.
fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as u64)
}

/// A mesh worker's whole life: `args` are its index, the seconds to run and the frame size. It
/// listens on a port of the OS's choice and prints it; then reads one line from stdin, the
/// comma-separated ports of all workers and the start time (ms since the epoch); and at the end
/// prints the frames it received while the clock ran.
pub fn run_worker(args: &[String]) -> Result<(), String> {
    let [index, secs, frame] = args else {
        return Err("usage: --mesh-worker INDEX SECS FRAME_BYTES".into());
    };
    let parse = |text: &str| {
        text.parse::<u64>()
            .map_err(|err| format!("{text:?}: {err}"))
    };
    let index = parse(index)? as usize;
    let (secs, frame) = (parse(secs)?, parse(frame)? as usize);
    let listener = TcpListener::bind(("127.0.0.1", 0)).map_err(|err| err.to_string())?;
    let port = listener.local_addr().map_err(|err| err.to_string())?.port();
    println!("{port}");
    std::io::stdout().flush().map_err(|err| err.to_string())?;
    let mut line = String::new();
    std::io::stdin()
        .read_line(&mut line)
        .map_err(|err| err.to_string())?;
    let Some((ports, start_ms)) = line.trim().split_once(' ') else {
        return Err(format!(
            "expected \"PORTS START_MS\" on stdin, got {line:?}"
        ));
    };
    let ports: Vec<u16> = ports
        .split(',')
        .map(|port| port.parse().map_err(|err| format!("{port:?}: {err}")))
        .collect::<Result<_, String>>()?;
    let start_ms = parse(start_ms)?;
    if ports.get(index) != Some(&port) {
        return Err(format!(
            "worker {index} listens on {port}, not in {ports:?}"
        ));
    }
    let mut streams = Vec::new();
    // Exactly one connection per pair: the lower index dials, as branches do.
    for &port in &ports[index + 1..] {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match TcpStream::connect(("127.0.0.1", port)) {
                Ok(stream) => {
                    streams.push(stream);
                    break;
                }
                Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
                Err(err) => return Err(format!("cannot reach worker at {port}: {err}")),
            }
        }
    }
    for _ in 0..index {
        streams.push(listener.accept().map_err(|err| err.to_string())?.0);
    }
    let end_ms = start_ms + secs * 1000;
    let batch = vec![0x5au8; WRITE_BYTES / frame.max(1) * frame.max(1)];
    let mut readers = Vec::new();
    for stream in streams {
        stream.set_nodelay(true).map_err(|err| err.to_string())?;
        let mut writer = stream.try_clone().map_err(|err| err.to_string())?;
        let batch = batch.clone();
        std::thread::spawn(move || {
            while now_ms() < start_ms {
                std::thread::sleep(Duration::from_millis(1));
            }
            while now_ms() < end_ms {
                if writer.write_all(&batch).is_err() {
                    break;
                }
            }
        });
        let mut reader = stream;
        readers.push(std::thread::spawn(move || {
            let mut buffer = vec![0u8; 1 << 16];
            let mut received = 0u64;
            let _ = reader.set_read_timeout(Some(Duration::from_millis(200)));
            loop {
                let now = now_ms();
                if now >= end_ms {
                    break;
                }
                match reader.read(&mut buffer) {
                    Ok(0) => break,
                    Ok(read) if now >= start_ms => received += read as u64,
                    Ok(_) => {}
                    Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(err) if err.kind() == std::io::ErrorKind::TimedOut => {}
                    Err(_) => break,
                }
            }
            received
        }));
    }
    let bytes: u64 = readers.into_iter().map(|r| r.join().unwrap_or(0)).sum();
    println!("{}", bytes / frame.max(1) as u64);
    Ok(())
}

/// Frames per second that `n` processes in a full mesh move between them, with frames of
/// `frame` bytes and no per-frame work, over `secs` seconds.
pub fn mesh_ceiling(bench: &Path, n: usize, secs: u64, frame: usize) -> Result<f64, String> {
    let mut workers = Vec::new();
    for index in 0..n {
        let child = Command::new(bench)
            .arg(WORKER_FLAG)
            .args([index.to_string(), secs.to_string(), frame.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|err| format!("cannot start a mesh worker: {err}"))?;
        workers.push(child);
    }
    // Each worker's first line is the port it listens on. (A worker that fails first closes
    // its stdout, and the error shows below.)
    let mut ports = Vec::with_capacity(n);
    let mut outputs = Vec::with_capacity(n);
    for worker in &mut workers {
        let mut stdout = BufReader::new(worker.stdout.take().ok_or("a mesh worker's stdout")?);
        let mut line = String::new();
        let _ = stdout.read_line(&mut line);
        ports.push(line.trim().parse::<u16>().ok());
        outputs.push(stdout);
    }
    let list = ports
        .iter()
        .map(|port| port.map_or_else(|| "0".to_string(), |port| port.to_string()))
        .collect::<Vec<_>>()
        .join(",");
    // Time for every worker to connect before the clock runs.
    let start_ms = now_ms() + 1000 + 20 * n as u64;
    for worker in &mut workers {
        if let Some(mut stdin) = worker.stdin.take() {
            let _ = writeln!(stdin, "{list} {start_ms}");
        }
    }
    let mut frames = 0u64;
    let mut problems = Vec::new();
    for (worker, mut stdout) in workers.into_iter().zip(outputs) {
        let mut rest = String::new();
        let _ = stdout.read_to_string(&mut rest);
        match worker.wait_with_output() {
            Ok(output) if output.status.success() => {
                frames += rest.trim().parse::<u64>().unwrap_or(0);
            }
            Ok(output) => problems.push(String::from_utf8_lossy(&output.stderr).into_owned()),
            Err(err) => problems.push(err.to_string()),
        }
    }
    if !problems.is_empty() {
        return Err(format!("mesh workers failed: {}", problems.join("; ")));
    }
    Ok(frames as f64 / secs.max(1) as f64)
}

/// The median round trip of `rounds` ping-pongs of `frame`-byte messages over one loopback
/// connection (threads of this process, blocking sockets).
pub fn round_trip(frame: usize, rounds: usize) -> Result<Duration, String> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|err| err.to_string())?;
    let addr = listener.local_addr().map_err(|err| err.to_string())?;
    let echo = std::thread::spawn(move || -> std::io::Result<()> {
        let (mut stream, _) = listener.accept()?;
        stream.set_nodelay(true)?;
        let mut message = vec![0u8; frame];
        loop {
            if stream.read_exact(&mut message).is_err() {
                return Ok(());
            }
            stream.write_all(&message)?;
        }
    });
    let mut stream = TcpStream::connect(addr).map_err(|err| err.to_string())?;
    stream.set_nodelay(true).map_err(|err| err.to_string())?;
    let mut message = vec![0u8; frame];
    let mut times = Vec::with_capacity(rounds);
    for round in 0..rounds + rounds / 10 {
        let started = Instant::now();
        stream.write_all(&message).map_err(|err| err.to_string())?;
        stream
            .read_exact(&mut message)
            .map_err(|err| err.to_string())?;
        // The first tenth warms up.
        if round >= rounds / 10 {
            times.push(started.elapsed());
        }
    }
    drop(stream);
    let _ = echo.join();
    times.sort_unstable();
    times
        .get(times.len() / 2)
        .copied()
        .ok_or_else(|| "no round trips".to_string())
}

/// The size of a transfer frame as a busy bank sends it (money, transfer number and position
/// in the hundreds of thousands), so the ceiling moves frames of the same size.
pub fn transfer_frame_bytes() -> usize {
    let mut bytes = Vec::new();
    snapbank::wire::encode_frame(
        snapbank::wire::Body::Transfer(snapbank::wire::pb::Transfer {
            money: 30_000,
            seq: 300_000,
            pos: 300_000,
        }),
        &mut bytes,
    );
    bytes.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_round_trip_is_measured() {
        let rtt = round_trip(16, 200).unwrap();
        assert!(rtt > Duration::ZERO && rtt < Duration::from_secs(1));
    }

    #[test]
    fn a_transfer_frame_is_a_dozen_bytes_or_so() {
        let bytes = transfer_frame_bytes();
        assert!((8..32).contains(&bytes), "{bytes}");
    }
}
