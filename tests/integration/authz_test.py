#!/usr/bin/python3
"""authz_test.py - the authorisation matrix: every HTTP route and every WebSocket frame, tried with
every kind of bad token and by every kind of user who must be refused.

Run by tests/integration/test_authz.sh under tests/harness/with-services (PARLEY_TEST_CONFIG,
PARLEY_TEST_DIR, PARLEY_SRCDIR, PARLEY_BUILDDIR). Starts parley-fcgi behind a real lighttpd and a
parley-ws on one bus; the client is the stdlib plus python3-websockets.

What it checks (docs/reliability.md, "Authorisation matrix"):
- no token, an empty one, expired, forged signature, claims swapped under another user's
  signature, alg none (unsigned and signed), HS384, another secret's, garbage, no exp: 401
  `unauthorized` on every route but /health, before any validation of the body or the path's
  target, with an answer that is the same whether the target exists or not, and no side effect;
  on WebSocket (URL token or auth frame) an `unauthorized` error and close 1008 without `ready`;
  any other frame first is the same refusal, and does nothing.
- with a valid token, a user who is not the owner (admin), not a member, or was removed from the
  group gets the status docs/protocol.md gives (403 / 404), the same answer as for a target that
  does not exist where the docs say so, and never sees what is not theirs (logs, sync,
  conversations, long polls, pushes).
Prints one line per check and "N passed, N failed" last.
"""
import asyncio
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.parse

import websockets

import parleylib as L
from parleylib import uname

BUILD = L.BUILD
BASE_CONF = os.environ["PARLEY_TEST_CONFIG"]
TOP = tempfile.mkdtemp(prefix="authz-test.", dir=os.environ.get("PARLEY_TEST_DIR") or None)
SECRET = L.config_secret(BASE_CONF)
T = L.Tally()
check = T.check


# --- tokens -------------------------------------------------------------------------------

b64 = L.b64u


def sign(header, claims, secret=SECRET, digest=hashlib.sha256):
    return L.jwt(claims, secret, header, digest)


def good(sub, exp_in=3600):
    return L.token(SECRET, sub, exp_in=exp_in)


def bad_tokens(victim, attacker):
    """Every kind of token that must not authenticate, each claiming to be victim."""
    now = int(time.time())
    claims = {"sub": victim, "iat": now, "exp": now + 3600}
    real = good(victim)
    h, p, s = real.split(".")
    flipped = ("A" if s[0] != "A" else "B") + s[1:]
    att_sig = good(attacker).split(".")[2]
    return [
        ("no token", None),
        ("empty token", ""),
        ("expired", good(victim, exp_in=-600)),
        ("forged signature", h + "." + p + "." + flipped),
        ("claims under another user's signature", h + "." + p + "." + att_sig),
        ("alg none unsigned", b64(b'{"alg":"none","typ":"JWT"}') + "." + p + "."),
        ("alg none signed", sign({"alg": "none", "typ": "JWT"}, claims)),
        ("alg HS384", sign({"alg": "HS384", "typ": "JWT"}, claims, digest=hashlib.sha384)),
        ("other secret", sign({"alg": "HS256", "typ": "JWT"}, claims, secret=b"not-the-secret")),
        ("no exp", sign({"alg": "HS256", "typ": "JWT"}, {"sub": victim, "iat": now})),
        ("exp 2^64", sign({"alg": "HS256"}, {"sub": victim, "exp": 18446744073709551616})),
        ("garbage", "x.y.z"),
    ]


# --- processes ------------------------------------------------------------------------------

