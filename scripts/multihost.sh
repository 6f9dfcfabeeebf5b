#!/usr/bin/env bash
# snapbank across network namespaces: one branch per namespace with its own IP, the controller in
# another, all joined by veth links to a bridge in a hub namespace. Nothing is added to the root
# namespace (no address, no route, no interface), so no traffic leaves these namespaces.
#
#   phase 1  a bank with snapshots: every snapshot sums to the total (exit 0)
#   phase 2  latency on every branch's link (tc netem), a controller attached to the same bank:
#            every snapshot still sums to the total, and money is recorded in transit
#   phase 3  one branch's link goes down for 4 s (past the peer and link timeouts, within the
#            grace period and the retrieve timeout) and comes back: the connections are declared
#            broken and redialled, and every snapshot, including those taken during the outage,
#            completes ok with money in transit
#   phase 4  one branch's link is cut for good while an attached controller runs: the controller
#            reports INCOMPLETE naming that branch and exits 1 within a bounded time
#
# Usage (as root; build first with `cargo build --release --bins`):
#   scripts/multihost.sh [--branches N] [--bin-dir DIR] [--keep-logs]
#
# Prints PASS and exits 0, or FAIL: <reason> and exits 1; prints SKIP: <reason> and exits 77 when
# namespaces cannot be made here (not root, no `ip`/`tc`, `ip netns add` refused...). Every
# process it starts is stopped and every namespace it creates is deleted on every exit path.

set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
branches=4
bin_dir="$repo/target/release"
keep_logs=0

usage() {
    sed -n '/^# Usage/,/^#   scripts/p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
}

while (($#)); do
    case "$1" in
    --branches)
        branches=${2:?--branches needs a number}
        shift 2
        ;;
    --bin-dir)
        bin_dir=${2:?--bin-dir needs a directory}
        shift 2
        ;;
    --keep-logs)
        keep_logs=1
        shift
        ;;
    -h | --help)
        usage
        exit 0
        ;;
    *)
        echo "error: unknown argument '$1'" >&2
        usage >&2
        exit 2
        ;;
    esac
done

if ! [[ $branches =~ ^[0-9]+$ ]] || ((branches < 2 || branches > 60)); then
    echo "error: --branches must be a number from 2 to 60, not '$branches'" >&2
    exit 2
fi

skip() {
    echo "SKIP: $*"
    exit 77
}

fail_reason=""
fail() {
    fail_reason="$*"
    echo "FAIL: $*"
    exit 1
}

BRANCH="$bin_dir/branch"
CONTROLLER="$bin_dir/controller"
for bin in "$BRANCH" "$CONTROLLER"; do
    if [[ ! -x $bin ]]; then
        fail "no executable $bin (build the binaries first: cargo build --release --bins, or pass --bin-dir)"
    fi
done

# --- can this environment make namespaces at all? -------------------------------------------
if [[ $(id -u) -ne 0 ]]; then
    skip "needs root to create network namespaces (running as uid $(id -u)); try: sudo $0"
fi
for tool in ip tc python3 timeout; do
    command -v "$tool" >/dev/null 2>&1 || skip "'$tool' is not installed"
done

# Names: namespaces "sb<pid>-<role>"; interface names stay within 15 characters.
P="sb$$-"
hub="${P}hub"
ctl_ns="${P}ctl"
bridge="${P}br"
subnet="10.213.$(($$ % 250 + 1))"
ctl_ip="$subnet.2"
port=9000
total=$((1000 * branches))

# State for cleanup: namespaces made, processes started.
created_ns=()
pids=()
work=""
cleaned=0

branch_ns() { echo "${P}b$1"; }
branch_if() { echo "${P}b$1"; }  # inside the branch's namespace
hub_if() { echo "${P}b$1h"; }    # its peer, inside the hub
branch_ip() { echo "$subnet.$((10 + $1))"; }

