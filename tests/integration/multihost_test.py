#!/usr/bin/python3
"""multihost_test.py - two app hosts and a services host in network namespaces (issue 9).

Run by tests/integration/test_multihost.sh as root (PARLEY_SRCDIR, PARLEY_BUILDDIR). The cluster
(tests/integration/netns.py): hosts a and b, each lighttpd + parley-fcgi + parley-ws; host svc with
MariaDB (TCP), two memcached (one pool) and Redis (requirepass). This process runs the clients from
a fourth namespace. What it checks:
  - a user on host a sends, a user on host b receives over WebSocket and over long polling, and
    the reverse;
  - a room with listeners on both hosts; presence seen from both (pushed and GET /presence);
  - host identity: the two hosts have the same hostname and ws.port, yet distinct presence nodes;
    a user on both hosts stays online when one connection closes or host b's parley-ws restarts;
  - steady traffic both ways while Redis is killed and restarted, then one memcached is killed:
    every acknowledged message reaches each of four streams (both users' WebSockets and long
    polls) exactly once, every stream's seqs are gap-free, the delivery delay while Redis was
    down stays within redis.fallback_interval + MARGIN, rooms work again after the restart, and
    both hosts' /conversations show the right last message and unread count throughout.
Prints one line per check and "N passed, N failed" last; exit status 1 when anything failed or
namespaces cannot be made (never a silent skip).
"""
import asyncio
import json
import os
import sys
import threading
import time
import traceback
import urllib.error
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import netns  # noqa: E402
import parleylib as L  # noqa: E402
from parleylib import uname  # noqa: E402

import websockets  # noqa: E402

BUILD = os.environ.get("PARLEY_BUILDDIR", ".")
SRC = os.environ.get("PARLEY_SRCDIR", ".")
FALLBACK = 1            # redis.fallback_interval, seconds
MARGIN = 1.0            # seconds allowed beyond it (detection, MySQL query, scheduling)
RATE = 0.1              # seconds between two sends of each sender
T = L.Tally()
check = T.check


def token(sub, dev=None):
    return L.token(netns.SECRET, sub, dev)


