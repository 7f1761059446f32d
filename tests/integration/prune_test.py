#!/usr/bin/python3
"""prune_test.py - parleyctl prune under load, on both transports (issue 13).

Run by tests/integration/test_prune.sh, which starts parley-fcgi behind lighttpd (PARLEY_HTTP)
and parley-ws (PARLEY_WS) on one bus, under tests/harness/with-services (PARLEY_TEST_CONFIG,
PARLEY_TEST_MYSQL_SOCKET). PRUNE_CONF_BASE is the daemons' config.

Old logs are filled straight into MySQL: FILLER logs of a few old events, and the logs of the
pairs below, each with OLD old events, spread among the filler logs so that prune reaches them
at different moments of its run. Then, while one parleyctl prune run cuts every old event,
  - each pair's sender sends without pause (3 pairs over HTTP, 3 over the WebSocket) and
  - each pair's receiver is live (an HTTP long poll loop, or a WebSocket after its sync).
Checked:
  - no event newer than the cut-off is lost: every receiver got every message live, in order,
    gap-free and without a reset, and reads them all again after the prune;
  - a client behind the retained log gets reset + oldest_seq (GET /messages, a long poll, a
    WebSocket sync), and oldest_seq is exactly the first event after the cut-off;
  - no send waits on prune's locks past 50 ms. Measured where prune decides it, not as a latency
    on a shared 2-core box: prune --verbose reports the longest time it held user_seq rows (the
    only rows it writes that a send locks) before its COMMIT; that must stay under 50 ms (then
    only the COMMIT's own flush, which every send's commit waits for too, is added). InnoDB's
    counters (Innodb_row_lock_waits, _time and _time_max, SHOW GLOBAL STATUS before and after:
    the senders' waits) must show no wait of 50 ms (_time_max is since the server started: it
    tells only when it grew) and an average under it; the senders' own worst latency is
    printed and checked only against a generous 2 s. Under a sanitizer the margin is 150 ms.
    With prune holding user_seq rows across its deletes in one transaction (the first_seq
    update moved first, 4096 logs per transaction, retention.batch 100000) both checks fail:
    prune held them 244 ms, senders waited up to 196 ms (740 ms in 4 waits).
Prints "N passed, N failed" last; exit status 1 when anything failed.
"""
import asyncio
import json
import os
import re
import subprocess
import sys
import threading
import time

import websockets

import parleylib as L

BUILD = L.BUILD
HTTP = os.environ["PARLEY_HTTP"]
WS = os.environ["PARLEY_WS"]
SOCK = os.environ["PARLEY_TEST_MYSQL_SOCKET"]
BASE_CONF = os.environ["PRUNE_CONF_BASE"]
RUN = L.RUN
FILLER = int(os.environ.get("PRUNE_FILLER", "1500"))	# filler logs
FILL_OLD = 10					# old events per filler log
OLD = 600					# old events in each pair's logs
PAIRS = 3					# per transport
BATCH = int(os.environ.get("PRUNE_BATCH", "200"))
# The limit of the issue. Under ASan or TSan (scripts/test --sanitize / --tsan) every process is
# several times slower and the box is loaded: the same checks with three times the margin.
LOCK_MS = 150 if os.environ.get("ASAN_OPTIONS") or os.environ.get("TSAN_OPTIONS") else 50

SECRET = L.config_secret(BASE_CONF)
T = L.Tally(detail_max=2000)
check = T.check


def token(sub):
    return L.token(SECRET, sub)


def req(method, path, tok, body=None, timeout=30):
    """(status, the answer's JSON or, when it is not JSON, its text)."""
    r = L.request(HTTP, method, path, tok, body, timeout=timeout)
    return r.status, r.json_or_text()


def sql(q, root=False):
    who = ["-u", "root"] if root else ["-u", "parley", "-pparley-test"]
    out = subprocess.run(["mariadb", "--no-defaults", "-S", SOCK] + who + ["-N", "-B", "parley", "-e", q],
                         capture_output=True, text=True, timeout=120)
    if out.returncode != 0:
        raise RuntimeError("mariadb: %s" % out.stderr)
    return out.stdout


def lock_status():
    out = sql("SHOW GLOBAL STATUS LIKE 'Innodb_row_lock%'")
    return {k: int(v) for k, v in (line.split("\t") for line in out.splitlines())}


