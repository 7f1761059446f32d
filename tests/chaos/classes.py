#!/usr/bin/python3
"""classes.py - classes of failure, each a bounded test that can fail.

  herd          CHAOS_HERD (default 2000) WebSockets; parley-ws is killed -9 while messages are
                sent to 200 of them over HTTP, then restarted: every client reconnects (jittered
                backoff) under ws.max_connections, MySQL connections stay under their cap, and
                every client gets exactly its messages (those sent while it was away, by cursor,
                and those sent after, live).
  fdlimit       parley-ws under prlimit --nofile=256 with 400 clients at once: the excess is
                refused, the rest are served (ready, ping/pong, a message delivered), the daemon
                neither dies nor spins, and its descriptors come back once they leave.
  halfopen      a client process that authenticates and is then SIGSTOPped (its kernel still
                ACKs, it never answers a ping) is closed within ws.idle_timeout + ws.ping_interval;
                a client that reads stays.
  abortedpolls  CHAOS_POLLS (default 10000) long polls through lighttpd, in waves of 1000, each
                wave dropped by its clients once parked (RST and FIN in turn): parley-fcgi's parked polls and
                descriptors come back to baseline within seconds, and another client is answered
                at once meanwhile.

Usage: classes.py CLASS...  (under tests/harness/with-services). Prints "ok"/"FAIL" lines and
"N passed, N failed"; exit status 1 when anything failed.
"""
import asyncio
import json
import os
import random
import re
import signal
import subprocess
import sys
import time

import websockets

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import chaoslib as L  # noqa: E402
import parleylib  # noqa: E402  (chaoslib put tests/integration on the path)

TAG = "cc%x%03x" % (os.getpid() & 0xffff, random.randrange(4096))
T = parleylib.Tally()
check = T.check


def note(msg):
    print("     %s" % msg, flush=True)


class Client:
    """A WebSocket client that keeps its cursor, reconnects with backoff and records its stream."""

    def __init__(self, url, tok, user):
        self.url, self.tok, self.user = url, tok, user
        self.cursor = 0
        self.pending = {}
        self.msgs = {}		# message id -> times shown
        self.ready = 0		# connections that got "ready"
        self.ws = None
        self.stop = False
        self.errors = []

    def take(self, ev):
        seq = ev.get("seq")
        if not isinstance(seq, int) or seq <= self.cursor:
            return
        self.pending[seq] = ev
        while self.cursor + 1 in self.pending:
            e = self.pending.pop(self.cursor + 1)
            self.cursor += 1
            if e.get("type") == "new_message":
                mid = e["message"]["id"]
                self.msgs[mid] = self.msgs.get(mid, 0) + 1

    async def run(self, base=0.2, cap=5.0):
        attempt = 0
        while not self.stop:
            try:
                ws = await websockets.connect(self.url + "?access_token=" + self.tok, subprotocols=["parley.v1"],
                                              open_timeout=10, close_timeout=1, ping_interval=None)
            except Exception:  # noqa: BLE001 - refused, reset, 503
                attempt += 1
                await asyncio.sleep(L.backoff(attempt, base, cap))
                continue
            self.ws = ws
            try:
                await ws.send(json.dumps({"type": "sync", "after": self.cursor}))
                async for raw in ws:
                    m = json.loads(raw)
                    if m.get("type") == "ready":
                        self.ready += 1
                        attempt = 0
                    else:
                        self.take(m)
            except (websockets.exceptions.ConnectionClosed, OSError, asyncio.TimeoutError):
                pass
            finally:
                self.ws = None
            if self.stop:
                break
            attempt += 1
            await asyncio.sleep(L.backoff(attempt, base, cap))

    async def close(self):
        self.stop = True
        if self.ws is not None:
            try:
                await asyncio.wait_for(self.ws.close(), 2)
            except Exception:  # noqa: BLE001
                pass


