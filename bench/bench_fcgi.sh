#!/usr/bin/env bash
# bench_fcgi.sh - parley-fcgi behind lighttpd on this box (issue 3's benchmark):
#   1. memory per parked long poll: parley-fcgi's RSS growth with N parked (default 5000) / N
#   2. wake latency: send acknowledged -> the recipient's long poll answered, p50/p99, at a
#      steady rate of sends (default 500/s) to users that keep a long poll open
#   3. short polls per second on an empty inbox, with wrk; then the peer: the same wrk run
#      against the same bytes served as a static file (/static/empty.json) by a second, plain
#      lighttpd (same binary, minimal config, own port): the web server's floor per request.
#      Prints both req/s and the ratio parley/static.
#
#   bench/bench_fcgi.sh [BUILDDIR]
# Uses the throwaway MariaDB + memcached of tests/harness/with-services (started if needed).
# Env: BENCH_PARKED (5000), BENCH_RATE (500), BENCH_WAKE_SECONDS (10), BENCH_USERS (200),
#      BENCH_WRK_SECONDS (10), BENCH_WRK_CONNECTIONS (32), BENCH_THREADS (fcgi.threads, 4).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
srcdir=$(cd "$here/.." && pwd)
builddir=$(cd "${1:-${PARLEY_BUILDDIR:-$srcdir}}" && pwd)
export PARLEY_SRCDIR=$srcdir PARLEY_BUILDDIR=$builddir

if [ -z "${PARLEY_TEST_CONFIG:-}" ]; then
	exec "$srcdir/tests/harness/with-services" "$0" "$builddir"
fi

work=$(mktemp -d /tmp/parley-bench-fcgi.XXXXXX)
chmod 711 "$work"
fcgi_pid=""
static_pid=""
cleanup() {
	"$srcdir/tests/harness/webserver" stop "$work/lt" >/dev/null 2>&1 || true
	if [ -n "$static_pid" ]; then kill "$static_pid" 2>/dev/null || true; wait "$static_pid" 2>/dev/null || true; fi
	[ -n "$fcgi_pid" ] && kill "$fcgi_pid" 2>/dev/null && wait "$fcgi_pid" 2>/dev/null
	rm -rf "$work"
}
trap cleanup EXIT

awk '/^\[/ { skip = ($0 == "[bus]" || $0 == "[fcgi]" || $0 == "[log]") } !skip' "$PARLEY_TEST_CONFIG" >"$work/p.conf"
cat >>"$work/p.conf" <<CONF
[bus]
dir = $work/bus
[fcgi]
listen = $work/fcgi.sock
max_parked = 100000
threads = ${BENCH_THREADS:-4}
[log]
level = warn
CONF
"$builddir/parley-fcgi" -c "$work/p.conf" >"$work/fcgi.log" 2>&1 &
fcgi_pid=$!
for _ in $(seq 100); do [ -S "$work/fcgi.sock" ] && break; sleep 0.05; done
eval "$("$srcdir/tests/harness/webserver" start lighttpd "$work/lt" --fcgi "$work/fcgi.sock")"

echo "parley-fcgi pid $fcgi_pid behind lighttpd at $PARLEY_HTTP ($(nproc) CPUs)"
FCGI_PID=$fcgi_pid PARLEY_HTTP=$PARLEY_HTTP /usr/bin/python3 - <<'PY'
import asyncio, base64, gc, hashlib, hmac, json, os, time, urllib.parse

base = os.environ["PARLEY_HTTP"]
pid = int(os.environ["FCGI_PID"])
u = urllib.parse.urlsplit(base)
secret = None
section = ""
for line in open(os.environ["PARLEY_TEST_CONFIG"]):
    line = line.strip()
    if line.startswith("["):
        section = line.strip("[]")
    elif section == "auth" and line.split("=", 1)[0].strip() == "jwt_secret":
        secret = line.split("=", 1)[1].strip()
run = "%d%04x" % (os.getpid(), int.from_bytes(os.urandom(2), "big"))


def b64u(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def token(user):
    h = b64u(b'{"alg":"HS256","typ":"JWT"}')
    p = b64u(json.dumps({"sub": user, "exp": int(time.time()) + 7200}).encode())
    s = hmac.new(secret.encode(), (h + "." + p).encode(), hashlib.sha256).digest()
    return h + "." + p + "." + b64u(s)


def rss_kib():
    for line in open("/proc/%d/status" % pid):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])


def threads():
    for line in open("/proc/%d/status" % pid):
        if line.startswith("Threads:"):
            return int(line.split()[1])


async def request(method, path, tok, body=None):
    r, w = await asyncio.open_connection(u.hostname, u.port)
    data = json.dumps(body).encode() if body is not None else b""
    head = "%s %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Bearer %s\r\n" % (method, path, tok)
    if body is not None:
        head += "Content-Type: application/json\r\nContent-Length: %d\r\n" % len(data)
    w.write(head.encode() + b"\r\n" + data)
    raw = await r.read(-1)
    w.close()
    head, _, rest = raw.partition(b"\r\n\r\n")
    return int(head.split()[1]), rest


