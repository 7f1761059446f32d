#!/usr/bin/python3
"""fcgi_test.py - drive parley-fcgi through a real web server (stdlib only).

Run by tests/integration/test_fcgi.sh, which starts the processes and passes them in the
environment:
  PARLEY_HTTP     base URL of the web server in front of parley-fcgi (process FCGI_PID)
  PARLEY_HTTP2    (optional) a second web server in front of a second parley-fcgi on the same bus
  FCGI_PID        pid of the parley-fcgi behind PARLEY_HTTP (threads, fds)
  FCGI_SOCKET     its FastCGI socket (to play the web server directly)
  PARLEY_TEST_CONFIG  the config (its jwt_secret mints tokens)
Usage: fcgi_test.py PHASE   where PHASE is one of
  full      every route, long polls, sync, 2000 parked polls, hang-up, two processes, dropped
            polls freed, a newer poll replacing an older, fcgi.max_parked_per_user
  basic     send, duplicate, long-poll wake/timeout, 401, replacement, dropped polls (for the
            Apache and nginx variants)
  down      parley-fcgi is not running: the web server answers the contract's JSON 503
  fdleak    many requests; the process's fd count must come back (Apache: FCGI_KEEP_CONN)
  park N    park N long polls (FCGI_MAX_PARKED = N: one more gets 503), SIGTERM FCGI_KILL_PID
  raw       /health spoken as FastCGI directly to FCGI_SOCKET (spawn-fcgi start)
  mysqldown MySQL is stopped: 503 + Retry-After
  recovered MySQL is back: requests work again without a restart
Prints "N passed, N failed" last; exit status 1 when anything failed.
"""
import asyncio
import hashlib
import json
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.parse

import parleylib as L

T = L.Tally()
check = T.check
name = L.uname
RUN_ID = L.RUN


# --- tokens -------------------------------------------------------------------------------

SECRET = None


def token(user, exp_in=3600, alg="HS256", dev=None, secret=None, sign=True):
    header = {"alg": alg, "typ": "JWT"}
    claims = L.claims(user, dev, exp_in)
    if not sign:
        return L.jwt(claims, "", header).rsplit(".", 1)[0] + "."
    return L.jwt(claims, secret or SECRET, header, hashlib.sha384 if alg == "HS384" else hashlib.sha256)


def token_claims(claims, header=None):
    """An HS256 token with exactly these claims (and header), signed with the test secret."""
    return L.jwt(claims, SECRET, header)


# --- HTTP ---------------------------------------------------------------------------------

Resp = L.Resp


def req(base, method, path, tok=None, body=None, raw=None, headers=None, timeout=75):
    return L.request(base, method, path, tok, body, raw, headers, timeout)


async def areq(base, method, path, tok=None, body=None, timeout=75):
    """A minimal HTTP/1.1 client on asyncio streams (thousands at once)."""
    raw = await asyncio.wait_for(L.request_raw(base, method, path, tok, body), timeout)
    status, headers, rest = L.parse_response(raw)
    return Resp(status, headers, rest.decode("utf-8", "replace"))


def metric(base, tok, mname):
    r = req(base, "GET", "/metrics", tok)
    m = re.search(r"^parley_fcgi_%s (\d+)$" % re.escape(mname), r.body, re.M)
    return int(m.group(1)) if m else -1


