#!/usr/bin/python3
"""redis_test.py - two "hosts" on one machine joined by the Redis bridge.

Run by tests/integration/test_redis.sh under tests/harness/with-services (PARLEY_TEST_CONFIG,
PARLEY_TEST_DIR, PARLEY_TEST_REDIS_SOCKET, PARLEY_TEST_REDIS_PASSWORD, PARLEY_SRCDIR,
PARLEY_BUILDDIR). Each host is a parley-ws, a parley-fcgi and a lighttpd in front of it, with a
bus directory of its own (so the local bus cannot carry anything between the hosts); both share
MySQL, memcached and the stack's Redis. Checks: delivery from one host to the other over
WebSocket and long polling (both ways), a room with listeners on both hosts, typing and presence
seen across, and, while redis-server is stopped, delivery within the fallback interval; then
reconnection by itself. Prints one line per check and "N passed, N failed" last.
(Real hosts, in network namespaces, are the multi-host test's; this one needs no root.)
"""
import asyncio
import configparser
import json
import os
import re
import subprocess
import tempfile
import threading
import time
import urllib.parse
import urllib.request

import websockets

import parleylib as L
from parleylib import free_port, uname, wait_until

BUILD = L.BUILD
SRC = L.SRC
BASE_CONF = os.environ["PARLEY_TEST_CONFIG"]
STACK = os.environ["PARLEY_TEST_DIR"]
TOP = tempfile.mkdtemp(prefix="redis-test.", dir="/tmp")
os.chmod(TOP, 0o711)
RUN = L.RUN
FALLBACK = 1	# redis.fallback_interval of both hosts, seconds
SECRET = L.config_secret(BASE_CONF)
T = L.Tally()
check = T.check


def token(sub, dev=None):
    return L.token(SECRET, sub, dev)


def services(cmd):
    subprocess.run(["setsid", os.path.join(SRC, "tests/harness/services"), cmd, STACK], check=True,
                   stdout=subprocess.DEVNULL)


def configparser_section(path, name):
    conf = configparser.ConfigParser(interpolation=None)
    conf.read(path)
    return dict(conf[name])


class Host:
    """One app host: parley-ws, parley-fcgi behind lighttpd, a bus directory of its own."""

    def __init__(self, name, ws_mysql=None):
        self.name = name
        self.dir = os.path.join(TOP, name)
        os.makedirs(self.dir)
        self.ws_port = free_port()
        self.fcgi_sock = os.path.join(self.dir, "fcgi.sock")
        self.conf = os.path.join(self.dir, "parley.conf")
        L.write_conf(self.conf, BASE_CONF,
                     bus={"dir": os.path.join(self.dir, "bus")},
                     ws={"listen": "127.0.0.1", "port": self.ws_port},
                     fcgi={"listen": self.fcgi_sock, "socket_mode": "0660", "threads": 4},
                     redis={"url": "unix:" + os.environ["PARLEY_TEST_REDIS_SOCKET"],
                            "password": os.environ["PARLEY_TEST_REDIS_PASSWORD"],
                            "prefix": "t" + RUN, "fallback_interval": FALLBACK, "timeout_ms": 500},
                     log={"level": "info"})
        ws_conf = self.conf
        if ws_mysql:	# this parley-ws reaches MariaDB through a proxy (tests/harness/mysql-slow)
            ws_conf = os.path.join(self.dir, "parley-ws.conf")
            mysql = dict(configparser_section(self.conf, "mysql"), socket=ws_mysql)
            L.write_conf(ws_conf, self.conf, mysql=mysql)
        self.procs = []
        for prog, c in (("parley-ws", ws_conf), ("parley-fcgi", self.conf)):
            log = open(os.path.join(self.dir, prog + ".log"), "ab")
            self.procs.append(subprocess.Popen([os.path.join(BUILD, prog), "--config", c],
                                               stdout=log, stderr=subprocess.STDOUT))
        if not wait_until(lambda: os.path.exists(self.fcgi_sock) and self.ws_listening(), 15):
            raise RuntimeError("%s did not start; see %s" % (name, self.dir))
        self.http = L.start_web(os.path.join(self.dir, "web"), self.fcgi_sock)
        self.ws_url = "ws://127.0.0.1:%d/ws" % self.ws_port

    def ws_listening(self):
        return L.can_connect("127.0.0.1", self.ws_port)

    def stop(self):
        L.stop_web(os.path.join(self.dir, "web"))
        return L.stop_procs(self.procs, timeout=15)

    def req(self, method, path, tok=None, body=None, timeout=30):
        """(status, the answer's JSON or, when it is not JSON, its text)."""
        r = L.request(self.http, method, path, tok or None, body, timeout=timeout)
        return r.status, r.json_or_text()

    def ws_get(self, path, tok=None):
        rq = urllib.request.Request("http://127.0.0.1:%d%s" % (self.ws_port, path),
                                    headers={"Authorization": "Bearer " + tok} if tok else {})
        with urllib.request.urlopen(rq, timeout=3) as r:
            return r.read().decode()

    def metrics(self):
        """parley_ws_redis_* and parley_fcgi_redis_* figures of this host."""
        out = {}
        text = self.ws_get("/metrics", token("ops"))
        _, ftext = self.req("GET", "/metrics", token("ops"))
        for line in (text + "\n" + str(ftext)).splitlines():
            m = re.match(r"^parley_(ws|fcgi)_(redis_\w+|polls_parked) (\d+)$", line)
            if m:
                out[m.group(1) + "_" + m.group(2)] = int(m.group(3))
        return out

    def redis_state(self):
        ws = json.loads(self.ws_get("/health")).get("redis")
        _, j = self.req("GET", "/health")
        return ws, j.get("redis") if isinstance(j, dict) else None