class Stack:
    """parley-ws, and parley-fcgi behind lighttpd, on one bus."""

    def __init__(self):
        self.procs = []
        self.web = None
        bus = os.path.join(TOP, "bus")
        self.ws_port = L.free_port()
        conf = os.path.join(TOP, "ws.conf")
        L.write_conf(conf, BASE_CONF, bus={"dir": bus}, ws={"listen": "127.0.0.1", "port": self.ws_port})
        self.ws_log = open(os.path.join(TOP, "parley-ws.log"), "ab")
        self.ws = subprocess.Popen([os.path.join(BUILD, "parley-ws"), "--config", conf],
                                   stdout=self.ws_log, stderr=subprocess.STDOUT)
        self.procs.append(self.ws)
        sock = os.path.join(TOP, "fcgi.sock")
        conf = os.path.join(TOP, "fcgi.conf")
        L.write_conf(conf, BASE_CONF, bus={"dir": bus}, fcgi={"listen": sock})
        self.fcgi_log = open(os.path.join(TOP, "parley-fcgi.log"), "ab")
        self.fcgi = subprocess.Popen([os.path.join(BUILD, "parley-fcgi"), "-c", conf],
                                     stdout=self.fcgi_log, stderr=subprocess.STDOUT)
        self.procs.append(self.fcgi)
        deadline = time.time() + 10
        while not os.path.exists(sock) or not L.can_connect("127.0.0.1", self.ws_port):
            if time.time() > deadline or any(p.poll() is not None for p in self.procs):
                raise RuntimeError("daemons did not start; logs in %s" % TOP)
            time.sleep(0.05)
        self.http = L.start_web(os.path.join(TOP, "web"), sock)
        self.web = os.path.join(TOP, "web")
        self.ws_url = "ws://127.0.0.1:%d/ws" % self.ws_port

    def stop(self):
        if self.web:
            L.stop_web(self.web)
        return L.stop_procs(self.procs)


# --- HTTP -------------------------------------------------------------------------------------

Resp = L.Resp


def req(method, path, tok=None, body=None, timeout=30):
    """A request to the stack's web server; a str or bytes body goes as it is, anything else as JSON."""
    if isinstance(body, (bytes, str)):
        return L.request(ST.http, method, path, tok, raw=body, timeout=timeout)
    return L.request(ST.http, method, path, tok, body, timeout=timeout)


def is_error(r, status, code):
    """The contract's error shape exactly: {"error":{"code":..,"message":..}} and nothing else."""
    j = r.json()
    return (r.status == status and isinstance(j, dict) and list(j) == ["error"] and
            isinstance(j["error"], dict) and sorted(j["error"]) == ["code", "message"] and
            j["error"]["code"] == code and r.headers.get("content-type", "").startswith("application/json"))


def log_events(user, after=0):
    r = req("GET", "/messages?after=%d&limit=500" % after, good(user))
    assert r.status == 200, r
    return r.json()["events"]


def send_http(user, cmid, to=None, group=None, content="hi"):
    body = {"client_msg_id": cmid, "content": content}
    if group:
        body["group_id"] = group
    else:
        body["to"] = to
    return req("POST", "/messages", good(user), body)


# --- the fixture: an owner, a member, an outsider, a removed member ------------------------------

class World:
    def __init__(self):
        self.owner, self.member, self.outsider = uname("owner"), uname("member"), uname("outsider")
        self.removed, self.spare = uname("removed"), uname("spare")
        self.room = uname("room")
        r = req("POST", "/groups", good(self.owner),
                {"name": "authz", "members": [self.member, self.removed, self.spare]})
        assert r.status == 200, r
        self.group = r.json()["group_id"]
        r = send_http(self.owner, uname("c"), group=self.group, content="before removal")
        assert r.status == 200, r
        self.gmsg_before = r.json()["server_msg_id"]
        r = req("DELETE", "/groups/%d/members/%s" % (self.group, self.removed), good(self.owner))
        assert r.status == 204, r
        r = send_http(self.owner, uname("c"), to=self.member, content="private to member")
        assert r.status == 200, r
        self.dm = r.json()["server_msg_id"]
        r = send_http(self.owner, uname("c"), group=self.group, content="after removal")
        assert r.status == 200, r
        self.gmsg = r.json()["server_msg_id"]
        # Ids that do not exist: far beyond anything this run created.
        self.no_group = self.group + 10 ** 12
        self.no_msg = self.gmsg + 10 ** 12


