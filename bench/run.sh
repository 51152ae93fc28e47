#!/usr/bin/env bash
# Benchmark the Portcullis gateway against nginx with the shared harness (../shared/perf beside the checkout).
#
# Builds the release binary and starts two gateways in front of the harness' nginx upstream
# (127.0.0.1:18080):
#   gateway       127.0.0.1:8443  a policy that lets everything through, no rate limit, and
#                                 a secret that is not the harness' (its token is ignored):
#                                 plain pass-through, no Redis
#   gateway-auth  127.0.0.1:8444  every request must carry a valid JWT: signature and claims,
#                                 revocation check (pushed copy, or Redis until it is trusted)
#                                 and a per-user rate limit counted in Redis (places taken
#                                 ahead for a busy bucket), policy decision, identity headers
# then runs the harness ONCE with direct, nginx-tls, haproxy-tls, haproxy-jwt and both
# gateways, and prints the summary and the ratios taken from that same run (raw.tsv).
# Results: bench/results/<timestamp>/ (gitignored).
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
HARNESS_SRC=$ROOT/../shared/perf
GW_PORT=8443
OPS_PORT=9902
AUTH_PORT=8444
AUTH_OPS_PORT=9903
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
TARGETS=direct,nginx-tls,haproxy-tls,haproxy-jwt
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
GW_PIDS=()
cleanup() {
    # Stop only the gateways we started, by PID; the harness stops its own nginx/haproxy.
    for pid in "${GW_PIDS[@]}"; do
        kill -0 "$pid" 2>/dev/null || continue
        kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -0 "$pid" 2>/dev/null && { log "gateway did not stop in 10 s, SIGKILL"; kill -KILL "$pid" 2>/dev/null || true; }
        wait "$pid" 2>/dev/null || true
        log "stopped gateway pid=$pid"
    done
    # With --access-log the log is large: keep its tail only.
    for name in gateway gateway-auth; do
        [ -f "$TMP/$name.log" ] || continue
        n=$(wc -l < "$TMP/$name.log")
        if [ "$n" -gt 1000 ]; then
            { echo "# $n lines, last 1000 kept"; tail -n 1000 "$TMP/$name.log"; } > "$OUT/$name.log"
        else cp "$TMP/$name.log" "$OUT/$name.log"; fi
    done
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
for p in $GW_PORT $OPS_PORT $AUTH_PORT $AUTH_OPS_PORT; do
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
# An earlier run's counters would leave this one's callers warm: start with none of the
# benchmark prefix's keys (the harness' token names one user, so they are few).
if command -v redis-cli > /dev/null; then
    redis-cli -h 127.0.0.1 -p 6379 --scan --pattern 'portcullis-bench:*' \
        | xargs -r -n 1000 redis-cli -h 127.0.0.1 -p 6379 unlink > /dev/null || true
fi

cat > "$TMP/open-policy.yaml" <<POLICY
version: 1
roles: [user, admin]
rules:
  - name: everything
    paths: ["/**"]
    allow: public
POLICY
cat > "$TMP/auth-policy.yaml" <<POLICY
version: 1
roles: [user, admin]
rules:
  - name: signed-in users
    paths: ["/**"]
    allow: authenticated
    rate_limit: { requests: 1000000000, per: 1h, key: user }
POLICY

# write_config NAME PORT OPS_PORT POLICY_FILE HS256_SECRET
write_config() {
    cat > "$TMP/$1.yaml" <<CONF
server:
  https_listen: 127.0.0.1:$2
  http_listen: null
  ops_listen: 127.0.0.1:$3
  public_url: https://127.0.0.1:$2
  tls:
    cert_path: $CERTS/server.crt
    key_path: $CERTS/server.key
upstreams:
  - name: app
    url: $UPSTREAM_URL
redis:
  key_prefix: "portcullis-bench:"
tokens:
  hs256_secret: "$5"
policy:
  path: $TMP/$4
telemetry:
  access_log: $ACCESS_LOG
  log_level: $LOG_LEVEL
CONF
    cp "$TMP/$1.yaml" "$OUT/$1.yaml"
}

# start_gateway NAME PORT: starts it and waits until it answers.
start_gateway() {
    "$BIN" serve --config "$TMP/$1.yaml" > "$TMP/$1.log" 2>&1 &
    local pid=$!
    GW_PIDS+=("$pid")
    log "started $1 pid=$pid"
    local code=000
    for _ in $(seq 1 150); do
        kill -0 "$pid" 2>/dev/null || { cat "$TMP/$1.log" >&2; die "$1 exited during startup"; }
        # Any HTTP status means it answers (the upstream is not up yet: 502, or 401).
        code=$(curl -sk -o /dev/null -w '%{http_code}' --max-time 1 "https://127.0.0.1:$2/" </dev/null || true)
        [ "$code" != 000 ] && break
        sleep 0.1
    done
    [ "$code" != 000 ] || { cat "$TMP/$1.log" >&2; die "$1 did not answer on :$2 within 15 s"; }
    ss -Hltnp "sport = :$2" | grep -q "pid=$pid," || die "port $2 is not held by our $1 (pid $pid)"
    log "$1 answers on :$2 (HTTP $code before the upstream is up)"
}

# The harness sends its token to every target. gateway-auth shares the harness' secret, so
# the token is valid there. The pass-through gateway gets a secret of its own: the token
# fails its signature check and, on a public rule, is ignored, so no request of that run
# makes a Redis round trip (a valid token on a public rule would still be checked for
# revocation).
write_config gateway "$GW_PORT" "$OPS_PORT" open-policy.yaml "pass-through-benchmark-secret-not-the-harness-one"
write_config gateway-auth "$AUTH_PORT" "$AUTH_OPS_PORT" auth-policy.yaml "$(cat "$CERTS/jwt_hs256.secret")"
sha256sum "$BIN" > "$OUT/gateway-binary.sha256"
start_gateway gateway "$GW_PORT"
start_gateway gateway-auth "$AUTH_PORT"

# One harness invocation, so all targets are interleaved under the same conditions.
# The token carries every claim the gateway requires (the harness adds sub, role, iat, exp).
"$TMP/perf/run.sh" --targets "$TARGETS" \
    --extra "gateway=https://127.0.0.1:$GW_PORT/" --extra "gateway-auth=https://127.0.0.1:$AUTH_PORT/" \
    --claim email=bench@example.com --claim sid=00000000-0000-4000-8000-000000000001 \
    --claim jti=bench --claim iss=portcullis --claim aud=portcullis --claim type=access \
    --out "$OUT" "${HARNESS_ARGS[@]}"

for pid in "${GW_PIDS[@]}"; do
    kill -0 "$pid" 2>/dev/null || log "WARNING: gateway pid $pid is no longer running after the benchmark"
done

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
a = "gateway-auth"
if a in by:
    print(f"gateway-auth / gateway (full auth vs pass-through) throughput ratio: {med(a, 'rps') / med(g, 'rps'):.2f}")
if a in by and "haproxy-jwt" in by:
    print(f"gateway-auth / haproxy-jwt throughput ratio: {med(a, 'rps') / med('haproxy-jwt', 'rps'):.2f}")
    print(f"gateway-auth / haproxy-jwt cpu us/req ratio: {cpu(a) / cpu('haproxy-jwt'):.2f}")
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