Client = L.Inbox


async def connect(host, user):
    ws = await websockets.connect(host.ws_url + "?access_token=" + token(user, "d1"),
                                  subprotocols=["parley.v1"])
    ready = json.loads(await asyncio.wait_for(ws.recv(), 5))
    assert ready["type"] == "ready", ready
    return Client(ws)


def is_msg(cmid):
    return lambda m: m.get("type") == "new_message" and m["message"]["client_msg_id"] == cmid


class Poller(threading.Thread):
    def __init__(self, host, path, tok):
        super().__init__(daemon=True)
        self.host, self.path, self.tok = host, path, tok
        self.resp, self.t_done = None, None

    def run(self):
        try:
            self.resp = self.host.req("GET", self.path, self.tok, timeout=40)
        except Exception as e:  # noqa: BLE001 - reported by the check
            self.resp = (0, repr(e))
        self.t_done = time.monotonic()


def last_seq(host, tok):
    after = 0
    while True:
        _, j = host.req("GET", "/messages?after=%d&limit=500" % after, tok)
        if not j["events"]:
            return j["next"]
        after = j["next"]


def park(host, user, path):
    """Start a long poll on host and wait until it is parked there."""
    before = host.metrics().get("fcgi_polls_parked", 0)
    p = Poller(host, path, token(user))
    p.start()
    wait_until(lambda: host.metrics().get("fcgi_polls_parked", 0) > before, 10)
    return p


def poll_cross(a, b, what, limit):
    """A user long-polling on b is woken by a message sent through a; seconds from ack to answer."""
    alice, bob = uname("pa"), uname("pb")
    after = last_seq(b, token(bob))
    p = park(b, bob, "/messages/long_poll?after=%d&timeout=30" % after)
    time.sleep(0.2)
    cmid = uname("c")
    st, j = a.req("POST", "/messages", token(alice), {"to": bob, "content": "hi", "client_msg_id": cmid})
    t_ack = time.monotonic()
    p.join(35)
    ok = p.resp is not None and p.resp[0] == 200 and isinstance(p.resp[1], dict) and \
        any(e.get("message", {}).get("client_msg_id") == cmid for e in p.resp[1].get("events", []))
    lat = (p.t_done - t_ack) if ok else None
    check(st == 200 and ok and lat < limit,
          "long poll on %s woken by a send through %s%s" % (b.name, a.name, what),
          (st, j, p.resp, lat))
    return lat


async def ws_cross(a, b, what, limit):
    """A WebSocket on b gets the message a WebSocket on a sends; seconds from ack to delivery."""
    alice, bob = uname("wa"), uname("wb")
    cb = await connect(b, bob)
    ca = await connect(a, alice)
    await asyncio.sleep(0.2)
    cmid = uname("c")
    await ca.send({"type": "send_message", "to": bob, "content": "over there", "client_msg_id": cmid})
    ack = await ca.next(lambda m: m.get("type") == "ack" and m.get("client_msg_id") == cmid, 5)
    t_ack = time.monotonic()
    m = await cb.next(is_msg(cmid), limit + 2)
    lat = time.monotonic() - t_ack if m else None
    check(ack is not None and m is not None and lat < limit,
          "WebSocket on %s gets a message sent on %s%s" % (b.name, a.name, what), (ack, m, lat))
    await ca.ws.close()
    await cb.ws.close()
    return lat