def http_routes(w):
    """(name, method, path template, body) for every route but /health; {g} the group, {m} a message."""
    cmid = uname("c")
    return [
        ("send", "POST", "/messages", {"to": w.member, "content": "x", "client_msg_id": cmid}),
        ("send to group", "POST", "/messages", {"group_id": "{g}", "content": "x", "client_msg_id": cmid}),
        ("poll", "GET", "/messages?after=0", None),
        ("long poll", "GET", "/messages/long_poll?after=0&timeout=0", None),
        ("receipts of a message", "GET", "/messages/{m}/receipts", None),
        ("sync", "GET", "/sync?device_id=d1", None),
        ("receipt", "POST", "/receipts", {"message_id": "{m}", "status": "read"}),
        ("typing", "POST", "/typing", {"group_id": "{g}"}),
        ("conversations", "GET", "/conversations", None),
        ("create group", "POST", "/groups", {"name": "g", "members": [w.outsider]}),
        ("group", "GET", "/groups/{g}", None),
        ("add member", "POST", "/groups/{g}/members", {"user": w.outsider}),
        ("remove member", "DELETE", "/groups/{g}/members/" + w.spare, None),
        ("presence", "GET", "/presence?users=" + w.member, None),
        ("room post", "POST", "/rooms/%s/messages" % w.room, {"text": "x"}),
        ("room history", "GET", "/rooms/%s/messages" % w.room, None),
        ("metrics", "GET", "/metrics", None),
    ]


def fill(v, g, m):
    if isinstance(v, str):
        if v == "{g}":
            return g
        if v == "{m}":
            return m
        return v.replace("{g}", str(g)).replace("{m}", str(m))
    if isinstance(v, dict):
        return {k: fill(x, g, m) for k, x in v.items()}
    if isinstance(v, list):
        return [fill(x, g, m) for x in v]
    return v


def http_bad_tokens(w):
    """Every route x every bad token: 401 before anything else, the same for any target."""
    routes = http_routes(w)
    before = {u: len(log_events(u)) for u in (w.owner, w.member, w.outsider)}
    for label, tok in bad_tokens(w.owner, w.outsider):
        msgs = set()
        for name, method, path, body in routes:
            answers = []
            # The real target, one that does not exist, and a body that is not even valid:
            # the refusal comes first and tells nothing about any of them.
            for g, m, b in ((w.group, w.dm, fill(body, w.group, w.dm)),
                            (w.no_group, w.no_msg, fill(body, w.no_group, w.no_msg)),
                            (w.group, w.dm, "{not json" if body is not None else None)):
                r = req(method, fill(path, g, m), tok, b)
                answers.append((r.status, r.body))
            r0 = answers[0]
            ok = is_error(Resp(r0[0], [("content-type", "application/json")], r0[1]), 401, "unauthorized")
            check(ok and answers[1] == r0 and answers[2] == r0,
                  "401 %s: %s" % (label, name), answers)
            msgs.add(r0[1])
        # One answer for every route: the refusal does not depend on what was asked.
        check(len(msgs) == 1, "401 %s: the same body on every route" % label, msgs)
    r = req("GET", "/groups/%d" % w.group, None)
    check(r.headers.get("www-authenticate", "").lower().startswith("bearer"),
          "401 carries WWW-Authenticate: Bearer", r.headers)
    # Nothing happened: no message stored, nobody added or removed, no group created.
    after = {u: len(log_events(u)) for u in (w.owner, w.member, w.outsider)}
    check(after == before, "bad tokens stored nothing", (before, after))
    r = req("GET", "/groups/%d" % w.group, good(w.owner))
    members = r.json().get("members", []) if r.status == 200 else None
    check(members is not None and w.outsider not in members and w.spare in members,
          "bad tokens changed no membership", r)
    r = req("GET", "/health", None)
    check(r.status == 200 and r.json().get("status") == "ok", "/health needs no token", r)