def proc_threads(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("Threads:"):
                return int(line.split()[1])
    return -1


def proc_fds(pid):
    return len(os.listdir("/proc/%d/fd" % pid))


wait_until = L.wait_until


def err_code(r):
    j = r.json()
    try:
        return j["error"]["code"]
    except (TypeError, KeyError):
        return None


def err_msg(r):
    j = r.json()
    try:
        return j["error"]["message"]
    except (TypeError, KeyError):
        return ""


def send(base, tok, to, content, cmid=None, group=None):
    body = {"content": content, "client_msg_id": cmid or name("c")}
    if group is not None:
        body["group_id"] = group
    else:
        body["to"] = to
    return req(base, "POST", "/messages", tok, body)


def last_seq(base, tok):
    after = 0
    while True:
        r = req(base, "GET", "/messages?after=%d&limit=500" % after, tok)
        j = r.json()
        if not j["events"]:
            return j["next"]
        after = j["next"]


class Poller(threading.Thread):
    """A long poll on its own thread; records when its answer came."""

    def __init__(self, base, path, tok):
        super().__init__(daemon=True)
        self.base, self.path, self.tok = base, path, tok
        self.resp, self.t_done = None, None

    def run(self):
        try:
            self.resp = req(self.base, "GET", self.path, self.tok)
        except Exception as e:  # noqa: BLE001 - reported by the check
            self.resp = Resp(0, [], repr(e))
        self.t_done = time.monotonic()


def wait_parked(base, tok, n, timeout=10.0):
    return wait_until(lambda: metric(base, tok, "polls_parked") >= n, timeout)


# --- phases ------------------------------------------------------------------------------

def t_health(base):
    r = req(base, "GET", "/health")
    j = r.json() or {}
    check(r.status == 200 and j.get("status") == "ok" and j.get("mysql") == "ok",
          "GET /health 200 without a token", r)
    check(r.headers.get("content-type", "").startswith("application/json"), "health is JSON", r.headers)


def t_errors(base):
    alice = name("alice")
    ta = token(alice)
    r = req(base, "GET", "/nope", ta)
    check(r.status == 404 and err_code(r) == "not_found", "unknown route 404", r)
    r = req(base, "GET", "/messages/", ta)
    check(r.status == 404, "trailing slash 404", r)
    # demo.tokens is off (the default): the demo token route does not exist, for any method, with
    # or without a token (test_web.sh covers it switched on).
    for tok in (None, ta):
        for method in ("POST", "GET"):
            r = req(base, method, "/demo/token", tok, body={"user": alice} if method == "POST" else None)
            check(r.status == 404 and err_code(r) == "not_found" and "token" not in (r.json() or {}),
                  "%s /demo/token 404 while demo.tokens is off (%s)" % (method, "token" if tok else "no token"), r)
    r = req(base, "GET", "/groups/abc", ta)
    check(r.status == 404, "non-numeric group id 404", r)
    for method, path, allow in (("PUT", "/messages", "GET, POST"), ("DELETE", "/sync", "GET"),
                                ("GET", "/receipts", "POST"), ("POST", "/messages/long_poll", "GET"),
                                ("GET", "/groups/5/members/bob", "DELETE"),
                                ("PATCH", "/rooms/r1/messages", "GET, POST")):
        r = req(base, method, path, ta)
        check(r.status == 405 and r.headers.get("allow") == allow and r.json() is not None,
              "%s %s 405 Allow: %s" % (method, path, allow), (r, r.headers.get("allow")))
    # 401 variants
    cases = [
        ("no header", None, {}),
        ("Basic scheme", None, {"Authorization": "Basic YWxpY2U6cHc="}),
        ("garbage token", "not.a.token", {}),
        ("alg none", token(alice, alg="none", sign=False), {}),
        ("HS384", token(alice, alg="HS384"), {}),
        ("expired", token(alice, exp_in=-3600), {}),
        ("wrong secret", token(alice, secret="another-secret-0123456789abcdef0123456789"), {}),
        ("bad sub", token("bad user!"), {}),
    ]
    for what, tok, hdrs in cases:
        r = req(base, "GET", "/messages", tok, headers=hdrs)
        check(r.status == 401 and err_code(r) == "unauthorized" and
              r.headers.get("www-authenticate", "").startswith("Bearer"),
              "401 for %s" % what, r)
    r = req(base, "GET", "/metrics")
    check(r.status == 401, "/metrics needs a token", r)


def t_auth_claims(base):
    """exp required, nbf/iat honoured with the leeway (30 s), sub a valid user id."""
    now = int(time.time())
    u = name("claims")
    cases = [
        ("nbf an hour ahead", {"sub": u, "exp": now + 3600, "nbf": now + 3600}, 401),
        ("nbf within the leeway", {"sub": u, "exp": now + 3600, "nbf": now + 10}, 200),
        ("iat an hour ahead", {"sub": u, "exp": now + 3600, "iat": now + 3600}, 401),
        ("no exp", {"sub": u}, 401),
        ("exp as a string", {"sub": u, "exp": str(now + 3600)}, 401),
        ("expired within the leeway", {"sub": u, "exp": now - 5}, 200),
        ("no sub", {"exp": now + 3600}, 401),
        ("empty sub", {"sub": "", "exp": now + 3600}, 401),
        ("sub of 65 bytes", {"sub": "a" * 65, "exp": now + 3600}, 401),
        ("sub of 64 bytes", {"sub": "a" * 64, "exp": now + 3600}, 200),
        ("sub not a string", {"sub": 5, "exp": now + 3600}, 401),
        ("sub of every allowed character", {"sub": "a@b.c+d-e_F9", "exp": now + 3600}, 200),
    ]
    for what, claims, status in cases:
        r = req(base, "GET", "/messages", token_claims(claims))
        check(r.status == status and (status == 200 or err_code(r) == "unauthorized"),
              "token with %s: %d" % (what, status), r)
    r = req(base, "GET", "/messages", token_claims({"sub": u, "exp": now + 3600}, {"alg": "none"}))
    check(r.status == 401, "alg none refused even when signed", r)
    # errors before authentication still have the contract's shape
    r = req(base, "GET", "/nope")
    check(r.status == 404 and err_code(r) == "not_found" and
          r.headers.get("content-type", "").startswith("application/json"), "404 without a token: JSON", r)
    r = req(base, "DELETE", "/messages")
    check(r.status == 405 and err_code(r) == "method_not_allowed" and r.headers.get("allow") == "GET, POST",
          "405 without a token: JSON + Allow", r)


def t_limits(base):
    alice, bob = name("alice"), name("bob")
    ta = token(alice)
    # body over 64 KiB: refused before it is read; at the limit: accepted.
    pad_for = lambda total: total - len(json.dumps({"to": bob, "content": "x", "client_msg_id": "c-lim", "pad": ""}))
    body = {"to": bob, "content": "x", "client_msg_id": name("c"), "pad": ""}
    base_len = len(json.dumps(body))
    body["pad"] = "a" * (65536 - base_len)
    raw = json.dumps(body)
    check(len(raw) == 65536, "body of exactly 64 KiB built", len(raw))
    r = req(base, "POST", "/messages", ta, raw=raw)
    check(r.status == 200 and r.json().get("server_msg_id"), "64 KiB body accepted", r)
    body["pad"] += "a"
    r = req(base, "POST", "/messages", ta, raw=json.dumps(body))
    check(r.status == 413 and err_code(r) == "payload_too_large", "64 KiB + 1 body: 413", r)
    del pad_for
    # content length in characters (after trimming), multibyte counts as one
    r = send(base, ta, bob, "é" * 4000)
    check(r.status == 200, "content of 4000 characters accepted", r)
    r = send(base, ta, bob, "x" * 4001)
    check(r.status == 400 and err_code(r) == "bad_request" and "content" in err_msg(r),
          "content of 4001 characters: 400 naming content", r)
    r = send(base, ta, bob, "   ")
    check(r.status == 400 and "content" in err_msg(r), "blank content: 400 naming content", r)
    r = req(base, "POST", "/messages", ta, body={"to": bob, "content": "hi"})
    check(r.status == 400 and "client_msg_id" in err_msg(r), "missing client_msg_id: 400 naming it", r)
    r = req(base, "POST", "/messages", ta, body={"to": "bad user", "content": "hi", "client_msg_id": "x"})
    check(r.status == 400 and "to" in err_msg(r), "bad recipient: 400 naming to", r)
    r = req(base, "POST", "/messages", ta, body={"to": bob, "content": 5, "client_msg_id": "x"})
    check(r.status == 400 and "content" in err_msg(r), "content of the wrong type: 400", r)
    r = req(base, "POST", "/messages", ta, raw='{"to":')
    check(r.status == 400 and "body" in err_msg(r), "bad JSON: 400 naming body", r)
    r = req(base, "POST", "/messages", ta, raw='[1,2]')
    check(r.status == 400 and "body" in err_msg(r), "JSON array body: 400", r)
    r = req(base, "POST", "/messages", ta)
    check(r.status == 400 and "body" in err_msg(r), "empty body: 400", r)
    for q, field in (("limit=0", "limit"), ("limit=501", "limit"), ("after=abc", "after"),
                     ("after=-1", "after"), ("limit=1x", "limit")):
        r = req(base, "GET", "/messages?" + q, ta)
        check(r.status == 400 and field in err_msg(r), "GET /messages?%s: 400 naming %s" % (q, field), r)
    for q, field in (("timeout=61", "timeout"), ("timeout=-1", "timeout"), ("after=%ZZ", "after")):
        r = req(base, "GET", "/messages/long_poll?" + q, ta)
        check(r.status == 400 and field in err_msg(r), "long_poll?%s: 400 naming %s" % (q, field), r)
    r = req(base, "GET", "/messages?limit=500", ta)
    check(r.status == 200, "limit=500 accepted", r)
    r = req(base, "GET", "/presence", ta)
    check(r.status == 400 and "users" in err_msg(r), "presence without users: 400", r)
    r = req(base, "GET", "/presence?users=a,bad%20user", ta)
    check(r.status == 400 and "users" in err_msg(r), "presence with a bad user id: 400", r)
    r = req(base, "GET", "/sync", ta)
    check(r.status == 400 and "device_id" in err_msg(r), "sync without device_id: 400", r)
    r = req(base, "POST", "/receipts", ta, body={"message_id": 1, "status": "seen"})
    check(r.status == 400 and "status" in err_msg(r), "receipt with a bad status: 400 naming it", r)
    r = req(base, "POST", "/typing", ta, body={})
    check(r.status == 400, "typing without a target: 400", r)
    r = req(base, "POST", "/rooms/r1/messages", ta, body={"text": "x" * 501})
    check(r.status == 400 and "text" in err_msg(r), "room text of 501 characters: 400 naming text", r)
    r = req(base, "GET", "/rooms/bad%20room/messages", ta)
    check(r.status == 400 and "room" in err_msg(r), "bad room name: 400 naming room", r)
    # no answer leaks internals
    for r in (req(base, "GET", "/messages?after=abc", ta), req(base, "POST", "/messages", ta, raw="{")):
        check("sql" not in r.body.lower() and "/tmp" not in r.body and "/run" not in r.body,
              "error body free of internals", r)


def t_send_poll(base):
    alice, bob = name("alice"), name("bob")
    ta, tb = token(alice), token(bob)
    cmid = name("c")
    r1 = send(base, ta, bob, "hello", cmid)
    j1 = r1.json() or {}
    check(r1.status == 200 and j1.get("duplicate") is False and j1.get("server_msg_id", 0) > 0 and
          j1.get("seq", 0) >= 1, "send: 200 with server_msg_id, seq, duplicate:false", r1)
    r2 = send(base, ta, bob, "hello", cmid)
    j2 = r2.json() or {}
    check(r2.status == 200 and j2.get("duplicate") is True and
          j2.get("server_msg_id") == j1.get("server_msg_id") and j2.get("seq") == j1.get("seq"),
          "retried send: same server_msg_id and seq, duplicate:true", r2)
    r = req(base, "GET", "/messages?after=0", tb)
    ev = [e for e in (r.json() or {}).get("events", []) if e.get("type") == "new_message" and
          e["message"].get("client_msg_id") == cmid]
    check(r.status == 200 and len(ev) == 1 and ev[0]["message"]["id"] == j1.get("server_msg_id") and
          ev[0]["message"]["from"] == alice and ev[0]["message"]["content"] == "hello",
          "recipient got the message exactly once", r)
    r = req(base, "GET", "/messages?after=0", ta)
    check(any(e.get("message", {}).get("client_msg_id") == cmid for e in r.json()["events"]),
          "sender's own log has the message", r)
    # short poll pages
    for i in range(4):
        send(base, ta, bob, "m%d" % i)
    r = req(base, "GET", "/messages?after=0&limit=2", tb)
    j = r.json()
    check(r.status == 200 and len(j["events"]) == 2 and j["next"] == j["events"][-1]["seq"] and
          "has_more" not in j, "short poll honours limit, next = last seq", r)
    r = req(base, "GET", "/messages?after=%d" % j["next"], tb)
    seqs = [e["seq"] for e in r.json()["events"]]
    check(seqs == list(range(j["next"] + 1, j["next"] + 1 + len(seqs))) and len(seqs) == 3,
          "next page continues gap-free", seqs)
    r = req(base, "GET", "/messages?after=1000000", tb)
    check(r.json() == {"events": [], "next": 1000000}, "short poll past the end: empty, next=after", r)


def t_long_poll(base, base2=None, what=""):
    alice, bob = name("alice"), name("bob")
    ta, tb = token(alice), token(bob)
    send(base, ta, bob, "first")
    after = last_seq(base, tb)
    # immediate answer when something is there
    t0 = time.monotonic()
    r = req(base, "GET", "/messages/long_poll?after=0&timeout=10", tb)
    check(r.status == 200 and len(r.json()["events"]) >= 1 and time.monotonic() - t0 < 1.0,
          "long poll with events answers at once%s" % what, r)
    # wake by another client
    poll_base = base2 or base
    p = Poller(poll_base, "/messages/long_poll?after=%d&timeout=20" % after, tb)
    parked0 = metric(poll_base, tb, "polls_parked")
    p.start()
    wait_parked(poll_base, tb, parked0 + 1)
    time.sleep(0.1)
    cmid = name("c")
    r = send(base, ta, bob, "wake up", cmid)
    t_ack = time.monotonic()
    p.join(20)
    j = p.resp.json() if p.resp is not None else None
    ok = (p.resp is not None and p.resp.status == 200 and j is not None and len(j["events"]) >= 1 and
          j["events"][0]["message"]["client_msg_id"] == cmid and j["next"] == after + 1)
    check(ok, "parked long poll gets the message%s" % what, p.resp)
    if ok:
        lat = (p.t_done - t_ack) * 1000
        check(lat < 100, "long poll answered within 100 ms of the send ack%s (%.1f ms)" % (what, lat), lat)
    # timeout
    after = last_seq(base, tb)
    t0 = time.monotonic()
    r = req(base, "GET", "/messages/long_poll?after=%d&timeout=1" % after, tb)
    dt = time.monotonic() - t0
    check(r.status == 200 and r.body == '{"events":[],"next":%d}' % after and 0.9 <= dt < 3,
          "long poll times out with {\"events\":[],\"next\":after}%s (%.2f s)" % (what, dt), r)
    r = req(base, "GET", "/messages/long_poll?after=%d&timeout=0" % after, tb)
    check(r.body == '{"events":[],"next":%d}' % after, "timeout=0 answers at once", r)


def t_sync(base):
    alice, bob = name("alice"), name("bob")
    ta, tb = token(alice), token(bob)
    dev = name("dev")
    for i in range(3):
        send(base, ta, bob, "s%d" % i)
    r = req(base, "GET", "/sync?device_id=%s&after=0&limit=2" % dev, tb)
    j = r.json()
    check(r.status == 200 and len(j["events"]) == 2 and j["has_more"] is True and j["next"] == 2,
          "sync page with has_more:true", r)
    r = req(base, "GET", "/sync?device_id=%s&after=%d" % (dev, j["next"]), tb)
    j = r.json()
    check(len(j["events"]) == 1 and j["has_more"] is False and j["next"] == 3, "sync rest, has_more:false", r)
    r = req(base, "GET", "/sync?device_id=%s&after=%d" % (dev, j["next"]), tb)
    check(r.json() == {"events": [], "next": 3, "has_more": False}, "sync at the end: empty", r)
    # the device stops here (cursor 3); more arrives; it resumes without after
    for i in range(2):
        send(base, ta, bob, "later%d" % i)
    r = req(base, "GET", "/sync?device_id=%s" % dev, tb)
    j = r.json()
    check([e["seq"] for e in j["events"]] == [4, 5] and j["next"] == 5,
          "sync resumes the device exactly where it stopped", r)
    # another device has its own cursor (starts at 0)
    r = req(base, "GET", "/sync?device_id=%s" % name("dev"), tb)
    check(len(r.json()["events"]) == 5, "a new device starts from the beginning", r)
    # device from the token's dev claim
    tdev = token(bob, dev=dev)
    r = req(base, "GET", "/sync?after=5", tdev)
    check(r.status == 200 and r.json()["next"] == 5, "device_id from the token's dev claim", r)
    # sync long poll: parks and wakes
    p = Poller(base, "/sync?device_id=%s&after=5&timeout=10" % dev, tb)
    parked0 = metric(base, tb, "polls_parked")
    p.start()
    wait_parked(base, tb, parked0 + 1)
    send(base, ta, bob, "for sync")
    p.join(10)
    j = p.resp.json() if p.resp else None
    check(j is not None and [e["seq"] for e in j["events"]] == [6] and j["has_more"] is False,
          "sync with timeout waits and wakes", p.resp)
    r = req(base, "GET", "/sync?device_id=%s&after=6&timeout=1" % dev, tb)
    check(r.body == '{"events":[],"next":6,"has_more":false}', "sync long poll timeout shape", r)


def t_receipts_typing(base):
    alice, bob = name("alice"), name("bob")
    ta, tb = token(alice), token(bob)
    r = send(base, ta, bob, "read me")
    mid = r.json()["server_msg_id"]
    a_after = last_seq(base, ta)
    r = req(base, "POST", "/receipts", tb, body={"message_id": mid, "status": "read"})
    check(r.status == 204 and r.body == "", "POST /receipts 204", r)
    r = req(base, "GET", "/messages/%d/receipts" % mid, ta)
    j = r.json() or {}
    check(r.status == 200 and bob in j.get("read", []) and bob in j.get("delivered", []),
          "GET receipts: read implies delivered", r)
    r = req(base, "GET", "/messages?after=%d" % a_after, ta)
    st = [e for e in r.json()["events"] if e["type"] == "message_status"]
    check(len(st) == 1 and st[0]["message_id"] == mid and st[0]["status"] == "read" and st[0]["by"] == bob,
          "sender's log has the message_status event", r)
    r = req(base, "GET", "/messages/%d/receipts" % mid, token(name("eve")))
    check(r.status in (403, 404), "receipts of someone else's message refused", r)
    r = req(base, "POST", "/receipts", tb, body={"message_id": 999999999, "status": "read"})
    check(r.status == 404 and err_code(r) == "not_found", "receipt for a missing message: 404", r)
    # typing reaches a waiting long poll (ephemeral: next stays)
    b_after = last_seq(base, tb)
    p = Poller(base, "/messages/long_poll?after=%d&timeout=10" % b_after, tb)
    parked0 = metric(base, tb, "polls_parked")
    p.start()
    wait_parked(base, tb, parked0 + 1)
    r = req(base, "POST", "/typing", ta, body={"to": bob})
    check(r.status == 204, "POST /typing 204", r)
    p.join(10)
    j = p.resp.json() if p.resp else None
    check(j is not None and j["next"] == b_after and len(j["events"]) == 1 and
          j["events"][0].get("type") == "typing" and j["events"][0].get("from") == alice and
          "seq" not in j["events"][0], "typing event answers a waiting long poll", p.resp)


def t_conversations_groups_presence(base):
    alice, bob, carol, dave = name("alice"), name("bob"), name("carol"), name("dave")
    ta, tb, tc, td = token(alice), token(bob), token(carol), token(dave)
    send(base, ta, bob, "conv")
    r = req(base, "GET", "/conversations?limit=10", ta)
    j = r.json() or {}
    check(r.status == 200 and any(c.get("with") == bob for c in j.get("conversations", [])),
          "GET /conversations lists the peer", r)
    r = req(base, "GET", "/conversations?limit=0", ta)
    check(r.status == 400 and "limit" in err_msg(r), "conversations limit=0: 400", r)
    r = req(base, "POST", "/groups", ta, body={"name": "team", "members": [bob, carol]})
    gid = (r.json() or {}).get("group_id")
    check(r.status == 200 and isinstance(gid, int) and gid > 0, "POST /groups gives group_id", r)
    r = req(base, "POST", "/groups", ta, body={"name": "", "members": [bob]})
    check(r.status == 400 and "name" in err_msg(r), "group without a name: 400", r)
    r = req(base, "GET", "/groups/%d" % gid, tb)
    j = r.json() or {}
    check(r.status == 200 and set(j.get("members", [])) >= {alice, bob, carol} and alice in j.get("admins", []),
          "GET /groups/{id}: members and admins", r)
    r = req(base, "GET", "/groups/%d" % gid, td)
    check(r.status == 403, "non-member GET group: 403", r)
    r = req(base, "POST", "/groups/%d/members" % gid, tb, body={"user": dave})
    check(r.status == 403, "non-admin adds: 403", r)
    r = req(base, "POST", "/groups/%d/members" % gid, ta, body={"user": dave})
    check(r.status == 204, "admin adds a member: 204", r)
    r = req(base, "POST", "/groups/%d/members" % gid, ta, body={"user": 7})
    check(r.status == 400 and "user" in err_msg(r), "add with a bad user field: 400", r)
    r = send(base, td, None, "hi group", group=gid)
    check(r.status == 200, "new member sends to the group", r)
    r = req(base, "GET", "/messages?after=0", tc)
    check(any(e.get("message", {}).get("group_id") == gid for e in r.json()["events"]),
          "group message reaches another member", r)
    r = req(base, "DELETE", "/groups/%d/members/%s" % (gid, dave), td)
    check(r.status == 204, "a member removes itself: 204", r)
    r = send(base, td, None, "still here?", group=gid)
    check(r.status == 403, "a removed member cannot send to the group: 403", r)
    r = req(base, "GET", "/groups/999999999", ta)
    check(r.status in (403, 404), "missing group refused", r)
    r = req(base, "GET", "/presence?users=%s,%s" % (alice, bob), ta)
    j = r.json() or {}
    check(r.status == 200 and {p.get("user") for p in j.get("presence", [])} == {alice, bob},
          "GET /presence lists the users", r)


def t_conversations_shape(base):
    """Newest first, with/group_id null shapes, unread counts, default limit 50."""
    alice, bob, carol = name("alice"), name("bob"), name("carol")
    ta, tb, tc = token(alice), token(bob), token(carol)
    send(base, tb, alice, "b1")
    m2 = send(base, tb, alice, "b2").json()["server_msg_id"]
    gid = req(base, "POST", "/groups", ta, body={"name": "g", "members": [bob, carol]}).json()["group_id"]
    send(base, tc, None, "in group", group=gid)
    r = req(base, "GET", "/conversations", ta)
    cs = (r.json() or {}).get("conversations", [])
    check(r.status == 200 and len(cs) == 2 and cs[0]["with"] is None and cs[0]["group_id"] == gid and
          cs[1]["with"] == bob and cs[1]["group_id"] is None and cs[0]["last_ts"] >= cs[1]["last_ts"],
          "conversations newest first, group entry with:null, peer entry group_id:null", r)
    check(len(cs) == 2 and cs[1]["unread"] == 2 and cs[0]["unread"] == 1 and
          cs[1]["last_message"]["id"] == m2 and cs[1]["last_message"]["from"] == bob and
          cs[1]["last_message"]["group_id"] is None and cs[0]["last_message"]["to"] is None and
          cs[0]["last_message"]["content"] == "in group" and cs[1]["last_message"]["ts"] == cs[1]["last_ts"],
          "conversation unread counts and last_message shape", r)
    req(base, "POST", "/receipts", ta, body={"message_id": m2, "status": "read"})
    cs = req(base, "GET", "/conversations", ta).json()["conversations"]
    check([c["unread"] for c in cs] == [1, 0], "a read receipt zeroes that conversation's unread", cs)
    # default limit 50 (docs/protocol.md), limit up to 500
    many = name("many")
    tm = token(many)
    for i in range(51):
        send(base, tm, name("peer"), "m%d" % i)
    r = req(base, "GET", "/conversations", tm)
    check(r.status == 200 and len(r.json()["conversations"]) == 50, "conversations: default limit 50",
          len((r.json() or {}).get("conversations", [])))
    r = req(base, "GET", "/conversations?limit=51", tm)
    check(r.status == 200 and len(r.json()["conversations"]) == 51, "conversations?limit=51 gives 51", r.status)
    r = req(base, "GET", "/conversations?limit=501", tm)
    check(r.status == 400 and "limit" in err_msg(r), "conversations?limit=501: 400", r)


def t_receipts_rules(base):
    """Never moves back, read implies delivered, members counts, access, group_update events."""
    alice, bob, carol, eve = name("alice"), name("bob"), name("carol"), name("eve")
    ta, tb, tc, te = token(alice), token(bob), token(carol), token(eve)
    m1 = send(base, ta, bob, "one").json()["server_msg_id"]
    m2 = send(base, ta, bob, "two").json()["server_msg_id"]
    a0 = last_seq(base, ta)
    r = req(base, "POST", "/receipts", tb, body={"message_id": m2, "status": "delivered"})
    check(r.status == 204, "delivered receipt 204", r)
    j1 = req(base, "GET", "/messages/%d/receipts" % m1, ta).json()
    check(j1 == {"members": 1, "delivered": [bob], "read": []},
          "delivered covers the earlier message of the conversation", j1)
    req(base, "POST", "/receipts", tb, body={"message_id": m1, "status": "read"})
    req(base, "POST", "/receipts", tb, body={"message_id": m1, "status": "delivered"})
    j1 = req(base, "GET", "/messages/%d/receipts" % m1, ta).json()
    j2 = req(base, "GET", "/messages/%d/receipts" % m2, ta).json()
    check(j1 == {"members": 1, "delivered": [bob], "read": [bob]} and
          j2 == {"members": 1, "delivered": [bob], "read": []},
          "markers never move back (read m1 after delivered m2; delivered again changes nothing)", (j1, j2))
    st = [(e["message_id"], e["status"], e["by"]) for e in
          req(base, "GET", "/messages?after=%d" % a0, ta).json()["events"] if e["type"] == "message_status"]
    check(st == [(m2, "delivered", bob), (m1, "read", bob)],
          "one message_status per moved marker in the sender's log", st)
    r = req(base, "GET", "/messages/%d/receipts" % m1, tb)
    check(r.status == 200, "the recipient may read the receipts", r)
    r = req(base, "GET", "/messages/%d/receipts" % m1, te)
    check(r.status == 403 and err_code(r) == "forbidden", "a stranger may not: 403", r)
    r = req(base, "GET", "/messages/999999999/receipts", ta)
    check(r.status == 404 and err_code(r) == "not_found", "receipts of an unknown message: 404", r)
    r = req(base, "POST", "/receipts", ta, body={"message_id": m1, "status": "read"})
    check(r.status == 404, "receipt for one's own message: 404", r)
    # a group: members counts the others; group_update events reach the members
    gid = req(base, "POST", "/groups", ta, body={"name": "g", "members": [bob, carol]}).json()["group_id"]
    gm = send(base, ta, None, "to group", group=gid).json()["server_msg_id"]
    req(base, "POST", "/receipts", tb, body={"message_id": gm, "status": "read"})
    r = req(base, "GET", "/messages/%d/receipts" % gm, tc)
    check(r.json() == {"members": 2, "delivered": [bob], "read": [bob]},
          "group receipts: members = the others, read implies delivered, a member may look", r)
    r = req(base, "GET", "/messages/%d/receipts" % gm, te)
    check(r.status == 403, "group receipts: a non-member gets 403", r)
    c0 = last_seq(base, tc)
    r = req(base, "POST", "/groups/%d/members" % gid, te, body={"user": eve})
    check(r.status == 403, "a non-member cannot add: 403", r)
    r = req(base, "POST", "/groups/999999999/members", ta, body={"user": eve})
    check(r.status == 404 and err_code(r) == "not_found", "adding to a missing group: 404", r)
    r = req(base, "DELETE", "/groups/%d/members/%s" % (gid, eve), ta)
    check(r.status == 404, "removing a non-member: 404", r)
    r = req(base, "DELETE", "/groups/%d/members/%s" % (gid, carol), tb)
    check(r.status == 403, "a member cannot remove another: 403", r)
    req(base, "POST", "/groups/%d/members" % gid, ta, body={"user": eve})
    req(base, "DELETE", "/groups/%d/members/%s" % (gid, bob), tb)
    ev = [(e["group_id"], e["action"], e["user"], e["by"]) for e in
          req(base, "GET", "/messages?after=%d" % c0, tc).json()["events"] if e["type"] == "group_update"]
    check(ev == [(gid, "member_added", eve, alice), (gid, "member_removed", bob, bob)],
          "group_update events (added by the admin, self-removal) in a member's log", ev)
    r = send(base, tb, None, "gone", group=gid)
    check(r.status == 403 and err_code(r) == "forbidden", "sending to a group one left: 403", r)


def t_room_history(base):
    """Last 200 comments after ID, oldest first; 500 characters accepted."""
    room = name("hist")
    r = req(base, "POST", "/rooms/%s/messages" % room, token(name("u")), body={"text": "é" * 500})
    check(r.status == 200 and len(r.json()["comment"]["text"]) == 500, "room text of 500 characters", r)
    for _ in range(21):  # 10 each: under the per-user rate limit
        tu = token(name("u"))
        for i in range(10):
            req(base, "POST", "/rooms/%s/messages" % room, tu, body={"text": "h%d" % i})
    r = req(base, "GET", "/rooms/%s/messages" % room, token(name("r")))
    j = r.json() or {}
    ids = [e["comment"]["id"] for e in j.get("events", [])]
    check(r.status == 200 and len(ids) == 200 and ids == sorted(ids) and j["next"] == ids[-1],
          "room history: the last 200, oldest first, next = last id", (r.status, len(ids)))
    r = req(base, "GET", "/rooms/%s/messages?after=%d" % (room, ids[-3]), token(name("r")))
    check([e["comment"]["id"] for e in r.json()["events"]] == ids[-2:], "room history after=ID", r)


def history(base, tok, path):
    """GET a history page: (status, json or None)."""
    r = req(base, "GET", path, tok)
    return r, r.json()


def t_history(base):
    alice, bob, carol, dave = name("alice"), name("bob"), name("carol"), name("dave")
    ta, tb, tc, td = token(alice), token(bob), token(carol), token(dave)
    ids = []
    for i in range(5):
        r = send(base, ta if i < 3 else tb, bob if i < 3 else alice, "h%d" % i)
        ids.append(r.json()["server_msg_id"])
    send(base, ta, carol, "elsewhere")
    ids.reverse()  # newest first
    pages, before = [], None
    while True:
        path = "/conversations/%s/messages?limit=2" % bob + ("&before=%d" % before if before else "")
        r, j = history(base, ta, path)
        if not check(r.status == 200 and set(j) == {"messages", "next_before"}, "history page shape", r):
            return
        pages.append([m["id"] for m in j["messages"]])
        before = j["next_before"]
        if before is None:
            break
    check(pages == [ids[0:2], ids[2:4], ids[4:5]], "1:1 history pages of 2, newest first, next_before", pages)
    r, j = history(base, tb, "/conversations/%s/messages" % alice)
    check(r.status == 200 and [m["id"] for m in j["messages"]] == ids and j["next_before"] is None,
          "the peer sees the same conversation (default limit, next_before null)", r)
    # A history message is exactly the message of the new_message event.
    ev = [e["message"] for e in req(base, "GET", "/messages?after=0", tb).json()["events"]]
    check(j["messages"] == list(reversed(ev)), "history messages are the new_message objects", j)
    r, j = history(base, ta, "/conversations/%s/messages?before=%d&limit=200" % (bob, ids[2]))
    check([m["id"] for m in j["messages"]] == ids[3:], "before= starts below that id", r)
    r, j = history(base, tc, "/conversations/%s/messages" % bob)
    check(r.status == 200 and j == {"messages": [], "next_before": None}, "no conversation: empty page", r)
    for q, field in (("limit=0", "limit"), ("limit=201", "limit"), ("limit=1.5", "limit"),
                     ("before=0", "before"), ("before=abc", "before"), ("before=-1", "before")):
        r = req(base, "GET", "/conversations/%s/messages?%s" % (bob, q), ta)
        check(r.status == 400 and err_code(r) == "bad_request" and err_msg(r).startswith(field + ":"),
              "history %s: 400 naming %s" % (q, field), r)
    r = req(base, "GET", "/conversations/a%20b/messages", ta)
    check(r.status == 400 and err_msg(r).startswith("user:"), "history with a bad user id: 400", r)
    r = req(base, "POST", "/conversations/%s/messages" % bob, ta, body={})
    check(r.status == 405 and r.headers.get("allow") == "GET", "POST on history: 405", r)
    r = req(base, "GET", "/conversations/%s/messages" % bob)
    check(r.status == 401, "history without a token: 401", r)

    # Groups: a late member sees what came after it joined, a removed one what reached it.
    gid = req(base, "POST", "/groups", ta, body={"name": "hist", "members": [bob]}).json()["group_id"]
    g1 = send(base, ta, None, "g1", group=gid).json()["server_msg_id"]
    req(base, "POST", "/groups/%d/members" % gid, ta, body={"user": carol})
    g2 = send(base, tb, None, "g2", group=gid).json()["server_msg_id"]
    check(req(base, "DELETE", "/groups/%d/members/%s" % (gid, bob), ta).status == 204, "bob removed")
    g3 = send(base, tc, None, "g3", group=gid).json()["server_msg_id"]
    seen = {}
    for who, tok in (("alice", ta), ("carol", tc), ("bob", tb)):
        r, j = history(base, tok, "/groups/%d/messages" % gid)
        seen[who] = [m["id"] for m in j["messages"]] if r.status == 200 else r.status
    check(seen == {"alice": [g3, g2, g1], "carol": [g3, g2], "bob": [g2, g1]},
          "group history: member all, late member since joining, removed member until removal", seen)
    r, j = history(base, ta, "/groups/%d/messages?limit=1" % gid)
    check(r.status == 200 and [m["group_id"] for m in j["messages"]] == [gid] and j["messages"][0]["to"] is None
          and j["next_before"] == g3, "group history page of 1", r)
    r = req(base, "GET", "/groups/%d/messages" % gid, td)
    check(r.status == 403 and err_code(r) == "forbidden", "group history for a non-member: 403", r)
    r = req(base, "GET", "/groups/999999999/messages", ta)
    check(r.status == 404 and err_code(r) == "not_found", "group history of no such group: 404", r)
    r = req(base, "GET", "/groups/%d/messages?limit=201" % gid, ta)
    check(r.status == 400 and err_msg(r).startswith("limit:"), "group history limit=201: 400", r)


def prune_config(days_events, days_messages, batch=1000):
    """A config like the stack's with a [retention] section, for parleyctl prune."""
    path = os.path.join(os.environ.get("PARLEY_TEST_DIR", "/tmp"), "prune-%s.conf" % RUN_ID)
    with open(os.environ["PARLEY_TEST_CONFIG"]) as f:
        text = f.read()
    with open(path, "w") as f:
        f.write(text + "\n[retention]\nevents_days = %d\nmessages_days = %d\nbatch = %d\npause_ms = 0\n"
                % (days_events, days_messages, batch))
    return path


def prune(cut_ms, conf):
    """parleyctl prune as of one day after cut_ms (events_days = 1: everything before cut_ms goes)."""
    import subprocess
    ctl = os.path.join(os.environ.get("PARLEY_BUILDDIR", "."), "parleyctl")
    out = subprocess.run([ctl, "--config", conf, "prune", "--now", str(cut_ms + 86400000)],
                         capture_output=True, text=True, timeout=60)
    return out.returncode, out.stdout + out.stderr


def moment():
    """A time (ms) strictly between what was stored before and what is stored after."""
    time.sleep(0.05)
    t = int(time.time() * 1000)
    time.sleep(0.05)
    return t


def t_retention(base):
    alice, bob, carol = name("alice"), name("bob"), name("carol")
    ta, tb, tc = token(alice), token(bob), token(carol)
    dev = name("dev")
    ids = [send(base, ta, bob, "old%d" % i).json()["server_msg_id"] for i in range(3)]
    send(base, ta, carol, "only one")
    cut = moment()
    ids += [send(base, ta, bob, "new%d" % i).json()["server_msg_id"] for i in range(2)]
    conf = prune_config(1, 0)
    rc, out = prune(cut, conf)
    check(rc == 0 and "pruned" in out, "parleyctl prune runs", out)
    r = req(base, "GET", "/messages?after=0", tb)
    j = r.json()
    check(r.status == 200 and [e["seq"] for e in j["events"]] == [4, 5] and j["next"] == 5
          and j.get("reset") is True and j.get("oldest_seq") == 4,
          "GET /messages after=0 behind the pruned log: the kept events, reset, oldest_seq", r)
    check(list(j) == ["events", "next", "reset", "oldest_seq"], "reset keys come last", r.body)
    r = req(base, "GET", "/messages?after=3", tb)
    check(r.status == 200 and "reset" not in r.json() and len(r.json()["events"]) == 2,
          "after=oldest_seq-1 is not behind: no reset", r)
    r = req(base, "GET", "/sync?device_id=%s&after=1&limit=1" % dev, tb)
    j = r.json()
    check(r.status == 200 and j == {"events": j["events"], "next": 4, "has_more": True, "reset": True,
                                    "oldest_seq": 4} and j["events"][0]["seq"] == 4,
          "/sync behind: reset and oldest_seq with has_more", r)
    t0 = time.monotonic()
    r = req(base, "GET", "/messages/long_poll?after=0&timeout=10", tb)
    check(r.status == 200 and r.json().get("reset") is True and time.monotonic() - t0 < 5,
          "a long poll behind answers at once with reset", r)
    # carol's whole log was pruned: nothing to return, yet behind; next skips the hole.
    t0 = time.monotonic()
    r = req(base, "GET", "/sync?device_id=%s&after=0&timeout=10" % dev, tc)
    check(r.status == 200 and r.json() == {"events": [], "next": 1, "has_more": False, "reset": True,
                                           "oldest_seq": 2} and time.monotonic() - t0 < 5,
          "a sync long poll on a log pruned whole answers at once: reset, next past the hole", r)
    r = req(base, "GET", "/messages?after=1", tc)
    check(r.status == 200 and r.json() == {"events": [], "next": 1}, "from next on: no reset", r)
    # Messages are kept (messages_days 0): history reloads what the log lost.
    r, j = history(base, tb, "/conversations/%s/messages" % alice)
    check(r.status == 200 and [m["id"] for m in j["messages"]] == list(reversed(ids)),
          "history still has the messages whose events were pruned", r)
    # messages_days: a pruned message is gone from history too.
    rc, out = prune(cut, prune_config(0, 1))
    r, j = history(base, tb, "/conversations/%s/messages" % alice)
    check(rc == 0 and r.status == 200 and [m["id"] for m in j["messages"]] == list(reversed(ids[3:])),
          "pruned messages are gone from history", (out, r))


def t_health_memcached(base):
    """memcached's state in /health is probed, not remembered (SIGSTOP: down; SIGCONT: ok)."""
    pid = 0
    try:
        with open(os.path.join(os.environ.get("PARLEY_TEST_DIR", ""), "memcached.pid")) as f:
            pid = int(f.read().strip())
    except (OSError, ValueError):
        pid = int(os.environ.get("PARLEY_TEST_MEMCACHED_PID") or 0)
    if not check(pid > 0, "memcached pid known"):
        return
    for _ in range(8):  # every request thread has talked to memcached
        req(base, "GET", "/health")
    os.kill(pid, signal.SIGSTOP)
    try:
        rs = [req(base, "GET", "/health") for _ in range(8)]
    finally:
        os.kill(pid, signal.SIGCONT)
    check(all(r.status == 200 and r.json() == {"status": "ok", "mysql": "ok", "memcached": "down", "bus": "ok"}
              for r in rs), "memcached stopped: every /health says memcached down (200)", [r.body for r in rs])
    ok = wait_until(lambda: all(req(base, "GET", "/health").json().get("memcached") == "ok" for _ in range(8)),
                    10, 0.3)
    check(ok, "memcached back: /health says ok again")


def t_health_memcached_restart(base):
    """memcached restarted (empty, new socket): /health says ok as soon as it answers, no flapping.

    Each request thread's connection is stale after the restart and its breaker keeps it away
    from memcached for a second after the first failure; /health probes on a fresh connection."""
    tdir = os.environ.get("PARLEY_TEST_DIR", "")
    services = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "harness", "services")
    for _ in range(8):  # every request thread has a connection to the old memcached
        req(base, "GET", "/health")
    rc = subprocess.run([services, "restart-memcached", tdir], capture_output=True, text=True)
    if not check(rc.returncode == 0, "memcached restarted", rc.stderr):
        return
    seen = []
    t_end = time.monotonic() + 3
    while time.monotonic() < t_end:
        seen.append(req(base, "GET", "/health").json().get("memcached"))
        time.sleep(0.03)
    check(seen and all(m == "ok" for m in seen),
          "memcached restarted: every /health says memcached ok from the moment it answers (%d probes)" %
          len(seen), [i for i, m in enumerate(seen) if m != "ok"][:20])


