#!/usr/bin/env python3
"""What the web view costs: N=4 branches flat out, a controller taking a snapshot every
--interval-ms, with `--web` and a live stream client (`curl -N /api/stream`) against without,
alternating runs, medians.

Throughput comes from the snapshots' own counters (the transfers every branch had sent at its
cut, `transfers_sent` in the JSON reports) between the 10th and the last snapshot, over the time
between their starts (each report's arrival minus its elapsed_ms). Latency is each snapshot's
elapsed_ms. The controller's CPU time (user + system, web threads included) comes from wait4.

Usage: cargo build --release --bins && scripts/web-cost.py [--runs 5] [--snapshots 60]
       [--interval-ms 100] [--browser]
Needs python3 and curl (and chromium with --browser, which also keeps a headless page open).
Every process it starts is killed on exit; all traffic is on 127.0.0.1.
"""

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target")), "release")
WARMUP = 10


def free_ports(count):
    socks = [socket.socket() for _ in range(count)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def percentile(values, p):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def one_run(args, web, workdir):
    started = []
    try:
        branches = os.path.join(workdir, "branches.txt")
        with open(branches, "w") as f:
            for i, port in enumerate(free_ports(4)):
                f.write(f"branch{i + 1} 127.0.0.1 {port}\n")
                started.append(subprocess.Popen(
                    [os.path.join(BIN, "branch"), f"branch{i + 1}", str(port),
                     "--bind-ip", "127.0.0.1", "--max-interval-ms", "0"],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        command = [os.path.join(BIN, "controller"), "4000", branches,
                   "--interval-ms", str(args.interval_ms), "--snapshots", str(args.snapshots),
                   "--format", "json"]
        if web:
            command += ["--web", "127.0.0.1:0"]
        controller = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True)
        started.append(controller)
        if web:
            line = controller.stderr.readline()
            url = line.strip().split("web view at ")[1]
            started.append(subprocess.Popen(["curl", "-sN", url + "api/stream"],
                                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            if args.browser:
                started.append(subprocess.Popen(
                    ["chromium", "--headless", "--no-sandbox", "--disable-gpu",
                     "--no-first-run", "--disable-background-networking",
                     f"--user-data-dir={workdir}/chromium", "--remote-debugging-port=0", url],
                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                    start_new_session=True))
        reports = []
        for line in controller.stdout:
            arrived = time.monotonic()
            report = json.loads(line)
            reports.append((arrived - report["elapsed_ms"] / 1000.0, report))
        _, status, usage = os.wait4(controller.pid, 0)
        controller.returncode = os.waitstatus_to_exitcode(status)
        cpu = usage.ru_utime + usage.ru_stime
    finally:
        for process in reversed(started):
            if process.poll() is None:
                try:
                    if process.args[0] == "chromium":
                        os.killpg(process.pid, signal.SIGKILL)
                    else:
                        process.kill()
                except ProcessLookupError:
                    pass
                process.wait()
    assert controller.returncode == 0, f"controller exited {controller.returncode}"
    assert all(r["verdict"] == "ok" for _, r in reports), "a snapshot was not ok"
    sent = [(t, sum(b["transfers_sent"] for b in r["branches"])) for t, r in reports]
    (t0, s0), (t1, s1) = sent[WARMUP], sent[-1]
    latencies = [r["elapsed_ms"] for _, r in reports[WARMUP:]]
    return {
        "throughput": (s1 - s0) / (t1 - t0),
        "p50": percentile(latencies, 50),
        "p99": percentile(latencies, 99),
        "cpu": cpu,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--snapshots", type=int, default=60)
    parser.add_argument("--interval-ms", type=int, default=100)
    parser.add_argument("--browser", action="store_true")
    args = parser.parse_args()
    if not shutil.which("curl"):
        sys.exit("error: curl is needed for the stream client")
    results = {False: [], True: []}
    workdir = tempfile.mkdtemp(prefix="snapbank-web-cost-")
    try:
        for run in range(args.runs):
            for web in (False, True):
                result = one_run(args, web, workdir)
                results[web].append(result)
                label = "web" if web else "off"
                print(f"run {run + 1} {label}: {result['throughput']:,.0f} transfers/s, "
                      f"latency p50 {result['p50']:.2f} ms p99 {result['p99']:.2f} ms, "
                      f"controller CPU {result['cpu']:.2f} s", flush=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print()
    print("| | transfers/s | latency p50 | latency p99 | controller CPU |")
    print("| --- | --- | --- | --- | --- |")
    for web in (False, True):
        rows = results[web]
        median = lambda key: statistics.median(r[key] for r in rows)
        label = "with --web + stream client" + (" + browser" if args.browser else "") if web else "without --web"
        print(f"| {label} | {median('throughput'):,.0f} | {median('p50'):.2f} ms | "
              f"{median('p99'):.2f} ms | {median('cpu'):.2f} s |")


if __name__ == "__main__":
    main()