def http_wrong_user(w):
    """Valid tokens of users who must be refused: the status of docs/protocol.md, nothing leaked."""
    g, ng, dm, nm = w.group, w.no_group, w.dm, w.no_msg
    O, M, X, R = w.owner, w.member, w.outsider, w.removed

    def expect(user, method, path, body, status, code, what, same_as=None):
        r = req(method, path, good(user), body)
        ok = is_error(r, status, code)
        if same_as is not None:
            r2 = req(method, same_as[0], good(user), same_as[1])
            ok = ok and (r2.status, r2.body) == (r.status, r.body)
        check(ok, what, r)

    for who, name in ((X, "not a member"), (R, "removed")):
        expect(who, "GET", "/groups/%d" % g, None, 403, "forbidden", "group info: %s -> 403" % name)
        expect(who, "POST", "/groups/%d/members" % g, {"user": who}, 403, "forbidden",
               "add to group: %s -> 403" % name)
        expect(who, "DELETE", "/groups/%d/members/%s" % (g, M), None, 403, "forbidden",
               "remove from group: %s -> 403" % name)
        expect(who, "POST", "/messages", {"group_id": g, "content": "x", "client_msg_id": uname("c")},
               403, "forbidden", "send to group: %s -> 403" % name)
        expect(who, "POST", "/typing", {"group_id": g}, 403, "forbidden", "typing to group: %s -> 403" % name)
        expect(who, "GET", "/messages/%d/receipts" % w.gmsg, None, 403, "forbidden",
               "receipts of a group message: %s -> 403" % name)
        # A receipt for a message not received is 404, exactly as for one that does not exist.
        expect(who, "POST", "/receipts", {"message_id": w.gmsg, "status": "read"}, 404, "not_found",
               "receipt for a group message: %s -> 404 as unknown" % name,
               same_as=("/receipts", {"message_id": nm, "status": "read"}))
    expect(X, "GET", "/messages/%d/receipts" % dm, None, 403, "forbidden", "receipts of another's 1:1 -> 403")
    expect(X, "POST", "/receipts", {"message_id": dm, "status": "read"}, 404, "not_found",
           "receipt for another's 1:1 -> 404 as unknown", same_as=("/receipts", {"message_id": nm, "status": "read"}))
    expect(O, "POST", "/receipts", {"message_id": dm, "status": "read"}, 404, "not_found",
           "receipt for one's own message -> 404 as unknown", same_as=("/receipts", {"message_id": nm, "status": "read"}))
    # Not the owner (admin): a member may neither add nor remove another, only leave.
    expect(M, "POST", "/groups/%d/members" % g, {"user": X}, 403, "forbidden", "add to group: member, not admin -> 403")
    expect(M, "DELETE", "/groups/%d/members/%s" % (g, w.spare), None, 403, "forbidden",
           "remove another: member, not admin -> 403")
    expect(O, "DELETE", "/groups/%d/members/%s" % (g, X), None, 404, "not_found", "remove a non-member -> 404")
    # Groups that do not exist: 404 (docs: 404 for no group, 403 for a non-member).
    expect(X, "GET", "/groups/%d" % ng, None, 404, "not_found", "group info: no such group -> 404")
    expect(X, "POST", "/groups/%d/members" % ng, {"user": X}, 404, "not_found", "add: no such group -> 404")
    expect(X, "DELETE", "/groups/%d/members/%s" % (ng, X), None, 404, "not_found", "remove: no such group -> 404")
    expect(X, "POST", "/messages", {"group_id": ng, "content": "x", "client_msg_id": uname("c")}, 404,
           "not_found", "send: no such group -> 404")
    expect(X, "POST", "/typing", {"group_id": ng}, 404, "not_found", "typing: no such group -> 404")
    expect(X, "GET", "/messages/%d/receipts" % nm, None, 404, "not_found", "receipts: no such message -> 404")

    # Nothing of others' conversations reaches the outsider or the removed member.
    for who, name in ((X, "outsider"), (R, "removed member")):
        ids = {e["message"]["id"] for e in log_events(who) if e["type"] == "new_message"}
        check(dm not in ids and w.gmsg not in ids, "%s's log holds nothing of others'" % name, ids)
        r = req("GET", "/sync?device_id=d1&after=0", good(who))
        ids = {e["message"]["id"] for e in r.json()["events"] if e["type"] == "new_message"}
        check(r.status == 200 and dm not in ids and w.gmsg not in ids, "%s's sync holds nothing of others'" % name, ids)
        r = req("GET", "/conversations", good(who))
        convs = r.json()["conversations"] if r.status == 200 else None
        check(convs is not None and all(c.get("with") not in (O, M) for c in convs) and
              all(c.get("group_id") != g or who == R for c in convs), "%s's conversations" % name, convs)
    ids = {e["message"]["id"] for e in log_events(R) if e["type"] == "new_message"}
    check(w.gmsg_before in ids and w.gmsg not in ids, "removed member: had the message before, not after", ids)
    # The member does get them (the checks above could not pass by everyone seeing nothing).
    ids = {e["message"]["id"] for e in log_events(M) if e["type"] == "new_message"}
    check(dm in ids and w.gmsg in ids, "the member sees both", ids)


