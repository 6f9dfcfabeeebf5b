#!/usr/bin/env bash
# The whole-bank crash loop: 4 in-memory branches flat out on loopback, a snapshot every 50 ms
# for about 30 s, and for the first 15 s a random branch killed with SIGKILL every 1.5 s and
# started again at once without its state. The controller (--on-branch-loss rollback) rolls the
# bank back each time. Passes when every snapshot is ok or incomplete (none judged wrong), the
# last 100 are ok with the exact total, there was one rollback per kill, and all 4 branches are
# alive and trading at the end.
#
# Usage (build first with `cargo build --release --bins`):
#   scripts/crash-loop.sh [--bin-dir DIR]
# Prints PASS and exits 0, or FAIL: <reason> and exits 1. Everything it starts is killed on exit.
set -u
bin="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/target/release"
[ "${1:-}" = "--bin-dir" ] && bin="$2"
work="$(mktemp -d)"
declare -a pids=()
cpid=""
cleanup() { kill -9 "${pids[@]}" $cpid 2>/dev/null; wait 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT
cd "$work" || exit 1
start() { # start <i> [port]: branch<i> on loopback, port 0 (the port file says which) or <port>
  "$bin/branch" "branch$1" "${2:-0}" --bind-ip 127.0.0.1 --max-interval-ms 0 --port-file "p$1" 2>>"b$1.log" &
  pids[$1]=$!
}
for i in 1 2 3 4; do start "$i"; done
for i in 1 2 3 4; do
  for _ in $(seq 100); do [ -s "p$i" ] && break; sleep 0.05; done
  [ -s "p$i" ] || { echo "FAIL: branch$i did not start"; exit 1; }
  echo "branch$i 127.0.0.1 $(cat "p$i")" >> branches.txt
done
"$bin/controller" 4000 branches.txt --interval-ms 50 --on-branch-loss rollback --format json \
  > out.jsonl 2> controller.log &
cpid=$!
sleep 1.5
for kill in $(seq 10); do
  victim=$(( RANDOM % 4 + 1 ))
  kill -9 "${pids[$victim]}"; wait "${pids[$victim]}" 2>/dev/null
  start "$victim" "$(cat "p$victim")"
  echo "kill $kill: branch$victim"
  sleep 1.5
done
sleep 15
alive=0
for i in 1 2 3 4; do kill -0 "${pids[$i]}" 2>/dev/null && alive=$((alive + 1)); done
kill "$cpid"; wait "$cpid" 2>/dev/null; cpid=""
python3 - "$alive" <<'PY'
import json, sys
alive = int(sys.argv[1])
lines = [json.loads(l) for l in open("out.jsonl") if l.strip()]
reports = [l for l in lines if "rollback" not in l]
rollbacks = [l for l in lines if "rollback" in l]
wrong = [r["snapshot_id"] for r in reports if r["verdict"] not in ("ok", "incomplete")]
last = reports[-100:]
sent = lambda r: sum(b.get("transfers_sent") or 0 for b in r["branches"])
ok = sum(r["verdict"] == "ok" for r in reports)
print(f"{len(reports)} snapshots ({ok} ok, {len(reports) - ok} incomplete), {len(rollbacks)} rollbacks, {alive} branches alive")
problems = []
if wrong: problems.append(f"snapshots judged wrong: {wrong}")
if len(last) < 100 or not all(r["verdict"] == "ok" and r["total"] == 4000 for r in last):
    problems.append("the last 100 snapshots are not all ok with the total 4000")
if len(rollbacks) != 10: problems.append(f"{len(rollbacks)} rollbacks for 10 kills")
if alive != 4: problems.append(f"{alive} of 4 branches alive")
if len(last) == 100 and not sent(last[-1]) > sent(last[0]): problems.append("no money moved at the end")
print("FAIL: " + "; ".join(problems) if problems else "PASS")
sys.exit(1 if problems else 0)
PY