def t_rooms(base):
    room = name("room")
    alice, bob = name("alice"), name("bob")
    ta, tb = token(alice), token(bob)
    r = req(base, "POST", "/rooms/%s/messages" % room, ta, body={"text": "  hello room  "})
    j = r.json() or {}
    check(r.status == 200 and j.get("type") == "room_message" and j.get("comment", {}).get("text") == "hello room",
          "POST room message (trimmed)", r)
    first = j.get("comment", {}).get("id", 0)
    r = req(base, "GET", "/rooms/%s/messages" % room, tb)
    j = r.json() or {}
    check(r.status == 200 and len(j.get("events", [])) == 1 and j["next"] == first,
          "GET room history", r)
    # long poll on the room
    p = Poller(base, "/rooms/%s/messages?after=%d&timeout=10" % (room, first), tb)
    parked0 = metric(base, tb, "polls_parked")
    p.start()
    wait_parked(base, tb, parked0 + 1)
    req(base, "POST", "/rooms/%s/messages" % room, ta, body={"text": "second"})
    p.join(10)
    j = p.resp.json() if p.resp else None
    check(j is not None and len(j["events"]) == 1 and j["events"][0]["comment"]["text"] == "second",
          "room long poll wakes on a new comment", p.resp)
    r = req(base, "GET", "/rooms/%s/messages?after=%d&timeout=1" % (room, j["next"] if j else 0), tb)
    check(r.status == 200 and r.json()["events"] == [], "room long poll times out empty", r)
    # rate limit: more than 10 a second
    codes = [req(base, "POST", "/rooms/%s/messages" % room, tb, body={"text": "spam%d" % i}) for i in range(14)]
    limited = [r for r in codes if r.status == 429]
    check(limited and err_code(limited[0]) == "rate_limited" and limited[0].headers.get("retry-after"),
          "room rate limit: 429 with Retry-After", [r.status for r in codes])


