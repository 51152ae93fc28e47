#!/usr/bin/env bash
# HTTP/2 throughput and memory per idle TLS connection, the gateway against nginx in the
# same run (issue 18, item 3). Both forward to the harness' nginx upstream (127.0.0.1:18080)
# from a private copy of ../shared/perf; the gateway in pass-through mode (a public rule),
# nginx as a TLS reverse proxy with `http2` on its listener (the harness' own nginx peer
# speaks HTTP/1.1 only), 2 workers each.
#
#   h2: h2load, --streams streams over --h2-connections connections (default 64 over 4),
#       --requests requests a run, --reps interleaved runs per target; prints each target's
#       median req/s and CPU us/request and the gateway/nginx ratios of the medians.
#   memory: opens --idle idle TLS connections (default 8,000; handshake done) to each
#       target in turn, first "fresh" (no request yet), then "served" (idle in keep-alive
#       after one request), and prints the growth of its processes' proportional set size
#       (PSS, /proc/PID/smaps_rollup, so nginx's shared pages are not counted twice) per
#       connection, and the ratio.
#
# Usage: bench/h2_memory.sh [--no-build] [--reps R] [--requests N] [--streams S]
#                           [--h2-connections C] [--idle N]
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BUILD=1; REPS=5; REQUESTS=200000; STREAMS=64; H2_CONNECTIONS=4; IDLE=8000
GW_PORT=8445; OPS_PORT=9905; NGINX_H2_PORT=18447
while [ $# -gt 0 ]; do
    case $1 in
        --no-build) BUILD=0; shift ;;
        --reps) REPS=$2; shift 2 ;;
        --requests) REQUESTS=$2; shift 2 ;;
        --streams) STREAMS=$2; shift 2 ;;
        --h2-connections) H2_CONNECTIONS=$2; shift 2 ;;
        --idle) IDLE=$2; shift 2 ;;
        -h|--help) sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "unknown argument: $1" >&2; exit 2 ;;
    esac
done
for tool in nginx h2load curl python3 ss; do
    command -v "$tool" > /dev/null || { echo "needs $tool (apt-get install nginx nghttp2-client curl)" >&2; exit 1; }
done
# Each idle connection is a descriptor in its client and in the proxy, which holds both sets.
ulimit -n $(( IDLE * 2 + 4096 )) 2> /dev/null || ulimit -n "$(ulimit -Hn)"
if [ "$(ulimit -n)" -lt $(( IDLE * 2 + 1024 )) ]; then
    echo "--idle $IDLE needs $(( IDLE * 2 + 1024 )) open files; the limit is $(ulimit -n)" >&2
    exit 1
fi

if [ $BUILD = 1 ]; then (cd "$ROOT" && cargo build --release); fi
BIN=${GATEWAY_BIN:-$ROOT/target/release/portcullis}
[ -x "$BIN" ] || { echo "$BIN not found" >&2; exit 1; }

TMP=$(mktemp -d /tmp/portcullis-h2mem.XXXXXX)
cp -r "$ROOT/../shared/perf" "$TMP/perf"
export PERF_WORK=$TMP/perf
# shellcheck source=/dev/null
source "$TMP/perf/lib.sh"
GW=""
cleanup() {
    [ -n "$GW" ] && { kill "$GW" 2> /dev/null; wait "$GW" 2> /dev/null || true; }
    stop_all || true
    rm -rf -- "$TMP"
}
trap cleanup EXIT
ensure_certs
make_run_dir
check_ports_free "$GW_PORT" "$OPS_PORT" "$NGINX_H2_PORT" "$UPSTREAM_PORT"
start_upstream

