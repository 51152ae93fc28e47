#!/usr/bin/env bash
# Where a forwarded request's CPU goes: one gateway in one mode, under wrk, with the gateway's
# and Redis' CPU per request and how many checks share a Redis round trip. A development aid
# for bench/run.sh's full-auth figure (which counts Redis only as "other cpu%").
#
# Starts the harness' nginx upstream (127.0.0.1:18080) from a private copy of ../shared/perf
# and one gateway on 127.0.0.1:8444 (ops 9903), warms up 3 s, then runs wrk for the duration.
#
# Usage: bench/components.sh [options]
#   --mode M          auth      every request needs the harness' JWT; per-user rate limit (default)
#                     auth-only the same without a rate limit: the revocation check alone
#                     pass      a public rule and a token the gateway cannot verify: no Redis
#   --duration S      seconds of measured load (default 10)
#   --connections N   wrk connections (default 64, as the harness; 1 shows idle latency)
#   --callers N       N distinct users and sessions, a token each, one picked at random per
#                     request by bench/many_tokens.lua (without it: the harness' one token and
#                     script). With N well above the verified-token cache (10,000 per worker)
#                     nearly every request verifies its signature, and each batch touches many
#                     Redis keys. --callers 1 is the control: the same wrk script, one token
#   --no-build        use the existing target/release/portcullis
#   --perf FILE       also record the gateway with perf (cpu-clock, frame-pointer call graphs:
#                     build with RUSTFLAGS="-C force-frame-pointers=yes" for useful stacks)
#   --callgrind       instead of wrk: run the gateway under valgrind's callgrind and print its
#                     user-space instructions per request, (Ir(3N) - Ir(N)) / 2N over h2load runs
#                     of N=2000 and 6000 requests (--connections, default 4 here, as the
#                     harness' callgrind.sh). Deterministic, so small changes show; kernel work
#                     (TCP, wake-ups) is not counted. Needs valgrind and h2load.
#   --versus-haproxy R  after the measurement above, R interleaved reps of the same load
#                     against the gateway and the harness' haproxy-jwt (127.0.0.1:18444: HS256
#                     signature, exp, per-IP stick table; no revocation, nothing shared), with
#                     the median ratios of req/s and of CPU per request (gateway + Redis vs
#                     HAProxy). With --callers: the two compared on many callers
#   --callgrind-out F with --callgrind: keep the profile of the N=6000 run in F, for
#                     callgrind_annotate (where the instructions go, function by function)
#   -h, --help        this text
# Environment: GATEWAY_BIN=path runs that binary instead (implies nothing about building), e.g.
#   CARGO_TARGET_DIR=target/fp RUSTFLAGS="-C force-frame-pointers=yes" cargo build --release
#   GATEWAY_BIN=target/fp/release/portcullis bench/components.sh --no-build --perf /tmp/auth.data
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
MODE=auth; DURATION=10; CONNECTIONS=""; BUILD=1; PERF_OUT=""; CALLGRIND=0; CALLGRIND_OUT=""; CALLERS=""; VERSUS_REPS=0
usage() { sed -n '2,38p' "$0" | sed 's/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
    case $1 in
        --mode) MODE=$2; shift 2 ;;
        --duration) DURATION=$2; shift 2 ;;
        --connections) CONNECTIONS=$2; shift 2 ;;
        --callers) CALLERS=$2; shift 2 ;;
        --versus-haproxy) VERSUS_REPS=$2; shift 2 ;;
        --no-build) BUILD=0; shift ;;
        --perf) PERF_OUT=$2; shift 2 ;;
        --callgrind) CALLGRIND=1; shift ;;
        --callgrind-out) CALLGRIND_OUT=$2; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        *) usage >&2; echo "unknown argument: $1" >&2; exit 2 ;;
    esac
done
case $MODE in auth|auth-only|pass) ;; *) echo "unknown mode: $MODE" >&2; exit 2 ;; esac
if [ $CALLGRIND = 1 ]; then
    [ -z "$PERF_OUT" ] || { echo "--perf and --callgrind do not mix" >&2; exit 2; }
    for tool in valgrind callgrind_control h2load; do
        command -v "$tool" > /dev/null || { echo "--callgrind needs $tool" >&2; exit 1; }
    done
    CONNECTIONS=${CONNECTIONS:-4}
fi
CONNECTIONS=${CONNECTIONS:-64}

if [ $BUILD = 1 ]; then (cd "$ROOT" && cargo build --release); fi
BIN=${GATEWAY_BIN:-$ROOT/target/release/portcullis}   # GATEWAY_BIN: another build (e.g. with frame pointers)
[ -x "$BIN" ] || { echo "$BIN not found" >&2; exit 1; }