def t_metrics(base):
    tok = token(name("ops"))
    r = req(base, "GET", "/metrics", tok)
    check(r.status == 200 and r.headers.get("content-type", "").startswith("text/plain") and
          "parley_fcgi_http_requests_total" in r.body and "parley_fcgi_polls_parked" in r.body and
          "parley_fcgi_actor_processed_total" in r.body, "GET /metrics Prometheus text", r.body[:200])


async def mass_polls(base, n, pid):
    sender = name("sender")
    ts = token(sender)
    users = [name("w") for _ in range(n)]
    toks = [token(u) for u in users]
    threads0 = proc_threads(pid)
    parked0 = metric(base, ts, "polls_parked")
    async def poll(i, tok):
        # paced connects (about 1000/s) so no listen queue overflows on the way in
        await asyncio.sleep(i * 0.001)
        return await areq(base, "GET", "/messages/long_poll?after=0&timeout=50", tok, timeout=60)

    tasks = [asyncio.ensure_future(poll(i, t)) for i, t in enumerate(toks)]
    t0 = time.monotonic()
    while time.monotonic() - t0 < 40:
        await asyncio.sleep(0.25)
        parked = await asyncio.get_event_loop().run_in_executor(None, metric, base, ts, "polls_parked")
        if parked >= parked0 + n:
            break
    check(parked >= parked0 + n, "%d long polls parked at once" % n, parked - parked0)
    threads1 = proc_threads(pid)
    fds1 = proc_fds(pid)
    check(threads1 == threads0, "thread count constant with %d parked polls (%d -> %d)" % (n, threads0, threads1))
    check(fds1 >= n, "each parked poll holds just its connection (%d fds)" % fds1)
    done = [t for t in tasks if t.done()]
    check(not done, "no poll answered before its message", [t.result() for t in done[:3]])
    cmids = [name("c") for _ in range(n)]
    sem2 = asyncio.Semaphore(32)

    async def send1(u, c):
        async with sem2:
            return await areq(base, "POST", "/messages", ts, {"to": u, "content": "for " + u, "client_msg_id": c})

    t1 = time.monotonic()
    sends = await asyncio.gather(*[send1(u, c) for u, c in zip(users, cmids)])
    check(all(s.status == 200 for s in sends), "%d sends acknowledged" % n, [s for s in sends if s.status != 200][:3])
    res = await asyncio.gather(*tasks, return_exceptions=True)
    dt = time.monotonic() - t1
    good = 0
    bad = []
    for r, c in zip(res, cmids):
        if isinstance(r, Resp) and r.status == 200:
            j = r.json()
            if j and len(j["events"]) == 1 and j["events"][0]["message"]["client_msg_id"] == c and j["next"] == 1:
                good += 1
                continue
        bad.append(r)
    check(good == n, "all %d parked polls answered with their own message (%.1f s)" % (n, dt), bad[:3])
    check(proc_threads(pid) == threads0, "thread count unchanged after the wake-up")


