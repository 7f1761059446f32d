#!/usr/bin/python3
"""bench_multihost.py - delivery latency across hosts against the same host, and Redis traffic.

    sudo bench/bench_multihost.py [--messages N] [--rate PER_SEC] [--build DIR]

Needs root (network namespaces). Starts the cluster of tests/integration/netns.py (hosts a and b,
each lighttpd + parley-fcgi + parley-ws; one services host with MariaDB, two memcached and Redis),
then for each case sends N 1:1 messages at RATE per second over a WebSocket and measures send ->
push at the recipient's WebSocket (both ends in this process, one clock):
    same-host   sender and recipient on host a (the local UNIX-socket bus carries the hint)
    cross-host  sender on host a, recipient on host b (the Redis bridge carries it)
and, from Redis's INFO, the PUBLISH commands, all commands and the bytes in and out per delivered
message of each case. Bounded: 2 x N messages (default 300 at 50/s: about 15 s plus ~10 s set-up).
Prints figures; never fails on a slow machine. Record them in docs/benchmarks.md.
"""
import argparse
import asyncio
import os
import sys
import time

here = os.path.dirname(os.path.abspath(__file__))
top = os.path.dirname(here)
sys.path.insert(0, os.path.join(top, "tests", "integration"))
import netns  # noqa: E402
import multihost_test as mh  # noqa: E402


def redis_info(cl):
    r = netns.run(*cl.nsx("svc", "redis-cli", "-h", netns.SVC_IP, "-p", str(netns.REDIS_PORT), "-a",
                          netns.REDIS_PASSWORD, "--no-auth-warning", "INFO", "all"))
    info = {}
    for line in r.stdout.splitlines():
        if ":" in line and not line.startswith("#"):
            k, v = line.strip().split(":", 1)
            info[k] = v
    calls = {}
    for k, v in info.items():
        if k.startswith("cmdstat_"):
            calls[k[8:]] = int(dict(x.split("=") for x in v.split(","))["calls"])
    return {"publish": calls.get("publish", 0) + calls.get("spublish", 0),
            "commands": int(info.get("total_commands_processed", 0)),
            "in": int(info.get("total_net_input_bytes", 0)),
            "out": int(info.get("total_net_output_bytes", 0))}


def parley_redis(cl):
    """Redis messages the four Parley processes got: hints of other hosts, and own echoes."""
    tok = mh.token("metrics")
    got = {"received": 0, "own": 0}
    for h in ("a", "b"):
        texts = [netns.run("curl", "-s", "-m", "3", "-H", "Authorization: Bearer " + tok,
                           "http://%s/metrics" % netns.HOST_IP[h], check=False).stdout,
                 netns.run(*cl.nsx(h, "curl", "-s", "-m", "3", "-H", "Authorization: Bearer " + tok,
                                   "http://127.0.0.1:8081/metrics"), check=False).stdout]
        for text in texts:
            for line in text.splitlines():
                for k in got:
                    if line.startswith("parley_") and ("_redis_%s_total " % k) in line:
                        got[k] += int(line.split()[1])
    return got


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * p))] if xs else float("nan")


async def one_case(cl, name, send_host, recv_host, n, rate):
    u1, u2 = mh.uname("bs"), mh.uname("br")
    rx = await mh.WsClient(recv_host, u2).open(sync=None)
    tx = await mh.WsClient(send_host, u1).open(sync=None)
    await asyncio.sleep(0.5)
    before = redis_info(cl) if cl.redis_enabled else None
    pbefore = parley_redis(cl)
    sent = {}
    for i in range(n):
        t = time.monotonic()
        ack = await tx.send_message(u2, "bench %d" % i)
        sent[ack["server_msg_id"]] = t
        await asyncio.sleep(max(0.0, 1.0 / rate - (time.monotonic() - t)))
    end = time.monotonic() + 5
    while time.monotonic() < end and sum(1 for e in rx.stream.events if e[1] in sent) < n:
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.3)
    after = redis_info(cl) if cl.redis_enabled else None
    pafter = parley_redis(cl)
    lat = [(t - sent[mid]) * 1000 for seq, mid, t in rx.stream.events if mid in sent]
    await tx.close()
    await rx.close()
    line = "%-10s  %d sent, %d delivered  latency ms p50 %.2f  p99 %.2f  max %.2f" % (
        name, n, len(lat), pct(lat, 0.5), pct(lat, 0.99), max(lat) if lat else float("nan"))
    if before and lat:
        d = {k: after[k] - before[k] for k in before}
        line += "\n            redis per delivered message: PUBLISH %.2f, commands %.2f, bytes in %.0f, out %.0f" % (
            d["publish"] / len(lat), d["commands"] / len(lat), d["in"] / len(lat), d["out"] / len(lat))
        line += "\n            messages Redis sent to Parley processes per delivered message: %.2f " \
            "(%.2f hints of the other host, %.2f own echoes dropped)" % (
                (pafter["received"] - pbefore["received"] + pafter["own"] - pbefore["own"]) / len(lat),
                (pafter["received"] - pbefore["received"]) / len(lat), (pafter["own"] - pbefore["own"]) / len(lat))
    print(line, flush=True)


async def bench(cl, n, rate):
    await one_case(cl, "same-host", "a", "a", n, rate)
    await one_case(cl, "cross-host", "a", "b", n, rate)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--messages", type=int, default=300)
    ap.add_argument("--rate", type=float, default=50)
    ap.add_argument("--build", default=os.path.join(top, "build"))
    args = ap.parse_args()
    args.messages = max(10, min(args.messages, 5000))
    netns.check_netns()
    cl = netns.Cluster(os.path.abspath(args.build), top, log_level="warn")
    try:
        cl.start()
        print("# multi-host: 2 app hosts + services host in network namespaces (veth + bridge), "
              "%d messages per case at %g/s, one WebSocket each end, via lighttpd" % (args.messages, args.rate))
        asyncio.run(bench(cl, args.messages, args.rate))
    finally:
        cl.close()


if __name__ == "__main__":
    main()