def http(host, method, path, user, body=None, timeout=15, dev=None):
    req = urllib.request.Request("http://%s%s" % (netns.HOST_IP[host], path), method=method,
                                 data=json.dumps(body).encode() if body is not None else None,
                                 headers={"Authorization": "Bearer " + token(user, dev),
                                          "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


class Stream:
    """What one receiver saw: durable events (seq, message id, time) and the rest."""

    def __init__(self, name):
        self.name = name
        self.events = []        # (seq, message id or None, monotonic time)
        self.other = []

    def add(self, ev, t):
        if "seq" in ev:
            mid = ev["message"]["id"] if ev.get("type") == "new_message" else None
            self.events.append((ev["seq"], mid, t))
        else:
            self.other.append((ev, t))


class WsClient:
    """A WebSocket through a host's lighttpd, read by one task into a Stream; acks resolve sends."""

    def __init__(self, host, user, stream=None):
        self.host, self.user = host, user
        self.stream = stream or Stream("%s ws@%s" % (user, host))
        self.acks = {}
        self.frames = []
        self.cond = asyncio.Condition()

    async def open(self, sync=0):
        url = "ws://%s/ws?access_token=%s" % (netns.HOST_IP[self.host], token(self.user))
        self.ws = await websockets.connect(url, subprotocols=["parley.v1"], open_timeout=10)
        ready = json.loads(await asyncio.wait_for(self.ws.recv(), 5))
        assert ready["type"] == "ready", ready
        if sync is not None:
            await self.ws.send(json.dumps({"type": "sync", "after": sync}))
        self.task = asyncio.ensure_future(self.reader())
        return self

    async def reader(self):
        try:
            async for raw in self.ws:
                t = time.monotonic()
                m = json.loads(raw)
                if m.get("type") == "ack":
                    fut = self.acks.pop(m.get("client_msg_id"), None)
                    if fut is not None and not fut.done():
                        fut.set_result(m)
                    continue
                self.stream.add(m, t)
                async with self.cond:
                    self.frames.append((m, t))
                    self.cond.notify_all()
        except websockets.ConnectionClosed:
            pass

    async def send_message(self, to, content, timeout=10):
        cmid = uname("c")
        fut = asyncio.get_running_loop().create_future()
        self.acks[cmid] = fut
        await self.ws.send(json.dumps({"type": "send_message", "to": to, "content": content,
                                       "client_msg_id": cmid}))
        ack = await asyncio.wait_for(fut, timeout)
        assert ack.get("status") == "success", ack
        return ack

    async def wait_for(self, pred, timeout=5.0):
        """The first frame (seen so far or arriving within timeout) that pred accepts, else None."""
        end = time.monotonic() + timeout
        async with self.cond:
            while True:
                for m, t in self.frames:
                    if pred(m):
                        return m
                left = end - time.monotonic()
                if left <= 0:
                    return None
                try:
                    await asyncio.wait_for(self.cond.wait(), left)
                except asyncio.TimeoutError:
                    pass

    async def send(self, obj):
        await self.ws.send(json.dumps(obj))

    async def close(self):
        await self.ws.close()
        await asyncio.wait_for(self.task, 5)


class Poller(threading.Thread):
    """A long-poll loop of one user through one host (after = the last next), into a Stream."""

    def __init__(self, host, user):
        super().__init__(daemon=True)
        self.host, self.user = host, user
        self.stream = Stream("%s poll@%s" % (user, host))
        self.after = 0
        self.stop = threading.Event()
        self.errors = []

    def run(self):
        while not self.stop.is_set():
            try:
                st, page = http(self.host, "GET", "/messages/long_poll?after=%d&timeout=5" % self.after,
                                self.user, timeout=20, dev="poller")
            except Exception as e:  # noqa: BLE001 - recorded, the checker fails on it
                self.errors.append(repr(e))
                time.sleep(0.2)
                continue
            t = time.monotonic()
            if st != 200:
                self.errors.append("%d %s" % (st, page))
                time.sleep(0.2)
                continue
            for ev in page["events"]:
                self.stream.add(ev, t)
            self.after = page["next"]


def is_msg(mid):
    return lambda m: m.get("type") == "new_message" and m["message"]["id"] == mid


async def in_thread(fn, *args, **kw):
    return await asyncio.get_running_loop().run_in_executor(None, lambda: fn(*args, **kw))


async def basics(alice, bob):
    """One message each way, each received over WebSocket and over a parked long poll."""
    a = await WsClient("a", alice).open(sync=None)
    b = await WsClient("b", bob).open(sync=None)
    ack = await a.send_message(bob, "a to b")
    m = await b.wait_for(is_msg(ack["server_msg_id"]), 5)
    check(m is not None, "sent on host a (WebSocket), received on host b (WebSocket)")
    st, res = await in_thread(http, "b", "POST", "/messages", bob,
                              {"to": alice, "content": "b to a", "client_msg_id": uname("c")})
    m = await a.wait_for(is_msg(res.get("server_msg_id")), 5) if st == 200 else None
    check(m is not None, "sent on host b (HTTP), received on host a (WebSocket)", (st, res))

    for sender_host, sender, rcpt_host, rcpt, ws in (("a", alice, "b", bob, a), ("b", bob, "a", alice, b)):
        st, page = await in_thread(http, rcpt_host, "GET", "/messages?after=0&limit=500", rcpt)
        after = page["next"]
        box = {}

        def poll():
            box["r"] = http(rcpt_host, "GET", "/messages/long_poll?after=%d&timeout=10" % after, rcpt,
                            timeout=20, dev="basic")
        th = threading.Thread(target=poll)
        th.start()
        await asyncio.sleep(0.5)        # parked on the receiver's host
        t0 = time.monotonic()
        ack = await ws.send_message(rcpt, "long poll from %s" % sender_host)
        await in_thread(th.join, 15)
        took = time.monotonic() - t0
        st, page = box.get("r", (0, {}))
        got = [e for e in page.get("events", []) if e.get("type") == "new_message"]
        check(st == 200 and got and got[0]["message"]["id"] == ack["server_msg_id"] and took < 1.0,
              "sent on host %s, a long poll parked on host %s answers at once (%.3f s)" %
              (sender_host, rcpt_host, took), (st, page))
    return a, b


async def rooms(a, b, room, label):
    """A comment from each host reaches the listeners on both hosts."""
    for c in (a, b):
        await c.send({"type": "join_room", "room": room})
    await asyncio.sleep(1.0)            # each host subscribes to the room's channel
    ok = True
    for sender, word in ((a, "from a " + label), (b, "from b " + label)):
        await sender.send({"type": "room_message", "room": room, "text": word})
        for c in (a, b):
            m = await c.wait_for(lambda m, w=word: m.get("type") == "room_message" and
                                 m["comment"]["text"] == w, 5)
            ok = check(m is not None, "room %s: %s reaches the listener on host %s" % (label, word, c.host)) and ok
    return ok


async def presence(alice, dave, a):
    """dave connects on host b: alice (a recent peer, on host a) is told; both hosts answer GET /presence."""
    await a.send_message(dave, "hello dave")
    d = await WsClient("b", dave).open(sync=None)
    p = await a.wait_for(lambda m: m.get("type") == "presence" and m["user"] == dave and m["online"], 5)
    check(p is not None, "presence: dave online on host b is pushed to alice on host a")
    for h in ("a", "b"):
        st, res = await in_thread(http, h, "GET", "/presence?users=" + dave, alice)
        check(st == 200 and res["presence"][0]["online"] is True, "presence: host %s says dave is online" % h, res)
    await d.close()
    p = await a.wait_for(lambda m: m.get("type") == "presence" and m["user"] == dave and not m["online"], 5)
    check(p is not None, "presence: dave's last connection gone on host b is pushed to alice on host a")
    for h in ("a", "b"):
        st, res = await in_thread(http, h, "GET", "/presence?users=" + dave, alice)
        check(st == 200 and res["presence"][0]["online"] is False, "presence: host %s says dave is offline" % h,
              res)


async def host_identity(cl, alice, eve):
    """Hosts a and b share hostname and ws.port (ip netns gives no hostname of its own): their
    presence nodes must still differ. eve on both hosts, one connection closed: still online;
    host b's parley-ws restarted (which clears its own node's rows): eve, on host a, still online."""
    import re
    nodes = [re.findall(r"node (\S+)", cl.log(h + "-ws.log")) for h in ("a", "b")]
    check(nodes[0] and nodes[1] and nodes[0][-1] != nodes[1][-1],
          "host identity: the presence nodes of hosts a and b differ", nodes)

    async def online(label):
        for h in ("a", "b"):
            st, res = await in_thread(http, h, "GET", "/presence?users=" + eve, alice)
            check(st == 200 and res["presence"][0]["online"] is True,
                  "host identity: host %s says eve is online %s" % (h, label), res)
    ea = await WsClient("a", eve).open(sync=None)
    eb = await WsClient("b", eve).open(sync=None)
    await asyncio.sleep(0.3)
    await eb.close()
    await asyncio.sleep(0.5)            # the disconnect's presence row is gone by now
    await online("after her connection on host b closed (one left on host a)")
    await in_thread(cl.restart_ws, "b")
    await asyncio.sleep(0.3)
    await online("after host b's parley-ws restarted")
    await ea.close()


def conversations_right(pairs, sent):
    """Both hosts' GET /conversations of each pair's second user: last message and unread count."""
    out = []
    for u1, u2 in pairs:
        mine = [m for m in sent if m["pair"] == (u1, u2)]
        if not mine:
            continue
        to_u2 = sum(1 for m in mine if m["from"] == u1)
        last = max(m["id"] for m in mine)
        for h in ("a", "b"):
            st, res = http(h, "GET", "/conversations", u2)
            conv = [c for c in res.get("conversations", []) if c["with"] == u1] if st == 200 else []
            ok = st == 200 and len(conv) == 1 and conv[0]["last_message"]["id"] == last and \
                conv[0]["unread"] == to_u2
            out.append((h, u2, ok, conv[0] if conv else res, to_u2, last))
    return out


async def traffic(cl, pairs, senders, sent):
    """Every pair both ways at RATE while Redis is killed and restarted, then a memcached is killed.

    senders: per pair, (WsClient of its first user, host of the second user's HTTP sends); each
    pair sends through one host and is received on the other, so no local bus hint ever wakes a
    receiver: only the bridge (or the fallback check while Redis is down) delivers."""
    marks = {}
    stop = asyncio.Event()
    running = asyncio.Event()
    running.set()
    busy = [0]

    async def paused_check(label):
        """Stop the senders, let the sends under way finish, check /conversations, go on."""
        running.clear()
        while busy[0]:
            await asyncio.sleep(0.01)
        for h, user, good, conv, n, last in await in_thread(conversations_right, pairs, sent):
            check(good, "host %s: %s's conversation %s: last message %d, unread %d" % (h, user, label, last, n),
                  conv)
        running.set()

    async def ws_sends(pair, ws, to):
        while not stop.is_set():
            await running.wait()
            busy[0] += 1
            t = time.monotonic()
            ack = await ws.send_message(to, "w %d" % len(sent))
            sent.append({"id": ack["server_msg_id"], "from": ws.user, "t": t, "pair": pair})
            busy[0] -= 1
            await asyncio.sleep(RATE)

    async def http_sends(pair, host, frm, to):
        while not stop.is_set():
            await running.wait()
            busy[0] += 1
            t = time.monotonic()
            st, res = await in_thread(http, host, "POST", "/messages", frm,
                                      {"to": to, "content": "h %d" % len(sent), "client_msg_id": uname("c")})
            if st == 200:
                sent.append({"id": res["server_msg_id"], "from": frm, "t": t, "pair": pair})
            busy[0] -= 1
            await asyncio.sleep(RATE)

    def redis_health():
        out = {}
        for h in ("a", "b"):
            try:
                with urllib.request.urlopen("http://%s/health" % netns.HOST_IP[h], timeout=3) as r:
                    out[h] = json.loads(r.read()).get("redis")
            except Exception as e:  # noqa: BLE001
                out[h] = repr(e)
        return out

    async def redis_is(state, label, timeout):
        end = time.monotonic() + timeout
        while True:
            got = await in_thread(redis_health)
            if all(v == state for v in got.values()) or time.monotonic() > end:
                break
            await asyncio.sleep(0.1)
        check(all(v == state for v in got.values()), "/health of both hosts says redis %s %s" % (state, label), got)

    tasks = []
    for pair, (ws, host) in zip(pairs, senders):
        tasks.append(asyncio.ensure_future(ws_sends(pair, ws, pair[1])))
        tasks.append(asyncio.ensure_future(http_sends(pair, host, pair[1], pair[0])))
    await redis_is("ok", "before the kill", 0)
    await asyncio.sleep(3)
    if cl.redis_enabled:
        marks["redis_killed"] = time.monotonic()
        cl.kill("redis")
        await redis_is("down", "while it is killed", 3)
        await asyncio.sleep(max(0.0, marks["redis_killed"] + 4 - time.monotonic()))
        marks["redis_restarted"] = time.monotonic()
        await in_thread(cl.start_redis)
        await redis_is("ok", "again by itself after the restart", 5)
        await asyncio.sleep(max(0.0, marks["redis_restarted"] + 3 - time.monotonic()))
        marks["bridge_back"] = time.monotonic()
    await paused_check("before the memcached kill")
    marks["memcached_killed"] = time.monotonic()
    cl.kill("memcached1")
    await asyncio.sleep(1.5)
    await paused_check("right after the memcached kill")
    await asyncio.sleep(1.5)
    stop.set()
    await asyncio.gather(*tasks)
    await paused_check("at the end")
    return marks


def check_streams(streams, sent, marks):
    """Each acknowledged message of its pair once in every stream, seqs gap-free, delays bounded."""
    bound = FALLBACK + MARGIN
    ids_all = {m["id"]: m for m in sent}
    lat_all, lat_down = [], []
    for st, pair in streams:
        ids = {m["id"]: m for m in sent if m["pair"] == pair}
        seqs = [e[0] for e in st.events]
        gapfree = seqs == list(range(1, len(seqs) + 1))
        check(gapfree, "%s: %d events, seqs 1..%d gap-free and without repeats" % (st.name, len(seqs), len(seqs)),
              [(i + 1, s) for i, s in enumerate(seqs) if s != i + 1][:5])
        count = {}
        for seq, mid, t in st.events:
            if mid is not None:
                count[mid] = count.get(mid, 0) + 1
        missing = [m for m in ids if count.get(m, 0) == 0]
        dup = [m for m, c in count.items() if c > 1]
        check(ids and not missing and not dup,
              "%s: each of %d acknowledged messages exactly once" % (st.name, len(ids)),
              "missing %s duplicated %s" % (missing[:10], dup[:10]))
        for seq, mid, t in st.events:
            if mid in ids:
                d = t - ids[mid]["t"]
                lat_all.append(d)
                if marks.get("redis_killed", 1e18) <= ids[mid]["t"] <= marks.get("redis_restarted", 0) + 3:
                    lat_down.append(d)
    lat_all.sort()
    worst = lat_all[-1] if lat_all else None
    # Over the bridge a delivery takes milliseconds; the fallback's MySQL rechecks spread them
    # over the interval (p50 about half of it): the bridge carries them before the kill and again
    # after the restart.
    for label, lo, hi in (("before Redis was killed", 0, marks.get("redis_killed", 1e18)),
                          ("after Redis came back", marks.get("bridge_back", 1e18), 1e18)):
        xs = sorted(t - ids_all[mid]["t"] for st, pair in streams for seq, mid, t in st.events
                    if mid in ids_all and ids_all[mid]["t"] is not None and lo <= ids_all[mid]["t"] < hi)
        p50 = xs[len(xs) // 2] if xs else None
        check(xs and p50 < 0.25, "%s: %d deliveries, p50 %.3f s (the bridge, not the fallback)" %
              (label, len(xs), p50 if xs else -1))
    if "redis_killed" in marks:
        check(lat_down and max(lat_down) <= bound,
              "while Redis was down: %d deliveries, the slowest %.3f s (bound: fallback_interval %d s + %.1f s)" %
              (len(lat_down), max(lat_down) if lat_down else -1, FALLBACK, MARGIN))
    check(worst is not None and worst <= bound,
          "all %d deliveries within %.1f s (slowest %.3f s, p50 %.3f s, p99 %.3f s)" %
          (len(lat_all), bound, worst or -1, lat_all[len(lat_all) // 2] if lat_all else -1,
           lat_all[int(len(lat_all) * 0.99)] if lat_all else -1))


async def scenario(cl):
    x, y, dave = uname("x"), uname("y"), uname("dave")
    a, b = await basics(x, y)
    await rooms(a, b, uname("room"), "before the faults")
    await presence(x, dave, a)
    # Two pairs: (u1, u2) send through host a and are received on host b; (u3, u4) the reverse.
    u = [uname("u%d" % i) for i in range(1, 5)]
    pairs = [(u[0], u[1]), (u[2], u[3])]
    recv_host = {pairs[0]: "b", pairs[1]: "a"}
    send_host = {pairs[0]: "a", pairs[1]: "b"}
    streams, pollers, receivers = [], [], []
    for pair in pairs:
        for user in pair:
            w = await WsClient(recv_host[pair], user).open(sync=None)
            p = Poller(recv_host[pair], user)
            p.start()
            receivers.append(w)
            pollers.append(p)
            streams += [(w.stream, pair), (p.stream, pair)]
    senders = []
    for pair in pairs:
        senders.append((await WsClient(send_host[pair], pair[0]).open(sync=None), send_host[pair]))
    await asyncio.sleep(0.5)            # every long poll parked
    sent = []
    marks = await traffic(cl, pairs, senders, sent)
    await rooms(a, b, uname("room"), "after the Redis restart and the memcached kill")
    await asyncio.sleep(3)              # drain: the last sends reach every stream
    for p in pollers:
        p.stop.set()
    for c in receivers + [s[0] for s in senders] + [a, b]:
        await c.close()
    for p in pollers:
        await in_thread(p.join, 10)
    await host_identity(cl, x, uname("eve"))      # last: it restarts host b's parley-ws
    errors = [e for p in pollers for e in p.errors]
    check(not errors, "long polls answered 200 throughout", errors[:3])
    check(len(sent) > 100, "%d messages acknowledged during the run" % len(sent))
    check_streams(streams, sent, marks)


def main():
    try:
        netns.check_netns()
    except netns.NetnsUnavailable as e:
        print("FAIL multi-host test: network namespaces unavailable: %s" % e, flush=True)
        print("0 passed, 1 failed")
        return 1
    cl = netns.Cluster(BUILD, SRC, redis=not os.environ.get("PARLEY_MH_NO_REDIS"), fallback_interval=FALLBACK)
    t0 = time.monotonic()
    try:
        cl.start()
        check(True, "cluster up: hosts a and b, services host (%.1f s)" % (time.monotonic() - t0))
        asyncio.run(scenario(cl))
    except Exception:  # noqa: BLE001 - a crash of the scenario is a failure with its trace
        traceback.print_exc()
        check(False, "the scenario ran to its end")
    finally:
        if T.failed:
            for name in ("a-ws.log", "b-ws.log", "a-fcgi.log", "b-fcgi.log", "redis.log"):
                text = cl.log(name)
                if text:
                    print("--- %s (last lines)\n%s" % (name, "\n".join(text.splitlines()[-15:])))
        cl.close()
    print("%s (%.1f s)" % (T.summary(), time.monotonic() - t0))
    return 1 if T.failed else 0


if __name__ == "__main__":
    sys.exit(main())