TMP=$(mktemp -d /tmp/portcullis-components.XXXXXX)
cp -r "$ROOT/../shared/perf" "$TMP/perf"
export PERF_WORK=$TMP/perf
# shellcheck source=/dev/null
source "$TMP/perf/lib.sh"
GW=""
cleanup() {
    [ -n "$GW" ] && { kill "$GW" 2>/dev/null; wait "$GW" 2>/dev/null || true; }
    clear_keys 2> /dev/null || true
    # `|| true` keeps errexit off inside: waiting on a stopped HAProxy returns its signal
    # status, which would otherwise end the cleanup before the upstream is stopped.
    stop_all || true
    rm -rf -- "$TMP"
}
trap cleanup EXIT
ensure_certs
make_run_dir
check_ports_free 8444 9903 "$UPSTREAM_PORT"
[ "$VERSUS_REPS" -gt 0 ] && check_ports_free "$HAPROXY_JWT_PORT" "$HAPROXY_TLS_PORT"
start_upstream
if [ "$VERSUS_REPS" -gt 0 ]; then
    [ $CALLGRIND = 0 ] || { echo "--versus-haproxy and --callgrind do not mix" >&2; exit 2; }
    start_haproxy
fi

SECRET=$(jwt_secret)
case $MODE in
    auth) ALLOW=authenticated; LIMIT='    rate_limit: { requests: 1000000000, per: 1h, key: user }' ;;
    auth-only) ALLOW=authenticated; LIMIT='' ;;
    pass) ALLOW=public; LIMIT=''; SECRET=pass-through-benchmark-secret-not-the-harness-one ;;
esac
cat > "$TMP/policy.yaml" <<POLICY
version: 1
roles: [user, admin]
rules:
  - name: everything
    paths: ["/**"]
    allow: $ALLOW
$LIMIT
POLICY
cat > "$TMP/gateway.yaml" <<CONF
server:
  https_listen: 127.0.0.1:8444
  http_listen: null
  ops_listen: 127.0.0.1:9903
  public_url: https://127.0.0.1:8444
  tls:
    cert_path: $CERT_DIR/server.crt
    key_path: $CERT_DIR/server.key
upstreams:
  - name: app
    url: http://127.0.0.1:18080
redis:
  key_prefix: "portcullis-components:"
tokens:
  hs256_secret: "$SECRET"
policy:
  path: $TMP/policy.yaml
telemetry:
  access_log: false
  log_level: warn
CONF
# An earlier run's counters (a 1 h window's live 2 h) would leave Redis' keyspace larger and
# this run's callers warm: each run starts with none of its prefix's keys, and ends so too.
clear_keys() {
    command -v redis-cli > /dev/null || return 0
    redis-cli -h 127.0.0.1 -p 6379 --scan --pattern 'portcullis-components:*' \
        | xargs -r -n 1000 redis-cli -h 127.0.0.1 -p 6379 unlink > /dev/null
}
clear_keys
BENCH_DB=${BENCH_DB:-portcullis_bench}
psql -h 127.0.0.1 -U postgres -tAc "SELECT 1 FROM pg_database WHERE datname = '$BENCH_DB'" | grep -q 1 \
    || psql -h 127.0.0.1 -U postgres -qc "CREATE DATABASE $BENCH_DB"
UNDER=()
[ $CALLGRIND = 1 ] && UNDER=(valgrind --tool=callgrind --callgrind-out-file="$TMP/callgrind.%p" --dump-instr=no
    --compress-strings=no)  # each dump names its functions itself, so one alone can be read