def t_mass(base, pid, n):
    asyncio.run(mass_polls(base, n, pid))


def fcgi_record(rtype, rid, content=b""):
    pad = (8 - len(content) % 8) % 8
    return struct.pack(">BBHHBB", 1, rtype, rid, len(content), pad, 0) + content + b"\0" * pad


def fcgi_params(params):
    out = b""
    for k, v in params.items():
        k, v = k.encode(), v.encode()
        for n in (len(k), len(v)):
            out += struct.pack("B", n) if n < 128 else struct.pack(">I", n | 0x80000000)
        out += k + v
    return out


def fcgi_request(sock_path, path, tok, rid=1, keep=False, sock=None):
    """Speak FastCGI to parley-fcgi directly, as a web server does. Returns the socket."""
    s = sock or socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    if sock is None:
        s.connect(sock_path)
    uri, _, query = path.partition("?")
    params = {"REQUEST_METHOD": "GET", "REQUEST_URI": path, "QUERY_STRING": query,
              "SCRIPT_NAME": uri, "SERVER_PROTOCOL": "HTTP/1.1", "CONTENT_LENGTH": "",
              "HTTP_AUTHORIZATION": "Bearer " + tok}
    s.sendall(fcgi_record(1, rid, struct.pack(">HB5x", 1, 1 if keep else 0)) +
              fcgi_record(4, rid, fcgi_params(params)) + fcgi_record(4, rid) + fcgi_record(5, rid))
    return s


def fcgi_response(s, timeout=10):
    """Read records until FCGI_END_REQUEST: (stdout bytes, True) or (partial, False) on EOF."""
    s.settimeout(timeout)
    buf, out = b"", b""
    while True:
        while len(buf) >= 8:
            _, rtype, _, clen, pad, _ = struct.unpack(">BBHHBB", buf[:8])
            if len(buf) < 8 + clen + pad:
                break
            content = buf[8:8 + clen]
            buf = buf[8 + clen + pad:]
            if rtype == 6:
                out += content
            elif rtype == 3:
                return out, True
        chunk = s.recv(65536)
        if not chunk:
            return out, False
        buf += chunk


