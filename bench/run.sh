#!/usr/bin/env bash
# Benchmark the Portcullis gateway against nginx with the shared harness (/work/shared/perf).
#
# Builds the release binary, starts `portcullis serve` on 127.0.0.1:8443 (proxying to the
# harness' nginx upstream on 127.0.0.1:18080), runs the harness ONCE with the built-in
# `direct` and `nginx-tls` targets plus `--extra gateway=https://127.0.0.1:8443/`, and prints
# the harness summary followed by gateway/nginx-tls and gateway/direct comparisons taken from
# that same run (raw.tsv). Results: bench/results/<timestamp>/ (gitignored).
#
# Usage: bench/run.sh [options] [-- extra harness args]
#   --no-build        use the existing target/release/portcullis (skip cargo build --release)
#   --reps N          interleaved repetitions (default: the harness default, 3)
#   --duration S      seconds per wrk run (default: the harness default, 10)
#   --wait-idle S     wait up to S s for background CPU < 10% before each run (harness option)
#   --targets LIST    more harness built-ins to run besides direct,nginx-tls (e.g. haproxy-jwt)
#   --access-log      turn the gateway's access log on (telemetry.access_log: true, log_level: info;
#                     written to a file, like a real deployment would). Default: off, like the nginx peers.
#   -h, --help        this text
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
HARNESS_SRC=/work/shared/perf
GW_PORT=8443
OPS_PORT=9902
UPSTREAM_URL=http://127.0.0.1:18080   # the harness' upstream (it starts it; nothing listens before)

BUILD=1; ACCESS_LOG=false; LOG_LEVEL=warn; MORE_TARGETS=""; HARNESS_ARGS=()
usage() { sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
    case $1 in
        --no-build) BUILD=0; shift ;;
        --reps|--duration|--wait-idle) HARNESS_ARGS+=("$1" "$2"); shift 2 ;;
        --targets) MORE_TARGETS=$2; shift 2 ;;
        --access-log) ACCESS_LOG=true; LOG_LEVEL=info; shift ;;   # access lines are info events
        -h|--help) usage; exit 0 ;;
        --) shift; HARNESS_ARGS+=("$@"); break ;;
        *) usage >&2; echo "unknown argument: $1" >&2; exit 2 ;;
    esac
done

log() { echo "[$(date +%H:%M:%S)] bench: $*" >&2; }
die() { log "ERROR: $*"; exit 1; }
listening() { [ -n "$(ss -Hltn "sport = :$1" 2>/dev/null)" ]; }

# direct and nginx-tls are always needed for the ratio lines; extra built-ins are appended once.
TARGETS=direct,nginx-tls
IFS=',' read -r -a _more <<< "$MORE_TARGETS"
for t in "${_more[@]}"; do
    case ",$TARGETS," in *",$t,"*) ;; *) [ -n "$t" ] && TARGETS+=",$t" ;; esac
done

if [ $BUILD = 1 ]; then
    log "cargo build --release"
    (cd "$ROOT" && cargo build --release) || die "cargo build --release failed"
fi
BIN=$ROOT/target/release/portcullis
[ -x "$BIN" ] || die "$BIN not found (build first or drop --no-build)"