async def wait_for(pred, secs, step=0.2):
    end = time.monotonic() + secs
    while time.monotonic() < end:
        if pred():
            return True
        await asyncio.sleep(step)
    return pred()


async def http_send(st, sender, to, content, cmid):
    """POST /messages retried with the same client_msg_id until acknowledged; the server_msg_id."""
    tok = st.token(sender)
    for attempt in range(60):
        try:
            code, j, _ = await L.http(st.http, "POST", "/messages", tok,
                                      {"to": to, "content": content, "client_msg_id": cmid}, timeout=5)
            if code == 200:
                return j["server_msg_id"]
        except (OSError, asyncio.TimeoutError, L.HTTPError):
            pass
        await asyncio.sleep(L.backoff(attempt))
    return None


def mysql_threads(st):
    rows = st.db.rows("SHOW GLOBAL STATUS LIKE 'Threads_connected'")
    return int(rows[0][1])


# --- herd ---------------------------------------------------------------------------------

async def herd():
    n = int(os.environ.get("CHAOS_HERD", "2000"))
    k = min(200, n)
    workers = 4
    st = L.Stack(ws_opts={"max_connections": n + 100, "max_per_ip": n + 100}, other={"actor": {"workers": workers}})
    loop = asyncio.get_running_loop()
    try:
        await loop.run_in_executor(None, st.start)
        print("== herd: %d WebSockets, parley-ws killed -9 and restarted" % n, flush=True)
        users = ["%s_h%d" % (TAG, i) for i in range(n)]
        clients = [Client(st.ws_url, st.token(u, "d"), u) for u in users]
        tasks = []
        t0 = time.monotonic()
        for i in range(0, n, 100):	# open in steps, as a population grows, not all in one tick
            tasks += [asyncio.create_task(c.run()) for c in clients[i:i + 100]]
            await asyncio.sleep(0.05)
        ok = await wait_for(lambda: all(c.ready >= 1 for c in clients), 60)
        check(ok, "%d clients connected (%.1f s)" % (n, time.monotonic() - t0),
              "%d not ready" % sum(1 for c in clients if c.ready < 1))
        threads0 = await loop.run_in_executor(None, mysql_threads, st)
        conns0 = L.ws_metric(st.ws_port, "ws_connections")
        note("before the kill: parley-ws has %s connections, MySQL %d threads" % (conns0, threads0))
        # Kill; while it is down, 200 users get a message each (they must find it by cursor).
        st.ws.kill9()
        t_kill = time.monotonic()
        away = random.sample(clients, k)
        expect = {c.user: [] for c in clients}
        ids = await asyncio.gather(*(http_send(st, "%s_sender" % TAG, c.user, "while away", "a%d" % i)
                                     for i, c in enumerate(away)))
        for c, mid in zip(away, ids):
            expect[c.user].append(mid)
        check(all(ids), "%d messages acknowledged over HTTP while parley-ws was down" % k)
        await asyncio.sleep(max(0, 1.0 - (time.monotonic() - t_kill)))
        ready0 = {c.user: c.ready for c in clients}
        await loop.run_in_executor(None, st.ws.start)
        t_up = time.monotonic()
        peak_conns, peak_threads = 0, 0

        async def sample():
            nonlocal peak_conns, peak_threads
            while True:
                v = L.ws_metric(st.ws_port, "ws_connections")
                peak_conns = max(peak_conns, v or 0)
                t = await loop.run_in_executor(None, mysql_threads, st)
                peak_threads = max(peak_threads, t)
                await asyncio.sleep(0.25)
        sampler = asyncio.create_task(sample())
        ok = await wait_for(lambda: all(c.ready > ready0[c.user] for c in clients), 90)
        took = time.monotonic() - t_up
        check(ok, "every client reconnected after the restart (%.1f s)" % took,
              "%d did not" % sum(1 for c in clients if c.ready <= ready0[c.user]))
        # Live: 200 other users get a message now.
        live = random.sample([c for c in clients if c not in away] or clients, k)
        ids = await asyncio.gather(*(http_send(st, "%s_sender" % TAG, c.user, "live", "l%d" % i)
                                     for i, c in enumerate(live)))
        for c, mid in zip(live, ids):
            expect[c.user].append(mid)
        ok = await wait_for(lambda: all(all(m in c.msgs for m in expect[c.user]) for c in clients), 30)
        missed = [c.user for c in clients if any(m not in c.msgs for m in expect[c.user])]
        check(ok, "nobody missed an event (%d sent while away, %d live)" % (k, k), "missed: %s" % missed[:5])
        dups = [c.user for c in clients if any(v > 1 for v in c.msgs.values())]
        extra = [c.user for c in clients if set(c.msgs) - set(expect[c.user])]
        check(not dups and not extra, "nobody saw a message twice or one not meant for them",
              "dup %s extra %s" % (dups[:5], extra[:5]))
        # The sampler reads the metric 4 times a second while clients still come back; under load
        # its samples can all fall while one of them is between two states (peak 1999 of 2000 seen
        # twice at load 7-9). Every client is back (checked above), so read it again for a while.
        for _ in range(40):
            if peak_conns >= n:
                break
            peak_conns = max(peak_conns, L.ws_metric(st.ws_port, "ws_connections") or 0)
            await asyncio.sleep(0.25)
        sampler.cancel()
        note("after the restart: peak %d WebSockets (cap %d), peak %d MySQL threads (before the kill %d)" %
             (peak_conns, n + 100, peak_threads, threads0))
        check(n <= peak_conns <= n + 100, "WebSockets stayed under ws.max_connections (and every client was seen)",
              "peak %d" % peak_conns)
        # The restarted daemon opens at most its workers' connections; the killed one's are gone.
        check(peak_threads <= threads0 + workers + 2, "MySQL connections stayed under their cap",
              "peak %d, before %d" % (peak_threads, threads0))
        check(st.ws.alive(), "parley-ws is still up")
        for c in clients:
            c.stop = True
        await asyncio.gather(*(c.close() for c in clients))
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        st.stop()
        st.cleanup()