def user(i, what):
    """Pair i's user, named to sort among the filler logs (prune walks logs in user order)."""
    return "pr%s_%05d_%s" % (RUN, (i + 1) * FILLER // (2 * PAIRS + 1), what)


def fill(users, cut):
    """The filler logs and OLD old events in each of users' logs, all appended before cut."""
    ts = cut - 60000
    sql("INSERT INTO user_seq (user_id, last_seq, first_seq) SELECT CONCAT('pr%s_', LPAD(u.seq, 5, '0')),"
        " %d, 1 FROM seq_1_to_%d u;"
        "INSERT INTO events (user_id, seq, kind, body, ts) SELECT CONCAT('pr%s_', LPAD(u.seq, 5, '0')),"
        " s.seq, 2, CONCAT('{\"type\":\"old\",\"seq\":', s.seq, '}'), %d"
        " FROM seq_1_to_%d u, seq_1_to_%d s;"
        % (RUN, FILL_OLD, FILLER, RUN, ts, FILLER, FILL_OLD))
    for u in users:
        sql("INSERT INTO user_seq (user_id, last_seq, first_seq) VALUES ('%s', %d, 1);"
            "INSERT INTO events (user_id, seq, kind, body, ts) SELECT '%s', s.seq, 2,"
            " CONCAT('{\"type\":\"old\",\"seq\":', s.seq, '}'), %d FROM seq_1_to_%d s;"
            % (u, OLD, u, ts, OLD))


def moment():
    time.sleep(0.05)
    t = int(time.time() * 1000)
    time.sleep(0.05)
    return t


class Load:
    """What one pair did: its sends (cmids, latencies) and what its receiver got live."""

    def __init__(self, kind, i):
        self.kind = kind
        self.sender, self.receiver = user(i, kind + "s"), user(i, kind + "r")
        self.sent, self.lat, self.got, self.errors = [], [], [], []


def http_sender(p, stop):
    tok = token(p.sender)
    while not stop.is_set():
        cmid = "%s-%d" % (p.sender, len(p.sent))
        t0 = time.monotonic()
        st, j = req("POST", "/messages", tok, {"to": p.receiver, "content": "new", "client_msg_id": cmid})
        p.lat.append(time.monotonic() - t0)
        if st != 200:
            p.errors.append((st, j))
            return
        p.sent.append(cmid)


def http_receiver(p, after, done):
    """Long polls from after until done is set and nothing more comes."""
    tok = token(p.receiver)
    while True:
        st, j = req("GET", "/messages/long_poll?after=%d&timeout=%d" % (after, 1 if done.is_set() else 2), tok)
        if st != 200:
            p.errors.append((st, j))
            return
        if j.get("reset"):
            p.errors.append(("live long poll got a reset", j))
        for e in j["events"]:
            if e.get("type") == "new_message":
                p.got.append((e["seq"], e["message"]["client_msg_id"]))
        if not j["events"] and done.is_set():
            return
        after = j["next"]


async def ws_connect(u):
    ws = await websockets.connect(WS + "?access_token=" + token(u), subprotocols=["parley.v1"])
    ready = json.loads(await asyncio.wait_for(ws.recv(), 5))
    assert ready["type"] == "ready", ready
    return ws


async def ws_sender(p, stop):
    ws = await ws_connect(p.sender)
    try:
        while not stop.is_set():
            cmid = "%s-%d" % (p.sender, len(p.sent))
            t0 = time.monotonic()
            await ws.send(json.dumps({"type": "send_message", "to": p.receiver, "content": "new",
                                      "client_msg_id": cmid}))
            while True:
                m = json.loads(await asyncio.wait_for(ws.recv(), 10))
                if m.get("type") == "ack" and m.get("client_msg_id") == cmid:
                    break
            p.lat.append(time.monotonic() - t0)
            if m.get("status") != "success":
                p.errors.append(m)
                return
            p.sent.append(cmid)
    finally:
        await ws.close()


async def ws_receiver(p, after, started, done):
    ws = await ws_connect(p.receiver)
    early = {}	# seq -> cmid of live events that came before the replay filled the gap below them
    try:
        await ws.send(json.dumps({"type": "sync", "after": after}))
        started.release()
        while True:
            try:
                m = json.loads(await asyncio.wait_for(ws.recv(), 1 if done.is_set() else 10))
            except asyncio.TimeoutError:
                if done.is_set():
                    return
                continue
            if m.get("type") == "reset":
                p.errors.append(("live WebSocket got a reset", m))
            elif m.get("type") == "new_message":
                # Process in seq order, as docs/websocket.md tells clients to: drop a seq already
                # processed (the replay sends again what was pushed live before it began), hold
                # one above the next expected (ready's mark can be above `after`, so live events
                # can come before the replay's older ones) until the replay fills the gap.
                early.setdefault(m["seq"], m["message"]["client_msg_id"])
                last = p.got[-1][0] if p.got else after
                while last + 1 in early:
                    last += 1
                    p.got.append((last, early.pop(last)))
                for s in [s for s in early if s <= last]:
                    del early[s]
    finally:
        await ws.close()


def ws_thread(pairs, after, stop, done, started):
    async def main():
        await asyncio.gather(*[ws_receiver(p, after[p.receiver], started, done) for p in pairs],
                             *[ws_sender(p, stop) for p in pairs])
    try:
        asyncio.run(main())
    except Exception as e:  # noqa: BLE001 - reported by the checks
        pairs[0].errors.append(repr(e))
        for _ in pairs:
            started.release()


def prune_run(cut):
    conf = os.path.join(os.path.dirname(BASE_CONF), "prune-%s.conf" % RUN)
    with open(BASE_CONF) as f:
        text = f.read()
    with open(conf, "w") as f:
        f.write(text + "\n[retention]\nevents_days = 1\nbatch = %d\npause_ms = 0\n" % BATCH)
    t0 = time.monotonic()
    out = subprocess.run([os.path.join(BUILD, "parleyctl"), "--config", conf, "prune", "--verbose",
                          "--now", str(cut + 86400000)], capture_output=True, text=True, timeout=120)
    return out.returncode, out.stdout + out.stderr, time.monotonic() - t0


def read_all(tok, after=0):
    """GET /messages from after to the end: (first answer, [(seq, cmid)] of new_message events)."""
    first, got = None, []
    while True:
        st, j = req("GET", "/messages?after=%d&limit=500" % after, tok)
        if first is None:
            first = j
        got += [(e["seq"], e["message"]["client_msg_id"]) for e in j["events"] if e.get("type") == "new_message"]
        if not j["events"]:
            return first, got
        after = j["next"]


async def ws_replay(u, n):
    """A WebSocket sync after 0 on u's log: the first frame and the n new_message events after it."""
    ws = await ws_connect(u)
    try:
        await ws.send(json.dumps({"type": "sync", "after": 0}))
        first = json.loads(await asyncio.wait_for(ws.recv(), 5))
        got = []
        while len(got) < n:
            m = json.loads(await asyncio.wait_for(ws.recv(), 5))
            if m.get("type") == "new_message":
                got.append((m["seq"], m["message"]["client_msg_id"]))
        return first, got
    finally:
        await ws.close()


T0 = time.monotonic()


def note(what):
    print("%6.2f s %s" % (time.monotonic() - T0, what), flush=True)


def main():
    pairs = [Load("h", i) for i in range(PAIRS)] + [Load("w", PAIRS + i) for i in range(PAIRS)]
    users = [p.sender for p in pairs] + [p.receiver for p in pairs]
    cut = moment() - 200
    fill(users, cut)
    note("filled")
    cut_seq = {u: OLD for u in users}	# every event up to OLD was appended before the cut
    before = lock_status()

    stop, done = threading.Event(), threading.Event()
    started = threading.Semaphore(0)
    threads = [threading.Thread(target=http_receiver, args=(p, OLD, done)) for p in pairs if p.kind == "h"]
    threads += [threading.Thread(target=ws_thread, args=([p for p in pairs if p.kind == "w"], cut_seq,
                                                         stop, done, started))]
    for t in threads:
        t.start()
    for _ in range(PAIRS):
        started.acquire(timeout=10)
    senders = [threading.Thread(target=http_sender, args=(p, stop)) for p in pairs if p.kind == "h"]
    for t in senders:
        t.start()
    time.sleep(0.3)
    sent_before = sum(len(p.sent) for p in pairs)
    rc, out, secs = prune_run(cut)
    sent_during = sum(len(p.sent) for p in pairs) - sent_before
    time.sleep(0.3)
    stop.set()
    for t in senders:
        t.join(30)
    done.set()
    for t in threads:
        t.join(60)
    after = lock_status()
    note("load stopped")

    print("prune: %.2f s: %s" % (secs, out.strip().replace("\n", "; ")), flush=True)
    check(rc == 0, "parleyctl prune --verbose succeeds under load", out)
    m = re.search(r"pruned (\d+) events in (\d+) logs", out)
    check(m is not None and int(m.group(1)) >= FILLER * FILL_OLD + len(users) * OLD
          and int(m.group(2)) >= FILLER + len(users), "prune cut every old event", out)
    check(sent_during >= 10, "senders ran while prune ran (%d sends during the prune)" % sent_during)
    errs = [(p.sender, p.errors[:3]) for p in pairs if p.errors]
    check(not errs, "no send or poll failed and no live reader got a reset", errs)

    # No event newer than the cut-off lost: live, and read again.
    for p in pairs:
        what = "HTTP long poll" if p.kind == "h" else "WebSocket"
        want = [(OLD + 1 + k, c) for k, c in enumerate(p.sent)]
        check(len(p.sent) > 0 and p.got == want, "%s receiver got every message live, gap-free (%d)"
              % (what, len(p.sent)), (len(p.got), len(want), p.got[:3], want[:3]))

    # Behind the retained log: reset + oldest_seq on both transports.
    for p in pairs:
        first, got = read_all(token(p.receiver))
        want = [(OLD + 1 + k, c) for k, c in enumerate(p.sent)]
        check(first.get("reset") is True and first.get("oldest_seq") == OLD + 1 and got == want,
              "GET /messages after=0 (%s pair): reset, oldest_seq %d, every new event" % (p.kind, OLD + 1),
              (first.get("reset"), first.get("oldest_seq"), len(got), len(want)))
    hp = pairs[0]
    t0 = time.monotonic()
    st, j = req("GET", "/messages/long_poll?after=5&timeout=10", token(hp.receiver))
    check(st == 200 and j.get("reset") is True and j.get("oldest_seq") == OLD + 1
          and time.monotonic() - t0 < 5, "a long poll behind answers at once with reset", j)
    wp = pairs[PAIRS]
    first, got = asyncio.run(ws_replay(wp.receiver, len(wp.sent)))
    check(first == {"type": "reset", "oldest_seq": OLD + 1}
          and got == [(OLD + 1 + k, c) for k, c in enumerate(wp.sent)],
          "WebSocket sync after 0: reset frame, oldest_seq %d, then every new event" % (OLD + 1),
          (first, len(got)))

    # Locks: prune's own figure, then InnoDB's.
    m = re.search(r"longest transaction ([\d.]+) ms; user_seq rows locked at most ([\d.]+) ms"
                  r" \(([\d.]+) ms before COMMIT\)", out)
    check(m is not None and float(m.group(3)) < LOCK_MS,
          "prune held user_seq rows (what a send locks) under %d ms before its COMMIT" % LOCK_MS, out)
    waits = after["Innodb_row_lock_waits"] - before["Innodb_row_lock_waits"]
    wait_ms = after["Innodb_row_lock_time"] - before["Innodb_row_lock_time"]
    max_before, max_after = before["Innodb_row_lock_time_max"], after["Innodb_row_lock_time_max"]
    lat = sorted(x for p in pairs for x in p.lat)
    print("InnoDB during the run: %d row lock waits, %d ms in all, time_max %d -> %d ms; sends: %d,"
          " median %.1f ms, max %.1f ms" % (waits, wait_ms, max_before, max_after, len(lat),
                                             1000 * lat[len(lat) // 2] if lat else 0,
                                             1000 * lat[-1] if lat else 0), flush=True)
    check(wait_ms < LOCK_MS * max(waits, 1) and (max_after == max_before or max_after < LOCK_MS),
          "InnoDB: no row lock wait during the run took %d ms (the longest before the run: %d ms)"
          % (LOCK_MS, max_before), (waits, wait_ms, max_before, max_after))
    check(lat and lat[-1] < 2.0, "no send took 2 s or more (secondary, a loaded box)", lat[-3:])

    # The filler logs are empty now: drop their rows so later runs do not walk them.
    sql("DELETE FROM user_seq WHERE user_id LIKE 'pr%s\\_%%' AND last_seq < first_seq" % RUN)
    print(T.summary(), flush=True)
    sys.exit(1 if T.failed else 0)


if __name__ == "__main__":
    main()