def http_long_poll_isolation(w):
    """An outsider's long poll is not woken by a message between two others."""
    import threading
    out = {}
    start = len(log_events(w.outsider))

    def poll():
        out["r"] = req("GET", "/messages/long_poll?after=%d&timeout=2" % start, good(w.outsider))
    t = threading.Thread(target=poll)
    t.start()
    time.sleep(0.3)
    send_http(w.owner, uname("c"), to=w.member, content="not for the outsider")
    t.join(10)
    r = out.get("r")
    check(r is not None and r.status == 200 and r.json()["events"] == [],
          "outsider's long poll not woken by others' message", r)


# --- WebSocket ------------------------------------------------------------------------------

async def recv_all(ws, timeout):
    """Frames until the server closes (returns frames, close code) or timeout (code None)."""
    frames = []
    try:
        while True:
            frames.append(json.loads(await asyncio.wait_for(ws.recv(), timeout)))
    except websockets.ConnectionClosed as e:
        return frames, e.code
    except asyncio.TimeoutError:
        return frames, None


def frame_samples(w):
    return [
        {"type": "sync", "after": 0},
        {"type": "send_message", "to": w.member, "content": "smuggled", "client_msg_id": uname("c")},
        {"type": "send_message", "group_id": w.group, "content": "smuggled", "client_msg_id": uname("c")},
        {"type": "delivered", "message_id": w.dm},
        {"type": "read", "message_id": w.dm},
        {"type": "typing", "group_id": w.group},
        {"type": "join_room", "room": w.room},
        {"type": "leave_room", "room": w.room},
        {"type": "room_message", "room": w.room, "text": "smuggled"},
        {"type": "ping"},
    ]


async def ws_bad_tokens(w):
    before = len(log_events(w.member))
    for label, tok in bad_tokens(w.owner, w.outsider):
        if tok is None:
            continue
        for how in ("url", "frame"):
            url = ST.ws_url + ("?access_token=" + urllib.parse.quote(tok) if how == "url" else "")
            ws = await websockets.connect(url, subprotocols=["parley.v1"])
            if how == "frame":
                await ws.send(json.dumps({"type": "auth", "token": tok}))
            # A frame after the token: must not be acted on.
            try:
                await ws.send(json.dumps(frame_samples(w)[1]))
            except websockets.ConnectionClosed:
                pass
            frames, code = await recv_all(ws, 5)
            check(code == 1008 and frames and frames[0].get("type") == "error" and
                  frames[0].get("code") == "unauthorized" and
                  not any(f.get("type") in ("ready", "ack") for f in frames),
                  "ws %s (%s): unauthorized, close 1008, no ready" % (label, how), (code, frames))
    # Every frame type as the first frame, without a token.
    for f in frame_samples(w):
        ws = await websockets.connect(ST.ws_url, subprotocols=["parley.v1"])
        await ws.send(json.dumps(f))
        frames, code = await recv_all(ws, 5)
        check(code == 1008 and len(frames) == 1 and frames[0].get("code") == "unauthorized",
              "ws %s before auth: unauthorized, close 1008" % f["type"], (code, frames))
    await asyncio.sleep(0.5)
    check(len(log_events(w.member)) == before, "ws frames without a valid token stored nothing")


async def ws_client(user):
    ws = await websockets.connect(ST.ws_url + "?access_token=" + good(user), subprotocols=["parley.v1"])
    ready = json.loads(await asyncio.wait_for(ws.recv(), 5))
    assert ready["type"] == "ready", ready
    return ws


async def ws_answer(ws, frame, pred, timeout=5):
    await ws.send(json.dumps(frame))
    deadline = time.monotonic() + timeout
    while True:
        m = json.loads(await asyncio.wait_for(ws.recv(), max(0.01, deadline - time.monotonic())))
        if pred(m):
            return m


def is_ack(cmid):
    return lambda m: m.get("type") == "ack" and m.get("client_msg_id") == cmid


def is_error_frame(m):
    return m.get("type") == "error"