# --- descriptor exhaustion ----------------------------------------------------------------

async def fdlimit():
    nofile, n = 256, 400
    st = L.Stack(ws_prefix=["prlimit", "--nofile=%d:%d" % (nofile, nofile), "--"],
                 ws_opts={"max_connections": 10000})
    loop = asyncio.get_running_loop()
    try:
        await loop.run_in_executor(None, lambda: st.start(fcgi=False))
        print("== descriptor exhaustion: parley-ws with %d descriptors, %d clients" % (nofile, n), flush=True)
        users = ["%s_f%d" % (TAG, i) for i in range(n)]
        conns = [None] * n
        why = {}

        async def one(i):
            try:
                ws = await websockets.connect(st.ws_url + "?access_token=" + st.token(users[i]),
                                              subprotocols=["parley.v1"], open_timeout=10, close_timeout=1,
                                              ping_interval=None)
            except Exception as e:  # noqa: BLE001 - refused: what the excess should get
                k = "%s %s" % (type(e).__name__, str(e)[:60])
                why[k] = why.get(k, 0) + 1
                return
            try:
                m = json.loads(await asyncio.wait_for(ws.recv(), 10))
                if m.get("type") == "ready":
                    conns[i] = ws
                    return
                k = "answered %s" % json.dumps(m)[:80]
            except Exception as e:  # noqa: BLE001
                k = "after the upgrade: %s %s" % (type(e).__name__, str(e)[:60])
            why[k] = why.get(k, 0) + 1
            await ws.close()
        # Cold (a restarted daemon meets its reconnecting clients), then warm: each time the
        # clients that fit are served and the rest refused.
        for phase in ("cold", "warm"):
            if phase == "warm":
                await asyncio.gather(*(conns[i].close() for i in range(n) if conns[i] is not None))
                conns = [None] * n
                why.clear()
                await asyncio.sleep(1.0)
                base = L.proc_fds(st.ws.pid)
            await asyncio.gather(*(one(i) for i in range(n)))
            served = [i for i in range(n) if conns[i] is not None]
            for k, v in sorted(why.items(), key=lambda kv: -kv[1])[:4]:
                note("refused: %d x %s" % (v, k))
            # parley-ws keeps about 64 + 3 per worker descriptors for itself (MySQL, memcached, bus).
            check(len(served) >= nofile - 100, "%s: the clients that fit were served" % phase,
                  "%d served" % len(served))
            hung = sum(v for k, v in why.items() if "Timeout" in k)
            check(len(served) <= nofile and hung == 0, "%s: the excess was refused, none left hanging" % phase,
                  "%d hung" % hung)
        note("baseline %d descriptors; %d clients served, %d refused" % (base, len(served), n - len(served)))
        check(st.ws.alive(), "parley-ws survived running out of descriptors")
        # Saturated, the daemon must not spin on accept (EMFILE with the listener still readable).
        cpu0 = L.proc_cpu_s(st.ws.pid)
        await asyncio.sleep(3)
        cpu = L.proc_cpu_s(st.ws.pid) - cpu0
        check(cpu < 1.0, "at the limit parley-ws does not spin (%.2f s CPU in 3 s)" % cpu)

        # Knock while full: refused, not hung forever.
        async def knock():
            try:
                ws = await websockets.connect(st.ws_url + "?access_token=" + st.token(users[0]),
                                              subprotocols=["parley.v1"], open_timeout=5, close_timeout=1)
                await ws.close()
                return "served"
            except Exception as e:  # noqa: BLE001
                return type(e).__name__
        note("a client knocking at the limit: %s" % await knock())

        async def ping(ws):
            try:
                await ws.send('{"type":"ping"}')
                while True:
                    m = json.loads(await asyncio.wait_for(ws.recv(), 10))
                    if m.get("type") == "pong":
                        return True
            except Exception:  # noqa: BLE001
                return False
        pongs = await asyncio.gather(*(ping(conns[i]) for i in served))
        check(all(pongs), "every served client gets its pong", "%d of %d" % (sum(pongs), len(pongs)))
        if len(served) >= 2:
            a, b = served[0], served[-1]
            await conns[a].send(json.dumps({"type": "send_message", "client_msg_id": "fd1", "to": users[b],
                                            "content": "at the limit"}))
            got = False
            try:
                while not got:
                    m = json.loads(await asyncio.wait_for(conns[b].recv(), 10))
                    got = m.get("type") == "new_message" and m["message"]["client_msg_id"] == "fd1"
            except Exception:  # noqa: BLE001
                pass
            check(got, "a message between two served clients is delivered at the limit")
        await asyncio.gather(*(conns[i].close() for i in served), return_exceptions=True)
        ok = await wait_for(lambda: L.proc_fds(st.ws.pid) <= base + 4, 10)
        check(ok, "descriptors back to baseline once the clients left", "%d (baseline %d)" %
              (L.proc_fds(st.ws.pid), base))
        check(await knock() == "served", "a new client is served again")
        check(st.ws.alive(), "parley-ws is still up")
    finally:
        st.stop()
        st.cleanup()