async def metric(name):
    _, body = await request("GET", "/metrics", token("bench"))
    for line in body.decode().splitlines():
        if line.startswith("parley_fcgi_" + name + " "):
            return int(line.split()[1])
    return -1


async def memory(n):
    users = ["m_%s_%d" % (run, i) for i in range(n)]
    toks = [token(x) for x in users]
    # warm up: connections to MySQL, first allocations
    await request("GET", "/messages/long_poll?after=0&timeout=0", toks[0])
    await asyncio.sleep(0.5)
    before, th0 = rss_kib(), threads()

    async def poll(i, t):
        await asyncio.sleep(i * 0.0007)
        return await request("GET", "/messages/long_poll?after=0&timeout=55", t)

    tasks = [asyncio.ensure_future(poll(i, t)) for i, t in enumerate(toks)]
    t0 = time.monotonic()
    while await metric("polls_parked") < n and time.monotonic() - t0 < 60:
        await asyncio.sleep(0.5)
    parked = await metric("polls_parked")
    await asyncio.sleep(1)
    after, th1 = rss_kib(), threads()
    print("memory: %d parked, RSS %d KiB -> %d KiB: %.2f KiB per parked long poll; threads %d -> %d"
          % (parked, before, after, (after - before) / max(parked, 1), th0, th1))
    # release them: one message each
    snd = token("m_%s_sender" % run)
    sem = asyncio.Semaphore(32)

    async def send(x):
        async with sem:
            return await request("POST", "/messages", snd, {"to": x, "content": "bye", "client_msg_id": x})
    t1 = time.monotonic()
    await asyncio.gather(*[send(x) for x in users])
    res = await asyncio.gather(*tasks)
    ok = sum(1 for s, b in res if s == 200 and b'"new_message"' in b)
    print("        %d/%d woken by their message; %.0f sends+wakes/s" % (ok, n, n / (time.monotonic() - t1)))


async def loop_stalls(out, stop):
    """The load client's own worst event-loop stall (how late a 5 ms sleep wakes): a stall
    delays every answer that arrives meanwhile, so it must stay far below the p99."""
    while time.monotonic() < stop:
        t = time.monotonic()
        await asyncio.sleep(0.005)
        out[0] = max(out[0], time.monotonic() - t - 0.005)


async def pollers(users, toks, seconds, out):
    """Child process: keep a long poll open per user; record when each message arrived."""
    got = {}
    stop = time.monotonic() + seconds
    stall = [0.0]
    c0 = os.times()

    async def poller(x):
        after = 0
        while time.monotonic() < stop:
            s, b = await request("GET", "/messages/long_poll?after=%d&timeout=5" % after, toks[x])
            now = time.monotonic()
            if s != 200:
                await asyncio.sleep(0.1)
                continue
            j = json.loads(b)
            for e in j["events"]:
                got.setdefault(e["message"]["client_msg_id"], now)
            after = j["next"]

    asyncio.ensure_future(loop_stalls(stall, stop))
    await asyncio.gather(*[poller(x) for x in users])
    c1 = os.times()
    with open(out, "w") as f:
        json.dump({"got": got, "stall": stall[0],
                   "cpu": (c1.user + c1.system - c0.user - c0.system) / seconds}, f)