def t_hangup(base, pid, sock_path):
    """A web server closing a parked request's connection frees it at once (no timeout wait)."""
    bob = name("bob")
    tb = token(bob)
    gone0 = metric(base, tb, "polls_gone_total")
    parked0 = metric(base, tb, "polls_parked")
    fds0 = proc_fds(pid)
    socks = [fcgi_request(sock_path, "/messages/long_poll?after=0&timeout=50", tb) for _ in range(5)]
    check(wait_parked(base, tb, parked0 + 5), "5 polls parked before hang-up")
    for s in socks:
        s.close()
    ok = wait_until(lambda: metric(base, tb, "polls_gone_total") >= gone0 + 5, 5)
    check(ok, "connections closed while parked are noticed (polls_gone +5)",
          metric(base, tb, "polls_gone_total") - gone0)
    check(wait_until(lambda: metric(base, tb, "polls_parked") <= parked0, 5), "and no longer parked")
    check(wait_until(lambda: proc_fds(pid) <= fds0, 5),
          "and their fds are closed (%d -> %d)" % (fds0, proc_fds(pid)))
    # FCGI_ABORT_REQUEST (no shipped web server sends it, a FastCGI client may) frees it too
    gone0 = metric(base, tb, "polls_gone_total")
    s = fcgi_request(sock_path, "/messages/long_poll?after=0&timeout=50", token(name("bob")), rid=1)
    check(wait_parked(base, tb, parked0 + 1), "a poll parked before FCGI_ABORT_REQUEST")
    s.sendall(fcgi_record(2, 1))
    check(wait_until(lambda: metric(base, tb, "polls_gone_total") >= gone0 + 1, 5) and
          wait_until(lambda: metric(base, tb, "polls_parked") <= parked0, 5),
          "FCGI_ABORT_REQUEST frees a parked poll at once")
    s.settimeout(5)
    try:
        eof = s.recv(1) == b""
    except OSError:
        eof = True
    check(eof, "and its connection is closed")
    s.close()


def t_hangup_http(base, what):
    """End to end: a client closing its HTTP connection while parked (nginx passes that on)."""
    bob = name("bob")
    tb = token(bob)
    gone0 = metric(base, tb, "polls_gone_total")
    parked0 = metric(base, tb, "polls_parked")
    u = urllib.parse.urlsplit(base)
    s = socket.create_connection((u.hostname, u.port))
    s.sendall(("GET /messages/long_poll?after=0&timeout=50 HTTP/1.1\r\nHost: x\r\n"
               "Authorization: Bearer %s\r\n\r\n" % tb).encode())
    check(wait_parked(base, tb, parked0 + 1), "poll parked" + what)
    s.close()
    ok = wait_until(lambda: metric(base, tb, "polls_gone_total") >= gone0 + 1, 5)
    check(ok, "a client hanging up while parked is freed at once" + what)


def http_read_one(s, timeout=10):
    """Read one HTTP/1.1 answer with a Content-Length from socket s: (status, body)."""
    s.settimeout(timeout)
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = s.recv(4096)
        if not chunk:
            return 0, ""
        buf += chunk
    head, _, rest = buf.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    hd = {k.lower(): v for k, v in (x.split(": ", 1) for x in lines[1:] if ": " in x)}
    n = int(hd.get("content-length", "0"))
    while len(rest) < n:
        chunk = s.recv(4096)
        if not chunk:
            break
        rest += chunk
    return int(lines[0].split()[1]), rest[:n].decode("utf-8", "replace")


def t_dropped_polls(base, what, n=300):
    """Many clients drop their long polls: each is freed at once, others are served promptly.

    Each client is a browser-like keep-alive connection: one request answered, a pause (a
    network's round trip), then its long poll. lighttpd watches a connection for a hang-up only
    when it found nothing to read on it; a request that is already there when it looks (the
    first of a connection, or one sent within microseconds of the previous answer) is not
    watched until its answer starts (docs/deploy.md)."""
    u = urllib.parse.urlsplit(base)
    tok = token(name("ops"))
    gone0 = metric(base, tok, "polls_gone_total")
    parked0 = metric(base, tok, "polls_parked")
    socks = []
    for i in range(n):
        s = socket.create_connection((u.hostname, u.port))
        s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        socks.append(s)
    for s in socks:
        http_read_one(s)
    time.sleep(0.1)
    for s in socks:
        s.sendall(("GET /messages/long_poll?after=0&timeout=50 HTTP/1.1\r\nHost: x\r\n"
                   "Authorization: Bearer %s\r\n\r\n" % token(name("drop"))).encode())
    if not check(wait_parked(base, tok, parked0 + n, 20), "%d long polls parked%s" % (n, what),
                 metric(base, tok, "polls_parked") - parked0):
        return
    t0 = time.monotonic()
    for s in socks:
        s.close()
    ok = wait_until(lambda: metric(base, tok, "polls_gone_total") >= gone0 + n, 10, 0.05)
    dt = time.monotonic() - t0
    check(ok and dt < 3, "%d dropped long polls freed at once%s (polls_gone +%d in %.2f s)" %
          (n, what, metric(base, tok, "polls_gone_total") - gone0, dt))
    check(wait_until(lambda: metric(base, tok, "polls_parked") <= parked0, 5),
          "and none of them is parked any more%s" % what)
    # Other clients are served at once, long polls included.
    t0 = time.monotonic()
    r = req(base, "GET", "/health", timeout=5)
    check(r.status == 200 and time.monotonic() - t0 < 1, "another client is served promptly%s (%.2f s)" %
          (what, time.monotonic() - t0), r)
    alice, bob = name("alice"), name("bob")
    p = Poller(base, "/messages/long_poll?after=0&timeout=10", token(bob))
    p.start()
    time.sleep(0.2)
    t0 = time.monotonic()
    send(base, token(alice), bob, "after the drop")
    p.join(10)
    check(p.resp is not None and p.resp.status == 200 and len(p.resp.json()["events"]) == 1 and
          p.t_done - t0 < 1, "and another long poll is woken promptly%s" % what, p.resp)


def close_wait(port):
    """Server-side TCP connections on port whose client has hung up (CLOSE_WAIT), IPv4."""
    n = 0
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            fields = line.split()
            if fields[1].endswith(":%04X" % port) and fields[3] == "08":
                n += 1
    return n


def t_one_user_drops(base, cap, what, n=300):
    """The incident: one user opens and drops many long polls, each on a fresh connection.

    A web server that does not tell (Apache; lighttpd for a request it read with the
    connection) keeps each until parley-fcgi answers it: the per-user cap answers all but the
    newest CAP at once, so the web server frees them, and every other client is served."""
    u = urllib.parse.urlsplit(base)
    ops = token(name("ops"))
    dropper = name("dropper")
    tok = token(dropper)
    parked0 = metric(base, ops, "polls_parked")
    cw0 = close_wait(u.port)
    t0 = time.monotonic()
    for i in range(n):
        s = socket.create_connection((u.hostname, u.port))
        s.sendall(("GET /messages/long_poll?after=0&timeout=10 HTTP/1.1\r\nHost: x\r\n"
                   "Authorization: Bearer %s\r\n\r\n" % tok).encode())
        s.close()
    dt_open = time.monotonic() - t0
    time.sleep(1)
    parked = metric(base, ops, "polls_parked") - parked0
    check(parked <= cap, "%d polls of one user opened and dropped in %.1f s: at most %d stay parked%s (%d)" %
          (n, dt_open, cap, what, parked))
    ok = wait_until(lambda: close_wait(u.port) - cw0 <= cap, 5)
    check(ok, "and the web server holds at most %d of their connections%s (%d)" %
          (cap, what, close_wait(u.port) - cw0))
    t0 = time.monotonic()
    r = req(base, "GET", "/health", timeout=10)
    check(r.status == 200 and time.monotonic() - t0 < 1, "another client is served promptly%s (%.2f s)" %
          (what, time.monotonic() - t0), r)
    alice, bob = name("alice"), name("bob")
    p = Poller(base, "/messages/long_poll?after=0&timeout=10", token(bob))
    p.start()
    time.sleep(0.2)
    t0 = time.monotonic()
    send(base, token(alice), bob, "after the drops")
    p.join(10)
    check(p.resp is not None and p.resp.status == 200 and len(p.resp.json()["events"]) == 1 and
          p.t_done - t0 < 1, "and another long poll is woken promptly%s" % what, p.resp)
    # a message to the dropper ends its remaining polls, so later checks start from a clean count
    send(base, token(alice), dropper, "wake the dropped")
    check(wait_until(lambda: metric(base, ops, "polls_parked") <= parked0, 5),
          "a message to the dropper ends the rest%s" % what, metric(base, ops, "polls_parked") - parked0)


def t_replace(base, what=""):
    """A newer poll of the same user and device ends the older one at once with the empty result."""
    alice, bob = name("alice"), name("bob")
    ta = token(alice)
    dev = name("dev")
    tb = token(bob, dev=dev)
    ops = token(name("ops"))
    rep0 = metric(base, ops, "polls_replaced_total")
    parked0 = metric(base, ops, "polls_parked")
    p1 = Poller(base, "/messages/long_poll?after=0&timeout=30", tb)
    p1.start()
    check(wait_parked(base, ops, parked0 + 1), "first poll of a device parked" + what)
    t0 = time.monotonic()
    p2 = Poller(base, "/messages/long_poll?after=0&timeout=30", tb)
    p2.start()
    p1.join(10)
    check(p1.resp is not None and p1.resp.status == 200 and p1.resp.body == '{"events":[],"next":0}' and
          p1.t_done - t0 < 2, "a newer poll of the same user and device answers the older at once, "
          "empty as a timeout" + what, (p1.resp, p1.t_done and p1.t_done - t0))
    check(metric(base, ops, "polls_replaced_total") == rep0 + 1, "counted in polls_replaced_total" + what,
          metric(base, ops, "polls_replaced_total") - rep0)
    # another device of the same user is not replaced; nor a room poll of the same device
    p3 = Poller(base, "/messages/long_poll?after=0&timeout=30", token(bob, dev=name("dev")))
    p3.start()
    p4 = Poller(base, "/rooms/%s/messages?after=0&timeout=30" % name("room"), tb)
    p4.start()
    check(wait_parked(base, ops, parked0 + 3), "other devices and other wait lists stay parked" + what,
          metric(base, ops, "polls_parked") - parked0)
    check(metric(base, ops, "polls_replaced_total") == rep0 + 1, "and replace nothing" + what)
    send(base, ta, bob, "to both devices")
    p2.join(10)
    p3.join(10)
    check(all(p.resp is not None and p.resp.status == 200 and len(p.resp.json()["events"]) == 1
              for p in (p2, p3)), "the newer poll and the other device get the message" + what, (p2.resp, p3.resp))
    # /sync names its device with device_id
    sdev = name("dev")
    tn = token(bob)
    after = last_seq(base, tn)
    s1 = Poller(base, "/sync?device_id=%s&after=%d&timeout=30" % (sdev, after), tn)
    s1.start()
    wait_until(lambda: metric(base, ops, "polls_parked") >= parked0 + 2, 5)
    s2 = Poller(base, "/sync?device_id=%s&after=%d&timeout=30" % (sdev, after), tn)
    s2.start()
    s1.join(10)
    check(s1.resp is not None and s1.resp.body == '{"events":[],"next":%d,"has_more":false}' % after,
          "a newer /sync of the same device_id replaces the older" + what, s1.resp)
    send(base, ta, bob, "for the sync")
    s2.join(10)
    p4_room = p4  # the room poll: end it with a comment
    req(base, "POST", p4_room.path.split("?")[0], ta, body={"text": "bye"})
    p4.join(10)
    check(s2.resp is not None and len(s2.resp.json()["events"]) == 1 and p4.resp is not None and
          p4.resp.status == 200, "the newer /sync and the room poll are answered normally" + what, (s2.resp, p4.resp))