mkdir -p "$RUN_DIR/tmp-h2"
cat > "$RUN_DIR/nginx-h2.conf" <<CONF
worker_processes 2;
worker_rlimit_nofile $(( IDLE * 2 + 4096 ));
pid $RUN_DIR/nginx-h2.pid;
error_log $RUN_DIR/nginx-h2.error.log warn;
events { worker_connections $(( IDLE * 2 + 4096 )); multi_accept on; }
http {
    access_log off;
    server_tokens off;
    client_body_temp_path $RUN_DIR/tmp-h2/body;
    proxy_temp_path       $RUN_DIR/tmp-h2/proxy;
    fastcgi_temp_path     $RUN_DIR/tmp-h2/fastcgi;
    uwsgi_temp_path       $RUN_DIR/tmp-h2/uwsgi;
    scgi_temp_path        $RUN_DIR/tmp-h2/scgi;
    keepalive_requests 1000000000;
    keepalive_timeout 300s;
    client_header_timeout 300s;
    http2_max_requests 1000000000;
    http2_max_concurrent_streams 128;
    ssl_certificate     $CERT_DIR/server.crt;
    ssl_certificate_key $CERT_DIR/server.key;
    ssl_protocols TLSv1.2 TLSv1.3;
    upstream up {
        server 127.0.0.1:$UPSTREAM_PORT;
        keepalive 256;
        keepalive_requests 1000000000;
        keepalive_timeout 300s;
    }
    server {
        listen 127.0.0.1:$NGINX_H2_PORT ssl http2 backlog=4096;
        location / {
            proxy_pass http://up;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
}
CONF
start_bg nginx-h2 nginx -p "$RUN_DIR" -c "$RUN_DIR/nginx-h2.conf" -g 'daemon off;'
wait_port "$NGINX_H2_PORT" nginx-h2

cat > "$TMP/policy.yaml" <<POLICY
version: 1
roles: [user]
rules:
  - name: everything
    paths: ["/**"]
    allow: public
POLICY
cat > "$TMP/gateway.yaml" <<CONF
server:
  https_listen: 127.0.0.1:$GW_PORT
  http_listen: null
  ops_listen: 127.0.0.1:$OPS_PORT
  public_url: https://127.0.0.1:$GW_PORT
  hosts: [127.0.0.1, localhost]
  max_connections: $(( IDLE * 2 + 4096 ))
  header_read_timeout: 300s
  tls:
    cert_path: $CERT_DIR/server.crt
    key_path: $CERT_DIR/server.key
upstreams:
  - name: app
    url: http://127.0.0.1:$UPSTREAM_PORT
redis:
  key_prefix: "portcullis-h2mem:"
tokens:
  hs256_secret: pass-through-benchmark-secret-not-the-harness-one
policy:
  path: $TMP/policy.yaml
telemetry:
  access_log: false
  log_level: warn
CONF
BENCH_DB=${BENCH_DB:-portcullis_bench}
psql -h 127.0.0.1 -U postgres -tAc "SELECT 1 FROM pg_database WHERE datname = '$BENCH_DB'" | grep -q 1 \
    || psql -h 127.0.0.1 -U postgres -qc "CREATE DATABASE $BENCH_DB"
PORTCULLIS_DATABASE__URL=${PORTCULLIS_DATABASE__URL:-postgres://postgres@127.0.0.1:5432/$BENCH_DB} \
    "$BIN" serve --config "$TMP/gateway.yaml" > "$TMP/gateway.log" 2>&1 &
GW=$!
for _ in $(seq 1 100); do
    curl -sk -o /dev/null --max-time 1 "https://127.0.0.1:$GW_PORT/" < /dev/null && break
    kill -0 "$GW" 2> /dev/null || { cat "$TMP/gateway.log" >&2; exit 1; }
    sleep 0.1
done
for port in "$GW_PORT" "$NGINX_H2_PORT"; do
    code=$(curl -sk --http2 -o /dev/null -w '%{http_code} %{http_version}' "https://127.0.0.1:$port/")
    [ "$code" = "200 2" ] || { echo "probe of :$port answered '$code', not '200 2'" >&2; exit 1; }
done

cpu_ticks() {  # cpu_ticks PID...: user+system clock ticks of these processes
    local total=0 pid
    for pid in "$@"; do
        total=$(( total + $(awk '{print $14 + $15}' "/proc/$pid/stat") ))
    done
    echo "$total"
}
nginx_pids() { pids_on_port "$NGINX_H2_PORT"; }
pids_of() { if [ "$1" = gateway ]; then echo "$GW"; else nginx_pids; fi; }
port_of() { if [ "$1" = gateway ]; then echo "$GW_PORT"; else echo "$NGINX_H2_PORT"; fi; }
TICKS=$(getconf CLK_TCK)

# --- HTTP/2 throughput ---------------------------------------------------------------------
echo "h2: $REQUESTS requests, $STREAMS streams over $H2_CONNECTIONS connections, $REPS interleaved reps"
: > "$TMP/h2.tsv"
h2load -n 2000 -c "$H2_CONNECTIONS" -m $(( STREAMS / H2_CONNECTIONS )) -t 1 "https://127.0.0.1:$GW_PORT/" > /dev/null
h2load -n 2000 -c "$H2_CONNECTIONS" -m $(( STREAMS / H2_CONNECTIONS )) -t 1 "https://127.0.0.1:$NGINX_H2_PORT/" > /dev/null
for rep in $(seq 1 "$REPS"); do
    for target in gateway nginx; do
        # shellcheck disable=SC2046
        before=$(cpu_ticks $(pids_of $target))
        h2load -n "$REQUESTS" -c "$H2_CONNECTIONS" -m $(( STREAMS / H2_CONNECTIONS )) -t 1 \
            "https://127.0.0.1:$(port_of $target)/" > "$TMP/h2load.txt" 2>&1
        # shellcheck disable=SC2046
        after=$(cpu_ticks $(pids_of $target))
        grep -q "status codes: $REQUESTS 2xx" "$TMP/h2load.txt" \
            || { cat "$TMP/h2load.txt" >&2; echo "$target: not every request was 2xx" >&2; exit 1; }
        rps=$(awk '/^finished in/ {print $4}' "$TMP/h2load.txt")
        us=$(awk -v t=$(( after - before )) -v hz="$TICKS" -v n="$REQUESTS" 'BEGIN {printf "%.1f", t / hz * 1e6 / n}')
        printf '%s\t%s\t%s\t%s\n' "$rep" "$target" "$rps" "$us" >> "$TMP/h2.tsv"
        printf '  rep %s %-8s %10s req/s %7s cpu us/req\n' "$rep" "$target" "$rps" "$us"
    done
done
python3 - "$TMP/h2.tsv" <<'PY'
import statistics, sys
rows = [line.split("\t") for line in open(sys.argv[1]).read().split("\n") if line]
med = lambda target, col: statistics.median(float(r[col]) for r in rows if r[1] == target)
g, n = med("gateway", 2), med("nginx", 2)
gc, nc = med("gateway", 3), med("nginx", 3)
print(f"h2 median: gateway {g:,.0f} req/s ({gc} cpu us/req), nginx {n:,.0f} req/s ({nc} cpu us/req)")
print(f"h2 ratio gateway/nginx: throughput {g / n:.2f}x, cpu per request {gc / nc:.2f}x")
PY

# --- memory per idle TLS connection ----------------------------------------------------------
pss_kib() {  # pss_kib PID...: summed proportional set size in KiB
    local total=0 pid
    for pid in "$@"; do
        total=$(( total + $(awk '/^Pss:/ {print $2}' "/proc/$pid/smaps_rollup") ))
    done
    echo "$total"
}
cat > "$TMP/idle.py" <<'PY'
# Opens N TLS connections (handshake done, HTTP/1.1 by ALPN), in state "fresh" with no
# request sent, or "served" after one keep-alive request and its whole response; reports
# "open" on stdout and holds them until stdin closes.
import asyncio, re, ssl, sys

async def main(port, count, state):
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(["http/1.1"])
    held, gate = [], asyncio.Semaphore(64)
    async def one():
        async with gate:
            reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context)
            if state == "served":
                writer.write(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
                head = await reader.readuntil(b"\r\n\r\n")
                assert head.startswith(b"HTTP/1.1 200"), head
                length = re.search(rb"(?im)^content-length:\s*(\d+)", head)
                assert length, head
                await reader.readexactly(int(length.group(1)))
            held.append((reader, writer))
    await asyncio.gather(*(one() for _ in range(count)))
    print("open", len(held), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)

asyncio.run(main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]))
PY
echo "memory: $IDLE idle TLS connections to each, fresh (no request yet), then $IDLE more served (idle after one request)"
declare -A GROWTH
# Both sets are held together, so that the served connections cannot reuse memory the
# fresh ones freed.
mkfifo "$TMP/hold"
open_idle() {  # open_idle TARGET STATE: starts a client holding $IDLE connections
    python3 "$TMP/idle.py" "$(port_of "$1")" "$IDLE" "$2" < "$TMP/hold" > "$TMP/idle-$2.out" 2>&1 {hold}>&- &
    local client=$!
    CLIENTS+=("$client")
    until grep -q "^open" "$TMP/idle-$2.out"; do
        kill -0 "$client" 2> /dev/null || { cat "$TMP/idle-$2.out" >&2; exit 1; }
        sleep 0.2
    done
    grep -q "^open $IDLE$" "$TMP/idle-$2.out" || { cat "$TMP/idle-$2.out" >&2; exit 1; }
}
for target in gateway nginx; do
    CLIENTS=()
    # The clients hold their connections until this closes (read-write: opening does not
    # wait for a reader; each client closes its inherited copy, or it would hold itself open).
    exec {hold}<> "$TMP/hold"
    # shellcheck disable=SC2046
    before=$(pss_kib $(pids_of $target))
    for state in fresh served; do
        open_idle "$target" "$state"
        # shellcheck disable=SC2046
        after=$(pss_kib $(pids_of $target))
        GROWTH[$target-$state]=$(( after - before ))
        awk -v t="$target" -v s="$state" -v b="$before" -v a="$after" -v n="$IDLE" \
            'BEGIN {printf "  %-8s %-6s PSS %d -> %d KiB: %.2f KiB per idle connection\n", t, s, b, a, (a - b) / n}'
        before=$after
    done
    exec {hold}>&-
    wait "${CLIENTS[@]}" || true
done
for state in fresh served; do
    awk -v s="$state" -v g="${GROWTH[gateway-$state]}" -v n="${GROWTH[nginx-$state]}" \
        'BEGIN {printf "memory ratio gateway/nginx per idle connection, %s: %.2fx\n", s, g / n}'
done