async def ws_wrong_user(w):
    for who, name in ((w.outsider, "not a member"), (w.removed, "removed")):
        ws = await ws_client(who)
        for g, status in ((w.group, "forbidden"), (w.no_group, "not_found")):
            cmid = uname("c")
            a = await ws_answer(ws, {"type": "send_message", "group_id": g, "content": "x",
                                     "client_msg_id": cmid}, is_ack(cmid))
            check(a.get("status") == "error" and a["error"]["code"] == status,
                  "ws send to %s group: %s -> %s" % ("their" if g == w.group else "no such", name, status), a)
            e = await ws_answer(ws, {"type": "typing", "group_id": g}, is_error_frame)
            check(e.get("code") == status, "ws typing to %s group: %s -> %s" %
                  ("their" if g == w.group else "no such", name, status), e)
        for kind in ("delivered", "read"):
            answers = []
            for mid in (w.gmsg, w.dm, w.no_msg):
                answers.append(await ws_answer(ws, {"type": kind, "message_id": mid}, is_error_frame))
            check(answers[0].get("code") == "not_found" and answers[0] == answers[1] == answers[2],
                  "ws %s of others' messages: %s -> not_found as unknown" % (kind, name), answers)
        await ws.close()


async def ws_push_isolation(w):
    """The outsider and the removed member get no push of others' messages or typing."""
    xs = [await ws_client(w.outsider), await ws_client(w.removed)]
    m = await ws_client(w.member)
    send_http(w.owner, uname("c"), to=w.member, content="push to member only")
    send_http(w.owner, uname("c"), group=w.group, content="push to the group")
    req("POST", "/typing", good(w.owner), {"group_id": w.group})
    got = []
    for _ in range(3):
        got.append(json.loads(await asyncio.wait_for(m.recv(), 5))["type"])
    check(sorted(got) == ["new_message", "new_message", "typing"], "the member gets the pushes", got)
    for ws, name in zip(xs, ("outsider", "removed member")):
        frames, code = await recv_all(ws, 1.0)
        check(frames == [] and code is None, "ws %s gets no push of others'" % name, frames)
        await ws.close()
    await m.close()


async def ws_removed_while_connected(w):
    """A member removed while its WebSocket is open hears of the removal, then nothing more."""
    gone, stays = uname("gone"), uname("stays")
    r = req("POST", "/groups", good(w.owner), {"name": "live", "members": [gone, stays]})
    assert r.status == 200, r
    g = r.json()["group_id"]
    ws, other = await ws_client(gone), await ws_client(stays)
    r = req("DELETE", "/groups/%d/members/%s" % (g, gone), good(w.owner))
    check(r.status == 204, "removal of a connected member", r)
    first = json.loads(await asyncio.wait_for(ws.recv(), 5))
    check(first.get("type") == "group_update" and first.get("group_id") == g and
          first.get("user") == gone, "the removed member's socket is told of the removal", first)
    send_http(w.owner, uname("c"), group=g, content="after the live removal")
    req("POST", "/typing", good(w.owner), {"group_id": g})
    got = []
    while len(got) < 3:
        m = json.loads(await asyncio.wait_for(other.recv(), 5))
        got.append(m.get("type"))
    check(sorted(got) == ["group_update", "new_message", "typing"], "the member who stays gets them", got)
    frames, code = await recv_all(ws, 1.0)
    check(frames == [] and code is None, "the removed member's open socket gets nothing after", frames)
    cmid = uname("c")
    a = await ws_answer(ws, {"type": "send_message", "group_id": g, "content": "x", "client_msg_id": cmid},
                        is_ack(cmid))
    check(a.get("status") == "error" and a["error"]["code"] == "forbidden",
          "the removed member's open socket cannot send to the group", a)
    await ws.close()
    await other.close()


async def ws_all(w):
    await ws_bad_tokens(w)
    await ws_wrong_user(w)
    await ws_push_isolation(w)
    await ws_removed_while_connected(w)


ST = None


def main():
    global ST
    rc = 1
    try:
        ST = Stack()
        w = World()
        http_bad_tokens(w)
        http_wrong_user(w)
        http_long_poll_isolation(w)
        asyncio.run(ws_all(w))
        codes = ST.stop()
        check(codes == [0, 0], "both daemons exit 0 at SIGTERM", codes)
        ST = None
    except Exception as e:  # noqa: B902 - any failure of the harness is a failed test
        import traceback
        traceback.print_exc(file=sys.stdout)
        check(False, "harness: %s" % e)
    finally:
        if ST is not None:
            ST.stop()
        print(T.summary())
        rc = 0 if T.failed == 0 else 1
        L.remove_unless_failed(TOP, rc)
    return rc


if __name__ == "__main__":
    sys.exit(main())