async def latency(rate, seconds, nusers):
    """Sends at a steady rate (this process) to users long-polling in another process."""
    users = ["l_%s_%d" % (run, i) for i in range(nusers)]
    toks = {x: token(x) for x in users}
    out = "/tmp/bench-fcgi-lat-%d.json" % os.getpid()
    # The memory phase leaves a large heap (5000 requests' objects) that both processes share.
    # A full collection of it stalled the pollers' event loop for 200-400 ms in the middle of
    # the run, and every answer that arrived meanwhile was timed that late: the p99 measured
    # the client's garbage collector. Freeze that heap (never scanned again), and collect
    # nothing during the timed run (a few MB of garbage, freed at exit).
    gc.collect()
    gc.freeze()
    gc.disable()
    child = os.fork()
    if child == 0:
        asyncio.run(pollers(users, toks, seconds + 8, out))
        os._exit(0)
    await asyncio.sleep(2)
    stall = [0.0]
    asyncio.ensure_future(loop_stalls(stall, time.monotonic() + seconds + 2))
    acked = {}
    snd = token("l_%s_sender" % run)
    total = rate * seconds
    sem = asyncio.Semaphore(64)

    async def send(i):
        async with sem:
            c = "c%d" % i
            s, _ = await request("POST", "/messages", snd, {"to": users[i % nusers], "content": "x", "client_msg_id": c})
            if s == 200:
                acked[c] = time.monotonic()

    c0 = os.times()
    t0 = time.monotonic()
    sends = []
    for i in range(total):
        delay = t0 + i / rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        sends.append(asyncio.ensure_future(send(i)))
    await asyncio.gather(*sends)
    elapsed = time.monotonic() - t0
    sent_rate = total / elapsed
    c1 = os.times()
    os.waitpid(child, 0)
    gc.enable()
    res = json.load(open(out))
    got = res["got"]
    os.unlink(out)
    lat = sorted(max(0.0, got[c] - acked[c]) * 1000 for c in acked if c in got)
    missing = len([c for c in acked if c not in got])
    if lat:
        print("wake latency: %d sends at %.0f/s to %d long-polling users: p50 %.2f ms, p90 %.2f ms, "
              "p99 %.2f ms, max %.1f ms; %d not seen"
              % (len(acked), sent_rate, nusers, lat[len(lat) // 2], lat[int(len(lat) * 0.9)],
                 lat[min(len(lat) - 1, int(len(lat) * 0.99))], lat[-1], missing))
    print("        (0 ms = the answer came before the sender had read its ack)")
    print("        load client: CPU sender %.0f%%, pollers %.0f%%; worst event-loop stall sender %.1f ms, "
          "pollers %.1f ms" % (100 * (c1.user + c1.system - c0.user - c0.system) / elapsed,
                               100 * res["cpu"], 1000 * stall[0], 1000 * res["stall"]))
    print("        bus hints dropped: %d" % await metric("bus_dropped_total"))
    _, body = await request("GET", "/metrics", token("bench"))
    buckets = [l.split() for l in body.decode().splitlines() if l.startswith("parley_fcgi_wake_seconds_bucket")]
    total = float(buckets[-1][1]) or 1
    print("        inside parley-fcgi, hint -> answer written: " + ", ".join(
        "%s%% <= %s ms" % (round(100 * float(v) / total, 1), float(k.split('"')[1]) * 1000)
        for k, v in buckets[:-1]))


asyncio.run(memory(int(os.environ.get("BENCH_PARKED", "5000"))))
asyncio.run(latency(int(os.environ.get("BENCH_RATE", "500")), int(os.environ.get("BENCH_WAKE_SECONDS", "10")),
                    int(os.environ.get("BENCH_USERS", "200"))))
PY
tok=$(FCGI_PID=$fcgi_pid /usr/bin/python3 -c '
import base64,hashlib,hmac,json,os,time
sec=[l.split("=",1)[1].strip() for l in open(os.environ["PARLEY_TEST_CONFIG"]) if l.split("=",1)[0].strip()=="jwt_secret"][0]
b=lambda x: base64.urlsafe_b64encode(x).rstrip(b"=").decode()
h=b(b"{\"alg\":\"HS256\",\"typ\":\"JWT\"}"); p=b(json.dumps({"sub":"empty_%d"%os.getpid(),"exp":int(time.time())+3600}).encode())
print(h+"."+p+"."+b(hmac.new(sec.encode(),(h+"."+p).encode(),hashlib.sha256).digest()))')
wrk_args=(-t2 -c"${BENCH_WRK_CONNECTIONS:-32}" -d"${BENCH_WRK_SECONDS:-10}s" -H "Authorization: Bearer $tok")
echo "short polls: wrk ${wrk_args[*]:0:3} GET /messages?after=0 (empty inbox)"
wrk "${wrk_args[@]}" "$PARLEY_HTTP/messages?after=0" >"$work/wrk-parley.txt"
grep -E "Requests/sec|Latency|Non-2xx|requests in" "$work/wrk-parley.txt"

# Peer: the empty-inbox answer's exact bytes as a static file, from a second lighttpd of our own
# (the harness's lighttpd sends every URL to parley-fcgi, so it has no document root to use).
mkdir -p "$work/static/root/static"
curl -s -f -H "Authorization: Bearer $tok" "$PARLEY_HTTP/messages?after=0" \
	>"$work/static/root/static/empty.json"
static_port=$(/usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat >"$work/static/lighttpd.conf" <<CONF
server.document-root = "$work/static/root"
server.bind = "127.0.0.1"
server.port = $static_port
server.errorlog = "$work/static/error.log"
server.tag = "lighttpd"
mimetype.assign = ( ".json" => "application/json" )
CONF
lighttpd_bin=$(command -v lighttpd || echo /usr/sbin/lighttpd)
"$lighttpd_bin" -D -f "$work/static/lighttpd.conf" </dev/null >>"$work/static/error.log" 2>&1 &
static_pid=$!
static_url="http://127.0.0.1:$static_port/static/empty.json"
for _ in $(seq 100); do curl -s -f -o /dev/null "$static_url" && break; sleep 0.05; done
echo "peer: wrk ${wrk_args[*]:0:3} GET /static/empty.json ($(wc -c <"$work/static/root/static/empty.json") bytes, same body, plain lighttpd)"
wrk "${wrk_args[@]}" "$static_url" >"$work/wrk-static.txt"
grep -E "Requests/sec|Latency|Non-2xx|requests in" "$work/wrk-static.txt"
awk '/^Requests\/sec/ { r[FILENAME] = $2 } END {
	p = r[ARGV[1]]; s = r[ARGV[2]]
	printf "short polls: parley %.0f req/s, static %.0f req/s, ratio parley/static %.3f\n", p, s, (s > 0 ? p / s : 0)
}' "$work/wrk-parley.txt" "$work/wrk-static.txt"
