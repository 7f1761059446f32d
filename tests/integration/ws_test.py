#!/usr/bin/python3
"""ws_test.py - integration tests of parley-ws, driven by a real WebSocket client.

Run by tests/integration/test_ws.sh under tests/harness/with-services (which exports
PARLEY_TEST_CONFIG, PARLEY_TEST_DIR, PARLEY_SRCDIR, PARLEY_BUILDDIR). Starts its own parley-ws
processes on free ports with private bus directories; the client is the Debian package
python3-websockets (asyncio). Prints one line per test and "N passed, N failed" at the end.
"""
import asyncio
import base64
import configparser
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import urllib.error
import urllib.request

import websockets

import parleylib as L
from parleylib import free_port, uname

BUILD = L.BUILD
SRC = L.SRC
BASE_CONF = os.environ["PARLEY_TEST_CONFIG"]
TOP = tempfile.mkdtemp(prefix="ws-test.", dir=os.environ.get("PARLEY_TEST_DIR") or None)
SECRET = L.config_secret(BASE_CONF)


def token(sub, dev=None, exp_in=3600, alg="HS256", secret=None):
    """A token for sub; alg goes in the header (the MAC is HS256's), "none" leaves it unsigned."""
    t = L.jwt(L.claims(sub, dev, exp_in), secret or SECRET, {"alg": alg, "typ": "JWT"})
    return t.rsplit(".", 1)[0] + "." if alg == "none" else t


