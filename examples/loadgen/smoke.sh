#!/usr/bin/env bash
# Smoke test for chat-loadgen: start a fresh chatd in a temp dir (rate and abuse limits raised:
# every connection comes from loopback, and quickly), run
# every scenario for ~2 s at tiny sizes, over gRPC and over the WebSocket door (/ws); check
# that each last stdout line is one JSON object with no errors and with figures that agree
# with the server's /metrics; stop the server.
#
#   examples/loadgen/smoke.sh SERVER_BIN LOADGEN_BIN
#
# Exits non-zero on any failure. Loopback only; every step is bounded by a timeout.
set -uo pipefail

if [ $# -ne 2 ]; then
    echo "usage: $0 SERVER_BIN LOADGEN_BIN" >&2
    exit 2
fi
SERVER=$1
LOADGEN=$2
for b in "$SERVER" "$LOADGEN"; do
    if [ ! -x "$b" ]; then
        echo "smoke: $b is not an executable" >&2
        exit 2
    fi
done
command -v python3 >/dev/null || { echo "smoke: python3 is required" >&2; exit 2; }

DIR=$(mktemp -d -t chat-loadgen-smoke.XXXXXX)
SERVER_PID=

stop_server() {
    if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
        kill -TERM "$SERVER_PID" 2>/dev/null
        for _ in $(seq 1 100); do
            kill -0 "$SERVER_PID" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "$SERVER_PID" 2>/dev/null; then
            echo "smoke: server did not stop on SIGTERM within 10 s; killing it" >&2
            kill -KILL "$SERVER_PID" 2>/dev/null
        fi
        wait "$SERVER_PID" 2>/dev/null
    fi
    SERVER_PID=
}
cleanup() {
    stop_server
    rm -rf "$DIR"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

CHATD_RATE_LIMIT_PER_SEC=1000000 CHATD_RATE_LIMIT_BURST=1000000 RUST_LOG=${RUST_LOG:-warn} \
CHATD_MAX_CONNECTIONS_PER_IP_PER_SEC=1000000 CHATD_MAX_SESSIONS_PER_USER=100000 \
CHATD_MAX_CHATS_CREATED_PER_HOUR=1000000 CHATD_MAX_GROUPS_PER_USER=1000000 \
    "$SERVER" serve --listen 127.0.0.1:0 --data-dir "$DIR/data" >"$DIR/server.out" 2>"$DIR/server.err" &
SERVER_PID=$!

ADDR=
for _ in $(seq 1 300); do
    ADDR=$(sed -n 's/^chatd listening on //p' "$DIR/server.out" | head -n 1)
    [ -n "$ADDR" ] && break
    if ! kill -0 "$SERVER_PID" 2>/dev/null; then
        break
    fi
    sleep 0.1
done
if [ -z "$ADDR" ]; then
    echo "smoke: the server did not print its address within 30 s; its stderr:" >&2
    tail -n 30 "$DIR/server.err" >&2
    exit 1
fi
echo "smoke: chatd (pid $SERVER_PID) on $ADDR"

COMMON=(--addr "$ADDR" --data-dir "$DIR/data" --server-pid "$SERVER_PID" --drain-timeout 10 --open-timeout 15)
passed=0
failed=0

# check SCENARIO OUTFILE: the last line must be the scenario's JSON, error-free and consistent.
check() {
    python3 - "$1" "$2" <<'PY'
import json, sys
scenario, path = sys.argv[1], sys.argv[2]
lines = [l for l in open(path, encoding="utf-8").read().splitlines() if l.strip()]
if not lines:
    print("no output"); sys.exit(1)
try:
    d = json.loads(lines[-1])
except ValueError as e:
    print(f"last line is not JSON: {e}: {lines[-1][:200]!r}"); sys.exit(1)
p = []
if not isinstance(d, dict):
    print("last line is not a JSON object"); sys.exit(1)
if d.get("scenario") != scenario:
    p.append(f"scenario is {d.get('scenario')!r}")
if "error" in d:
    p.append(f"error: {d['error']}")
if d.get("errors_total") != 0:
    p.append(f"errors_total={d.get('errors_total')} {json.dumps(d.get('errors'))}")
for key in ("parameters", "sent", "acked", "send_errors", "delivered", "acked_per_sec",
            "deliveries_per_sec", "latency_us", "server_rss_bytes", "server_cpu_percent",
            "server_metrics"):
    if key not in d:
        p.append(f"missing field {key}")
lat = d.get("latency_us") or {}
for q in ("p50", "p90", "p99", "p999", "max"):
    if q not in lat:
        p.append(f"latency_us lacks {q}")
if d.get("send_errors"):
    p.append(f"send errors {d['send_errors']}")
if scenario in ("direct", "group", "mixed"):
    if not d.get("cross_check_ok"):
        p.append(f"server /metrics disagree: {json.dumps(d.get('cross_check'))}")
    if not d.get("sent"):
        p.append("nothing sent")
    if d.get("acked") != d.get("sent"):
        p.append(f"acked {d.get('acked')} != sent {d.get('sent')}")
    if d.get("delivered") != d.get("expected_deliveries") or d.get("missing_deliveries"):
        p.append(f"delivered {d.get('delivered')} != expected {d.get('expected_deliveries')}")
    if not lat.get("count"):
        p.append("no latency samples")
if scenario == "idle":
    n = d.get("sessions_requested")
    if d.get("sessions_open") != n or d.get("sessions_alive_at_end") != n:
        p.append(f"sessions open {d.get('sessions_open')} alive {d.get('sessions_alive_at_end')} of {n}")
    g = d.get("server_sessions_gauge") or {}
    if g.get("after_open") is None or g.get("before") is None or g["after_open"] - g["before"] != n:
        p.append(f"server sessions gauge {g} does not show {n} new sessions")
    if d.get("rss_per_session_bytes") is None:
        p.append("no RSS per session (server process not readable?)")
if scenario == "resume":
    if not d.get("replay_ok") or d.get("replayed") != d.get("missed"):
        p.append(f"replayed {d.get('replayed')} (reported {d.get('replayed_reported')}) of {d.get('missed')}")
    if not d.get("cross_check_ok"):
        p.append(f"server /metrics disagree: {json.dumps(d.get('cross_check'))}")
if scenario == "mixed":
    if d.get("reconnect_failures"):
        p.append(f"{d['reconnect_failures']} reconnects failed")
    if not d.get("reconnects"):
        p.append("no presence churn happened")
if p:
    print("; ".join(p)); sys.exit(1)
summary = {k: d.get(k) for k in ("sent", "acked", "delivered", "acked_per_sec", "deliveries_per_sec")}
print(f"ok {json.dumps(summary)} p50/p99 {lat.get('p50')}/{lat.get('p99')} us")
PY
}

run() {
    local scenario=$1
    shift
    local out="$DIR/$scenario.out"
    echo "smoke: chat-loadgen $scenario $*"
    timeout -k 5 120 "$LOADGEN" "$scenario" "${COMMON[@]}" "$@" >"$out" 2>"$DIR/$scenario.err"
    local rc=$?
    if [ $rc -ne 0 ]; then
        echo "smoke: FAIL $scenario: exit code $rc" >&2
        tail -n 25 "$out" "$DIR/$scenario.err" >&2
        failed=$((failed + 1))
        return
    fi
    local verdict
    if verdict=$(check "$scenario" "$out"); then
        echo "smoke: PASS $scenario: $verdict"
        passed=$((passed + 1))
    else
        echo "smoke: FAIL $scenario: $verdict" >&2
        grep -v '^{' "$out" | tail -n 30 >&2
        tail -n 10 "$DIR/$scenario.err" >&2
        failed=$((failed + 1))
    fi
}

run idle --connections 50 --duration 2 --ping-interval-ms 500
run direct --connections 20 --rate 500 --duration 2
run direct --connections 10 --duration 2 --window 8
run group --groups 2 --group-size 5 --rate 200 --duration 2
run resume --missed 300
run mixed --connections 40 --rate 300 --duration 2 --churn-pct 10 --offline-ms 300 --read-interval-ms 500
# The same over the WebSocket JSON door (/ws): one socket per session.
run idle --transport ws --connections 50 --duration 2 --ping-interval-ms 500
run direct --transport ws --connections 20 --rate 500 --duration 2
run direct --transport ws --connections 10 --duration 2 --window 8
run group --transport ws --groups 2 --group-size 5 --rate 200 --duration 2
run resume --transport ws --missed 300
run mixed --transport ws --connections 40 --rate 300 --duration 2 --churn-pct 10 --offline-ms 300 --read-interval-ms 500

if ! kill -0 "$SERVER_PID" 2>/dev/null; then
    echo "smoke: FAIL the server died during the run; its stderr:" >&2
    tail -n 30 "$DIR/server.err" >&2
    failed=$((failed + 1))
fi
stop_server

echo "smoke: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