# --- half-open client ---------------------------------------------------------------------

HALF_OPEN_CHILD = r"""
import asyncio, json, sys, websockets
async def main():
    ws = await websockets.connect(sys.argv[1], subprotocols=["parley.v1"], ping_interval=None)
    m = json.loads(await ws.recv())
    print(m.get("type"), flush=True)
    await asyncio.sleep(3600)
asyncio.run(main())
"""


async def halfopen():
    ping, idle = 1, 3
    st = L.Stack(ws_opts={"ping_interval": ping, "idle_timeout": idle})
    loop = asyncio.get_running_loop()
    child = None
    try:
        await loop.run_in_executor(None, lambda: st.start(fcgi=False))
        print("== half-open client: SIGSTOPped after auth (ping %d s, idle timeout %d s)" % (ping, idle), flush=True)
        # A client that reads (the websockets library answers pings) must stay.
        alive_ws = await websockets.connect(st.ws_url + "?access_token=" + st.token(TAG + "_reader"),
                                            subprotocols=["parley.v1"], ping_interval=None)
        await alive_ws.recv()
        child = subprocess.Popen(["/usr/bin/python3", "-c", HALF_OPEN_CHILD,
                                  st.ws_url + "?access_token=" + st.token(TAG + "_frozen")],
                                 stdout=subprocess.PIPE, text=True)
        line = await loop.run_in_executor(None, child.stdout.readline)
        check(line.strip() == "ready", "the client authenticated", line)
        await wait_for(lambda: L.ws_metric(st.ws_port, "ws_connections") == 2, 5)
        idle0 = L.ws_metric(st.ws_port, "ws_idle_closed_total") or 0
        os.kill(child.pid, signal.SIGSTOP)
        t0 = time.monotonic()
        ok = await wait_for(lambda: L.ws_metric(st.ws_port, "ws_connections") == 1, idle + ping + 5, 0.1)
        took = time.monotonic() - t0
        check(ok and took <= idle + ping + 1.5,
              "the frozen client was closed after %.1f s (limit %d s)" % (took, idle + ping + 1), "")
        check((L.ws_metric(st.ws_port, "ws_idle_closed_total") or 0) == idle0 + 1, "counted in ws_idle_closed_total")
        try:
            await alive_ws.send('{"type":"ping"}')
            got = False
            while not got:
                got = json.loads(await asyncio.wait_for(alive_ws.recv(), 5)).get("type") == "pong"
        except Exception:  # noqa: BLE001
            got = False
        check(got, "the client that reads is still served")
        await alive_ws.close()
    finally:
        if child is not None:
            child.kill()
            os.kill(child.pid, signal.SIGCONT) if child.poll() is None else None
            child.wait()
        st.stop()
        st.cleanup()


