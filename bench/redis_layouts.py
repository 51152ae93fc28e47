#!/usr/bin/env python3
"""Redis' own CPU per rate-limit check, for the ways a batch of many callers' checks could be
laid out in Redis (issue 18, item 1): what per-caller counting costs Redis however the
gateway arranges it. Starts a private redis-server (no persistence) on --port, and for each
layout runs --checks checks of --callers random callers in synchronous pipelines of --batch
(one round trip at a time, as one gateway worker sends them), reading the server's
used_cpu_sys + used_cpu_user before and after. Layouts, run interleaved --reps times:

  one     every check counts the same caller (INCRBY one key, MGET one key): the floor of
          a round trip and a command per check
  keys    what the gateway sends: INCRBY per caller's counter, PEXPIRE the first time a
          counter is touched, one MGET of the callers' previous-window counters
  hash    the counters as fields of one hash per window: HINCRBY per caller, one PEXPIRE and
          one HMGET per batch (no key or expiry per caller)
  script  one EVALSHA per batch doing the "keys" work inside Redis

Needs redis-server and the redis package from PyPI (pip install redis).
Usage: bench/redis_layouts.py [--port 6391] [--checks 130000] [--reps 3]
"""
import argparse, random, statistics, subprocess, tempfile, time

import redis

LAYOUTS = ["one", "keys", "hash", "script"]
BATCH_SCRIPT = """
local out = {}
for i = 1, #KEYS, 2 do
  local v = redis.call('INCRBY', KEYS[i], 1)
  if v == 1 then redis.call('PEXPIRE', KEYS[i], 120000) end
  out[#out + 1] = v
  out[#out + 1] = redis.call('GET', KEYS[i + 1])
end
return out
"""


def server_cpu(client):
    info = client.info("cpu")
    return info["used_cpu_sys"] + info["used_cpu_user"]


def run(client, script, layout, args):
    client.flushall()
    rng = random.Random(7)
    # The previous window: half the callers were counted there.
    pipe = client.pipeline(transaction=False)
    for caller in range(0, args.callers, 2):
        if layout == "hash":
            pipe.hset("rl:prev", caller, 3)
        else:
            pipe.set(f"rl:{caller}:prev", 3)
        if len(pipe) >= 1000:
            pipe.execute()
    pipe.execute()
    expiring = set()
    start = server_cpu(client)
    batches = args.checks // args.batch
    for _ in range(batches):
        callers = [rng.randrange(args.callers) for _ in range(args.batch)]
        pipe = client.pipeline(transaction=False)
        if layout == "one":
            for _ in callers:
                pipe.incrby("rl:one:cur", 1)
            pipe.mget(["rl:one:prev"])
        elif layout == "keys":
            for caller in callers:
                pipe.incrby(f"rl:{caller}:cur", 1)
                if caller not in expiring:
                    expiring.add(caller)
                    pipe.pexpire(f"rl:{caller}:cur", 120000)
            pipe.mget([f"rl:{caller}:prev" for caller in callers])
        elif layout == "hash":
            for caller in callers:
                pipe.hincrby("rl:cur", caller, 1)
            pipe.pexpire("rl:cur", 120000)
            pipe.hmget("rl:prev", callers)
        else:
            keys = []
            for caller in callers:
                keys += [f"rl:{caller}:cur", f"rl:{caller}:prev"]
            script(keys=keys, client=pipe)
        pipe.execute()
    return (server_cpu(client) - start) / (batches * args.batch) * 1e6


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=6391)
    parser.add_argument("--checks", type=int, default=130_000)
    parser.add_argument("--callers", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=13)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        server = subprocess.Popen(
            ["redis-server", "--port", str(args.port), "--bind", "127.0.0.1",
             "--save", "", "--appendonly", "no", "--dir", scratch],
            stdout=subprocess.DEVNULL)
        try:
            client = redis.Redis(port=args.port)
            for _ in range(100):
                try:
                    client.ping()
                    break
                except redis.ConnectionError:
                    time.sleep(0.05)
            script = client.register_script(BATCH_SCRIPT)
            results = {layout: [] for layout in LAYOUTS}
            for rep in range(args.reps):
                for layout in LAYOUTS:
                    results[layout].append(run(client, script, layout, args))
                    print(f"rep {rep + 1} {layout:6s} {results[layout][-1]:6.2f} us", flush=True)
            print(f"Redis CPU per check, median of {args.reps} "
                  f"({args.callers:,} callers, batches of {args.batch}):")
            for layout in LAYOUTS:
                values = results[layout]
                print(f"  {layout:6s} {statistics.median(values):6.2f} us "
                      f"({min(values):.2f}-{max(values):.2f})")
        finally:
            server.terminate()
            server.wait()


if __name__ == "__main__":
    main()