async def room_and_ephemeral(a, b):
    room = uname("room")
    alice, bob, carol = uname("ra"), uname("rb"), uname("rc")
    ca, cb = await connect(a, alice), await connect(b, bob)
    for c in (ca, cb):
        await c.send({"type": "join_room", "room": room})
    await asyncio.sleep(0.3)
    # A room long poll on host b too.
    _, j = b.req("GET", "/rooms/%s/messages" % room, token(carol))
    p = park(b, carol, "/rooms/%s/messages?after=%d&timeout=30" % (room, j["next"]))
    await ca.send({"type": "room_message", "room": room, "text": "hello both hosts"})
    is_room = lambda m: m.get("type") == "room_message" and m["comment"]["text"] == "hello both hosts"
    check(await ca.next(is_room, 5) is not None, "room comment reaches its own host's listener")
    check(await cb.next(is_room, 5) is not None, "room comment reaches the other host's listener")
    p.join(10)
    check(p.resp is not None and p.resp[0] == 200 and
          any(e["comment"]["text"] == "hello both hosts" for e in p.resp[1].get("events", [])),
          "room long poll on the other host woken", p.resp)
    # Typing: an ephemeral event, from b to a.
    await cb.send({"type": "typing", "to": alice})
    t = await ca.next(lambda m: m.get("type") == "typing" and m.get("from") == bob, 5)
    check(t is not None, "typing from host b reaches host a", t)
    # Presence is MySQL's: bob (on b) is online seen from a.
    _, j = a.req("GET", "/presence?users=%s,%s" % (bob, carol), token(alice))
    pr = {x["user"]: x["online"] for x in j.get("presence", [])} if isinstance(j, dict) else {}
    check(pr.get(bob) is True and pr.get(carol) is False, "presence of a user on host b seen from host a", j)
    # The room rate limit is one limit across hosts (MySQL's room_rate): 10 a second in all.
    # The 12 posts go out at once (six through each host), so a slow build (TSan) still puts
    # them inside one second.
    codes = [None] * 12
    t0 = time.monotonic()

    def post(i):
        h = a if i % 2 == 0 else b
        codes[i] = h.req("POST", "/rooms/%s/messages" % room, token(alice), {"text": "r%d" % i})[0]
    posters = [threading.Thread(target=post, args=(i,)) for i in range(12)]
    for t in posters:
        t.start()
    for t in posters:
        t.join(60)
    took = time.monotonic() - t0
    check(codes.count(429) >= 1 and codes.count(200) <= 10 and codes.count(200) + codes.count(429) == 12,
          "room rate limit counts posts through both hosts together (12 posts in %.2f s)" % took, codes)
    await ca.ws.close()
    await cb.ws.close()


async def room_ids(c, want, timeout):
    """Room comment ids c gets until every id of want came (or timeout), then 0.5 s more."""
    got = [m["comment"]["id"] for m in c.inbox if m.get("type") == "room_message"]
    c.inbox = [m for m in c.inbox if m.get("type") != "room_message"]
    end = time.monotonic() + timeout
    while True:
        if set(want) <= set(got):	# all came: 0.5 s more for a duplicate
            end = min(end, time.monotonic() + 0.5)
        left = end - time.monotonic()
        if left <= 0:
            return got
        try:
            m = json.loads(await asyncio.wait_for(c.ws.recv(), left))
        except asyncio.TimeoutError:
            return got
        if m.get("type") == "room_message":
            got.append(m["comment"]["id"])
        else:
            c.inbox.append(m)


def exactly_once(got, want):
    """'' when got holds every id of want once and nothing else, else what is wrong."""
    dup = sorted(i for i in set(got) if got.count(i) > 1)
    return "" if sorted(got) == sorted(want) else \
        "missing %s, twice %s, extra %s" % (sorted(set(want) - set(got)), dup, sorted(set(got) - set(want)))