for name in "$bridge" "$(branch_if "$branches")" "$(hub_if "$branches")" "${P}c" "${P}ch"; do
    ((${#name} <= 15)) || fail "interface name $name is longer than 15 characters"
done

stop_pid() {
    local pid=$1
    kill -TERM "$pid" 2>/dev/null || return 0
    local i
    for i in $(seq 30); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
}

cleanup() {
    local rc=$?
    ((cleaned)) && return 0
    cleaned=1
    set +e
    trap - INT TERM
    local pid ns
    for pid in "${pids[@]}"; do
        stop_pid "$pid"
    done
    for pid in "${pids[@]}"; do
        wait "$pid" 2>/dev/null
    done
    # Anything still inside one of our namespaces was started by this script (the namespaces are
    # ours alone): stop it by pid before deleting the namespace.
    for ns in "${created_ns[@]}"; do
        for pid in $(ip netns pids "$ns" 2>/dev/null); do
            kill -KILL "$pid" 2>/dev/null
        done
    done
    for ns in "${created_ns[@]}"; do
        ip netns del "$ns"
    done
    local left
    left=$(ip netns list 2>/dev/null | awk '{print $1}' | grep -F -- "$P" || true)
    if [[ -n $left ]]; then
        echo "FAIL: namespaces left behind after cleanup: $(echo "$left" | tr '\n' ' ')"
        rc=1
    elif ((${#created_ns[@]})); then
        echo "cleanup: ended the ${#pids[@]} processes started, deleted ${#created_ns[@]} namespaces; none with prefix $P remains"
    fi
    if [[ -n $work ]]; then
        rm -f "$work/secret" "$work/err"
        if ((rc == 1)); then
            local log
            for log in "$work"/*.log; do
                [[ -s $log ]] || continue
                echo "--- last lines of $log"
                tail -n 15 "$log"
            done
            echo "logs kept in $work"
            [[ -z $fail_reason ]] || echo "FAIL: $fail_reason"
        elif ((keep_logs || (rc != 0 && rc != 77))); then
            echo "logs kept in $work"
        else
            rm -rf "$work"
        fi
    fi
    exit "$rc"
}
# INT and TERM exit through the EXIT trap, so cleanup runs once on every path.
trap cleanup EXIT
trap 'echo "interrupted" >&2; exit 130' INT
trap 'echo "terminated" >&2; exit 143' TERM

started=$(date +%s.%N)
elapsed() { python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.1f}')" "$started" "$(date +%s.%N)"; }

# Ask `ip netns add` itself: in a container or an unprivileged user namespace, uid 0 is not enough.
if ! err=$(ip netns add "$hub" 2>&1); then
    skip "cannot create network namespaces here ('ip netns add' said: ${err//$'\n'/ })"
fi
created_ns+=("$hub")

work=$(mktemp -d "${TMPDIR:-/tmp}/snapbank-multihost.XXXXXX")

# --- the network: hub namespace with a bridge, one veth per other namespace -----------------
setup_error() {
    skip "cannot build the namespace network here ($1)"
}
ip -n "$hub" link set lo up
ip -n "$hub" link add "$bridge" type bridge 2>"$work/err" || setup_error "bridge: $(cat "$work/err")"
ip -n "$hub" link set "$bridge" up

# attach NS IFNAME HUB_IFNAME IP: a veth pair made directly between NS and the hub (it never
# exists in the root namespace), the hub end enslaved to the bridge.
attach() {
    local ns=$1 inner=$2 outer=$3 addr=$4
    ip netns add "$ns"
    created_ns+=("$ns")
    ip -n "$ns" link set lo up
    ip -n "$ns" link add "$inner" type veth peer name "$outer" netns "$hub" 2>"$work/err" ||
        setup_error "veth: $(cat "$work/err")"
    ip -n "$hub" link set "$outer" master "$bridge"
    ip -n "$hub" link set "$outer" up
    ip -n "$ns" addr add "$addr/24" dev "$inner"
    ip -n "$ns" link set "$inner" up
}

attach "$ctl_ns" "${P}c" "${P}ch" "$ctl_ip"
: >"$work/branches.txt"
for i in $(seq "$branches"); do
    attach "$(branch_ns "$i")" "$(branch_if "$i")" "$(hub_if "$i")" "$(branch_ip "$i")"
    echo "branch$i $(branch_ip "$i") $port" >>"$work/branches.txt"
done
echo "network: hub $hub (bridge $bridge), controller $ctl_ns at $ctl_ip, $branches branches on $subnet.0/24:"
sed 's/^/  /' "$work/branches.txt"

# --- the bank ----------------------------------------------------------------------------------
secret="$work/secret"
head -c 24 /dev/urandom | base64 >"$secret"
chmod 600 "$secret"

for i in $(seq "$branches"); do
    RUST_LOG=${RUST_LOG:-info} ip netns exec "$(branch_ns "$i")" \
        "$BRANCH" "branch$i" "$port" --bind-ip "$(branch_ip "$i")" --max-interval-ms 5 \
        --secret-file "$secret" </dev/null >/dev/null 2>"$work/branch$i.log" &
    pids+=($!)
done
sleep 0.2
for i in $(seq "$branches"); do
    kill -0 "${pids[i - 1]}" 2>/dev/null || fail "branch$i exited at startup: $(tail -n 3 "$work/branch$i.log")"
done

# controller NAME LIMIT_S ARGS...: runs a controller in its namespace in the background (so a
# signal to this script is handled at once), bounded by `timeout`; sets ctl_rc, output in
# $work/NAME.out and $work/NAME.err.
controller_start() {
    local name=$1 limit=$2
    shift 2
    timeout -k 5 "$limit" ip netns exec "$ctl_ns" \
        "$CONTROLLER" "$total" "$work/branches.txt" --secret-file "$secret" "$@" \
        </dev/null >"$work/$name.out" 2>"$work/$name.err" &
    ctl_pid=$!
    pids+=("$ctl_pid")
}
controller_wait() {
    ctl_rc=0
    wait "$ctl_pid" || ctl_rc=$?
}

# --- phase 1: snapshots across the namespaces ---------------------------------------------------
echo
echo "== phase 1: $branches branches in their own namespaces, controller initialises the bank ($(elapsed) s)"
t0=$(date +%s.%N)
controller_start phase1 40 --interval-ms 200 --snapshots 5 --connect-timeout-ms 10000
controller_wait
cat "$work/phase1.out"
echo "(controller exit $ctl_rc after $(python3 -c "import sys,time; print(f'{time.time()-float(sys.argv[1]):.1f}')" "$t0") s)"
((ctl_rc == 0)) || fail "phase 1: controller exited $ctl_rc: $(tail -n 5 "$work/phase1.err")"
ok_count=$(grep -c "^total: $total (ok" "$work/phase1.out" || true)
((ok_count == 5)) || fail "phase 1: expected 5 snapshots with 'total: $total (ok', got $ok_count"

# --- phase 2: latency on every branch's link -----------------------------------------------------
# netem delays what a branch sends: every branch-to-branch hop and every reply to the controller.
shaping="netem delay 30ms"
min_elapsed_ms=50 # a snapshot needs at least three delayed hops: marker, marker back, record
if ! err=$(tc -n "$(branch_ns 1)" qdisc add dev "$(branch_if 1)" root netem delay 30ms 2>&1); then
    # A kernel without CONFIG_NET_SCH_NETEM: queueing delay from a token bucket instead. The
    # branches send faster than it lets through, so their transfers wait in queues (and in transit).
    echo
    echo "NOTE: tc netem is unavailable in this kernel (tc said: ${err//$'\n'/ });"
    echo "      using a token-bucket rate limit (tbf) on every branch's link for queueing delay instead"
    shaping="tbf rate 128kbit burst 1600 latency 200ms"
    min_elapsed_ms=0 # its delay depends on the load
fi
echo
echo "== phase 2: $shaping on every branch's link, attached controller ($(elapsed) s)"
for i in $(seq "$branches"); do
    if [[ $shaping != netem* || $i -gt 1 ]]; then
        # shellcheck disable=SC2086 # $shaping is a list of tc words
        tc -n "$(branch_ns "$i")" qdisc add dev "$(branch_if "$i")" root $shaping
    fi
done
echo "qdisc on every branch link: $(tc -n "$(branch_ns 1)" qdisc show dev "$(branch_if 1)")"
controller_start phase2 40 --attach --interval-ms 300 --snapshots 5 --format json \
    --connect-timeout-ms 10000 --retrieve-timeout-ms 10000
controller_wait
((ctl_rc == 0)) || cat "$work/phase2.out"
((ctl_rc == 0)) || fail "phase 2: controller exited $ctl_rc: $(tail -n 5 "$work/phase2.err")"
python3 - "$work/phase2.out" "$total" "$min_elapsed_ms" <<'EOF' || fail "phase 2: the snapshots do not show what they should (above)"
import json, sys
path, total, min_elapsed = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
reports = [json.loads(line) for line in open(path) if line.strip()]
problems = []
if len(reports) != 5:
    problems.append(f"expected 5 snapshots, got {len(reports)}")
moving = 0
for r in reports:
    in_transit = [c["amount"] for b in r["branches"] for c in b.get("channels", [])]
    nonzero = sum(1 for a in in_transit if a)
    moving += nonzero
    print(f"  snapshot {r['snapshot_id']}: verdict {r['verdict']}, total {r['total']}, "
          f"{sum(in_transit)} in transit on {nonzero} of {len(in_transit)} channels, "
          f"{r['elapsed_ms']:.1f} ms")
    if r["verdict"] != "ok" or r["total"] != total:
        problems.append(f"snapshot {r['snapshot_id']}: verdict {r['verdict']}, total {r['total']}")
    if r["elapsed_ms"] < min_elapsed:
        problems.append(f"snapshot {r['snapshot_id']} took {r['elapsed_ms']} ms: is the delay applied?")
if not moving:
    problems.append("no snapshot recorded any money in transit")
for p in problems:
    print("  problem:", p)
if problems:
    print(open(path).read())
sys.exit(1 if problems else 0)
EOF

# --- phase 3: one branch's link down for a few seconds, then back -------------------------------
flap=1
echo
echo "== phase 3: branch$flap's link down for 4 s during an attached controller's run ($(elapsed) s)"
controller_start phase3 60 --attach --interval-ms 250 --snapshots 20 --format json \
    --retrieve-timeout-ms 12000 --connect-timeout-ms 10000
for _ in $(seq 100); do
    [[ -s "$work/phase3.out" ]] && break
    kill -0 "$ctl_pid" 2>/dev/null || break
    sleep 0.1
done
[[ -s "$work/phase3.out" ]] || fail "phase 3: no first snapshot within 10 s: $(tail -n 5 "$work/phase3.err")"
ip -n "$hub" link set "$(hub_if "$flap")" down
ip -n "$(branch_ns "$flap")" link set "$(branch_if "$flap")" down
echo "link down: $(hub_if "$flap") and $(branch_if "$flap")"
sleep 4
ip -n "$(branch_ns "$flap")" link set "$(branch_if "$flap")" up
ip -n "$hub" link set "$(hub_if "$flap")" up
echo "link up again"
controller_wait
((ctl_rc == 0)) || fail "phase 3: controller exited $ctl_rc: $(tail -n 5 "$work/phase3.err")"
python3 - "$work/phase3.out" "$total" <<'EOF' || fail "phase 3: the snapshots across the outage do not show what they should (above)"
import json, sys
path, total = sys.argv[1], int(sys.argv[2])
reports = [json.loads(line) for line in open(path) if line.strip()]
bad = [r["snapshot_id"] for r in reports if r["verdict"] != "ok" or r["total"] != total]
slow = [r for r in reports if r["elapsed_ms"] > 3000]
moving = sum(1 for r in reports for b in r["branches"] for c in b.get("channels", []) if c["amount"])
slowest = max((r["elapsed_ms"] for r in reports), default=0)
print(f"  {len(reports)} snapshots, {len(reports) - len(bad)} ok with total {total}; "
      f"{len(slow)} waited out the outage (slowest {slowest:.0f} ms); "
      f"money in transit on {moving} channel records")
problems = []
if len(reports) != 20 or bad:
    problems.append(f"not every snapshot ok: {bad}")
if not slow:
    problems.append("no snapshot waited across the outage: did the link really go down?")
if not moving:
    problems.append("no money recorded in transit")
for p in problems:
    print("  problem:", p)
sys.exit(1 if problems else 0)
EOF
grep -h "reconnected to branch" "$work/phase3.err" | head -n 2 || true

# --- phase 4: cut one branch's link while an attached controller runs ---------------------------
cut=$branches
echo
echo "== phase 4: cut branch$cut's link during an attached controller's run ($(elapsed) s)"
controller_start phase4 40 --attach --snapshots 4 --interval-ms 500 \
    --retrieve-timeout-ms 2000 --connect-timeout-ms 5000
# Cut once the controller has connected and reported its first snapshot, so the cut lands
# mid-run rather than before it could connect.
for _ in $(seq 100); do
    grep -q '^total: ' "$work/phase4.out" && break
    kill -0 "$ctl_pid" 2>/dev/null || break
    sleep 0.1
done
grep -q '^total: ' "$work/phase4.out" ||
    fail "phase 4: no first snapshot within 10 s: $(tail -n 5 "$work/phase4.err")"
ip -n "$hub" link set "$(hub_if "$cut")" down
ip -n "$(branch_ns "$cut")" link set "$(branch_if "$cut")" down
t_cut=$(date +%s.%N)
echo "cut: $(hub_if "$cut") and $(branch_if "$cut") down"
controller_wait
after_cut=$(python3 -c "import sys,time; print(f'{time.time()-float(sys.argv[1]):.1f}')" "$t_cut")
cat "$work/phase4.out"
echo "(controller exit $ctl_rc, $after_cut s after the cut)"
grep -h '^error' "$work/phase4.err" || true
((ctl_rc == 1)) || fail "phase 4: controller exited $ctl_rc, expected 1 (an incomplete snapshot)"
# The last snapshot starts at most 1.5 s after the first and gives up 2 s later.
python3 -c "import sys; sys.exit(float(sys.argv[1]) > 10)" "$after_cut" ||
    fail "phase 4: the controller took $after_cut s after the cut to report (expected under 10 s)"
python3 - "$work/phase4.out" "branch$cut" <<'EOF' || fail "phase 4: no INCOMPLETE verdict naming branch$cut"
import re, sys
text, cut = open(sys.argv[1]).read(), sys.argv[2]
named = [l for l in text.splitlines()
         if l.startswith("total: unknown (INCOMPLETE") and re.search(rf"\b{cut}\b", l)]
print(f"  {len(named)} INCOMPLETE verdict(s) naming {cut}")
sys.exit(0 if named else 1)
EOF

echo
echo "PASS: $branches branches in namespaces; snapshots ok with $shaping; a 4 s outage of branch$flap healed with every snapshot ok; cut of branch$cut reported INCOMPLETE ($(elapsed) s)"