PORTCULLIS_DATABASE__URL=${PORTCULLIS_DATABASE__URL:-postgres://postgres@127.0.0.1:5432/$BENCH_DB} \
    "${UNDER[@]}" "$BIN" serve --config "$TMP/gateway.yaml" > "$TMP/gateway.log" 2>&1 &
GW=$!
for _ in $(seq 1 600); do   # valgrind needs far longer to start than the gateway alone
    curl -sk -o /dev/null --max-time 1 https://127.0.0.1:8444/ </dev/null && break
    kill -0 "$GW" 2>/dev/null || { cat "$TMP/gateway.log" >&2; exit 1; }
    sleep 0.1
done

TOKEN=$(mint --claim email=bench@example.com --claim sid=00000000-0000-4000-8000-000000000001 \
    --claim jti=bench --claim iss=portcullis --claim aud=portcullis --claim type=access)
code=$(curl -sk -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $TOKEN" https://127.0.0.1:8444/)
[ "$code" = 200 ] || { echo "probe answered $code, not 200" >&2; exit 1; }
if [ -n "$CALLERS" ]; then
    [ $CALLGRIND = 0 ] || { echo "--callers and --callgrind do not mix" >&2; exit 2; }
    # As mint_jwt.py does for one token (HMAC key: the secret file's bytes), N at once.
    "$PY" - "$SECRET_FILE" "$CALLERS" > "$TMP/tokens.txt" <<'MINT'
import base64, hashlib, hmac, json, sys, time, uuid
b64 = lambda data: base64.urlsafe_b64encode(data).rstrip(b"=").decode()
secret = open(sys.argv[1], "rb").read().rstrip(b"\r\n")
now = int(time.time())
header = b64(json.dumps({"alg": "HS256", "typ": "JWT"}, separators=(",", ":")).encode())
for n in range(int(sys.argv[2])):
    claims = {"sub": str(uuid.uuid4()), "role": "user", "iat": now, "exp": now + 86400,
              "email": f"caller{n}@example.com", "sid": str(uuid.uuid4()), "jti": str(n),
              "iss": "portcullis", "aud": "portcullis", "type": "access"}
    signing_input = header + "." + b64(json.dumps(claims, separators=(",", ":")).encode())
    signature = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    print(signing_input + "." + b64(signature))
MINT
    code=$(curl -sk -o /dev/null -w '%{http_code}' \
        -H "Authorization: Bearer $(tail -1 "$TMP/tokens.txt")" https://127.0.0.1:8444/)
    [ "$code" = 200 ] || { echo "probe with a minted caller answered $code, not 200" >&2; exit 1; }
fi
REDIS_PID=$(ss -Hltnp 'sport = :6379' | grep -o 'pid=[0-9]*' | head -1 | cut -d= -f2)

if [ $CALLGRIND = 1 ]; then
    requests() {  # requests N: N keep-alive HTTPS/1.1 requests, all of which must be 2xx
        h2load --h1 -n "$1" -c "$CONNECTIONS" -t 1 -H "authorization: Bearer $TOKEN" \
            https://127.0.0.1:8444/ > "$TMP/h2load.txt" 2>&1
        grep -qE "status codes: $1 2xx" "$TMP/h2load.txt" || { cat "$TMP/h2load.txt" >&2; exit 1; }
    }
    instructions() {  # instructions N: user-space instructions the gateway ran for N requests
        callgrind_control -z "$GW" > /dev/null
        requests "$1"
        callgrind_control -d "$GW" > /dev/null
        ls -v "$TMP"/callgrind."$GW".* | tail -1 | xargs awk '/^summary:/ {print $2}'
    }
    requests 300   # warm-up: connections, TLS sessions, caches
    few=$(instructions 2000); many=$(instructions 6000)
    [ -z "$CALLGRIND_OUT" ] || cp "$(ls -v "$TMP"/callgrind."$GW".* | tail -1)" "$CALLGRIND_OUT"
    echo "$MODE: $(( (many - few) / 4000 )) instructions/request (callgrind, user space only;" \
        "$CONNECTIONS connections)"
    exit 0
fi

load() {  # load SECONDS OUT [URL]
    # wrk needs at least as many connections as threads.
    local script=$PERF_WORK/tools/wrk_report.lua
    [ -n "$CALLERS" ] && script=$ROOT/bench/many_tokens.lua
    BENCH_TOKEN=$TOKEN BENCH_TOKENS=$TMP/tokens.txt wrk -t"$(( CONNECTIONS < 2 ? 1 : 2 ))" \
        -c"$CONNECTIONS" -d"$1"s --timeout 5s -s "$script" "${3:-https://127.0.0.1:8444/}" \
        > "$2" 2>&1 || { cat "$2" >&2; return 1; }
}
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
switches() {  # switches PID: context switches of all the process' threads, voluntary or not
    cat /proc/"$1"/task/*/status | awk '/ctxt_switches/ {n += $2} END {print n}'
}
metric() { curl -s http://127.0.0.1:9903/metrics | awk -v name="$1" '$1 == name {print $2}'; }

load 3 "$TMP/warmup.txt"
gateway0=$(ticks "$GW"); redis0=$(ticks "$REDIS_PID")
gw_switches0=$(switches "$GW"); redis_switches0=$(switches "$REDIS_PID")
trips0=$(metric portcullis_redis_round_trips_total); checks0=$(metric portcullis_redis_checks_total)
if [ -n "$PERF_OUT" ]; then
    perf record -F 2000 -e cpu-clock --call-graph fp -p "$GW" -o "$PERF_OUT" -- sleep "$DURATION" \
        > /dev/null 2>&1 &
    PERF_PID=$!
fi
load "$DURATION" "$TMP/wrk.txt"
[ -n "$PERF_OUT" ] && wait "$PERF_PID"
gateway1=$(ticks "$GW"); redis1=$(ticks "$REDIS_PID")
gw_switches1=$(switches "$GW"); redis_switches1=$(switches "$REDIS_PID")
trips1=$(metric portcullis_redis_round_trips_total); checks1=$(metric portcullis_redis_checks_total)

result=$(grep '^RESULT' "$TMP/wrk.txt") || { cat "$TMP/wrk.txt" >&2; exit 1; }
python3 - "$result" "$((gateway1 - gateway0))" "$((redis1 - redis0))" \
    "$((trips1 - trips0))" "$((checks1 - checks0))" "$(getconf CLK_TCK)" "$MODE" \
    "$((gw_switches1 - gw_switches0))" "$((redis_switches1 - redis_switches0))" <<'PY'
import sys
fields = dict(item.split("=") for item in sys.argv[1].split()[1:])
gateway, redis, trips, checks, hz = (int(value) for value in sys.argv[2:7])
gateway_switches, redis_switches = (int(value) for value in sys.argv[8:10])
requests = int(fields["requests"])
per_request = lambda ticks: ticks / hz * 1e6 / requests
errors = sum(int(value) for key, value in fields.items() if key.startswith("err_"))
print(f"{sys.argv[7]}: {float(fields['rps']):,.0f} req/s  p50 {int(fields['p50_us'])} us  "
      f"p99 {int(fields['p99_us'])} us  errors {errors}")
print(f"  gateway cpu {per_request(gateway):.1f} us/req   redis cpu {per_request(redis):.1f} us/req")
print(f"  context switches per request: gateway {gateway_switches / requests:.2f}"
      f"   redis {redis_switches / requests:.2f}")
if trips:
    print(f"  {checks:,} checks in {trips:,} redis round trips: {checks / trips:.1f} per round trip")
PY

[ "$VERSUS_REPS" -gt 0 ] || exit 0
HAPROXY_PID=$(pids_on_port "$HAPROXY_JWT_PORT" | tr -s " " "\n" | grep -m1 .)
HAPROXY_URL=https://127.0.0.1:$HAPROXY_JWT_PORT/
load 3 "$TMP/warmup-haproxy.txt" "$HAPROXY_URL"
: > "$TMP/versus.tsv"
for rep in $(seq 1 "$VERSUS_REPS"); do
    for target in gateway haproxy-jwt; do
        if [ $target = gateway ]; then pids=("$GW" "$REDIS_PID"); url=https://127.0.0.1:8444/
        else pids=("$HAPROXY_PID"); url=$HAPROXY_URL; fi
        before=0; for pid in "${pids[@]}"; do before=$((before + $(ticks "$pid"))); done
        load "$DURATION" "$TMP/versus.txt" "$url"
        after=0; for pid in "${pids[@]}"; do after=$((after + $(ticks "$pid"))); done
        echo "$rep $target $((after - before)) $(grep '^RESULT' "$TMP/versus.txt")" >> "$TMP/versus.tsv"
    done
done
python3 - "$TMP/versus.tsv" "$(getconf CLK_TCK)" <<'PY'
import statistics, sys
hz = int(sys.argv[2])
runs = {}
for line in open(sys.argv[1]):
    rep, target, ticks, _, *fields = line.split()
    fields = dict(item.split("=") for item in fields)
    errors = sum(int(value) for key, value in fields.items() if key.startswith("err_"))
    cpu = int(ticks) / hz * 1e6 / int(fields["requests"])
    runs.setdefault(target, []).append((float(fields["rps"]), cpu, errors))
    print(f"rep {rep} {target:12} {float(fields['rps']):8,.0f} req/s  cpu {cpu:5.1f} us/req"
          f"{'  (gateway + redis)' if target == 'gateway' else ''}  errors {errors}")
pairs = list(zip(runs["gateway"], runs["haproxy-jwt"]))
print(f"gateway / haproxy-jwt, median of {len(pairs)} paired reps: throughput "
      f"{statistics.median(g[0] / h[0] for g, h in pairs):.2f}, cpu us/req "
      f"{statistics.median(g[1] / h[1] for g, h in pairs):.2f}")
PY