def t_user_cap(base, cap):
    """fcgi.max_parked_per_user: CAP polls of a user park; one more ends the user's oldest."""
    bob = name("bob")
    ops = token(name("ops"))
    ev0 = metric(base, ops, "polls_evicted_total")
    parked0 = metric(base, ops, "polls_parked")
    polls = []
    for i in range(cap):  # tokens without a device: never replaced by device, only by the cap
        p = Poller(base, "/messages/long_poll?after=0&timeout=30", token(bob))
        p.start()
        polls.append(p)
        wait_parked(base, ops, parked0 + i + 1)
    check(metric(base, ops, "polls_parked") == parked0 + cap and not any(p.resp for p in polls),
          "at fcgi.max_parked_per_user (%d): every poll of the user parked" % cap,
          metric(base, ops, "polls_parked") - parked0)
    check(metric(base, ops, "polls_evicted_total") == ev0, "none evicted at the cap")
    t0 = time.monotonic()
    extra = Poller(base, "/messages/long_poll?after=0&timeout=30", token(bob))
    extra.start()
    polls[0].join(10)
    check(polls[0].resp is not None and polls[0].resp.body == '{"events":[],"next":0}' and
          polls[0].t_done - t0 < 2, "one past the cap: the user's oldest poll is answered empty at once",
          polls[0].resp)
    time.sleep(0.3)
    check(not any(p.resp for p in polls[1:]) and extra.resp is None and
          metric(base, ops, "polls_parked") == parked0 + cap,
          "the others and the newest stay parked (still %d)" % cap, metric(base, ops, "polls_parked") - parked0)
    check(metric(base, ops, "polls_evicted_total") == ev0 + 1, "counted in polls_evicted_total",
          metric(base, ops, "polls_evicted_total") - ev0)
    # another user is not affected by bob's cap
    other = Poller(base, "/messages/long_poll?after=0&timeout=2", token(name("carol")))
    other.start()
    check(wait_parked(base, ops, parked0 + cap + 1), "another user still parks")
    send(base, token(name("alice")), bob, "wake bob")
    for p in polls[1:] + [extra]:
        p.join(10)
    check(all(p.resp is not None and len(p.resp.json()["events"]) == 1 for p in polls[1:] + [extra]),
          "bob's parked polls all get the message")
    other.join(10)
    check(other.resp is not None and other.resp.status == 200, "and is answered in its own time", other.resp)


def t_keep_conn(base, pid, sock_path):
    """FCGI_KEEP_CONN (Apache): a connection is served again or closed, never left unread."""
    alice, bob = name("alice"), name("bob")
    ta, tb = token(alice), token(bob)
    fds0 = proc_fds(pid)
    s = fcgi_request(sock_path, "/messages?after=0", tb, rid=1, keep=True)
    out, ended = fcgi_response(s)
    check(ended and out.startswith(b"Status: 200"), "keep-conn request answered", out[:80])
    fcgi_request(sock_path, "/health", tb, rid=2, keep=True, sock=s)
    out, ended = fcgi_response(s)
    check(ended and out.startswith(b"Status: 200") and b'"status":"ok"' in out,
          "a second request on a kept connection is served", out[:80])
    s.close()
    # an idle kept connection is closed by parley-fcgi, not held
    s = fcgi_request(sock_path, "/messages?after=0", tb, rid=1, keep=True)
    fcgi_response(s)
    time.sleep(0.3)
    s.settimeout(2)
    try:
        eof = s.recv(1) == b""
    except OSError:
        eof = True
    check(eof, "an idle kept connection is closed by parley-fcgi")
    s.close()
    # a parked request with keep-conn is answered from another thread and its connection closed
    after = last_seq(base, tb)
    s = fcgi_request(sock_path, "/messages/long_poll?after=%d&timeout=10" % after, tb, rid=1, keep=True)
    time.sleep(0.3)
    send(base, ta, bob, "keep")
    out, ended = fcgi_response(s)
    try:
        eof = s.recv(1) == b""
    except OSError:
        eof = True
    check(ended and b'"type":"new_message"' in out and eof,
          "a parked keep-conn request is answered, then its connection closed", out[:80])
    s.close()
    check(wait_until(lambda: proc_fds(pid) <= fds0, 5), "no fds left behind (%d -> %d)" % (fds0, proc_fds(pid)))


def t_two_processes(base, base2):
    alice, bob = name("alice"), name("bob")
    ta, tb = token(alice), token(bob)
    # waiter on process 2, sender through process 1, and the other way round
    for wb, sb, what in ((base2, base, "1 -> 2"), (base, base2, "2 -> 1")):
        after = last_seq(sb, tb)
        p = Poller(wb, "/messages/long_poll?after=%d&timeout=15" % after, tb)
        parked0 = metric(wb, tb, "polls_parked")
        p.start()
        wait_parked(wb, tb, parked0 + 1)
        cmid = name("c")
        send(sb, ta, bob, "across", cmid)
        t_ack = time.monotonic()
        p.join(15)
        j = p.resp.json() if p.resp else None
        ok = j is not None and j["events"] and j["events"][0]["message"]["client_msg_id"] == cmid
        check(ok, "a send through process %s wakes the other process's waiter" % what, p.resp)
        if ok:
            check((p.t_done - t_ack) < 0.1, "across processes within 100 ms (%.1f ms)" % ((p.t_done - t_ack) * 1000))


def bus_socket_of(busdir, pid):
    for f in os.listdir(busdir):
        if f.startswith("%d-" % pid) and f.endswith(".sock"):
            return f
    return None


def t_bus_forged(base, pid, busdir):
    """A process of another uid that reaches parley-fcgi's bus socket cannot push an event."""
    bob = name("bob")
    tb = token(bob)
    sock = bus_socket_of(busdir, pid)
    check(sock is not None, "parley-fcgi's bus socket is in the bus directory")
    if sock is None:
        return
    check((os.stat(busdir).st_mode & 0o777) == 0o700, "the bus directory is 0700",
          oct(os.stat(busdir).st_mode))
    refused0 = metric(base, tb, "bus_refused_total")
    p = Poller(base, "/messages/long_poll?after=%d&timeout=2" % last_seq(base, tb), tb)
    parked0 = metric(base, tb, "polls_parked")
    p.start()
    wait_parked(base, tb, parked0 + 1)
    ev = json.dumps({"type": "typing", "from": "mallory", "forged": True}).encode()
    key = bob.encode()
    rec = struct.pack("<BBBBHQ", 1, 2, len(key), 0, len(ev), 0) + key + ev
    # Loosen the modes as an operator's mistake would; SO_PEERCRED must still refuse it.
    # parley-fcgi is stopped meanwhile, so the record is queued before it can look at the peer.
    os.chmod(busdir, 0o711)
    os.chmod(os.path.join(busdir, sock), 0o666)
    os.kill(pid, signal.SIGSTOP)
    try:
        child = os.fork()
        if child == 0:
            code = 1
            try:
                os.chdir(busdir)
                os.setgroups([])
                os.setresgid(65534, 65534, 65534)
                os.setresuid(65534, 65534, 65534)
                s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
                s.connect(sock)
                code = 0 if s.send(rec) == len(rec) else 1
            finally:
                os._exit(code)
        _, status = os.waitpid(child, 0)
        check(os.waitstatus_to_exitcode(status) == 0, "the other uid reached the bus socket")
    finally:
        os.kill(pid, signal.SIGCONT)
        os.chmod(os.path.join(busdir, sock), 0o600)
        os.chmod(busdir, 0o700)
    p.join(10)
    j = p.resp.json() if p.resp else None
    check(j is not None and j.get("events") == [],
          "a forged hint from another uid is not delivered to a parked poll", p.resp)
    check(metric(base, tb, "bus_refused_total") == refused0 + 1,
          "the refused bus connection is counted (parley_fcgi_bus_refused_total)")


def t_lost_hint(base, pid, busdir, conf, probe):
    """A hint another process dropped for this one still wakes the waiter within the sweep."""
    alice, bob = name("alice"), name("bob")
    tb = token(bob)
    lost0 = metric(base, tb, "bus_lost_total")
    p = Poller(base, "/messages/long_poll?after=%d&timeout=40" % last_seq(base, tb), tb)
    parked0 = metric(base, tb, "polls_parked")
    p.start()
    wait_parked(base, tb, parked0 + 1)
    cmid = name("c")
    # While parley-fcgi is stopped, another process fills its backlog for it, then commits a
    # message to bob: that hint is dropped, and only the BUS_LOST marker can tell parley-fcgi.
    os.kill(pid, signal.SIGSTOP)
    proc = None
    try:
        proc = subprocess.Popen([probe, busdir, "lose", conf, "40000", alice, bob, "lost hint", cmid],
                                stdout=subprocess.PIPE, text=True)
        line = proc.stdout.readline().strip()
    finally:
        os.kill(pid, signal.SIGCONT)
    t_cont = time.monotonic()
    m = re.match(r"dropped=(\d+) id=(\d+)$", line)
    check(m is not None and int(m.group(1)) > 0, "the other process dropped hints", line)
    p.join(20)
    j = p.resp.json() if p.resp else None
    ok = j is not None and j.get("events") and j["events"][0]["message"]["client_msg_id"] == cmid
    check(ok, "a hint dropped by another process still wakes the parked poll", p.resp)
    if ok:
        check(p.t_done - t_cont < 5.0, "within seconds of catching up, not at the poll's timeout (%.1f s)"
              % (p.t_done - t_cont))
    check(metric(base, tb, "bus_lost_total") >= lost0 + 1, "the loss is counted (parley_fcgi_bus_lost_total)")
    proc.kill()
    proc.wait()