class Daemon:
    """One parley-ws process with its own config (base config + overrides) and port."""

    def __init__(self, name, bus=None, base=None, **ws):
        self.name = name
        self.port = free_port()
        self.dir = os.path.join(TOP, name)
        os.makedirs(self.dir, exist_ok=True)
        self.bus = bus or os.path.join(TOP, "bus")
        conf = configparser.ConfigParser(interpolation=None)
        conf.read(base or BASE_CONF)
        conf["bus"] = {"dir": self.bus}
        conf["ws"] = {"listen": "127.0.0.1", "port": str(self.port)}
        for k, v in ws.items():
            conf["ws"][k] = str(v)
        conf["log"] = {"level": "info"}
        self.conf = os.path.join(self.dir, "parley.conf")
        with open(self.conf, "w") as f:
            conf.write(f)
        self.log = open(os.path.join(self.dir, "parley-ws.log"), "ab")
        self.proc = subprocess.Popen([os.path.join(BUILD, "parley-ws"), "--config", self.conf],
                                     stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.time() + 10
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("%s exited with %s; see %s" % (name, self.proc.returncode, self.dir))
            if L.can_connect("127.0.0.1", self.port):
                break
            time.sleep(0.05)
        else:
            raise RuntimeError("%s did not listen" % name)
        self.url = "ws://127.0.0.1:%d/ws" % self.port

    def stop(self, sig=signal.SIGTERM, timeout=10):
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        return self.proc.returncode

    def metric(self, name):
        req = urllib.request.Request("http://127.0.0.1:%d/metrics" % self.port,
                                     headers={"Authorization": "Bearer " + token("metrics")})
        with urllib.request.urlopen(req, timeout=3) as r:
            for line in r.read().decode().splitlines():
                if line.startswith("parley_ws_" + name + " "):
                    return int(line.split()[1])
        return None


class Client(L.Inbox):
    """L.Inbox whose next() raises AssertionError (a failed test) when no frame came."""

    async def next(self, pred=lambda m: True, timeout=5.0):
        m = await super().next(pred, timeout)
        if m is None:
            raise AssertionError("timed out waiting for a frame; inbox: %s" % self.inbox[-5:])
        return m

    async def none(self, pred, secs):
        try:
            m = await self.next(pred, secs)
        except AssertionError:
            return
        raise AssertionError("unexpected frame: %s" % m)


async def connect(daemon, user, dev=None, how="url", sync=None, **kw):
    """Authenticated client (live from "ready"); sync=SEQ (or True: the device cursor) replays after SEQ."""
    tok = token(user, dev)
    url = daemon.url + ("?access_token=" + tok if how == "url" else "")
    ws = await websockets.connect(url, subprotocols=["parley.v1"], **kw)
    if how == "frame":
        await ws.send(json.dumps({"type": "auth", "token": tok}))
    ready = json.loads(await asyncio.wait_for(ws.recv(), 5))
    assert ready["type"] == "ready", ready
    c = Client(ws, ready)
    if sync is not None:
        await c.send({"type": "sync"} if sync is True else {"type": "sync", "after": sync})
    return c


def is_msg(cmid):
    return lambda m: m.get("type") == "new_message" and m["message"]["client_msg_id"] == cmid


def is_ack(cmid):
    return lambda m: m.get("type") == "ack" and m.get("client_msg_id") == cmid


async def send(c, to, content, cmid=None, group_id=None):
    cmid = cmid or uname("c")
    frame = {"type": "send_message", "client_msg_id": cmid, "content": content}
    if group_id:
        frame["group_id"] = group_id
    else:
        frame["to"] = to
    await c.send(frame)
    ack = await c.next(is_ack(cmid))
    return cmid, ack


async def expect_close(ws, code, timeout=5.0):
    """Read until the server closes; returns the frames seen; asserts the close code."""
    frames = []
    try:
        while True:
            frames.append(json.loads(await asyncio.wait_for(ws.recv(), timeout)))
    except websockets.ConnectionClosed as e:
        assert e.code == code, "close code %s (%s), wanted %s; frames %s" % (e.code, e.reason, code, frames)
        return frames
    except asyncio.TimeoutError:
        raise AssertionError("not closed within %ss; frames %s" % (timeout, frames))


TESTS = []


def test(fn):
    TESTS.append(fn)
    return fn


# --- auth ---------------------------------------------------------------------------------

@test
async def auth_url_token(env):
    u = uname("alice")
    c = await connect(env.a, u, dev="laptop")
    assert c.ready == {"type": "ready", "user": u, "device_id": "laptop", "last_seq": 0}, c.ready
    await c.send({"type": "ping"})
    assert (await c.next())["type"] == "pong"
    await c.close()


@test
async def auth_frame(env):
    u = uname("alice")
    c = await connect(env.a, u, how="frame")
    assert c.ready["user"] == u and c.ready["device_id"], c.ready
    # A second auth frame is a bad request, not a new identity.
    await c.send({"type": "auth", "token": token(uname("mallory"))})
    e = await c.next()
    assert e["type"] == "error" and e["code"] == "bad_request", e
    await c.close()


async def _bad_token(env, tok, in_url):
    url = env.a.url + ("?access_token=" + tok if in_url else "")
    ws = await websockets.connect(url, subprotocols=["parley.v1"])
    if not in_url:
        await ws.send(json.dumps({"type": "auth", "token": tok}))
    frames = await expect_close(ws, 1008)
    assert frames and frames[0]["type"] == "error" and frames[0]["code"] == "unauthorized", frames
    assert not any(f.get("type") == "ready" for f in frames), frames


@test
async def auth_expired(env):
    await _bad_token(env, token(uname("bob"), exp_in=-600), True)
    await _bad_token(env, token(uname("bob"), exp_in=-600), False)


@test
async def auth_wrong_signature(env):
    await _bad_token(env, token(uname("bob"), secret=b"another-secret-0123456789abcdef0123"), True)
    await _bad_token(env, token(uname("bob"), secret=b"another-secret-0123456789abcdef0123"), False)


@test
async def auth_alg_none(env):
    await _bad_token(env, token(uname("bob"), alg="none"), True)
    await _bad_token(env, token(uname("bob"), alg="none"), False)


@test
async def auth_long_url_token(env):
    # A URL token longer than any real JWT (here 2.8 KB) is read and refused at once, not taken
    # for "no token" (which would wait 10 s for an auth frame).
    head, body, sig = token(uname("bob")).split(".")
    t0 = time.monotonic()
    await _bad_token(env, head + "." + body + "A" * 2500 + "." + sig, True)
    assert time.monotonic() - t0 < 3, "refused after %.1f s" % (time.monotonic() - t0)


@test
async def auth_missing_or_not_first(env):
    for first in ({"type": "sync"}, {"type": "auth"}, "not json", {"type": "ping"}):
        ws = await websockets.connect(env.a.url, subprotocols=["parley.v1"])
        await ws.send(first if isinstance(first, str) else json.dumps(first))
        frames = await expect_close(ws, 1008)
        assert frames[0]["code"] == "unauthorized", frames


@test
async def auth_timeout(env):
    # env.lim runs with auth_timeout = 1
    ws = await websockets.connect(env.lim.url, subprotocols=["parley.v1"])
    t0 = time.monotonic()
    frames = await expect_close(ws, 1008, timeout=5)
    took = time.monotonic() - t0
    assert 0.9 <= took <= 3.5, took
    assert frames[0]["code"] == "unauthorized", frames


# --- messaging ----------------------------------------------------------------------------

@test
async def send_ack_push(env):
    alice, bob = uname("alice"), uname("bob")
    a = await connect(env.a, alice, sync=0)
    b = await connect(env.a, bob, how="frame", sync=0)
    cmid, ack = await send(a, bob, "Hi Bob")
    assert ack["status"] == "success" and ack["server_msg_id"] > 0 and ack["seq"] == 1, ack
    m = await b.next(is_msg(cmid))
    assert m["seq"] == 1 and m["message"]["id"] == ack["server_msg_id"], m
    assert m["message"]["from"] == alice and m["message"]["to"] == bob and m["message"]["content"] == "Hi Bob", m
    # The sending device also gets the event of its own log (documented in docs/websocket.md).
    echo = await a.next(is_msg(cmid))
    assert echo["seq"] == 1, echo
    # and back
    cmid2, ack2 = await send(b, alice, "Hi Alice")
    assert ack2["seq"] == 2, ack2
    m2 = await a.next(is_msg(cmid2))
    assert m2["seq"] == 2 and m2["message"]["from"] == bob, m2
    await a.close()
    await b.close()


@test
async def send_window_gathers(env):
    # ws.send_window_us: a send waits up to 60 ms for others before its group commit. Sends of
    # two clients 2 ms apart share one or two commits (without the window each would start its
    # own), every ack comes in order with the sender's seqs gap-free, the recipient gets each
    # message once in seq order, and a client_msg_id repeated in the window is answered as a
    # duplicate of the first.
    d = Daemon("window", send_window_us=60000)
    try:
        alice, carol, bob = uname("alice"), uname("carol"), uname("bob")
        a = await connect(d, alice, sync=0)
        c = await connect(d, carol, sync=0)
        b = await connect(d, bob, sync=0)
        # A lone send waits out the window before its commit starts: its ack cannot come sooner.
        t0 = time.monotonic()
        lone, ack = await send(c, bob, "alone")
        waited = time.monotonic() - t0
        assert ack["status"] == "success" and waited >= 0.05, (ack, waited)
        await b.next(is_msg(lone))
        batches = d.metric("ws_send_batches_total")
        sent = {alice: [], carol: []}
        for i in range(5):
            for who, name in ((a, alice), (c, carol)):
                cmid = uname("w")
                sent[name].append(cmid)
                await who.send({"type": "send_message", "client_msg_id": cmid, "to": bob,
                                "content": "%s %d" % (name, i)})
                await asyncio.sleep(0.002)
        await a.send({"type": "send_message", "client_msg_id": sent[alice][0], "to": bob,
                      "content": "%s 0" % alice})
        first = {}
        for who, name, seq0 in ((a, alice, 1), (c, carol, 2)):
            acks = [await who.next(is_ack(cmid)) for cmid in sent[name]]
            assert all(k["status"] == "success" and not k.get("duplicate") for k in acks), acks
            assert [k["seq"] for k in acks] == list(range(seq0, seq0 + 5)), acks
            first[name] = acks[0]
        dup = await a.next(lambda m: m.get("type") == "ack" and m.get("duplicate"))
        assert dup["client_msg_id"] == sent[alice][0] and dup["status"] == "success", dup
        assert dup["server_msg_id"] == first[alice]["server_msg_id"], (dup, first)
        got = [await b.next(lambda m: m.get("type") == "new_message") for _ in range(10)]
        assert [g["seq"] for g in got] == list(range(2, 12)), got
        for name in (alice, carol):
            mine = [g["message"]["client_msg_id"] for g in got if g["message"]["from"] == name]
            assert mine == sent[name], (name, mine, sent[name])
        await b.none(lambda m: m.get("type") == "new_message", 0.3)
        commits = d.metric("ws_send_batches_total") - batches
        assert 1 <= commits <= 3, "11 sends in %d group commits" % commits
        for x in (a, b, c):
            await x.close()
    finally:
        assert d.stop() == 0, "parley-ws with a send window did not stop cleanly"


@test
async def same_user_two_devices(env):
    alice, bob = uname("alice"), uname("bob")
    a1 = await connect(env.a, alice, dev="phone", sync=0)
    a2 = await connect(env.a, alice, dev="laptop", sync=0)
    b1 = await connect(env.a, bob, dev="phone", sync=0)
    b2 = await connect(env.a, bob, dev="laptop", sync=0)
    cmid, ack = await send(a1, bob, "to both of your devices")
    for c in (b1, b2, a2, a1):
        m = await c.next(is_msg(cmid))
        assert m["message"]["id"] == ack["server_msg_id"], m
    for c in (a1, a2, b1, b2):
        await c.none(is_msg(cmid), 0.3)
        await c.close()


@test
async def offline_sync_exactly_once(env):
    alice, bob = uname("alice"), uname("bob")
    a = await connect(env.a, alice, sync=0)
    b = await connect(env.a, bob, dev="tablet", sync=0)
    first, _ = await send(a, bob, "before going offline")
    m = await b.next(is_msg(first))
    last_seen = m["seq"]
    await b.close()
    missed = []
    for i in range(5):
        cmid, _ = await send(a, bob, "missed %d" % i)
        missed.append(cmid)
    b = await connect(env.a, bob, dev="tablet", sync=last_seen)
    got = [await b.next(lambda m: m.get("type") == "new_message") for _ in missed]
    assert [g["message"]["client_msg_id"] for g in got] == missed, got
    assert [g["seq"] for g in got] == list(range(last_seen + 1, last_seen + 6)), got
    live, _ = await send(a, bob, "live again")
    m = await b.next(lambda m: m.get("type") == "new_message")
    assert m["message"]["client_msg_id"] == live, m
    await b.none(lambda m: m.get("type") == "new_message", 0.5)
    await b.close()
    # ready.last_seq is the device cursor the sync stored; sync without "after" starts there.
    b = await connect(env.a, bob, dev="tablet", sync=True)
    assert b.ready["last_seq"] == last_seen, b.ready
    got = [await b.next(lambda m: m.get("type") == "new_message") for _ in range(6)]
    assert [g["message"]["client_msg_id"] for g in got] == missed + [live], got
    await b.none(lambda m: m.get("type") == "new_message", 0.3)
    await a.close()
    await b.close()


@test
async def live_without_sync(env):
    # "ready" received: new events are pushed, no sync needed.
    alice, bob = uname("alice"), uname("bob")
    b = await connect(env.a, bob, dev="nosync")
    a = await connect(env.b, alice)
    cmid, ack = await send(a, bob, "pushed without a sync")
    m = await b.next(is_msg(cmid))
    assert m["seq"] == 1 and m["message"]["id"] == ack["server_msg_id"], m
    # The sender's own connection (also never synced) gets its log's event too.
    echo = await a.next(is_msg(cmid))
    assert echo["seq"] == ack["seq"], echo
    cmid2, _ = await send(a, bob, "and the next one")
    m2 = await b.next(is_msg(cmid2))
    assert m2["seq"] == 2, m2
    await b.none(lambda m: m.get("type") == "new_message", 0.3)
    for c in (a, b):
        await c.close()


@test
async def offline_replayed_only_by_sync(env):
    # Events from before the connection are not pushed by themselves; sync after=0 replays them
    # exactly once, and the live stream goes on after the replay without a gap or a duplicate.
    alice, bob = uname("alice"), uname("bob")
    a = await connect(env.a, alice)
    offline = [(await send(a, bob, "offline %d" % i))[0] for i in range(3)]
    b = await connect(env.a, bob, dev="later")
    assert b.ready["last_seq"] == 0, b.ready
    await b.none(lambda m: m.get("type") == "new_message", 0.5)
    live1, _ = await send(a, bob, "live before the sync")
    m = await b.next(lambda m: m.get("type") == "new_message")
    assert m["message"]["client_msg_id"] == live1 and m["seq"] == 4, m
    await b.send({"type": "sync", "after": 0})
    got = [await b.next(lambda m: m.get("type") == "new_message") for _ in range(4)]
    assert [g["message"]["client_msg_id"] for g in got] == offline + [live1], got
    assert [g["seq"] for g in got] == [1, 2, 3, 4], got
    live2, _ = await send(a, bob, "live after the sync")
    m = await b.next(lambda m: m.get("type") == "new_message")
    assert m["message"]["client_msg_id"] == live2 and m["seq"] == 5, m
    await b.none(lambda m: m.get("type") == "new_message", 0.5)
    # The sync stored after=0 as the device cursor.
    await b.close()
    b = await connect(env.a, bob, dev="later")
    assert b.ready["last_seq"] == 0, b.ready
    await b.none(lambda m: m.get("type") == "new_message", 0.3)
    for c in (a, b):
        await c.close()


@test
async def sync_after_beyond_newest(env):
    # An after past the user's newest seq is taken as the newest seq: the connection stays live
    # and the stored cursor does not skip the events still to come.
    alice, bob = uname("alice"), uname("bob")
    a = await connect(env.a, alice)
    for i in range(3):
        await send(a, bob, "before %d" % i)
    b = await connect(env.a, bob, dev="ahead")
    await b.send({"type": "sync", "after": 100})
    await b.none(lambda m: m.get("type") == "new_message", 0.5)
    live, _ = await send(a, bob, "after the sync")
    m = await b.next(is_msg(live))
    assert m["seq"] == 4, m
    await b.close()
    b = await connect(env.a, bob, dev="ahead", sync=True)
    assert b.ready["last_seq"] == 3, b.ready
    m = await b.next(lambda m: m.get("type") == "new_message")
    assert m["message"]["client_msg_id"] == live and m["seq"] == 4, m
    await b.none(lambda m: m.get("type") == "new_message", 0.3)
    for c in (a, b):
        await c.close()


@test
async def burst_live_in_order(env):
    # Many senders' messages to one recipient, committed in shared batches: each arrives once,
    # in seq order, and every sender's acks come in its own order.
    bob = uname("bob")
    b = await connect(env.a, bob)
    senders = [await connect(env.a if i % 2 else env.b, uname("s%d" % i)) for i in range(8)]
    cmids = {}
    for i, c in enumerate(senders):
        cmids[i] = [uname("burst") for _ in range(15)]
        for cmid in cmids[i]:
            await c.send({"type": "send_message", "client_msg_id": cmid, "to": bob, "content": "burst"})
    for i, c in enumerate(senders):
        acks = [await c.next(lambda m: m.get("type") == "ack", 10) for _ in cmids[i]]
        assert [x["client_msg_id"] for x in acks] == cmids[i], acks
        assert all(x["status"] == "success" for x in acks), acks
    total = sum(len(v) for v in cmids.values())
    got = [await b.next(lambda m: m.get("type") == "new_message", 10) for _ in range(total)]
    assert [g["seq"] for g in got] == list(range(1, total + 1)), [g["seq"] for g in got]
    assert sorted(g["message"]["client_msg_id"] for g in got) == sorted(x for v in cmids.values() for x in v)
    await b.none(lambda m: m.get("type") == "new_message", 0.3)
    for c in senders + [b]:
        await c.close()


@test
async def burst_frame_sizes(env):
    # Queued frames leave in one write, framed by the daemon (loop_write_burst): pipelined sends
    # whose acks and own copies pile up, with contents across the frame header's size classes
    # (7-bit and 16-bit lengths, and 4-byte UTF-8), arrive whole, in order, each exactly once.
    alice, bob = uname("alice"), uname("bob")
    a = await connect(env.a, alice)
    b = await connect(env.a, bob)
    sizes = [0, 1, 40, 60, 100, 119, 120, 125, 126, 127, 200, 1000, 3999, 4000]
    contents = ["x" * n if n else "." for n in sizes] + ["\U0001F600" * 4000, "\u00e9" * 4000]
    cmids = [uname("fs") for _ in contents]
    for cmid, content in zip(cmids, contents):
        await a.send({"type": "send_message", "client_msg_id": cmid, "to": bob, "content": content})
    acks = [await a.next(lambda m: m.get("type") == "ack", 10) for _ in cmids]
    assert [x["client_msg_id"] for x in acks] == cmids, acks
    assert all(x["status"] == "success" for x in acks), acks
    for c in (a, b):
        got = [await c.next(lambda m: m.get("type") == "new_message", 10) for _ in cmids]
        assert [g["message"]["client_msg_id"] for g in got] == cmids, [g["message"]["client_msg_id"] for g in got]
        assert [g["message"]["content"] for g in got] == contents, "contents differ"
        await c.none(lambda m: m.get("type") == "new_message", 0.3)
    await a.close()
    await b.close()


@test
async def send_backpressure(env):
    # A client that pipelines far more sends than the send queue holds (actor.mailbox 4 here) is
    # slowed down, not refused: every send is acked success, in order, and delivered once.
    conf = configparser.ConfigParser(interpolation=None)
    conf.read(BASE_CONF)
    conf["actor"] = {"mailbox": "4", "workers": "2"}
    base = os.path.join(TOP, "bp-base.conf")
    with open(base, "w") as f:
        conf.write(f)
    d = Daemon("bp", base=base, bus=os.path.join(TOP, "bus-bp"))
    try:
        alice, bob = uname("alice"), uname("bob")
        a = await connect(d, alice)
        b = await connect(d, bob)
        cmids = [uname("bp") for _ in range(300)]
        for i, cmid in enumerate(cmids):
            await a.send({"type": "send_message", "client_msg_id": cmid, "to": bob, "content": "n%d" % i})
        acks = [await a.next(lambda m: m.get("type") == "ack", 30) for _ in cmids]
        assert [x["client_msg_id"] for x in acks] == cmids, [x["client_msg_id"] for x in acks][:20]
        bad = [x for x in acks if x["status"] != "success"]
        assert not bad, bad[:3]
        assert len({x["server_msg_id"] for x in acks}) == len(cmids)
        got = [await b.next(lambda m: m.get("type") == "new_message", 10) for _ in cmids]
        assert [g["message"]["content"] for g in got] == ["n%d" % i for i in range(len(cmids))]
        await b.none(lambda m: m.get("type") == "new_message", 0.3)
        # Still responsive once the backlog is gone.
        await a.send({"type": "ping"})
        await a.next(lambda m: m.get("type") == "pong", 5)
        await a.close()
        await b.close()
    finally:
        assert d.stop() == 0, "parley-ws exited badly at SIGTERM"


@test
async def sync_replay_paged(env):
    # More events than a page (200) and far more than the queue (env.slow: 64 frames): the replay
    # is paced by the reader, complete, in order, and never cut off as slow.
    alice, bob = uname("alice"), uname("bob")
    a = await connect(env.slow, alice)
    cmids = [uname("bulk") for _ in range(450)]
    for i in range(0, len(cmids), 25):
        for cmid in cmids[i:i + 25]:
            await a.send({"type": "send_message", "client_msg_id": cmid, "to": bob, "content": "bulk " + cmid})
        for cmid in cmids[i:i + 25]:
            ack = await a.next(is_ack(cmid), 20)
            assert ack["status"] == "success", ack
        a.inbox.clear()
    b = await connect(env.slow, bob, sync=0)
    got = []
    while len(got) < len(cmids):
        m = await b.next(lambda m: m.get("type") == "new_message", 10)
        got.append(m)
        if len(got) == 10:
            await asyncio.sleep(1.5)   # a pause: the queue fills, the daemon waits
    assert [g["message"]["client_msg_id"] for g in got] == cmids
    assert [g["seq"] for g in got] == list(range(1, len(cmids) + 1))
    await b.none(lambda m: m.get("type") == "new_message", 0.3)
    await a.close()
    await b.close()


@test
async def idempotent_retry(env):
    alice, bob = uname("alice"), uname("bob")
    a = await connect(env.a, alice, sync=0)
    b = await connect(env.a, bob, sync=0)
    cmid = uname("retry")
    _, ack1 = await send(a, bob, "once", cmid=cmid)
    _, ack2 = await send(a, bob, "once", cmid=cmid)
    assert ack1["status"] == ack2["status"] == "success", (ack1, ack2)
    assert ack1["server_msg_id"] == ack2["server_msg_id"] and ack1["seq"] == ack2["seq"], (ack1, ack2)
    # The retry says so, as HTTP's answer does.
    assert ack1["duplicate"] is False and ack2["duplicate"] is True, (ack1, ack2)
    # The retry over a new connection (a reconnecting client) too.
    a2 = await connect(env.b, alice)
    await a2.send({"type": "send_message", "to": bob, "content": "once", "client_msg_id": cmid})
    ack3 = await a2.next(is_ack(cmid))
    assert ack3["server_msg_id"] == ack1["server_msg_id"] and ack3["duplicate"] is True, ack3
    await b.next(is_msg(cmid))
    await b.none(is_msg(cmid), 0.7)
    for c in (a, a2, b):
        await c.close()


@test
async def send_errors_and_bad_frames(env):
    alice = uname("alice")
    a = await connect(env.a, alice, sync=0)
    cases = [
        ("{not json", "json"),
        (json.dumps({"type": "teleport"}), "type"),
        (json.dumps({"no_type": 1}), "type"),
        (json.dumps({"type": "delivered", "message_id": "x"}), "message_id"),
        (json.dumps({"type": "join_room", "room": "bad room!"}), "room"),
        (json.dumps([1, 2]), "json"),
    ]
    for raw, field in cases:
        await a.send(raw)
        e = await a.next()
        assert e["type"] == "error" and e["code"] == "bad_request" and field in e["message"], (raw, e)
    # A send_message with a bad field gets an ack with status error naming it.
    cmid = uname("bad")
    await a.send({"type": "send_message", "client_msg_id": cmid, "to": uname("bob"), "content": "   "})
    ack = await a.next(is_ack(cmid))
    assert ack["status"] == "error" and ack["error"]["code"] == "bad_request" and "content" in ack["error"]["message"], ack
    # Not a member of the group: forbidden / not found, as an ack error.
    cmid = uname("grp")
    await a.send({"type": "send_message", "client_msg_id": cmid, "group_id": 999999999, "content": "x"})
    ack = await a.next(is_ack(cmid))
    assert ack["status"] == "error" and ack["error"]["code"] in ("forbidden", "not_found"), ack
    # Binary frames are refused, the connection stays.
    await a.send(b"\x00\x01")
    e = await a.next()
    assert e["type"] == "error" and e["code"] == "bad_request", e
    await a.send({"type": "ping"})
    assert (await a.next())["type"] == "pong"
    await a.close()


@test
async def oversized_frame(env):
    a = await connect(env.a, uname("alice"), sync=0, max_size=None)
    other = await connect(env.a, uname("carol"))
    await a.send("x" * (64 * 1024 + 1))
    frames = await expect_close(a.ws, 1009)
    assert frames and frames[-1]["code"] == "payload_too_large", frames
    # Exactly 64 KiB is taken (and is bad JSON, so it gets an ordinary error).
    b = await connect(env.a, uname("alice"), max_size=None)
    await b.send(" " * (64 * 1024))
    e = await b.next()
    assert e["code"] == "bad_request", e
    # Fragmented messages count as a whole.
    await b.ws.send(iter(["x" * 65000, "x" * 1000]))
    frames = await expect_close(b.ws, 1009)
    assert frames[-1]["code"] == "payload_too_large", frames
    await other.send({"type": "ping"})
    assert (await other.next())["type"] == "pong"
    await other.close()


@test
async def fragmented_message(env):
    alice, bob = uname("alice"), uname("bob")
    a = await connect(env.a, alice, sync=0)
    b = await connect(env.a, bob, sync=0)
    cmid = uname("frag")
    text = json.dumps({"type": "send_message", "client_msg_id": cmid, "to": bob, "content": "é" * 3000})
    await a.ws.send(iter([text[:1000], text[1000:5000], text[5000:]]))
    ack = await a.next(is_ack(cmid))
    assert ack["status"] == "success", ack
    m = await b.next(is_msg(cmid))
    assert m["message"]["content"] == "é" * 3000
    await a.close()
    await b.close()


@test
async def typing_receipts_presence(env):
    alice, bob = uname("alice"), uname("bob")
    a = await connect(env.a, alice, sync=0)
    b = await connect(env.a, bob, sync=0)
    cmid, ack = await send(a, bob, "read me")
    await b.next(is_msg(cmid))
    await b.send({"type": "typing", "to": alice})
    t = await a.next(lambda m: m.get("type") == "typing")
    assert t == {"type": "typing", "from": bob, "to": alice}, t
    await b.send({"type": "read", "message_id": ack["server_msg_id"]})
    st = await a.next(lambda m: m.get("type") == "message_status")
    assert st["message_id"] == ack["server_msg_id"] and st["status"] == "read" and st["by"] == bob, st
    assert st["seq"] > ack["seq"], st
    # A receipt for a message that does not exist gets an error frame.
    await b.send({"type": "delivered", "message_id": 987654321987})
    e = await b.next(lambda m: m.get("type") == "error")
    assert e["code"] == "not_found", e
    # Presence: bob's last connection goes, alice (a recent peer) is told; bob comes back.
    await b.close()
    p = await a.next(lambda m: m.get("type") == "presence", 5)
    assert p["user"] == bob and p["online"] is False and p["last_seen"], p
    b = await connect(env.b, bob)
    p = await a.next(lambda m: m.get("type") == "presence", 5)
    assert p["user"] == bob and p["online"] is True, p
    await a.close()
    await b.close()


@test
async def rooms(env):
    alice, bob, room = uname("alice"), uname("bob"), uname("room")
    a = await connect(env.a, alice)
    b = await connect(env.b, bob)
    await b.send({"type": "join_room", "room": room})
    await a.send({"type": "join_room", "room": room})
    await asyncio.sleep(0.1)
    await a.send({"type": "room_message", "room": room, "text": "  hello room  "})
    for c in (a, b):
        m = await c.next(lambda m: m.get("type") == "room_message")
        assert m["room"] == room and m["comment"]["user"] == alice and m["comment"]["text"] == "hello room", m
    await b.send({"type": "leave_room", "room": room})
    await asyncio.sleep(0.1)
    await a.send({"type": "room_message", "room": room, "text": "bob left"})
    await a.next(lambda m: m.get("type") == "room_message")
    await b.none(lambda m: m.get("type") == "room_message", 0.5)
    await a.send({"type": "room_message", "room": room, "text": "x" * 501})
    e = await a.next(lambda m: m.get("type") == "error")
    assert e["code"] == "bad_request" and "text" in e["message"], e
    # At most 10 comments per second per user: the burst's excess gets rate_limited errors.
    await asyncio.sleep(1.1)
    for i in range(40):
        await a.send({"type": "room_message", "room": room, "text": "burst %d" % i})
    e = await a.next(lambda m: m.get("type") == "error", 5)
    assert e["code"] == "rate_limited", e
    await a.close()
    await b.close()


@test
async def room_rate_limit_edge(env):
    # Exactly limits.room_rate_per_sec (10) comments of a burst go out; each one beyond gets a
    # rate_limited error frame. Bad room names are bad_request naming "room".
    alice, bob, room = uname("alice"), uname("bob"), uname("room")
    a = await connect(env.a, alice)
    b = await connect(env.b, bob)
    await b.send({"type": "join_room", "room": room})
    await b.send({"type": "ping"})
    await b.next(lambda m: m.get("type") == "pong")
    for i in range(12):
        await a.send({"type": "room_message", "room": room, "text": "r%d" % i})
    errs = [await a.next(lambda m: m.get("type") == "error", 5) for _ in range(2)]
    assert all(e["code"] == "rate_limited" for e in errs), errs
    got = [await b.next(lambda m: m.get("type") == "room_message", 5) for _ in range(10)]
    assert [g["comment"]["text"] for g in got] == ["r%d" % i for i in range(10)], got
    assert set(got[0]) == {"type", "room", "comment"} and set(got[0]["comment"]) == {"id", "user", "text", "ts"}, got[0]
    await b.none(lambda m: m.get("type") == "room_message", 0.5)
    await a.none(lambda m: m.get("type") == "error", 0.3)
    for bad in ("", "a b", "x" * 65, 7):
        await a.send({"type": "join_room", "room": bad})
        e = await a.next(lambda m: m.get("type") == "error")
        assert e["code"] == "bad_request" and e["message"].startswith("room"), (bad, e)
    await a.send({"type": "leave_room", "room": uname("never")})
    await a.send({"type": "ping"})
    assert (await a.next())["type"] == "pong"
    await a.close()
    await b.close()


@test
async def pipelined_before_ready(env):
    # auth, sync and a send in one burst: "ready" still comes first and nothing is lost.
    alice, bob = uname("alice"), uname("bob")
    b = await connect(env.a, bob, sync=0)
    ws = await websockets.connect(env.a.url, subprotocols=["parley.v1"])
    cmid = uname("pipe")
    await ws.send(json.dumps({"type": "auth", "token": token(alice, "pipe-dev")}))
    await ws.send(json.dumps({"type": "sync", "after": 0}))
    await ws.send(json.dumps({"type": "send_message", "to": bob, "content": "fast", "client_msg_id": cmid}))
    await ws.send(json.dumps({"type": "ping"}))
    a = Client(ws)
    first = await a.next()
    assert first["type"] == "ready" and first["device_id"] == "pipe-dev", first
    ack = await a.next(is_ack(cmid))
    assert ack["status"] == "success", ack
    await a.next(lambda m: m.get("type") == "pong")
    await a.next(is_msg(cmid))
    await b.next(is_msg(cmid))
    await a.close()
    await b.close()


@test
async def idle_half_open_closed(env):
    # A raw client that completes the upgrade and then never answers pings (env.lim: ping 1 s, idle 2 s).
    before = env.lim.metric("ws_idle_closed_total")
    sock = socket.create_connection(("127.0.0.1", env.lim.port), 5)
    sock.sendall(("GET /ws?access_token=%s HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                  "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                  "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: parley.v1\r\n\r\n"
                  % token(uname("idle"))).encode())
    t0 = time.monotonic()
    data = b""

    def drain():
        nonlocal data
        sock.settimeout(8)
        while True:
            try:
                chunk = sock.recv(4096)
            except (socket.timeout, ConnectionResetError):
                return
            if not chunk:
                return
            data += chunk
    await asyncio.get_running_loop().run_in_executor(None, drain)
    took = time.monotonic() - t0
    sock.close()
    assert data.startswith(b"HTTP/1.1 101"), data[:80]
    assert b'"type":"ready"' in data, data
    assert b"\x89\x01p" in data, "no ping seen: %r" % data[-40:]
    assert 1.5 <= took <= 6.5, took
    assert env.lim.metric("ws_idle_closed_total") == before + 1


@test
async def invalid_utf8_closes_1007(env):
    # A raw client: python-websockets cannot send a text frame that is not UTF-8.
    u = uname("raw")
    sock = socket.create_connection(("127.0.0.1", env.a.port), 5)
    sock.sendall(("GET /ws?access_token=%s HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                  "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                  "Sec-WebSocket-Version: 13\r\n\r\n" % token(u)).encode())
    data = b""

    def until_ready():
        # The bad frame goes only after "ready": sent with the upgrade, it could be parsed (and
        # the socket closed 1007) before the authentication finished, with no "ready" at all.
        nonlocal data
        sock.settimeout(10)
        while b'"type":"ready"' not in data:
            chunk = sock.recv(4096)
            if not chunk:
                return
            data += chunk
    await asyncio.get_running_loop().run_in_executor(None, until_ready)
    assert b'"type":"ready"' in data, data
    payload = b'{"type":"ping","x":"\xff\xfe"}'
    sock.sendall(bytes([0x81, 0x80 | len(payload), 0, 0, 0, 0]) + payload)
    after_ready = len(data)

    def drain():
        # Until the close frame (the server then waits for ours: do not wait for EOF).
        nonlocal data
        sock.settimeout(5)
        while b"\x88" not in data[after_ready:] or b"\x03\xef" not in data[after_ready:]:
            try:
                chunk = sock.recv(4096)
            except (socket.timeout, ConnectionResetError):
                return
            if not chunk:
                return
            data += chunk
    await asyncio.get_running_loop().run_in_executor(None, drain)
    sock.close()
    assert b'"type":"ready"' in data, data
    assert b"\x88" in data[after_ready:] and b"\x03\xef" in data[after_ready:], "no close 1007: %r" % data[-60:]
    assert b'"type":"pong"' not in data, data


# --- limits -------------------------------------------------------------------------------

@test
async def max_connections_503(env):
    # env.lim allows 4 connections; the auth_timeout test's socket is gone by now.
    held = []
    for _ in range(4):
        held.append(await connect(env.lim, uname("u")))
    try:
        await websockets.connect(env.lim.url + "?access_token=" + token(uname("u")), subprotocols=["parley.v1"])
        raise AssertionError("a fifth connection was accepted")
    except websockets.InvalidStatusCode as e:
        assert e.status_code == 503, e.status_code
    await held[0].close()
    await asyncio.sleep(0.2)
    held[0] = await connect(env.lim, uname("u"))
    for c in held:
        await c.close()


@test
async def origin_and_path(env):
    u = uname("u")
    url = env.org.url + "?access_token=" + token(u)
    c = await websockets.connect(url, subprotocols=["parley.v1"], origin="https://chat.example")
    assert json.loads(await c.recv())["type"] == "ready"
    await c.close()
    try:
        await websockets.connect(url, subprotocols=["parley.v1"], origin="https://evil.example")
        raise AssertionError("a foreign origin was accepted")
    except websockets.InvalidStatusCode as e:
        assert e.status_code == 403, e.status_code
    try:
        await websockets.connect("ws://127.0.0.1:%d/other" % env.org.port, subprotocols=["parley.v1"])
        raise AssertionError("a path other than /ws was upgraded")
    except websockets.InvalidStatusCode as e:
        assert e.status_code == 404, e.status_code


@test
async def subprotocol_and_path_variants(env):
    # parley.v1 is chosen among others; no Sec-WebSocket-Protocol is served the same protocol;
    # only foreign subprotocols are refused in the handshake (no 101, no ready). /ws/ is /ws.
    u = uname("u")
    url = env.a.url + "?access_token=" + token(u, "sp")
    ws = await websockets.connect(url, subprotocols=["chat", "parley.v1"])
    assert ws.subprotocol == "parley.v1", ws.subprotocol
    assert json.loads(await ws.recv()) == {"type": "ready", "user": u, "device_id": "sp", "last_seq": 0}
    await ws.close()
    ws = await websockets.connect(url)
    assert ws.subprotocol is None, ws.subprotocol
    assert json.loads(await ws.recv())["type"] == "ready"
    await ws.close()
    ws = await websockets.connect(env.a.url + "/?access_token=" + token(u), subprotocols=["parley.v1"])
    assert json.loads(await ws.recv())["type"] == "ready"
    await ws.close()
    try:
        ws = await websockets.connect(url, subprotocols=["chat"])
        raise AssertionError("a foreign subprotocol was accepted: %s" % ws.subprotocol)
    except (websockets.InvalidHandshake, OSError, EOFError):
        pass
    try:
        urllib.request.urlopen("http://127.0.0.1:%d/ws" % env.a.port, timeout=3)
        raise AssertionError("plain GET /ws answered 2xx")
    except urllib.error.HTTPError as e:
        assert e.code == 404, e.code


@test
async def slow_reader_cut_off(env):
    alice, slow, fast = uname("alice"), uname("slow"), uname("fast")
    a = await connect(env.slow, alice, sync=0)
    f = await connect(env.slow, fast, sync=0)
    # A client that never reads, with a tiny receive buffer so the kernel holds little for it.
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", env.slow.port))
    s = await connect(env.slow, slow, sock=sock, max_queue=1, read_limit=4096)
    await s.send({"type": "sync", "after": 0})
    s.ws.transport.pause_reading()
    before = env.slow.metric("ws_slow_closed_total")
    content = "y" * 3900
    sent = 0
    t_end = time.monotonic() + 25
    while time.monotonic() < t_end:
        cmids = [uname("flood") for _ in range(50)]
        for cmid in cmids:
            await a.send({"type": "send_message", "client_msg_id": cmid, "to": slow, "content": content})
        for cmid in cmids:
            await a.next(is_ack(cmid), 10)
        a.inbox.clear()
        sent += len(cmids)
        if env.slow.metric("ws_slow_closed_total") > before:
            break
    assert env.slow.metric("ws_slow_closed_total") == before + 1, "slow reader not cut off after %d messages" % sent
    # Everyone else is unaffected: a message to the fast reader still arrives at once.
    t0 = time.monotonic()
    cmid, _ = await send(a, fast, "still fast")
    await f.next(is_msg(cmid), 3)
    assert time.monotonic() - t0 < 1.0
    s.ws.transport.resume_reading()
    try:
        while True:
            await asyncio.wait_for(s.ws.recv(), 5)
    except websockets.ConnectionClosed:
        pass
    for c in (a, f):
        await c.close()


@test
async def frame_over_queue_closes_1008(env):
    # A frame bigger than the whole outbound queue (ws.queue_bytes = 1024 here) cuts its client
    # off with a close frame 1008, also when its queue was empty and nothing was being written: a
    # room comment of 500 three-byte characters from another daemon, pushed in the loop's drain.
    d = Daemon("tinyq", queue_bytes=1024)
    try:
        room = uname("room")
        a = await connect(env.a, uname("alice"), sync=0)
        b = await connect(d, uname("bob"), sync=0)
        for c in (a, b):
            await c.send({"type": "join_room", "room": room})
            await c.send({"type": "ping"})
            await c.next(lambda m: m.get("type") == "pong")
        await a.send({"type": "room_message", "room": room, "text": "\u20ac" * 500})
        m = await a.next(lambda m: m.get("type") == "room_message")
        assert m["comment"]["text"] == "\u20ac" * 500, m
        code = None
        try:
            while True:
                await asyncio.wait_for(b.ws.recv(), 5)
        except websockets.ConnectionClosed as e:
            code = e.code
        assert code == 1008, "closed with %s, not 1008 (slow consumer)" % code
        await a.close()
    finally:
        assert d.stop() == 0, "parley-ws with a 1 KiB queue did not stop cleanly"


@test
async def room_slow_listener_cut_off(env):
    # One room frame shared by every listener: a listener that stops reading is cut off by its
    # own queue's limit (env.slow: 64 frames) and the room goes on; the fast listeners all get the
    # same comments, each one whole, and a comment after the cut-off reaches them at once.
    room = uname("room")
    posters = [await connect(env.slow, uname("poster"), sync=0) for _ in range(40)]
    fast = [await connect(env.slow, uname("fast"), sync=0) for _ in range(3)]
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", env.slow.port))
    s = await connect(env.slow, uname("slow"), sock=sock, max_queue=1, read_limit=4096)
    for c in fast + [s]:
        await c.send({"type": "join_room", "room": room})
        await c.send({"type": "ping"})
        await c.next(lambda m: m.get("type") == "pong")
    s.ws.transport.pause_reading()
    before = env.slow.metric("ws_slow_closed_total")
    text = "z" * 490
    posted = 0
    t_end = time.monotonic() + 30
    while time.monotonic() < t_end and env.slow.metric("ws_slow_closed_total") == before:
        # About 9 comments per poster per second, under the limit of 10 (a comment the server
        # takes late may still be refused: those are simply not delivered).
        for p in posters:
            await p.send({"type": "room_message", "room": room, "text": "%s %d" % (text, posted)})
            posted += 1
        await asyncio.sleep(0.11)
    assert env.slow.metric("ws_slow_closed_total") == before + 1, "slow listener not cut off after %d comments" % posted
    seen = []
    for f in fast:
        got = {}
        while True:
            try:
                m = await f.next(lambda m: m.get("type") == "room_message", 1.0)
            except AssertionError:
                break
            assert m["comment"]["text"].startswith(text + " "), "a comment was cut"
            assert m["comment"]["id"] not in got, "a comment came twice"
            got[m["comment"]["id"]] = m["comment"]["text"]
        seen.append(got)
    assert len(seen[0]) > posted // 2, "%d of %d comments delivered" % (len(seen[0]), posted)
    assert all(g == seen[0] for g in seen), "the fast listeners got different comments"
    # The room goes on at once for the others.
    late = await connect(env.slow, uname("late"), sync=0)
    t0 = time.monotonic()
    await late.send({"type": "room_message", "room": room, "text": "after the cut"})
    for f in fast:
        m = await f.next(lambda m: m.get("type") == "room_message", 3)
        assert m["comment"]["text"] == "after the cut", m
    assert time.monotonic() - t0 < 1.0
    s.ws.transport.resume_reading()
    try:
        while True:
            await asyncio.wait_for(s.ws.recv(), 5)
    except websockets.ConnectionClosed:
        pass
    for c in posters + fast + [late]:
        await c.close()


# --- across processes and transports ---------------------------------------------------------

@test
async def two_processes(env):
    alice, bob = uname("alice"), uname("bob")
    a = await connect(env.a, alice, sync=0)
    b = await connect(env.b, bob, sync=0)
    b2 = await connect(env.a, bob, sync=0)
    cmid, ack = await send(a, bob, "across processes")
    for c in (b, b2):
        m = await c.next(is_msg(cmid))
        assert m["message"]["id"] == ack["server_msg_id"], m
    cmid, _ = await send(b, alice, "and back")
    await a.next(is_msg(cmid))
    for c in (a, b, b2):
        await c.close()


@test
async def lost_hint_gap_filled(env):
    # env.iso has a bus of its own: its sends reach MySQL but no hint reaches env.a.
    alice, bob = uname("alice"), uname("bob")
    b = await connect(env.a, bob, sync=0)
    a = await connect(env.a, alice)
    # Once a first message has arrived, bob's replay is over and he is live.
    first, _ = await send(a, bob, "warm-up")
    await b.next(is_msg(first))
    ai = await connect(env.iso, alice)
    lost, _ = await send(ai, bob, "hint lost")
    await b.none(is_msg(lost), 0.7)
    later, _ = await send(a, bob, "hint arrives")
    m1 = await b.next(lambda m: m.get("type") == "new_message")
    m2 = await b.next(lambda m: m.get("type") == "new_message")
    assert (m1["message"]["client_msg_id"], m2["message"]["client_msg_id"]) == (lost, later), (m1, m2)
    assert m2["seq"] == m1["seq"] + 1, (m1, m2)
    await b.none(lambda m: m.get("type") == "new_message", 0.3)
    for c in (a, ai, b):
        await c.close()


@test
async def lost_hint_marker_resyncs(env):
    # Another process on the bus drops the hint of its commit for bob (its backlog for the
    # stopped daemon is full): the BUS_LOST record that follows the kept hints makes the daemon
    # re-read bob's log, although no later event for bob ever comes.
    d = Daemon("lostd", bus=os.path.join(TOP, "bus-lost"))
    probe = None
    try:
        alice, bob = uname("alice"), uname("bob")
        b = await connect(d, bob)
        cmid = uname("c")
        lost0 = d.metric("bus_lost_total")
        d.proc.send_signal(signal.SIGSTOP)
        try:
            probe = subprocess.Popen([os.path.join(BUILD, "tests", "busprobe"), d.bus, "lose", d.conf,
                                      "40000", alice, bob, "hint lost", cmid],
                                     stdout=subprocess.PIPE, text=True)
            line = probe.stdout.readline().strip()
        finally:
            d.proc.send_signal(signal.SIGCONT)
        assert re.match(r"dropped=[1-9]\d* id=\d+$", line), line
        await b.next(is_msg(cmid), timeout=10)
        assert d.metric("bus_lost_total") == lost0 + 1, d.metric("bus_lost_total")
        await b.close()
    finally:
        if probe is not None:
            probe.kill()
            probe.wait()
        d.stop()


@test
async def sigterm_closes_1001(env):
    d = Daemon("term")
    try:
        c = await connect(d, uname("u"))
        c2 = await connect(d, uname("u"), sync=0)
        d.proc.send_signal(signal.SIGTERM)
        for x in (c, c2):
            await expect_close(x.ws, 1001)
        rc = d.proc.wait(10)
        assert rc == 0, rc
    finally:
        d.stop()


# --- WebSocket <-> long poll (parley-fcgi behind lighttpd) -----------------------------------

def http(env, method, path, tok, body=None, timeout=15):
    req = urllib.request.Request(env.http + path, method=method,
                                 data=json.dumps(body).encode() if body is not None else None,
                                 headers={"Authorization": "Bearer " + tok, "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return r.status, json.loads(r.read() or b"null")


@test
async def websocket_and_long_poll(env):
    if env.http is None:
        raise AssertionError("parley-fcgi / webserver not available: " + env.http_why)
    alice, bob = uname("alice"), uname("bob")
    # HTTP -> WebSocket
    b = await connect(env.a, bob, sync=0)
    cmid = uname("http")
    st, res = await asyncio.get_running_loop().run_in_executor(
        None, http, env, "POST", "/messages", token(alice), {"to": bob, "content": "over HTTP", "client_msg_id": cmid})
    assert st == 200 and res["server_msg_id"] > 0, (st, res)
    m = await b.next(is_msg(cmid))
    assert m["message"]["id"] == res["server_msg_id"], m
    # WebSocket -> parked long poll
    box = {}

    def poll():
        box["r"] = http(env, "GET", "/messages/long_poll?after=%d&timeout=20" % m["seq"], token(bob), timeout=30)
    # alice connects first: her presence event would wake the poll too.
    a = await connect(env.a, alice)
    await asyncio.sleep(0.3)
    th = threading.Thread(target=poll)
    th.start()
    await asyncio.sleep(0.5)
    t0 = time.monotonic()
    cmid2, ack = await send(a, bob, "over WebSocket")
    await asyncio.get_running_loop().run_in_executor(None, th.join, 25)
    took = time.monotonic() - t0
    st, page = box["r"]
    msgs = [e for e in page["events"] if e.get("type") == "new_message"]
    assert st == 200 and msgs and msgs[0]["message"]["client_msg_id"] == cmid2, page
    assert took < 3, took
    await a.close()
    await b.close()


@test
async def group_typing_and_message(env):
    # The group is created over HTTP (parley-fcgi); typing and messages go over WebSockets.
    if env.http is None:
        raise AssertionError("parley-fcgi / webserver not available: " + env.http_why)
    alice, bob, carol, dave = uname("alice"), uname("bob"), uname("carol"), uname("dave")
    b = await connect(env.a, bob)
    c = await connect(env.b, carol)
    st, res = await asyncio.get_running_loop().run_in_executor(
        None, http, env, "POST", "/groups", token(alice), {"name": "typing test", "members": [bob, carol]})
    assert st == 200 and res["group_id"] > 0, (st, res)
    gid = res["group_id"]
    # Connected before the group existed: its "created" event is pushed live.
    for x, who in ((b, bob), (c, carol)):
        g = await x.next(lambda m: m.get("type") == "group_update")
        assert g["group_id"] == gid and g["action"] == "created" and g["user"] == who and g["by"] == alice, g
    a = await connect(env.a, alice)
    await a.send({"type": "typing", "group_id": gid})
    for x in (b, c):
        t = await x.next(lambda m: m.get("type") == "typing")
        assert t == {"type": "typing", "from": alice, "group_id": gid}, t
    await a.none(lambda m: m.get("type") == "typing", 0.3)
    # A non-member may not type into the group.
    d = await connect(env.a, dave)
    await d.send({"type": "typing", "group_id": gid})
    e = await d.next(lambda m: m.get("type") == "error")
    assert e["code"] == "forbidden", e
    for x in (b, c):
        await x.none(lambda m: m.get("type") == "typing", 0.3)
    # A group message reaches every member's log (each with its own seq) and the sender's.
    cmid, ack = await send(a, None, "hello group", group_id=gid)
    assert ack["status"] == "success", ack
    for x in (b, c, a):
        m = await x.next(is_msg(cmid))
        assert m["message"]["group_id"] == gid and m["message"]["to"] is None, m
    cmid, ack = await send(d, None, "not a member", group_id=gid)
    assert ack["status"] == "error" and ack["error"]["code"] == "forbidden", ack
    for x in (a, b, c, d):
        await x.close()


@test
async def http_receipts_typing_rooms_reach_websockets(env):
    # Receipts, typing and room comments posted over HTTP (parley-fcgi) reach WebSockets, and a
    # room comment posted over a WebSocket is in the HTTP room history.
    if env.http is None:
        raise AssertionError("parley-fcgi / webserver not available: " + env.http_why)
    loop = asyncio.get_running_loop()
    alice, bob, room = uname("alice"), uname("bob"), uname("room")
    a = await connect(env.a, alice)
    b = await connect(env.b, bob)
    cmid, ack = await send(a, bob, "mark me")
    await b.next(is_msg(cmid))
    st, _ = await loop.run_in_executor(None, http, env, "POST", "/receipts", token(bob),
                                       {"message_id": ack["server_msg_id"], "status": "delivered"})
    assert st == 204, st
    m = await a.next(lambda m: m.get("type") == "message_status")
    assert (m["message_id"], m["status"], m["by"], m["seq"]) == (ack["server_msg_id"], "delivered", bob, ack["seq"] + 1), m
    await b.send({"type": "read", "message_id": ack["server_msg_id"]})
    m = await a.next(lambda m: m.get("type") == "message_status")
    assert m["status"] == "read" and m["seq"] == ack["seq"] + 2, m
    st, _ = await loop.run_in_executor(None, http, env, "POST", "/typing", token(bob), {"to": alice})
    assert st == 204, st
    t = await a.next(lambda m: m.get("type") == "typing")
    assert t == {"type": "typing", "from": bob, "to": alice}, t
    await a.send({"type": "join_room", "room": room})
    await a.send({"type": "ping"})
    await a.next(lambda m: m.get("type") == "pong")
    st, ev = await loop.run_in_executor(None, http, env, "POST", "/rooms/%s/messages" % room, token(bob), {"text": "from http"})
    assert st == 200, st
    r = await a.next(lambda m: m.get("type") == "room_message")
    assert r == ev and r["comment"]["user"] == bob and r["comment"]["text"] == "from http", (r, ev)
    await a.send({"type": "room_message", "room": room, "text": "from ws"})
    r2 = await a.next(lambda m: m.get("type") == "room_message")
    st, hist = await loop.run_in_executor(None, http, env, "GET", "/rooms/%s/messages?after=0" % room, token(bob))
    assert st == 200 and [e["comment"]["text"] for e in hist["events"]] == ["from http", "from ws"], hist
    assert hist["events"][1] == r2, (hist, r2)
    await a.close()
    await b.close()


@test
async def through_lighttpd(env):
    # The deployment path: /ws proxied by lighttpd (contrib/lighttpd/parley.conf) to parley-ws.
    if env.http is None:
        raise AssertionError("webserver not available: " + env.http_why)
    alice, bob = uname("alice"), uname("bob")
    url = env.http.replace("http://", "ws://") + "/ws"
    ws = await websockets.connect(url + "?access_token=" + token(bob, "proxied"), subprotocols=["parley.v1"])
    assert ws.subprotocol == "parley.v1", ws.subprotocol
    b = Client(ws)
    ready = await b.next()
    assert ready["type"] == "ready" and ready["device_id"] == "proxied", ready
    await b.send({"type": "sync", "after": 0})
    a = await connect(env.a, alice)
    cmid, _ = await send(a, bob, "via the proxy")
    await b.next(is_msg(cmid))
    await b.send({"type": "ping"})
    await b.next(lambda m: m.get("type") == "pong")
    await a.close()
    await b.close()


# --- MySQL down (a private stack: stopping the shared MariaDB would disturb other tests) -------

# --- history and retention ----------------------------------------------------------------

def is_type(t):
    return lambda m: m.get("type") == t


async def history_page(c, **req):
    await c.send(dict({"type": "history"}, **req))
    return await c.next(lambda m: m.get("type") in ("history", "error"))


@test
async def history_frames(env):
    if env.http is None:
        raise AssertionError("parley-fcgi / webserver not available: " + env.http_why)
    alice, bob, carol, dave = uname("alice"), uname("bob"), uname("carol"), uname("dave")
    a = await connect(env.a, alice)
    b = await connect(env.b, bob)
    ids, pushed = [], []
    for i in range(5):
        x, to = (a, bob) if i < 3 else (b, alice)
        cmid, ack = await send(x, to, "h%d" % i)
        ids.append(ack["server_msg_id"])
        pushed.append((await (b if i < 3 else a).next(is_msg(cmid)))["message"])
    ids.reverse()
    pushed.reverse()
    pages, before, first = [], None, None
    while True:
        h = await history_page(a, **dict({"with": bob, "limit": 2}, **({"before": before} if before else {})))
        assert h["type"] == "history" and list(h) == ["type", "with", "messages", "next_before"], h
        assert h["with"] == bob, h
        first = first or h
        pages.append([m["id"] for m in h["messages"]])
        before = h["next_before"]
        if before is None:
            break
    assert pages == [ids[0:2], ids[2:4], ids[4:5]], (pages, ids)
    h = await history_page(b, **{"with": alice})
    assert h["messages"] == pushed and h["next_before"] is None, (h, pushed)
    for bad, field in (({"with": bob, "limit": 201}, "limit"), ({"with": bob, "limit": 0}, "limit"),
                       ({}, "with"), ({"with": bob, "group_id": 3}, "with"), ({"with": bob, "before": 0}, "before")):
        e = await history_page(a, **bad)
        assert e["type"] == "error" and e["code"] == "bad_request" and e["message"].startswith(field + ":"), (bad, e)
    # Groups, as over HTTP: a removed member sees what reached it, a stranger is refused.
    run = asyncio.get_running_loop().run_in_executor
    st, res = await run(None, http, env, "POST", "/groups", token(alice), {"name": "h", "members": [bob]})
    gid = res["group_id"]
    _, ack = await send(a, None, "g1", group_id=gid)
    g1 = ack["server_msg_id"]
    await run(None, http, env, "POST", "/groups/%d/members" % gid, token(alice), {"user": carol})
    _, ack = await send(b, None, "g2", group_id=gid)
    g2 = ack["server_msg_id"]
    st, _ = await run(None, http, env, "DELETE", "/groups/%d/members/%s" % (gid, bob), token(alice))
    assert st == 204
    _, ack = await send(a, None, "g3", group_id=gid)
    h = await history_page(b, group_id=gid)
    assert list(h) == ["type", "group_id", "messages", "next_before"] and h["group_id"] == gid, h
    assert [m["id"] for m in h["messages"]] == [g2, g1], (h, g1, g2)
    c = await connect(env.a, carol)
    h = await history_page(c, group_id=gid, limit=1)
    assert [m["id"] for m in h["messages"]] == [ack["server_msg_id"]] and h["next_before"] == ack["server_msg_id"], h
    h = await history_page(c, group_id=gid, before=h["next_before"])
    assert [m["id"] for m in h["messages"]] == [g2] and h["next_before"] is None, h
    d = await connect(env.a, dave)
    e = await history_page(d, group_id=gid)
    assert e["type"] == "error" and e["code"] == "forbidden", e
    e = await history_page(d, group_id=999999999)
    assert e["type"] == "error" and e["code"] == "not_found", e
    await d.send({"type": "ping"})
    assert (await d.next())["type"] == "pong"
    for x in (a, b, c, d):
        await x.close()


def prune(cut_ms, events_days=1, messages_days=0, batch=1000):
    """parleyctl prune as of one day after cut_ms: everything stored before cut_ms goes."""
    conf = configparser.ConfigParser(interpolation=None)
    conf.read(BASE_CONF)
    conf["retention"] = {"events_days": str(events_days), "messages_days": str(messages_days),
                         "batch": str(batch), "pause_ms": "0"}
    path = os.path.join(TOP, "prune.conf")
    with open(path, "w") as f:
        conf.write(f)
    out = subprocess.run([os.path.join(BUILD, "parleyctl"), "--config", path, "prune", "--now",
                          str(cut_ms + 86400000)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


def moment():
    """A time (ms) strictly between what was stored before and what is stored after."""
    time.sleep(0.05)
    t = int(time.time() * 1000)
    time.sleep(0.05)
    return t


@test
async def prune_then_sync_resets(env):
    alice, bob, carol = uname("alice"), uname("bob"), uname("carol")
    a = await connect(env.a, alice)
    for i in range(3):
        await send(a, bob, "old %d" % i)
    await send(a, carol, "old for carol")
    cut = moment()
    new = [(await send(a, bob, "new %d" % i))[0] for i in range(2)]
    await asyncio.get_running_loop().run_in_executor(None, prune, cut)
    # sync after=0: the reset frame first, then the events kept, then live.
    b = await connect(env.a, bob, dev="d1", sync=0)
    got = [await b.next() for _ in range(3)]
    assert got[0] == {"type": "reset", "oldest_seq": 4}, got
    assert [(m["seq"], m["message"]["client_msg_id"]) for m in got[1:]] == [(4, new[0]), (5, new[1])], got
    live, _ = await send(a, bob, "live")
    m = await b.next(is_msg(live))
    assert m["seq"] == 6, m
    # A sync that is not behind gets no reset; neither does a new sync at the end.
    await b.send({"type": "sync", "after": 3})
    got = [await b.next(is_type("new_message")) for _ in range(3)]
    assert [m["seq"] for m in got] == [4, 5, 6], got
    await b.none(is_type("reset"), 0.3)
    # A sync without after uses the device cursor (3 now): not behind either.
    b2 = await connect(env.b, bob, dev="d1", sync=True)
    assert b2.ready["last_seq"] == 3, b2.ready
    m = await b2.next()
    assert m["type"] == "new_message" and m["seq"] == 4, m
    # carol's log was pruned whole: a reset, nothing else, then live from there.
    c = await connect(env.b, carol, sync=0)
    r = await c.next()
    assert r == {"type": "reset", "oldest_seq": 2}, r
    await c.none(is_type("new_message"), 0.3)
    cmid, _ = await send(a, carol, "after the prune")
    m = await c.next(is_msg(cmid))
    assert m["seq"] == 2, m
    for x in (a, b, b2, c):
        await x.close()


@test
async def prune_while_sending(env):
    alice, bob = uname("alice"), uname("bob")
    a = await connect(env.a, alice)
    for i in range(10):
        await send(a, bob, "old %d" % i)
    cut = moment()
    stop = threading.Event()
    runs, errors = [0], []

    def pruner():
        try:
            while not stop.is_set():
                prune(cut, 1, 1, batch=2)
                runs[0] += 1
        except BaseException as e:  # noqa: B902 - reported below
            errors.append(e)

    th = threading.Thread(target=pruner, daemon=True)
    th.start()
    # Send while prune runs, until a whole run is over (a run visits every log of the shared
    # database, so its length varies): at least 30 and at most 1000 messages.
    sent = []
    while len(sent) < 30 or (runs[0] < 1 and not errors and len(sent) < 1000):
        cmid, ack = await send(a, bob, "new %d" % len(sent))
        assert ack["status"] == "success", ack
        sent.append(cmid)
    stop.set()
    await asyncio.get_running_loop().run_in_executor(None, th.join, 60)
    assert not errors and runs[0] >= 1, (errors, runs, len(sent))
    await asyncio.get_running_loop().run_in_executor(None, prune, cut, 1, 1, 2)
    b = await connect(env.a, bob, sync=0)
    r = await b.next()
    assert r == {"type": "reset", "oldest_seq": 11}, r
    got = [await b.next(is_type("new_message")) for _ in sent]
    assert [m["seq"] for m in got] == list(range(11, 11 + len(sent))), [m["seq"] for m in got]
    assert [m["message"]["client_msg_id"] for m in got] == sent
    await b.none(is_type("new_message"), 0.3)
    await a.close()
    await b.close()


def services(*args):
    out = subprocess.run([os.path.join(SRC, "tests", "harness", "services")] + list(args),
                         capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=120,
                         start_new_session=True)
    if out.returncode != 0:
        raise AssertionError("services %s failed: %s" % (" ".join(args), out.stderr[-500:]))
    return out.stdout


def pid_gone(pid, secs):
    deadline = time.time() + secs
    while time.time() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    return False


@test
async def mysql_down_and_back(env):
    stack = os.path.join(TOP, "stack-down")
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, services, "start", stack)
    d = None
    try:
        d = Daemon("down", bus=os.path.join(TOP, "bus-down"), base=os.path.join(stack, "parley.conf"))
        alice, bob, carol = uname("alice"), uname("bob"), uname("carol")
        a = await connect(d, alice)
        b = await connect(d, bob)
        first, ack = await send(a, bob, "before the outage")
        assert ack["status"] == "success", ack
        await b.next(is_msg(first))
        with open(os.path.join(stack, "mysql.pid")) as f:
            pid = int(f.read().strip())
        os.kill(pid, signal.SIGTERM)
        assert await loop.run_in_executor(None, pid_gone, pid, 30), "mariadbd did not stop"
        # A send while MySQL is down: an error ack "unavailable", never a success.
        cmid = uname("down")
        t0 = time.monotonic()
        await a.send({"type": "send_message", "client_msg_id": cmid, "to": bob, "content": "during the outage"})
        ack = await a.next(is_ack(cmid), 20)
        assert ack["status"] == "error" and ack["error"]["code"] == "unavailable", ack
        assert time.monotonic() - t0 < 15, time.monotonic() - t0
        # A new connection cannot read its cursor: error "unavailable", close 1013.
        ws = await websockets.connect(d.url + "?access_token=" + token(carol), subprotocols=["parley.v1"])
        frames = await expect_close(ws, 1013, 20)
        assert frames and frames[-1]["type"] == "error" and frames[-1]["code"] == "unavailable", frames
        assert not any(f.get("type") == "ready" for f in frames), frames
        # Connections that were up stay up and take frames that need no MySQL.
        await a.send({"type": "ping"})
        await a.next(lambda m: m.get("type") == "pong")
        await loop.run_in_executor(None, services, "restart-mysql", stack)
        # Service resumes without restarting parley-ws: the client retries with the same id.
        deadline = time.monotonic() + 20
        while True:
            await a.send({"type": "send_message", "client_msg_id": cmid, "to": bob, "content": "during the outage"})
            ack = await a.next(is_ack(cmid), 20)
            if ack["status"] == "success" or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.5)
        assert ack["status"] == "success" and ack["seq"] == 2, ack
        m = await b.next(is_msg(cmid))
        assert m["seq"] == 2 and m["message"]["id"] == ack["server_msg_id"], m
        await b.none(is_msg(cmid), 0.5)
        c = await connect(d, carol)
        assert c.ready["user"] == carol, c.ready
        for x in (a, b, c):
            await x.close()
        assert d.stop() == 0
    finally:
        if d is not None:
            d.stop(signal.SIGKILL)
        await loop.run_in_executor(None, services, "stop", stack)


@test
async def paused_reader_not_idle(env):
    # The daemon stops reading a client whose sends wait for a full send shard (here: mailbox 2,
    # MySQL frozen by SIGSTOP), and one whose "ready" waits for MySQL. That silence is the
    # daemon's doing: with ping 1 s and idle 2 s both must survive a 3.5 s pause, and every send
    # is acked success once MySQL answers.
    stack = os.path.join(TOP, "stack-pause")
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, services, "start", stack)
    d = None
    frozen = None
    try:
        conf = configparser.ConfigParser(interpolation=None)
        conf.read(os.path.join(stack, "parley.conf"))
        conf["actor"] = {"mailbox": "2", "workers": "2"}
        base = os.path.join(TOP, "pause-base.conf")
        with open(base, "w") as f:
            conf.write(f)
        d = Daemon("pause", base=base, bus=os.path.join(TOP, "bus-pause"), ping_interval=1,
                   idle_timeout=2)
        alice, bob = uname("alice"), uname("bob")
        a = await connect(d, alice)
        b = await connect(d, bob)
        with open(os.path.join(stack, "mysql.pid")) as f:
            frozen = int(f.read().strip())
        os.kill(frozen, signal.SIGSTOP)
        cmids = [uname("paused") for _ in range(12)]
        for i, cmid in enumerate(cmids):
            await a.send({"type": "send_message", "client_msg_id": cmid, "to": bob, "content": "p%d" % i})
        late = asyncio.ensure_future(connect(d, uname("carol")))
        await asyncio.sleep(3.5)
        os.kill(frozen, signal.SIGCONT)
        frozen = None
        c = await late
        acks = [await a.next(lambda m: m.get("type") == "ack", 30) for _ in cmids]
        assert [x["client_msg_id"] for x in acks] == cmids, acks
        assert all(x["status"] == "success" for x in acks), acks
        got = [await b.next(lambda m: m.get("type") == "new_message", 10) for _ in cmids]
        assert [g["message"]["content"] for g in got] == ["p%d" % i for i in range(len(cmids))]
        await a.send({"type": "ping"})
        await a.next(lambda m: m.get("type") == "pong", 5)
        assert d.metric("ws_idle_closed_total") == 0
        for x in (a, b, c):
            await x.close()
        assert d.stop() == 0
    finally:
        if frozen is not None:
            os.kill(frozen, signal.SIGCONT)
        if d is not None:
            d.stop(signal.SIGKILL)
        await loop.run_in_executor(None, services, "stop", stack)


# --- issue 8: limits, back-pressure of answers, protocol errors (parley-ws limits) -----------

async def raw_upgrade(port, target, headers=None, proto="parley.v1"):
    """A hand-made upgrade request; returns (reader, writer, status, head) once the answer's
    head is read, or status None when the server closed without answering."""
    r, w = await asyncio.open_connection("127.0.0.1", port)
    key = base64.b64encode(os.urandom(16)).decode()
    lines = ["GET %s HTTP/1.1" % target, "Host: 127.0.0.1:%d" % port, "Upgrade: websocket",
             "Connection: Upgrade", "Sec-WebSocket-Key: " + key, "Sec-WebSocket-Version: 13",
             "Sec-WebSocket-Protocol: " + proto]
    lines += ["%s: %s" % kv for kv in (headers or {}).items()]
    w.write(("\r\n".join(lines) + "\r\n\r\n").encode())
    await w.drain()
    try:
        head = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 5)
    except asyncio.IncompleteReadError:
        return r, w, None, b""
    return r, w, int(head.split()[1]), head


def ws_frame(opcode, payload, fin=True):
    """A masked client frame (any opcode and length, valid or not)."""
    mask = os.urandom(4)
    n = len(payload)
    b0 = (0x80 if fin else 0) | opcode
    if n < 126:
        hdr = bytes([b0, 0x80 | n])
    elif n < 65536:
        hdr = bytes([b0, 0x80 | 126]) + n.to_bytes(2, "big")
    else:
        hdr = bytes([b0, 0x80 | 127]) + n.to_bytes(8, "big")
    return hdr + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


async def read_ws_frame(r, timeout=5):
    """(opcode, payload) of the next server frame; (None, b"") at end of stream."""
    try:
        b0, b1 = await asyncio.wait_for(r.readexactly(2), timeout)
        n = b1 & 0x7f
        if n == 126:
            n = int.from_bytes(await r.readexactly(2), "big")
        elif n == 127:
            n = int.from_bytes(await r.readexactly(8), "big")
        return b0 & 0x0f, await r.readexactly(n)
    except asyncio.IncompleteReadError:
        return None, b""


def http_get(port, path, tok=None):
    req = urllib.request.Request("http://127.0.0.1:%d%s" % (port, path),
                                 headers={"Authorization": "Bearer " + tok} if tok else {})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


@test
async def metrics_need_a_token(env):
    # The same rule as parley-fcgi's /metrics: a valid token (docs/configuration.md).
    loop = asyncio.get_running_loop()
    st, body = await loop.run_in_executor(None, http_get, env.a.port, "/metrics")
    assert st == 401 and json.loads(body)["error"]["code"] == "unauthorized", (st, body)
    st, body = await loop.run_in_executor(None, http_get, env.a.port, "/metrics",
                                          token("ops", secret=b"another-secret-0123456789abcdef0123"))
    assert st == 401, (st, body)
    st, body = await loop.run_in_executor(None, http_get, env.a.port, "/metrics", token("ops"))
    assert st == 200 and "parley_ws_ws_connections " in body and "parley_ws_ws_refused_ip_total " in body, (st, body[:300])
    st, body = await loop.run_in_executor(None, http_get, env.a.port, "/nothing", token("ops"))
    assert st == 404 and json.loads(body)["error"]["code"] == "not_found", (st, body)


@test
async def long_url_414(env):
    # An 8 KB upgrade URL (lws's header space is smaller) is answered 414, in the error shape.
    for target in ("/ws?access_token=" + "A" * 8000, "/ws" + "/x" * 4000,
                   "/ws?a=1&" + "&".join("p%d=%s" % (i, "B" * 1500) for i in range(3))):
        r, w, st, head = await raw_upgrade(env.a.port, target)
        assert st == 414, (st, head, target[:40])
        body = await asyncio.wait_for(r.read(), 5)
        assert json.loads(body)["error"]["code"] == "bad_request", body
        w.close()
    # At and past the edge (env.cap: ws.max_url = 1024, counting path, '?' and query).
    base = "/ws?access_token="
    r, w, st, head = await raw_upgrade(env.cap.port, base + "x" * (1024 - len(base)))
    assert st == 101, head
    op, payload = await read_ws_frame(r)
    assert op == 1 and json.loads(payload)["code"] == "unauthorized", (op, payload)
    w.close()
    r, w, st, head = await raw_upgrade(env.cap.port, base + "x" * (1025 - len(base)))
    assert st == 414, head
    w.close()
    loop = asyncio.get_running_loop()
    st, body = await loop.run_in_executor(None, http_get, env.cap.port, "/metrics?" + "m" * 1100, token("ops"))
    assert st == 414, (st, body)
    assert env.cap.metric("ws_url_too_long_total") == 2


@test
async def control_frame_too_long_1002(env):
    u = uname("alice")
    r, w, st, head = await raw_upgrade(env.a.port, "/ws?access_token=" + token(u))
    assert st == 101, head
    op, payload = await read_ws_frame(r)
    assert op == 1 and json.loads(payload)["type"] == "ready", (op, payload)
    # 125 bytes is the largest control frame: answered.
    w.write(ws_frame(0x9, b"q" * 125))
    op, payload = await read_ws_frame(r)
    assert op == 0xA and payload == b"q" * 125, (op, payload[:20])
    # 126: a protocol error, closed with a close frame 1002 (not a bare hang-up).
    w.write(ws_frame(0x9, b"q" * 126))
    op, payload = await read_ws_frame(r)
    assert op == 0x8 and int.from_bytes(payload[:2], "big") == 1002, (op, payload)
    w.close()
    # The same with a 64-bit length on a close frame (its header alone is refused).
    r, w, st, head = await raw_upgrade(env.a.port, "/ws?access_token=" + token(u))
    await read_ws_frame(r)
    w.write(ws_frame(0x8, b"\x03\xe8" + b"z" * 70000)[:14])
    op, payload = await read_ws_frame(r)
    assert op == 0x8 and int.from_bytes(payload[:2], "big") == 1002, (op, payload[:10])
    w.close()


@test
async def ping_burst_paced_not_cut(env):
    # 20,000 {"type":"ping"} frames written at once by a client that reads its pongs: reading
    # is paused while pongs wait (like sends), never a slow-consumer close (1024 frames queued).
    r, w, st, head = await raw_upgrade(env.a.port, "/ws?access_token=" + token(uname("pinger")))
    assert st == 101, head
    op, payload = await read_ws_frame(r)
    assert json.loads(payload)["type"] == "ready", payload
    n = 20000
    w.write(ws_frame(0x1, b'{"type":"ping"}') * n)
    got = 0
    while got < n:
        op, payload = await read_ws_frame(r, 20)
        assert op is not None and op != 0x8, "closed after %d pongs: %s" % (got, payload)
        if op == 0x1:
            assert json.loads(payload) == {"type": "pong"}, payload
            got += 1
    await w.drain()
    w.write(ws_frame(0x1, b'{"type":"ping"}'))
    op, payload = await read_ws_frame(r)
    assert op == 0x1 and json.loads(payload)["type"] == "pong", (op, payload)
    w.close()


@test
async def per_ip_cap(env):
    # env.cap: ws.max_per_ip = 4. Unauthenticated sockets count too.
    held = [await websockets.connect(env.cap.url, subprotocols=["parley.v1"]) for _ in range(4)]
    assert env.cap.metric("ws_addr_max") == 4 and env.cap.metric("ws_unauthenticated") == 4
    try:
        await websockets.connect(env.cap.url, subprotocols=["parley.v1"])
        raise AssertionError("a fifth connection from one address was accepted")
    except websockets.InvalidStatusCode as e:
        assert e.status_code == 429 and e.headers.get("Retry-After") == "5", e
    assert env.cap.metric("ws_refused_ip_total") == 1
    # Behind a trusted proxy (loopback by default) the client is X-Forwarded-For's last entry.
    fwd = [await websockets.connect(env.cap.url, subprotocols=["parley.v1"],
                                    extra_headers={"X-Forwarded-For": "198.51.100.7, 10.9.8.%d" % (i % 2)})
           for i in range(8)]
    try:
        await websockets.connect(env.cap.url, subprotocols=["parley.v1"],
                                 extra_headers={"X-Forwarded-For": "10.9.8.1"})
        raise AssertionError("a fifth connection from 10.9.8.1 was accepted")
    except websockets.InvalidStatusCode as e:
        assert e.status_code == 429, e
    assert env.cap.metric("ws_addrs") == 3
    # A slot freed is a slot taken again.
    await held[0].close()
    await asyncio.sleep(0.3)
    held[0] = await websockets.connect(env.cap.url, subprotocols=["parley.v1"])
    for x in held + fwd:
        await x.close()


@test
async def per_user_cap(env):
    # env.cap: ws.max_per_user = 2 (the per-IP cap of 4 is not reached).
    carol = uname("carol")
    a = await connect(env.cap, carol)
    b = await connect(env.cap, carol, how="frame")
    ws = await websockets.connect(env.cap.url + "?access_token=" + token(carol), subprotocols=["parley.v1"])
    frames = await expect_close(ws, 1008)
    assert frames == [{"type": "error", "code": "rate_limited",
                       "message": "too many connections for this user (at most 2)"}], frames
    assert env.cap.metric("ws_refused_user_total") == 1 and env.cap.metric("ws_user_max") == 2
    d = await connect(env.cap, uname("dave"))     # another user is not affected
    await a.close()
    await asyncio.sleep(0.3)
    a = await connect(env.cap, carol)
    for x in (a, b, d):
        await x.close()


@test
async def preauth_message_limit(env):
    # env.cap: ws.max_preauth_message = 300. The auth frame at the edge is taken.
    u = uname("erin")
    frame = json.dumps({"type": "auth", "token": token(u)})
    assert len(frame) < 300, len(frame)
    ws = await websockets.connect(env.cap.url, subprotocols=["parley.v1"])
    await ws.send(frame + " " * (300 - len(frame)))
    ready = json.loads(await asyncio.wait_for(ws.recv(), 5))
    assert ready["type"] == "ready", ready
    # Once authenticated, ws.max_message applies.
    await ws.send(json.dumps({"type": "ping"}) + " " * 2000)
    assert json.loads(await asyncio.wait_for(ws.recv(), 5))["type"] == "pong"
    await ws.close()
    # One byte more before auth: payload_too_large, close 1009; fragments count together.
    for parts in ([frame + " " * (301 - len(frame))], [frame, " " * (301 - len(frame))]):
        ws = await websockets.connect(env.cap.url, subprotocols=["parley.v1"])
        await ws.send(parts if len(parts) > 1 else parts[0])
        frames = await expect_close(ws, 1009)
        assert frames[0]["code"] == "payload_too_large" and "before authentication" in frames[0]["message"], frames
    assert env.cap.metric("ws_preauth_too_large_total") == 2


# --- a private stack for MySQL faults (frozen, killed), shared by the tests below ------------

_fault = {}


async def fault_stack():
    if "dir" not in _fault:
        d = os.path.join(TOP, "stack-fault")
        await asyncio.get_running_loop().run_in_executor(None, services, "start", d)
        _fault["dir"] = d
    return _fault["dir"]


def fault_conf(stack, name, **sections):
    conf = configparser.ConfigParser(interpolation=None)
    conf.read(os.path.join(stack, "parley.conf"))
    for sec, kv in sections.items():
        conf[sec] = {k: str(v) for k, v in kv.items()}
    path = os.path.join(TOP, name + "-base.conf")
    with open(path, "w") as f:
        conf.write(f)
    return path


def mysql_pid(stack):
    with open(os.path.join(stack, "mysql.pid")) as f:
        return int(f.read().strip())


def mysql_query(stack, sql):
    out = subprocess.run(["mariadb", "--no-defaults", "--socket=" + os.path.join(stack, "mysql.sock"),
                          "-uroot", "-N", "-B", "parley", "-e", sql], capture_output=True, text=True, timeout=20)
    if out.returncode != 0:
        raise AssertionError("mariadb: " + out.stderr[-300:])
    return out.stdout.strip()


@test
async def sync_refused_stays_live(env):
    # A sync refused because the user's mailbox is full (actor.mailbox 2, MySQL frozen) leaves
    # the connection live: the next message is pushed, and a retried sync replays.
    stack = await fault_stack()
    d = Daemon("syncfull", base=fault_conf(stack, "syncfull", actor={"mailbox": 2, "workers": 2}),
               bus=os.path.join(TOP, "bus-syncfull"))
    frozen = None
    try:
        dave, bob = uname("dave"), uname("bob")
        dv = await connect(d, dave)
        b = await connect(d, bob)
        frozen = mysql_pid(stack)
        os.kill(frozen, signal.SIGSTOP)
        for i in range(6):
            await dv.send({"type": "delivered", "message_id": 987654321000 + i})
        await dv.send({"type": "sync", "after": 0})
        e = await dv.next(lambda m: m.get("type") == "error" and "sync" in m.get("message", ""), 5)
        assert e["code"] == "rate_limited", e
        os.kill(frozen, signal.SIGCONT)
        frozen = None
        cmid, ack = await send(b, dave, "after the refused sync")
        assert ack["status"] == "success", ack
        m = await dv.next(is_msg(cmid), 10)
        assert m["seq"] == 1, m
        await dv.send({"type": "sync", "after": 0})
        m = await dv.next(is_msg(cmid), 10)
        assert m["seq"] == 1, m
        cmid2, _ = await send(b, dave, "and live after the replay")
        m = await dv.next(is_msg(cmid2), 10)
        assert m["seq"] == 2, m
        await dv.close()
        await b.close()
        assert d.stop() == 0
    finally:
        if frozen is not None:
            os.kill(frozen, signal.SIGCONT)
        d.stop(signal.SIGKILL)


@test
async def presence_pairs_on_failed_auth(env):
    # An auth that fails (MySQL down through every retry) counted no +1: its close must post no
    # -1, or a user still connected elsewhere on the daemon shows offline.
    stack = await fault_stack()
    loop = asyncio.get_running_loop()
    d = Daemon("presfail", base=fault_conf(stack, "presfail", actor={"retries": 8, "backoff_ms": 50}),
               bus=os.path.join(TOP, "bus-presfail"))
    try:
        carol = uname("carol")
        c1 = await connect(d, carol)
        q = "SELECT COUNT(*) FROM presence_conns WHERE user_id = '%s'" % carol
        assert await loop.run_in_executor(None, mysql_query, stack, q) == "1"
        pid = mysql_pid(stack)
        os.kill(pid, signal.SIGTERM)
        assert await loop.run_in_executor(None, pid_gone, pid, 30), "mariadbd did not stop"
        ws = await websockets.connect(d.url + "?access_token=" + token(carol), subprotocols=["parley.v1"])
        frames = await expect_close(ws, 1013, 30)
        assert frames[-1]["code"] == "unavailable", frames
        await loop.run_in_executor(None, services, "restart-mysql", stack)
        # A receipt of carol's queues behind any presence job of hers: once it is answered,
        # a -1 would have been counted.
        await c1.send({"type": "delivered", "message_id": 987654321987})
        e = await c1.next(lambda m: m.get("type") == "error", 30)
        assert e["code"] == "not_found", e
        assert await loop.run_in_executor(None, mysql_query, stack, q) == "1"
        await c1.close()
        deadline = time.monotonic() + 10
        while await loop.run_in_executor(None, mysql_query, stack, q) != "0":
            assert time.monotonic() < deadline, "carol still counted online after closing"
            await asyncio.sleep(0.2)
        assert d.stop() == 0
    finally:
        d.stop(signal.SIGKILL)


class Env:
    pass


def start_http(env):
    """parley-fcgi behind lighttpd on env.a's bus, when both exist."""
    env.http = None
    env.fcgi = None
    env.web = None
    fcgi_bin = os.path.join(BUILD, "parley-fcgi")
    web = os.path.join(SRC, "tests", "harness", "webserver")
    if not os.access(fcgi_bin, os.X_OK) or not os.access(web, os.X_OK):
        env.http_why = "parley-fcgi or tests/harness/webserver missing"
        return
    d = os.path.join(TOP, "fcgi")
    os.makedirs(d, exist_ok=True)
    sock = os.path.join(d, "fcgi.sock")
    path = os.path.join(d, "parley.conf")
    L.write_conf(path, BASE_CONF, bus={"dir": env.a.bus}, fcgi={"listen": sock})
    log = open(os.path.join(d, "parley-fcgi.log"), "ab")
    env.fcgi = subprocess.Popen([fcgi_bin, "-c", path], stdout=log, stderr=subprocess.STDOUT)
    for _ in range(100):
        if os.path.exists(sock):
            break
        time.sleep(0.05)
    try:
        env.http = L.start_web(os.path.join(d, "web"), sock, extra=("--ws", "127.0.0.1:%d" % env.a.port))
    except RuntimeError as e:
        env.http_why = "webserver start failed: %s" % e
        return
    env.web = os.path.join(d, "web")


async def run_all(env, only):
    passed = failed = 0
    for t in TESTS:
        if only and t.__name__ not in only:
            continue
        t0 = time.monotonic()
        try:
            await asyncio.wait_for(t(env), 60)
            passed += 1
            print("ok - %s (%.1fs)" % (t.__name__, time.monotonic() - t0), flush=True)
        except BaseException as e:  # noqa: B902 - a test failure of any kind is reported
            if isinstance(e, KeyboardInterrupt):
                raise
            failed += 1
            print("not ok - %s: %s" % (t.__name__, e or type(e).__name__), flush=True)
            traceback.print_exc(limit=3, file=sys.stdout)
    return passed, failed


def main():
    only = set(sys.argv[1:])
    env = Env()
    daemons = []
    rc = 1
    try:
        env.a = Daemon("a")
        env.b = Daemon("b")
        env.iso = Daemon("iso", bus=os.path.join(TOP, "bus-iso"))
        env.lim = Daemon("lim", max_connections=4, auth_timeout=1, ping_interval=1, idle_timeout=2)
        env.org = Daemon("org", origins="https://chat.example, https://other.example")
        env.slow = Daemon("slow", queue_bytes=65536, queue_frames=64)
        env.cap = Daemon("cap", max_per_ip=4, max_per_user=2, max_preauth_message=300, max_url=1024)
        daemons = [env.a, env.b, env.iso, env.lim, env.org, env.slow, env.cap]
        start_http(env)
        passed, failed = asyncio.run(run_all(env, only))
        for d in daemons:
            code = d.stop()
            if code != 0:
                print("not ok - %s exited with %s at SIGTERM" % (d.name, code))
                failed += 1
        daemons = []
        print("%d passed, %d failed" % (passed, failed))
        rc = 0 if failed == 0 else 1
    finally:
        for d in daemons:
            d.stop(signal.SIGKILL)
        if getattr(env, "web", None):
            L.stop_web(env.web)
        if getattr(env, "fcgi", None) is not None:
            env.fcgi.terminate()
            env.fcgi.wait(10)
        if "dir" in _fault:
            services("stop", _fault["dir"])
        L.remove_unless_failed(TOP, rc)
    return rc


if __name__ == "__main__":
    sys.exit(main())