async def room_race(a, b):
    """
    Comments posted on b (pushed at once, text on the local bus) interleaved with comments posted
    on a (b fetches each one's text from MySQL: Redis carries no text): b's listener gets every
    id exactly once, whatever order the pushes and the fetches finish in.
    """
    room = uname("race")
    cl = await connect(b, uname("rl"))
    await cl.send({"type": "join_room", "room": room})
    await asyncio.sleep(0.3)
    posters = [await connect(b, uname("rp")) for _ in range(4)]
    http_users = [uname("hp") for _ in range(4)]
    codes = []

    def http_poster(u):
        for i in range(8):
            st, _ = a.req("POST", "/rooms/%s/messages" % room, token(u), {"text": "a %s %d" % (u, i)})
            codes.append(st)
            time.sleep(0.12)	# under the room rate limit (10 a second a user)

    threads = [threading.Thread(target=http_poster, args=(u,), daemon=True) for u in http_users]
    for t in threads:
        t.start()
    for i in range(8):
        for c in posters:
            await c.send({"type": "room_message", "room": room, "text": "b %d" % i})
        await asyncio.sleep(0.12)
    for t in threads:
        t.join(30)
    _, j = a.req("GET", "/rooms/%s/messages" % room, token(http_users[0]))
    want = [e["comment"]["id"] for e in j["events"]]
    got = await room_ids(cl, want, 5)
    bad = exactly_once(got, want)
    check(codes.count(200) == 32 and len(want) == 64 and not bad,
          "64 room comments posted on both hosts at once reach host b's listener exactly once "
          "(%d out of id order)" % sum(1 for x, y in zip(got, got[1:]) if y < x), (codes, len(want), bad))
    for c in posters + [cl]:
        await c.ws.close()


async def join_while_slow(a, b, arm):
    """
    A comment posted on a while b's first join of the room is still reading its starting point
    (b's MySQL slow: tests/harness/mysql-slow) reaches b's listener, once.
    """
    room = uname("sroom")
    cw = await connect(b, uname("sj"))
    with open(arm, "w") as f:
        f.write("1500")
    await cw.send({"type": "join_room", "room": room})
    await asyncio.sleep(0.3)	# the room's SUBSCRIBE is done; its starting point is held back
    u = uname("sp")
    st, j = a.req("POST", "/rooms/%s/messages" % room, token(u), {"text": "during the join"})
    os.unlink(arm)
    got = await room_ids(cw, [j.get("comment", {}).get("id")] if isinstance(j, dict) else [], 6)
    _, h = a.req("GET", "/rooms/%s/messages" % room, token(u))
    want = [e["comment"]["id"] for e in h["events"]]
    bad = exactly_once(got, want)
    check(st == 200 and len(want) == 1 and not bad and os.path.exists(arm + ".log"),
          "a comment posted on host a while host b's join reads its starting point reaches "
          "host b's listener once", (st, j, got, want, bad))
    await cw.ws.close()