def t_fdleak(base, pid):
    alice, bob = name("alice"), name("bob")
    ta, tb = token(alice), token(bob)
    req(base, "GET", "/health")
    time.sleep(0.3)
    fds0 = proc_fds(pid)
    for i in range(150):
        req(base, "GET", "/messages?after=0", tb)
        req(base, "GET", "/health")
    for i in range(20):
        send(base, ta, bob, "x%d" % i)
        after = last_seq(base, tb)
        req(base, "GET", "/messages/long_poll?after=%d&timeout=0" % after, tb)
    # a few long polls that park and are answered from another thread
    for i in range(10):
        after = last_seq(base, tb)
        p = Poller(base, "/messages/long_poll?after=%d&timeout=5" % after, tb)
        p.start()
        time.sleep(0.05)
        send(base, ta, bob, "y%d" % i)
        p.join(10)
    fds1 = wait_until(lambda: proc_fds(pid) <= fds0 + 2, 5) and proc_fds(pid)
    check(proc_fds(pid) <= fds0 + 2, "no descriptor leak after %d requests (%d -> %d fds)" % (560, fds0, proc_fds(pid)))
    del fds1


def json_error(r, status, code):
    """r is the contract's error: status, application/json, {"error":{"code":CODE,"message":..}}."""
    j = r.json()
    return (r.status == status and r.headers.get("content-type", "").startswith("application/json") and
            isinstance(j, dict) and list(j) == ["error"] and j["error"].get("code") == code and
            isinstance(j["error"].get("message"), str))


def phase_down(base, server):
    """parley-fcgi is not running: the web server's own answer is the contract's JSON 503."""
    what = " (%s, parley-fcgi down)" % server
    tok = token(name("bob"))
    for method, path, body in (("GET", "/messages?after=0", None), ("GET", "/messages/long_poll?after=0", None),
                               ("POST", "/messages", {"to": "x", "content": "y", "client_msg_id": "z"}),
                               ("GET", "/health", None)):
        r = req(base, method, path, tok, body=body, timeout=10)
        check(json_error(r, 503, "unavailable"), "%s %s: 503 with a JSON error body%s" % (method, path, what), r)
    if server == "nginx":
        check(r.headers.get("retry-after") == "1", "and Retry-After" + what, r.headers)


def t_proxy_errors(base, server):
    """Requests the web server refuses itself get the contract's JSON error, not HTML."""
    what = " (%s)" % server
    tok = token(name("bob"))
    if server == "nginx":  # client_max_body_size 1m, above parley's own limit
        r = req(base, "POST", "/messages", tok, raw=b"a" * 2000000, timeout=10)
        check(json_error(r, 413, "payload_too_large"), "a 2 MB body: JSON 413" + what, r)
    r = req(base, "GET", "/messages?x=" + "a" * 100000, tok, timeout=10)
    check(json_error(r, 414, "bad_request"), "a 100 KB URI: JSON 414" + what, r)
    r = req(base, "GET", "/messages", tok, headers={"X-Big": "a" * 100000}, timeout=10)
    check(json_error(r, 400, "bad_request"), "100 KB of headers: JSON 400" + what, r)
    # parley-fcgi's own errors pass as they are
    r = req(base, "POST", "/messages", tok, raw=b"{" + b" " * 70000 + b"}", timeout=10)
    check(json_error(r, 413, "payload_too_large") and r.body == protocol_413,
          "parley-fcgi's own 413 passes unchanged" + what, r)


protocol_413 = '{"error":{"code":"payload_too_large","message":"the body is over the size limit"}}'


def phase_park(base, n):
    tb = token(name("ops"))
    after = 0
    parked0 = metric(base, tb, "polls_parked")
    # one user each: fcgi.max_parked_per_user is below n
    polls = [Poller(base, "/messages/long_poll?after=%d&timeout=50" % after, token(name("bob")))
             for _ in range(n)]
    for p in polls:
        p.start()
    check(wait_parked(base, tb, parked0 + n), "%d polls parked before SIGTERM" % n)
    limit = int(os.environ.get("FCGI_MAX_PARKED", "0"))
    if limit == n:
        r = req(base, "GET", "/messages/long_poll?after=%d&timeout=50" % after, tb)
        check(r.status == 503 and err_code(r) == "unavailable" and r.headers.get("retry-after"),
              "beyond fcgi.max_parked (%d): 503 + Retry-After" % limit, r)
    kill = int(os.environ.get("FCGI_KILL_PID", "0"))
    if kill:
        os.kill(kill, signal.SIGTERM)
    t0 = time.monotonic()
    for p in polls:
        p.join(20)
    ok = all(p.resp is not None and p.resp.status == 200 and p.resp.body == '{"events":[],"next":%d}' % after
             for p in polls)
    check(ok, "SIGTERM answers every parked poll with the empty result", [p.resp for p in polls[:3]])
    check(time.monotonic() - t0 < 5, "and promptly (%.2f s)" % (time.monotonic() - t0))


def phase_mysqldown(base):
    alice, bob = name("alice"), name("bob")
    ta, tb = token(alice), token(bob)
    r = send(base, ta, bob, "while down")
    check(r.status == 503 and err_code(r) == "unavailable" and r.headers.get("retry-after"),
          "MySQL down: send 503 + Retry-After", r)
    r = req(base, "GET", "/messages?after=0", tb)
    check(r.status == 503 and r.headers.get("retry-after"), "MySQL down: poll 503 + Retry-After", r)
    r = req(base, "GET", "/messages/long_poll?after=0&timeout=5", tb)
    check(r.status == 503 and r.headers.get("retry-after"), "MySQL down: long poll 503 + Retry-After", r)
    r = req(base, "GET", "/health")
    j = r.json() or {}
    check(r.status == 503 and j.get("mysql") == "down" and r.headers.get("retry-after"),
          "MySQL down: /health 503 mysql:down", r)
    check("sql" not in r.body.lower() or "mysql" in r.body, "no internals in the 503", r)


def phase_recovered(base):
    alice, bob = name("alice"), name("bob")
    ta, tb = token(alice), token(bob)
    ok = wait_until(lambda: req(base, "GET", "/health").status == 200, 20, 0.2)
    check(ok, "MySQL back: /health 200 without a restart")
    r = send(base, ta, bob, "after recovery")
    check(r.status == 200, "MySQL back: send works", r)
    r = req(base, "GET", "/messages?after=0", tb)
    check(r.status == 200 and len(r.json()["events"]) == 1, "MySQL back: poll works", r)


def main():
    global SECRET
    SECRET = L.config_secret(os.environ["PARLEY_TEST_CONFIG"])
    base = os.environ["PARLEY_HTTP"]
    base2 = os.environ.get("PARLEY_HTTP2")
    pid = int(os.environ.get("FCGI_PID", "0"))
    phase = sys.argv[1] if len(sys.argv) > 1 else "full"
    try:
        if phase == "full":
            t_health(base)
            t_errors(base)
            t_auth_claims(base)
            t_limits(base)
            t_send_poll(base)
            t_long_poll(base)
            t_sync(base)
            t_receipts_typing(base)
            t_conversations_groups_presence(base)
            t_rooms(base)
            t_conversations_shape(base)
            t_receipts_rules(base)
            t_room_history(base)
            t_history(base)
            t_retention(base)
            t_metrics(base)
            t_health_memcached(base)
            t_health_memcached_restart(base)
            t_hangup(base, pid, os.environ["FCGI_SOCKET"])
            t_keep_conn(base, pid, os.environ["FCGI_SOCKET"])
            if base2:
                t_two_processes(base, base2)
                t_user_cap(base2, int(os.environ.get("FCGI_USER_CAP2", "3")))
            t_replace(base, " (lighttpd)")
            t_dropped_polls(base, " (lighttpd)")
            t_one_user_drops(base, int(os.environ.get("FCGI_USER_CAP", "16")), " (lighttpd)")
            t_mass(base, pid, int(os.environ.get("FCGI_MASS", "2000")))
            # After the mass: t_mass counts parked polls from its start, and the bus tests take
            # a few seconds that would let earlier tests' leftover polls expire inside its count.
            if os.environ.get("BUS_DIR"):
                t_bus_forged(base, pid, os.environ["BUS_DIR"])
                t_lost_hint(base, pid, os.environ["BUS_DIR"], os.environ["FCGI_CONF"],
                            os.path.join(os.environ["PARLEY_BUILDDIR"], "tests", "busprobe"))
        elif phase == "basic":
            what = " (%s)" % os.environ.get("FCGI_SERVER", "")
            t_health(base)
            r = req(base, "GET", "/messages")
            check(r.status == 401, "401 without a token" + what, r)
            t_send_poll(base)
            t_long_poll(base, what=what)
            t_replace(base, what)
            if os.environ.get("FCGI_SERVER") == "nginx":
                t_hangup_http(base, what)
                t_dropped_polls(base, what)
            t_one_user_drops(base, int(os.environ.get("FCGI_USER_CAP", "16")), what)
            t_proxy_errors(base, os.environ.get("FCGI_SERVER", ""))
        elif phase == "down":
            phase_down(base, os.environ.get("FCGI_SERVER", ""))
        elif phase == "fdleak":
            t_fdleak(base, pid)
        elif phase == "park":
            phase_park(base, int(sys.argv[2]))
        elif phase == "raw":
            # parley-fcgi started by spawn-fcgi (socket on fd 0), spoken to as a web server would
            s = fcgi_request(os.environ["FCGI_SOCKET"], "/health", token(name("ops")))
            out, ended = fcgi_response(s)
            s.close()
            check(ended and out.startswith(b"Status: 200") and b'"status":"ok"' in out,
                  "parley-fcgi under spawn-fcgi (listening socket on fd 0) answers", out[:100])
        elif phase == "mysqldown":
            phase_mysqldown(base)
        elif phase == "recovered":
            phase_recovered(base)
        else:
            raise SystemExit("unknown phase " + phase)
    except Exception as e:  # noqa: BLE001 - a crash of the test is a failure, not a pass
        import traceback
        traceback.print_exc()
        check(False, "phase %s crashed: %r" % (phase, e))
    print(T.summary(), flush=True)
    sys.exit(1 if T.failed else 0)


if __name__ == "__main__":
    main()
