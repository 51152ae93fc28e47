-- wrk script: each request carries a token picked at random from the file $BENCH_TOKENS (one
-- per line), so the gateway sees many callers: per-user rate-limit counters and revocation
-- keys spread over as many Redis keys, and tokens its per-worker cache of verified tokens has
-- not seen. Prints the same RESULT line as the harness' wrk_report.lua.
local tokens = {}

function init(args)
  for line in io.lines(os.getenv("BENCH_TOKENS")) do
    tokens[#tokens + 1] = "Bearer " .. line
  end
  math.randomseed(os.time() + #tokens)
end

function request()
  return wrk.format(nil, nil, { Authorization = tokens[math.random(#tokens)] })
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "RESULT requests=%d duration_us=%d rps=%.1f p50_us=%d p90_us=%d p99_us=%d max_us=%d mean_us=%.1f " ..
    "err_connect=%d err_read=%d err_write=%d err_status=%d err_timeout=%d\n",
    summary.requests, summary.duration, summary.requests / (summary.duration / 1e6),
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.mean,
    e.connect, e.read, e.write, e.status, e.timeout))
end