async def main():
    a = b = None
    arm = os.path.join(TOP, "mysql-slow.arm")
    proxy_sock = os.path.join(TOP, "mysql-slow.sock")
    proxy = subprocess.Popen(["/usr/bin/python3", os.path.join(SRC, "tests/harness/mysql-slow"), proxy_sock,
                              configparser_section(BASE_CONF, "mysql")["socket"], arm])
    try:
        if not wait_until(lambda: os.path.exists(proxy_sock), 10):
            raise RuntimeError("tests/harness/mysql-slow did not start")
        a, b = Host("hostA"), Host("hostB", ws_mysql=proxy_sock)
        check(wait_until(lambda: a.redis_state() == ("ok", "ok") and b.redis_state() == ("ok", "ok"), 10),
              "/health of both daemons on both hosts: redis ok", (a.redis_state(), b.redis_state()))
        m0 = [a.metrics(), b.metrics()]
        lats = []
        for x, y in ((a, b), (b, a)):
            lats.append(await ws_cross(x, y, "", 1.0))
            lats.append(poll_cross(x, y, "", 1.0))
        await room_and_ephemeral(a, b)
        await room_race(a, b)
        await join_while_slow(a, b, arm)
        m1 = [a.metrics(), b.metrics()]
        pub = sum(m1[i].get(k, 0) - m0[i].get(k, 0) for i in range(2)
                  for k in ("ws_redis_published_total", "fcgi_redis_published_total"))
        rcv = sum(m1[i].get(k, 0) - m0[i].get(k, 0) for i in range(2)
                  for k in ("ws_redis_received_total", "fcgi_redis_received_total"))
        own = sum(m1[i].get(k, 0) - m0[i].get(k, 0) for i in range(2)
                  for k in ("ws_redis_own_total", "fcgi_redis_own_total"))
        check(rcv > 0 and pub > 0, "metrics count Redis traffic (published %d, received %d, own echoes %d)"
              % (pub, rcv, own), (m0, m1))

        # Redis gone: delivery within the fallback interval (plus a read), then back by itself.
        services("stop-redis")
        check(wait_until(lambda: a.redis_state() == ("down", "down") and b.redis_state() == ("down", "down"), 5),
              "/health says redis down on both hosts", (a.redis_state(), b.redis_state()))
        limit = FALLBACK + 1.0
        # A room comment posted over HTTP on a, with Redis down: b's WebSocket room listener
        # catches up from MySQL within the fallback interval, exactly once.
        room = uname("droom")
        rx, ry = uname("rx"), uname("ry")
        cy = await connect(b, ry)
        await cy.send({"type": "join_room", "room": room})
        await asyncio.sleep(0.3)
        t0 = time.monotonic()
        st, _ = a.req("POST", "/rooms/%s/messages" % room, token(rx), {"text": "while down"})
        is_down = lambda m: m.get("type") == "room_message" and m["comment"]["text"] == "while down"
        got = await cy.next(is_down, limit + 1.0)
        dt = time.monotonic() - t0
        check(st == 200 and got is not None and dt <= limit,
              "room comment from host a reaches host b's WebSocket room listener while Redis is down "
              "(%.0f ms)" % (dt * 1000), (st, got))
        # Interleaved with comments posted on b (pushed at once there): a's still caught up.
        cz = await connect(b, uname("rz"))
        want = []
        for i in range(3):
            st, j = a.req("POST", "/rooms/%s/messages" % room, token(rx), {"text": "down a%d" % i})
            await cz.send({"type": "room_message", "room": room, "text": "down b%d" % i})
            want.append(j["comment"]["id"] if st == 200 else None)
            await asyncio.sleep(0.15)
        _, j = a.req("GET", "/rooms/%s/messages?after=%d" % (room, want[0] - 1), token(rx))
        want = [e["comment"]["id"] for e in j["events"]]
        got = await room_ids(cy, want, limit + 1.0)
        bad = exactly_once(got, want)
        check(len(want) == 6 and not bad, "room comments from host a interleaved with host b's own, "
              "Redis down: host b's listener gets each once", (want, got, bad))
        await cz.ws.close()
        for x, y in ((a, b), (b, a)):
            lat = await ws_cross(x, y, " while Redis is down", limit)
            print("     (%.0f ms)" % (lat * 1000 if lat else -1))
            lat = poll_cross(x, y, " while Redis is down", limit)
            print("     (%.0f ms)" % (lat * 1000 if lat else -1))
        services("start-redis")
        check(wait_until(lambda: a.redis_state() == ("ok", "ok") and b.redis_state() == ("ok", "ok"), 10),
              "both hosts reconnect to Redis by themselves", (a.redis_state(), b.redis_state()))
        ma = a.metrics()
        check(ma.get("ws_redis_reconnects_total", 0) >= 1 and ma.get("ws_redis_rechecks_total", 0) >= 1,
              "reconnects and rechecks counted", ma)
        time.sleep(0.5)	# the resubscriptions' own rechecks
        await ws_cross(a, b, " after Redis came back", 1.0)
        st, _ = a.req("POST", "/rooms/%s/messages" % room, token(rx), {"text": "after up"})
        is_up = lambda m: m.get("type") == "room_message" and m["comment"]["text"] == "after up"
        got = await cy.next(is_up, 5)
        await asyncio.sleep(FALLBACK + 0.5)
        dup = [m for m in cy.inbox if is_down(m) or is_up(m)]
        try:
            while True:
                m = json.loads(await asyncio.wait_for(cy.ws.recv(), 0.2))
                if is_down(m) or is_up(m):
                    dup.append(m)
        except asyncio.TimeoutError:
            pass
        check(st == 200 and got is not None and not dup,
              "room comments reach host b's listener exactly once across Redis down and up", (got, dup))
        await cy.ws.close()
        poll_cross(b, a, " after Redis came back", 1.0)
        print("     cross-host latency (ms), Redis up: %s" % ", ".join("%.1f" % (x * 1000) for x in lats if x))
    finally:
        if os.path.exists(arm):
            os.unlink(arm)
        proxy.kill()
        proxy.wait()
        services("start-redis")
        for h in (a, b):
            if h is not None:
                codes = h.stop()
                check(codes == [0, 0], "%s's daemons stop cleanly" % h.name, codes)
        if T.failed:
            for h in ("hostA", "hostB"):
                for f in ("parley-ws.log", "parley-fcgi.log"):
                    p = os.path.join(TOP, h, f)
                    if os.path.exists(p):
                        print("--- %s/%s" % (h, f))
                        print("".join(open(p, errors="replace").readlines()[-15:]))
        subprocess.run(["rm", "-rf", TOP])
    print(T.summary())
    return 1 if T.failed else 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