OUT=$ROOT/bench/results/$(date +%Y%m%d-%H%M%S)
mkdir -p "$OUT"
TMP=$(mktemp -d /tmp/portcullis-bench.XXXXXX)
GW_PID=""
cleanup() {
    # Stop only the gateway we started, by PID; the harness stops its own nginx/haproxy.
    if [ -n "$GW_PID" ] && kill -0 "$GW_PID" 2>/dev/null; then
        kill -TERM "$GW_PID" 2>/dev/null || true
        for _ in $(seq 1 100); do kill -0 "$GW_PID" 2>/dev/null || break; sleep 0.1; done
        kill -0 "$GW_PID" 2>/dev/null && { log "gateway did not stop in 10 s, SIGKILL"; kill -KILL "$GW_PID" 2>/dev/null || true; }
        wait "$GW_PID" 2>/dev/null || true
        log "stopped gateway pid=$GW_PID"
    fi
    # With --access-log the log is large: keep its tail only.
    if [ -f "$TMP/gateway.log" ]; then
        n=$(wc -l < "$TMP/gateway.log")
        if [ "$n" -gt 1000 ]; then
            { echo "# $n lines, last 1000 kept"; tail -n 1000 "$TMP/gateway.log"; } > "$OUT/gateway.log"
        else cp "$TMP/gateway.log" "$OUT/gateway.log"; fi
    fi
    rm -rf -- "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# The harness dir is read-only: run a private copy; its certs/secret are generated there.
cp -r "$HARNESS_SRC" "$TMP/perf"
export PERF_WORK=$TMP/perf
(source "$TMP/perf/lib.sh" && ensure_certs)   # same certs the harness will then reuse
CERTS=$PERF_WORK/certs

# Never benchmark (or curl) somebody else's process that happens to hold our ports.
for p in $GW_PORT $OPS_PORT; do
    listening "$p" && die "port $p already in use: $(ss -Hltnp "sport = :$p" | grep -o 'pid=[0-9]*' | sort -u | tr '\n' ' ')"
done

# The gateway needs Postgres (it migrates at start) and Redis; the benchmark has a database
# of its own so it never touches anyone's data. Override with PORTCULLIS_DATABASE__URL.
BENCH_DB=${BENCH_DB:-portcullis_bench}
if [ -z "${PORTCULLIS_DATABASE__URL:-}" ]; then
    psql -h 127.0.0.1 -U postgres -tAc "SELECT 1 FROM pg_database WHERE datname = '$BENCH_DB'" | grep -q 1 \
        || psql -h 127.0.0.1 -U postgres -qc "CREATE DATABASE $BENCH_DB" \
        || die "cannot create the benchmark database $BENCH_DB on 127.0.0.1:5432"
    export PORTCULLIS_DATABASE__URL="postgres://postgres@127.0.0.1:5432/$BENCH_DB"
fi

cat > "$TMP/gateway.yaml" <<EOF
server:
  https_listen: 127.0.0.1:$GW_PORT
  http_listen: null
  ops_listen: 127.0.0.1:$OPS_PORT
  public_url: https://127.0.0.1:$GW_PORT
  tls:
    cert_path: $CERTS/server.crt
    key_path: $CERTS/server.key
upstreams:
  - name: app
    url: $UPSTREAM_URL
redis:
  key_prefix: "portcullis-bench:"
tokens:
  # The harness signs its benchmark token with these bytes.
  hs256_secret: "$(cat "$CERTS/jwt_hs256.secret")"
telemetry:
  access_log: $ACCESS_LOG
  log_level: $LOG_LEVEL
EOF
cp "$TMP/gateway.yaml" "$OUT/gateway.yaml"
sha256sum "$BIN" > "$OUT/gateway-binary.sha256"

"$BIN" serve --config "$TMP/gateway.yaml" > "$TMP/gateway.log" 2>&1 &
GW_PID=$!
log "started gateway pid=$GW_PID"
# "Answers" = any HTTP status: the upstream is not up yet, so 502 is expected here.
code=000
for _ in $(seq 1 150); do
    kill -0 "$GW_PID" 2>/dev/null || { cat "$TMP/gateway.log" >&2; die "gateway exited during startup"; }
    code=$(curl -sk -o /dev/null -w '%{http_code}' --max-time 1 "https://127.0.0.1:$GW_PORT/" </dev/null || true)
    [ "$code" != 000 ] && break
    sleep 0.1
done
[ "$code" != 000 ] || { cat "$TMP/gateway.log" >&2; die "gateway did not answer on :$GW_PORT within 15 s"; }
ss -Hltnp "sport = :$GW_PORT" | grep -q "pid=$GW_PID," || die "port $GW_PORT is not held by our gateway (pid $GW_PID)"
log "gateway answers on :$GW_PORT (HTTP $code before the upstream is up)"

# One harness invocation, so all targets are interleaved under the same conditions.
"$TMP/perf/run.sh" --targets "$TARGETS" --extra "gateway=https://127.0.0.1:$GW_PORT/" \
    --out "$OUT" "${HARNESS_ARGS[@]}"

kill -0 "$GW_PID" 2>/dev/null || log "WARNING: the gateway is no longer running after the benchmark"

# Comparisons from the same raw.tsv, aggregated exactly like the harness' summarize.py
# (medians over reps; cpu us/req = summed CPU ticks / summed requests).
echo
python3 - "$OUT/raw.tsv" <<'PY' | tee "$OUT/comparison.txt"
import csv, statistics, sys
rows = list(csv.DictReader(open(sys.argv[1]), delimiter="\t"))
by = {}
for r in rows:
    by.setdefault(r["target"], []).append(r)
def med(t, k): return statistics.median(float(r[k]) for r in by[t])
def cpu(t):
    ticks = [int(r["target_cpu_ticks"]) for r in by[t] if r["target_cpu_ticks"] != "NA"]
    reqs = sum(int(r["requests"]) for r in by[t])
    return sum(ticks) / float(by[t][0]["clk_tck"]) * 1e6 / reqs if ticks and reqs else float("nan")
g = "gateway"
print(f"gateway / nginx-tls throughput ratio: {med(g, 'rps') / med('nginx-tls', 'rps'):.2f}")
print(f"gateway / direct: {med(g, 'rps') / med('direct', 'rps'):.2f}")
print(f"gateway / nginx-tls cpu us/req ratio: {cpu(g) / cpu('nginx-tls'):.2f}")
def other(r):
    # box busy minus what the benchmark itself used (target, upstream unless it is the
    # target, wrk): load from other work DURING the run, which the harness' bg cpu% (sampled
    # in the 1 s before the run) misses. ~1-4% is unattributed kernel work even when quiet.
    own = int(r["wrk_cpu_ticks"]) + (int(r["target_cpu_ticks"]) if r["target_cpu_ticks"] != "NA" else 0)
    if r["target"] != "direct":
        own += int(r["upstream_cpu_ticks"])
    return 100 * (int(r["box_busy_ticks"]) - own) / int(r["box_total_ticks"])
for t in [g, "nginx-tls", "direct"] + [t for t in by if t not in (g, "nginx-tls", "direct")]:
    errs = sum(int(r["errors"]) for r in by[t])
    print(f"{t:<12} {med(t, 'rps'):>9,.0f} req/s  p50 {med(t, 'p50_us') / 1000:6.2f} ms  "
          f"p99 {med(t, 'p99_us') / 1000:6.2f} ms  cpu {cpu(t):6.1f} us/req  errors {errs}  "
          f"other cpu% during reps: {'/'.join(f'{other(r):.0f}' for r in by[t])}")
print("(other cpu% above ~5% in a rep: that rep was disturbed by other work on the box; rerun)")
PY
log "results in $OUT"