# --- aborted long polls -------------------------------------------------------------------

def fcgi_metric(st, tok, name):
    import urllib.request
    req = urllib.request.Request(st.http + "/metrics", headers={"Authorization": "Bearer " + tok})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            m = re.search(r"^parley_fcgi_%s (\d+)$" % re.escape(name), r.read().decode(), re.M)
            return int(m.group(1)) if m else -1
    except OSError:
        return -1


async def abortedpolls():
    total = int(os.environ.get("CHAOS_POLLS", "10000"))
    wave = min(1000, total)
    st = L.Stack(fcgi_opts={"max_parked": 20000})	# one poll per user: no per-user eviction
    loop = asyncio.get_running_loop()
    try:
        await loop.run_in_executor(None, lambda: st.start(ws=False))
        print("== %d aborted long polls through lighttpd, %d at a time" % (total, wave), flush=True)
        users = ["%s_p%d" % (TAG, i) for i in range(wave)]
        toks = [st.token(u) for u in users]
        probe_tok = st.token(TAG + "_probe")
        host, port = st.http.split("//")[1].split(":")
        port = int(port)
        code, _, _ = await L.http(st.http, "GET", "/messages?after=0", probe_tok)
        await asyncio.sleep(0.5)
        base = L.proc_fds(st.fcgi.pid)
        web_pid = int(open(os.path.join(st.web_dir, "server.pid")).read())
        web_base = L.proc_fds(web_pid)
        gone0 = fcgi_metric(st, probe_tok, "polls_gone_total")
        note("baseline: parley-fcgi %d descriptors, lighttpd %d" % (base, web_base))
        worst_probe = 0.0
        worst_back = 0.0
        failures = []
        done = 0
        while done < total:
            n = min(wave, total - done)
            conns = []

            async def open_one(i):
                try:
                    r, w = await asyncio.open_connection(host, port)
                    w.write(("GET /messages/long_poll?after=1000000&timeout=60 HTTP/1.1\r\nHost: x\r\n"
                             "Authorization: Bearer %s\r\n\r\n" % toks[i % len(toks)]).encode())
                    await w.drain()
                    conns.append(w)
                except OSError:
                    pass
            await asyncio.gather(*(open_one(i) for i in range(n)))
            parked = await wait_for(lambda: fcgi_metric(st, probe_tok, "polls_parked") >= len(conns) * 0.9, 10)
            if not parked:
                failures.append("wave %d: only %d of %d parked" % (done // wave, fcgi_metric(st, probe_tok,
                                "polls_parked"), len(conns)))
            # Even waves vanish (RST), odd waves close politely (FIN): a web server may take a
            # half-closed connection for a client still waiting for its answer.
            how = "RST" if (done // wave) % 2 == 0 else "FIN"
            for w in conns:
                if how == "RST":
                    L.abort_transport(w.transport)
                else:
                    w.close()
            t0 = time.monotonic()
            # Another client is answered at once while the dropped polls are being cleaned up.
            tp = time.monotonic()
            try:
                code, _, _ = await L.http(st.http, "GET", "/messages?after=0", probe_tok, timeout=10)
            except (OSError, asyncio.TimeoutError, L.HTTPError):
                code = 0
            worst_probe = max(worst_probe, time.monotonic() - tp)
            if code != 200:
                failures.append("wave %d: a probe request got %d" % (done // wave, code))
            back = await wait_for(lambda: fcgi_metric(st, probe_tok, "polls_parked") == 0 and
                                  L.proc_fds(st.fcgi.pid) <= base + 8, 10, 0.1)
            worst_back = max(worst_back, time.monotonic() - t0)
            if not back:
                failures.append("wave %d (%s): %d still parked, %d descriptors (baseline %d) 10 s after the drop" %
                                (done // wave, how, fcgi_metric(st, probe_tok, "polls_parked"),
                                 L.proc_fds(st.fcgi.pid), base))
                break
            done += n
        gone = fcgi_metric(st, probe_tok, "polls_gone_total") - gone0
        note("%d polls dropped; parley_fcgi_polls_gone_total +%d; slowest cleanup %.1f s, slowest probe %.2f s" %
             (done, gone, worst_back, worst_probe))
        check(not failures, "every wave of dropped polls was freed within 10 s", "; ".join(failures[:3]))
        check(worst_probe < 2.0, "another client was answered within 2 s meanwhile (%.2f s)" % worst_probe)
        check(gone >= done * 0.9, "the dropped polls were counted as gone", "+%d of %d" % (gone, done))
        ok = await wait_for(lambda: L.proc_fds(st.fcgi.pid) <= base + 8 and L.proc_fds(web_pid) <= web_base + 8, 10)
        check(ok, "parley-fcgi and lighttpd descriptors back to baseline",
              "fcgi %d (%d), lighttpd %d (%d)" % (L.proc_fds(st.fcgi.pid), base, L.proc_fds(web_pid), web_base))
        check(st.fcgi.alive(), "parley-fcgi is still up")
    finally:
        st.stop()
        st.cleanup()


CLASSES = {"herd": herd, "fdlimit": fdlimit, "halfopen": halfopen, "abortedpolls": abortedpolls}


def main():
    names = sys.argv[1:] or list(CLASSES)
    for name in names:
        if name not in CLASSES:
            raise SystemExit("unknown class %s (%s)" % (name, ", ".join(CLASSES)))
    for name in names:
        t0 = time.monotonic()
        try:
            asyncio.run(CLASSES[name]())
        except Exception as e:  # noqa: BLE001 - a class that could not run fails
            check(False, "%s ran" % name, repr(e))
        note("%s took %.0f s" % (name, time.monotonic() - t0))
    print(T.summary(), flush=True)
    return 1 if T.failed else 0


if __name__ == "__main__":
    sys.exit(main())
