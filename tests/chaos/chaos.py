#!/usr/bin/python3
"""chaos.py - a chat workload on both transports under injected faults, and a loss/duplicate checker.

Run under tests/harness/with-services (tests/chaos/test_chaos.sh does; bench/chaos runs the long
form). Starts its own parley-fcgi behind lighttpd and parley-ws on one bus, on the harness's
MariaDB and memcached, then:

  workload  USERS users, each with three devices: a WebSocket ("w", sends and receives), an HTTP
            device on GET /sync long polls ("s", sends with POST /messages and receives) and an
            HTTP GET /messages/long_poll reader. Clients behave as the contract asks: an
            unacknowledged send is retried with the same client_msg_id (sometimes on the other
            transport), every client reconnects with jittered exponential backoff and resumes
            from the highest seq it processed; some send read receipts. A few users share a group.
  faults    one every --fault-every seconds, in a shuffled round: kill -9 of parley-ws and of
            parley-fcgi (restarted), MariaDB kill -9 + restart and SIGSTOP for longer than the
            client timeouts, memcached kill -9 + restart and SIGSTOP, the replies to three
            COMMITs lost (tests/harness/mysql-commit-drop between the daemons and MariaDB),
            a bus socket removed,
            a WebSocket client that stops reading, clients that vanish without closing.
  checker   once the faults stop and every send is acknowledged: each acknowledged message is
            in MySQL with its server_msg_id and in every recipient device's stream (the sender's
            devices included); no client is shown one server_msg_id twice; every message seen or
            stored was sent by the workload with that content; every user's seq in MySQL runs
            1..last_seq without a gap or repeat and each device stream agrees with it;
            GET /conversations (last message, unread) agrees with MySQL; the daemons' open
            descriptors and RSS come back to near their baseline. Prints sent, acked, delivered,
            lost, duplicated and faults, and exits 1 on any violation.

  --selftest  no faults; instead MySQL is corrupted mid-run (an acknowledged message's row
            deleted, an event row repeating a message, a user's seq advanced past a number):
            the checker must report a loss, a duplicate and a gap, and exit 1.
"""
import argparse
import asyncio
import collections
import json
import os
import random
import socket
import sys
import time

import websockets

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import chaoslib as L  # noqa: E402

ACK_TIMEOUT = 3.0	# a client gives up waiting for an ack after this long and retries
HTTP_TIMEOUT = 4.0	# per HTTP send attempt
POLL_SECS = 4		# long-poll timeout the HTTP readers ask for
PING_INTERVAL = 3	# parley-ws's ping_interval and idle_timeout in this run
IDLE_TIMEOUT = 10

FAULTS = ["ws_kill", "fcgi_kill", "mysql_kill", "mysql_freeze", "memcached_kill",
          "memcached_freeze", "commit_drop", "bus_unlink", "client_stall", "client_vanish"]


class Send:
    __slots__ = ("sender", "cmid", "content", "to", "group", "attempts", "acked_id", "acked_seq",
                 "first_dup", "t0", "via")

    def __init__(self, sender, cmid, content, to, group):
        self.sender, self.cmid, self.content, self.to, self.group = sender, cmid, content, to, group
        self.attempts = 0
        self.acked_id = None
        self.acked_seq = None
        self.first_dup = False
        self.t0 = time.monotonic()
        self.via = set()


class Device:
    """One client device: what it processed, in seq order, resuming from its own cursor."""

    def __init__(self, run, user, kind):
        self.run, self.user, self.kind = run, user, kind
        self.name = "%s/%s" % (user, kind)
        self.dev_id = kind if kind != "lp" else None
        self.tok = run.stack.token(user, self.dev_id)
        self.cursor = 0
        self.pending = {}
        self.seen = {}			# seq -> (type, message id or None)
        self.msgs = collections.defaultdict(list)	# message id -> [seq...]
        self.conn = None		# WebSocket, when connected
        self.ack_waiters = {}
        self.paused = None		# asyncio.Event while the client stops reading
        self.connects = 0
        self.receipts_due = 0

    def take(self, ev):
        seq = ev.get("seq")
        if not isinstance(seq, int):
            if ev.get("type") == "reset":
                self.run.violation("reset", "%s got a reset (nothing was pruned): %s" % (self.name, ev))
            return
        key = self.key(ev)
        if seq <= self.cursor:
            if self.seen.get(seq) != key:
                self.run.violation("seq", "%s: seq %d came again as %s, first %s" %
                                   (self.name, seq, key, self.seen.get(seq)))
            return
        self.pending[seq] = ev
        while self.cursor + 1 in self.pending:
            self.process(self.pending.pop(self.cursor + 1))

    @staticmethod
    def key(ev):
        if ev.get("type") == "new_message":
            return ("new_message", ev["message"]["id"])
        if ev.get("type") == "message_status":
            return ("message_status", ev.get("message_id"))
        return (ev.get("type"), ev.get("group_id"))

    def process(self, ev):
        seq = ev["seq"]
        self.cursor = seq
        self.seen[seq] = self.key(ev)
        if ev.get("type") != "new_message":
            return
        m = ev["message"]
        self.msgs[m["id"]].append(seq)
        self.run.delivered += 1
        s = self.run.sent.get((m.get("from"), m.get("client_msg_id")))
        if s is None or s.content != m.get("content"):
            self.run.violation("phantom", "%s was shown message %s that nobody sent: %s" %
                               (self.name, m.get("id"), json.dumps(m)[:200]))
        if m.get("from") != self.user and self.run.receipts and random.random() < 0.2:
            asyncio.get_running_loop().create_task(self.run.receipt(self, m["id"]))


class Run:
    def __init__(self, args):
        self.args = args
        self.stack = L.Stack(ws_opts={"queue_frames": 64, "ping_interval": PING_INTERVAL,
                                                "idle_timeout": IDLE_TIMEOUT},
                             other={"mysql": {"connect_timeout": 2, "rw_timeout": 5}},
                             commit_drop="commit_drop" in args.faults)
        self.tag = "cx%x%03x" % (os.getpid() & 0xffff, random.randrange(4096))
        self.users = ["%s_u%d" % (self.tag, i) for i in range(args.users)]
        self.group = None
        self.group_members = []
        self.sent = {}
        self.devices = []
        self.violations = collections.defaultdict(list)
        self.faults = collections.Counter()
        self.fault_log = []
        self.delivered = 0
        self.sending = True
        self.receipts = True
        self.closing = False
        self.http_retries = 0
        self.ws_retries = 0
        self.cross_retries = 0
        self.dup_first = 0
        self.tasks = []
        self.bg = []
        self.t0 = time.monotonic()

    def log(self, msg):
        print("[%6.1f] %s" % (time.monotonic() - self.t0, msg), flush=True)

    def violation(self, kind, msg):
        self.violations[kind].append(msg)

    # --- sending ---

    class Dev:
        """A sender that is not one of the devices (the burst of client_stall)."""
        kind = "b"

        def __init__(self, user):
            self.user = user

    def new_send(self, dev, to=None, size=40):
        me = dev.user
        cmid = "%s-%d" % (dev.kind, len(self.sent))
        group = None
        if to is not None:
            pass
        elif self.group and me in self.group_members and random.random() < 0.2:
            group = self.group
        else:
            to = random.choice([u for u in self.users if u != me])
        content = "chaos %s %s %s" % (me, cmid, "x" * random.randrange(1, size))
        s = Send(me, cmid, content, to, group)
        self.sent[(me, cmid)] = s
        return s

    def acked(self, s, mid, seq, dup, via):
        if s.acked_id is None:
            s.acked_id, s.acked_seq = mid, seq
            if dup and s.attempts == 1:
                s.first_dup = True
                self.dup_first += 1
        elif s.acked_id != mid:
            self.violation("idempotency", "%s %s acked as %s, then as %s" % (s.sender, s.cmid, s.acked_id, mid))
        s.via.add(via)

    async def send_http(self, dev, s):
        """One attempt on HTTP: True once acknowledged."""
        s.attempts += 1
        body = {"content": s.content, "client_msg_id": s.cmid}
        if s.group:
            body["group_id"] = s.group
        else:
            body["to"] = s.to
        try:
            st, j, _ = await L.http(self.stack.http, "POST", "/messages", self.stack.token(s.sender, "s"),
                                    body, timeout=HTTP_TIMEOUT)
        except (OSError, asyncio.TimeoutError, L.HTTPError, ValueError, IndexError):
            return False
        if st == 200 and j and "server_msg_id" in j:
            self.acked(s, j["server_msg_id"], j.get("seq"), j.get("duplicate"), "http")
            return True
        if st in (500, 502, 503, 504):
            return False
        self.violation("refused", "POST /messages %s %s answered %d %s" % (s.sender, s.cmid, st, j))
        return True	# not retryable: counted as a violation, not retried

    async def send_ws(self, dev, s):
        """One attempt on dev's WebSocket: True once acknowledged."""
        ws = dev.conn
        if ws is None or dev.paused is not None:
            return False
        s.attempts += 1
        frame = {"type": "send_message", "client_msg_id": s.cmid, "content": s.content}
        if s.group:
            frame["group_id"] = s.group
        else:
            frame["to"] = s.to
        fut = asyncio.get_running_loop().create_future()
        dev.ack_waiters[s.cmid] = fut
        try:
            await ws.send(json.dumps(frame))
            ack = await asyncio.wait_for(fut, ACK_TIMEOUT)
        except (asyncio.TimeoutError, websockets.exceptions.ConnectionClosed, ConnectionError, OSError):
            return False
        finally:
            if dev.ack_waiters.get(s.cmid) is fut:
                del dev.ack_waiters[s.cmid]
        if ack.get("status") == "success":
            self.acked(s, ack["server_msg_id"], ack.get("seq"), ack.get("duplicate"), "ws")
            return True
        code = (ack.get("error") or {}).get("code")
        if code in ("unavailable", "internal", "rate_limited"):
            return False
        self.violation("refused", "ws send %s %s refused: %s" % (s.sender, s.cmid, ack))
        return True

    async def sender(self, dev):
        """Sends at the workload's rate; each send is retried with its client_msg_id until acked."""
        nsenders = 2 * len(self.users)
        interval = nsenders / self.args.rate
        while self.sending:
            await asyncio.sleep(random.uniform(0.5, 1.5) * interval)
            if not self.sending:
                break
            s = self.new_send(dev)
            attempt = 0
            while True:
                # WebSocket senders retry on their socket, but one retry in three goes over HTTP
                # (the contract: the same client_msg_id on either transport yields one message).
                if dev.kind == "w" and (attempt == 0 or random.random() > 0.33):
                    ok = await self.send_ws(dev, s)
                    if attempt > 0 and not ok:
                        self.ws_retries += 1
                else:
                    if dev.kind == "w":
                        self.cross_retries += 1
                    ok = await self.send_http(dev, s)
                    if attempt > 0:
                        self.http_retries += 1
                if ok:
                    break
                attempt += 1
                if time.monotonic() - s.t0 > self.args.duration + 120:
                    break	# reported as unacknowledged
                await asyncio.sleep(L.backoff(attempt))

    async def receipt(self, dev, mid):
        try:
            if dev.kind == "w" and dev.conn is not None:
                await dev.conn.send(json.dumps({"type": "read", "message_id": mid}))
            else:
                await L.http(self.stack.http, "POST", "/receipts", dev.tok,
                             {"message_id": mid, "status": "read"}, timeout=HTTP_TIMEOUT)
        except Exception:  # noqa: BLE001 - a lost receipt is allowed (the client may retry later)
            pass

    # --- receiving ---

    async def ws_client(self, dev):
        attempt = 0
        url = self.stack.ws_url + "?access_token=" + dev.tok
        while not self.closing:
            try:
                # A small receive buffer, so that a client that stops reading is felt by the
                # server soon (its queue fills instead of the kernel's buffers).
                sock = socket.socket()
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
                sock.setblocking(False)
                await asyncio.wait_for(asyncio.get_running_loop().sock_connect(
                    sock, ("127.0.0.1", self.stack.ws_port)), 5)
                ws = await websockets.connect(url, sock=sock, subprotocols=["parley.v1"], open_timeout=5,
                                              close_timeout=1, ping_interval=None, max_queue=8,
                                              read_limit=4096, write_limit=4096, max_size=2 ** 20)
            except Exception:  # noqa: BLE001 - refused, reset, 503 while restarting
                sock.close()
                attempt += 1
                await asyncio.sleep(L.backoff(attempt))
                continue
            dev.conn = ws
            dev.connects += 1
            try:
                await ws.send(json.dumps({"type": "sync", "after": dev.cursor}))
                while True:
                    if dev.paused is not None:
                        await dev.paused.wait()
                    raw = await ws.recv()
                    m = json.loads(raw)
                    t = m.get("type")
                    if t == "ready":
                        attempt = 0
                    elif t == "ack":
                        fut = dev.ack_waiters.get(m.get("client_msg_id"))
                        if fut is not None and not fut.done():
                            fut.set_result(m)
                    elif t == "error":
                        if m.get("code") not in ("unavailable", "internal"):
                            self.violation("ws_error", "%s got %s" % (dev.name, m))
                    else:
                        dev.take(m)
            except (websockets.exceptions.ConnectionClosed, ConnectionError, OSError, asyncio.TimeoutError):
                pass
            finally:
                dev.conn = None
                for fut in list(dev.ack_waiters.values()):
                    if not fut.done():
                        fut.set_exception(ConnectionError("closed"))
                try:
                    await asyncio.wait_for(ws.close(), 1)
                except Exception:  # noqa: BLE001
                    pass
            if self.closing:
                break
            attempt += 1
            await asyncio.sleep(L.backoff(attempt))

    async def http_reader(self, dev):
        attempt = 0
        while not self.closing:
            if dev.kind == "s":
                path = "/sync?device_id=s&after=%d&limit=200&timeout=%d" % (dev.cursor, POLL_SECS)
            else:
                path = "/messages/long_poll?after=%d&timeout=%d" % (dev.cursor, POLL_SECS)
            before = dev.cursor
            try:
                st, j, _ = await L.http(self.stack.http, "GET", path, dev.tok, timeout=POLL_SECS + 6)
            except (OSError, asyncio.TimeoutError, L.HTTPError, ValueError, IndexError):
                st, j = 0, None
            if st == 200 and j is not None:
                for ev in j.get("events", []):
                    dev.take(ev)
                attempt = 0
                if dev.cursor == before and j.get("events"):
                    await asyncio.sleep(0.2)	# events but no progress (a gap): do not spin
                continue
            if st not in (0, 500, 502, 503, 504):
                self.violation("http_error", "%s: GET %s answered %d %s" % (dev.name, path, st, j))
            attempt += 1
            await asyncio.sleep(L.backoff(attempt))

    # --- faults ---

    async def blocking(self, fn, *a):
        return await asyncio.get_running_loop().run_in_executor(None, fn, *a)

    async def fault(self, kind):
        st = self.stack
        a = self.args
        self.faults[kind] += 1
        self.fault_log.append(kind)
        self.log("fault: %s" % kind)
        if kind == "ws_kill":
            st.ws.kill9()
            await asyncio.sleep(random.uniform(0.2, 1.5))
            await self.blocking(st.ws.start)
        elif kind == "fcgi_kill":
            st.fcgi.kill9()
            await asyncio.sleep(random.uniform(0.2, 1.5))
            await self.blocking(st.start_fcgi)
        elif kind == "mysql_kill":
            await self.blocking(st.mysql_kill9_restart, 1.0)
        elif kind == "mysql_freeze":
            await self.blocking(st.freeze, st.mysql_pid(), a.freeze)
        elif kind == "commit_drop":
            # Three COMMIT replies lost in a row, whichever daemon's writes they were.
            for _ in range(3):
                if not await self.blocking(st.drop_commit_reply):
                    self.log("  no COMMIT went through the proxy in 10 s")
                    break
        elif kind == "memcached_kill":
            await self.blocking(st.memcached_kill9_restart, 1.0)
        elif kind == "memcached_freeze":
            await self.blocking(st.freeze, st.memcached_pid(), min(a.freeze, 4))
        elif kind == "bus_unlink":
            # The socket of one daemon goes, then the other restarts: the newcomer cannot find
            # the first one through the directory (hints between them are lost from then on).
            victim, other = random.choice([(st.ws, st.fcgi), (st.fcgi, st.ws)])
            for name in os.listdir(st.bus):
                if name.startswith("%d-" % victim.pid):
                    os.unlink(os.path.join(st.bus, name))
                    self.log("  removed %s's bus socket %s; restarting %s" % (victim.name, name, other.name))
            other.kill9()
            await self.blocking(other.start)
        elif kind == "client_stall":
            # In the background: a WebSocket client stops reading (pongs included) while a burst is
            # sent to its user, for longer than ws.idle_timeout: the server drops it as silent (or
            # as slow, if its queue fills first), it comes back and resumes from its cursor.
            self.bg.append(asyncio.create_task(self.stall()))
        elif kind == "client_vanish":
            await self.vanish()

    async def stall(self):
        a = self.args
        devs = [d for d in self.devices if d.kind == "w" and d.conn is not None and d.paused is None]
        if not devs:
            return
        d = random.choice(devs)
        d.paused = asyncio.Event()
        c0 = d.connects
        t0 = time.monotonic()
        src = self.Dev(random.choice([u for u in self.users if u != d.user]))
        for _ in range(a.burst):
            s = self.new_send(src, to=d.user, size=3900)
            for attempt in range(50):
                if await self.send_http(src, s):
                    break
                await asyncio.sleep(L.backoff(attempt))
        await asyncio.sleep(max(0.0, IDLE_TIMEOUT + 2 - (time.monotonic() - t0)))
        ev, d.paused = d.paused, None
        ev.set()
        await asyncio.sleep(1.0)
        self.log("  %s stopped reading for %.0f s during a burst of %d; %s" %
                 (d.name, time.monotonic() - t0 - 1, a.burst,
                  "the server dropped it" if d.connects > c0 else "still connected"))

    async def vanish(self):
        """A WebSocket device and a few long polls drop off the network without a close."""
        devs = [d for d in self.devices if d.kind == "w" and d.conn is not None]
        if devs:
            d = random.choice(devs)
            L.abort_transport(d.conn.transport)
        u = urllib_parse_split(self.stack.http)

        async def one(user):
            try:
                r, w = await asyncio.open_connection(u[0], u[1])
                w.write(("GET /messages/long_poll?after=999999&timeout=30 HTTP/1.1\r\nHost: x\r\n"
                         "Authorization: Bearer %s\r\n\r\n" % self.stack.token(user)).encode())
                await w.drain()
                await asyncio.sleep(1.0)
                L.abort_transport(w.transport)
            except OSError:
                pass
        await asyncio.gather(*(one(random.choice(self.users)) for _ in range(20)))

    async def fault_loop(self, end):
        kinds = list(self.args.faults)
        order = []
        rounds = 0
        while kinds and (time.monotonic() < end or (rounds <= 1 and order)):
            await asyncio.sleep(self.args.fault_every * random.uniform(0.7, 1.3))
            if not order:
                if time.monotonic() >= end:
                    break
                order = kinds[:]
                random.shuffle(order)
                rounds += 1
            try:
                await self.fault(order.pop())
            except Exception as e:  # noqa: BLE001 - a fault that could not be applied fails the run
                self.violation("harness", "fault failed: %r" % e)

    async def selftest_corrupt(self):
        """Break MySQL on purpose: the checker must see a loss, a duplicate and a gap."""
        db = self.stack.db
        now = time.monotonic()
        old = [s for s in self.sent.values() if s.acked_id is not None and s.to and now - s.t0 > 3]
        if len(old) < 3:
            self.violation("harness", "selftest: too few acknowledged messages to corrupt")
            return
        victim = old[0]
        # (1) a loss: an acknowledged message's row is deleted.
        await self.blocking(db.rows, "DELETE FROM messages WHERE id = %d" % victim.acked_id)
        self.log("selftest: deleted message %d (%s %s)" % (victim.acked_id, victim.sender, victim.cmid))
        # (2) a duplicate: one user's log gets the same message again under a new seq.
        dup = old[1]
        u = dup.to
        await self.blocking(db.rows, "START TRANSACTION; SELECT last_seq INTO @s FROM user_seq WHERE user_id = '%s' "
                            "FOR UPDATE; INSERT INTO events (user_id, seq, kind, message_id) VALUES "
                            "('%s', @s + 1, 1, %d); UPDATE user_seq SET last_seq = @s + 1 WHERE user_id = '%s'; "
                            "COMMIT" % (u, u, dup.acked_id, u))
        self.log("selftest: message %d appended again to %s's log" % (dup.acked_id, u))
        # (3) a gap: another user's seq skips a number.
        g = [x for x in self.users if x not in (u, victim.to)][0]
        await self.blocking(db.rows, "UPDATE user_seq SET last_seq = last_seq + 1 WHERE user_id = '%s'" % g)
        self.log("selftest: %s's seq advanced by one (a gap at the next event)" % g)

    # --- the run ---

    async def main(self):
        st = self.stack
        a = self.args
        await self.blocking(st.start)
        self.log("stack up: http %s, ws %s, work %s" % (st.http, st.ws_url, st.work))
        # A group of the first three users (its creation appends group_update events).
        if len(self.users) >= 3:
            self.group_members = self.users[:3]
            stc, j, _ = await L.http(st.http, "POST", "/groups", st.token(self.users[0]),
                                     {"name": self.tag, "members": self.users[1:3]})
            if stc != 200:
                raise RuntimeError("POST /groups: %d %s" % (stc, j))
            self.group = j["group_id"]
        for u in self.users:
            for kind in ("w", "s", "lp"):
                self.devices.append(Device(self, u, kind))
        # Warm up (pools and caches fill), let every client go, then take the idle baseline.
        senders = self.start_clients()
        await asyncio.sleep(3.0)
        await self.stop_clients(senders)
        await asyncio.sleep(2.0)
        base = {p.name: (L.proc_fds(p.pid), L.proc_rss_kib(p.pid)) for p in (st.ws, st.fcgi)}
        self.log("baseline: %s" % ", ".join("%s fds %d rss %d KiB" % (n, f, r) for n, (f, r) in base.items()))
        senders = self.start_clients()
        end = time.monotonic() + a.duration
        if a.selftest:
            await asyncio.sleep(a.duration * 0.5)
            await self.selftest_corrupt()
            await asyncio.sleep(max(0, end - time.monotonic()))
        else:
            await self.fault_loop(end)
            await asyncio.sleep(max(0, end - time.monotonic()))
        await asyncio.gather(*self.bg)
        self.log("faults stop: %s" % dict(self.faults))
        await self.blocking(st.ensure_services)
        # Drain: no new sends or receipts; every send retried until acknowledged.
        self.sending = False
        self.receipts = False
        try:
            await asyncio.wait_for(asyncio.gather(*senders), a.drain)
        except asyncio.TimeoutError:
            pass
        unacked = [s for s in self.sent.values() if s.acked_id is None]
        self.log("sends drained (%d unacknowledged)" % len(unacked))
        for s in unacked[:5]:
            self.violation("unacked", "%s %s never acknowledged after %d attempts" % (s.sender, s.cmid, s.attempts))
        if len(unacked) > 5:
            self.violation("unacked", "... and %d more" % (len(unacked) - 5))
        await asyncio.sleep(1.0)	# receipts in flight land
        last = await self.wait_caught_up(a.catchup)
        await self.stop_clients([])
        return await self.check(last, base)

    def start_clients(self):
        """Every device's reader and every sender as tasks; returns the senders."""
        self.closing = False
        self.sending = True
        self.tasks = [asyncio.create_task(self.ws_client(d) if d.kind == "w" else self.http_reader(d))
                      for d in self.devices]
        return [asyncio.create_task(self.sender(d)) for d in self.devices if d.kind in ("w", "s")]

    async def stop_clients(self, senders):
        """Senders finish their send in flight; readers close their connections."""
        self.sending = False
        await asyncio.gather(*senders, return_exceptions=True)
        self.closing = True
        for d in self.devices:
            if d.conn is not None:
                try:
                    await asyncio.wait_for(d.conn.close(), 2)
                except Exception:  # noqa: BLE001
                    pass
        for t in self.tasks:
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)

    async def last_seqs(self):
        rows = await self.blocking(self.stack.db.rows,
                                   "SELECT user_id, last_seq FROM user_seq WHERE user_id LIKE '%s\\_%%'" % self.tag)
        return {r[0]: int(r[1]) for r in rows}

    async def wait_caught_up(self, secs):
        end = time.monotonic() + secs
        while True:
            last = await self.last_seqs()
            behind = [d for d in self.devices if d.cursor < last.get(d.user, 0)]
            if not behind or time.monotonic() > end:
                self.log("catch-up: %d of %d devices behind MySQL" % (len(behind), len(self.devices)))
                return last
            await asyncio.sleep(0.5)

    # --- the checker ---

    async def check(self, last, base):
        st = self.stack
        db = st.db
        rows = await self.blocking(db.rows, "SELECT id, sender, IFNULL(recipient, ''), IFNULL(group_id, 0), "
                                   "client_msg_id, content FROM messages WHERE sender LIKE '%s\\_%%'" % self.tag)
        stored = {}
        for mid, sender, rcpt, gid, cmid, content in rows:
            stored[(sender, cmid)] = int(mid)
            s = self.sent.get((sender, cmid))
            if s is None or s.content != content:
                self.violation("phantom", "MySQL holds message %s (%s %s) that nobody sent" % (mid, sender, cmid))
        acked = [s for s in self.sent.values() if s.acked_id is not None]
        lost_db = 0
        for s in acked:
            if stored.get((s.sender, s.cmid)) != s.acked_id:
                lost_db += 1
                self.violation("lost", "acknowledged message %d (%s %s) is not in MySQL (found %s)" %
                               (s.acked_id, s.sender, s.cmid, stored.get((s.sender, s.cmid))))
        # Every user's log: seq 1..last without a gap or repeat, each message once.
        ev_rows = await self.blocking(db.rows, "SELECT user_id, seq, kind, IFNULL(message_id, 0) FROM events "
                                      "WHERE user_id LIKE '%s\\_%%' ORDER BY user_id, seq" % self.tag)
        logs = collections.defaultdict(dict)
        for u, seq, kind, mid in ev_rows:
            logs[u][int(seq)] = (int(kind), int(mid))
        gaps = 0
        for u in self.users:
            lg = logs.get(u, {})
            top = max([last.get(u, 0)] + list(lg))
            missing = [q for q in range(1, top + 1) if q not in lg]
            if missing:
                gaps += 1
                self.violation("gap", "%s's seq in MySQL skips %s (last_seq %d)" % (u, missing[:5], last.get(u, 0)))
            per = collections.Counter(mid for kind, mid in lg.values() if kind == 1)
            for mid, n in per.items():
                if n > 1:
                    self.violation("duplicate", "message %d is %d times in %s's log in MySQL" % (mid, n, u))
        # Whose log and devices must hold each acknowledged message.
        members = set(self.group_members)
        lost_dev = 0
        dup = 0
        dev_by_user = collections.defaultdict(list)
        for d in self.devices:
            dev_by_user[d.user].append(d)
        for s in acked:
            owners = {s.sender} | (members if s.group else {s.to})
            for u in owners:
                if s.acked_id not in {mid for kind, mid in logs.get(u, {}).values() if kind == 1}:
                    self.violation("lost", "message %d (%s %s) is missing from %s's log in MySQL" %
                                   (s.acked_id, s.sender, s.cmid, u))
                for d in dev_by_user[u]:
                    if s.acked_id not in d.msgs:
                        lost_dev += 1
                        self.violation("lost", "message %d (%s %s) never reached device %s (cursor %d, MySQL %d)" %
                                       (s.acked_id, s.sender, s.cmid, d.name, d.cursor, last.get(u, 0)))
        for d in self.devices:
            for mid, seqs in d.msgs.items():
                if len(seqs) > 1:
                    dup += 1
                    self.violation("duplicate", "device %s was shown message %d %d times (seq %s)" %
                                   (d.name, mid, len(seqs), seqs))
            lg = logs.get(d.user, {})
            for seq, key in d.seen.items():
                if key[0] == "new_message" and lg.get(seq, (0, 0))[1] != key[1]:
                    self.violation("stream", "device %s got message %d as seq %d; MySQL has %s there" %
                                   (d.name, key[1], seq, lg.get(seq)))
            if d.pending:
                self.violation("gap", "device %s holds seqs %s but never got seq %d" %
                               (d.name, sorted(d.pending)[:5], d.cursor + 1))
        await self.check_summaries(st)
        await self.check_resources(st, base)
        # The figures.
        slow = "%s slow consumers, %s silent ones" % (L.ws_metric(st.ws_port, "ws_slow_closed_total"),
                                                      L.ws_metric(st.ws_port, "ws_idle_closed_total"))
        n_sent = len(self.sent)
        expected = sum(len(dev_by_user[u]) for s in acked
                       for u in ({s.sender} | (members if s.group else {s.to})))
        print()
        print("chaos: sent %d (attempts %d; retries %d on WebSocket, %d on HTTP, %d moved to HTTP), acked %d, "
              "first attempts answered duplicate %d" %
              (n_sent, sum(s.attempts for s in self.sent.values()), self.ws_retries, self.http_retries,
               self.cross_retries, len(acked), self.dup_first))
        print("chaos: delivered %d of %d expected (message x device), lost %d (%d from MySQL), duplicated %d, "
              "gaps %d" % (self.delivered, expected, lost_dev + lost_db, lost_db, dup, gaps))
        print("chaos: websocket connects %d (the last parley-ws closed %s); faults injected %d: %s" %
              (sum(d.connects for d in self.devices), slow, sum(self.faults.values()),
               ", ".join("%s %d" % kv for kv in sorted(self.faults.items())) or "none"))
        nviol = sum(len(v) for v in self.violations.values())
        for kind in sorted(self.violations):
            v = self.violations[kind]
            print("VIOLATION %s: %d" % (kind.upper(), len(v)))
            for msg in v[:8]:
                print("  " + msg)
            if len(v) > 8:
                print("  ... %d more" % (len(v) - 8))
        print("chaos: %s" % ("PASS" if nviol == 0 else "FAIL (%d violations)" % nviol), flush=True)
        return nviol

    async def check_summaries(self, st):
        """GET /conversations of every user against MySQL (last message and unread), after the faults.

        A user's conversations are those its log has a message of (summaries are derived on read:
        the conversations table holds only receipt markers, made by the first receipt)."""
        db = st.db
        bad = {}
        for attempt in range(6):
            bad = {}
            rows = await self.blocking(db.rows, """
                SELECT c.user_id, c.group_id, c.peer, c.read_upto,
                  (SELECT MAX(id) FROM messages m WHERE (c.group_id <> 0 AND m.group_id = c.group_id) OR
                     (c.group_id = 0 AND ((m.sender = c.user_id AND m.recipient = c.peer) OR
                                          (m.sender = c.peer AND m.recipient = c.user_id)))),
                  (SELECT COUNT(*) FROM messages m WHERE m.id > c.read_upto AND
                     ((c.group_id <> 0 AND m.group_id = c.group_id AND m.sender <> c.user_id) OR
                      (c.group_id = 0 AND c.peer <> c.user_id AND m.sender = c.peer AND
                       m.recipient = c.user_id)))
                FROM (SELECT e.user_id, e.conv_group AS group_id, e.conv_peer AS peer,
                        COALESCE(MAX(r.read_upto), 0) AS read_upto
                      FROM events e LEFT JOIN conversations r ON r.user_id = e.user_id AND
                        r.group_id = e.conv_group AND r.peer = e.conv_peer
                      WHERE e.user_id LIKE '%s\\_%%' AND e.conv_group IS NOT NULL
                      GROUP BY e.user_id, e.conv_group, e.conv_peer) c""" % self.tag)
            truth = collections.defaultdict(dict)
            for u, gid, peer, _r, last_id, unread in rows:
                k = ("g", int(gid)) if int(gid) else ("u", peer)
                truth[u][k] = (int(last_id) if last_id not in ("NULL", "") else None, int(unread))
            for u in self.users:
                try:
                    stc, j, _ = await L.http(st.http, "GET", "/conversations?limit=200", st.token(u), timeout=10)
                except (OSError, asyncio.TimeoutError, L.HTTPError, ValueError):
                    stc, j = 0, None
                if stc != 200 or j is None:
                    bad[u] = "GET /conversations answered %s" % stc
                    continue
                got = {}
                for c in j.get("conversations", []):
                    k = ("g", c["group_id"]) if c.get("group_id") else ("u", c.get("with"))
                    got[k] = ((c.get("last_message") or {}).get("id"), c.get("unread"))
                if got != truth.get(u, {}):
                    diff = {str(k): (got.get(k), truth[u].get(k)) for k in set(got) | set(truth.get(u, {}))
                            if got.get(k) != truth.get(u, {}).get(k)}
                    bad[u] = "served (last id, unread) vs MySQL: %s" % diff
            if not bad:
                return
            await asyncio.sleep(1.0)
        for u, msg in bad.items():
            self.violation("summary", "%s: %s" % (u, msg))

    async def check_resources(self, st, base):
        """Descriptors and RSS back to near the idle baseline once the clients are gone."""
        end = time.monotonic() + 15
        while True:
            now = {p.name: (L.proc_fds(p.pid), L.proc_rss_kib(p.pid)) for p in (st.ws, st.fcgi)}
            over = {n: v for n, v in now.items() if v[0] > base[n][0] + 8}
            if not over or time.monotonic() > end:
                break
            await asyncio.sleep(0.5)
        for n, (fds, rss) in now.items():
            bf, br = base[n]
            self.log("%s: fds %d (baseline %d), rss %d KiB (baseline %d)" % (n, fds, bf, rss, br))
            if fds < 0 or fds > bf + 8:
                self.violation("resources", "%s holds %d descriptors, baseline %d" % (n, fds, bf))
            if os.environ.get("ASAN_OPTIONS"):
                continue	# ASan's quarantine keeps freed memory resident: RSS says nothing there
            if rss < 0 or rss > 2 * br + 32768:
                self.violation("resources", "%s RSS %d KiB, baseline %d KiB" % (n, rss, br))


def urllib_parse_split(base):
    import urllib.parse
    u = urllib.parse.urlsplit(base)
    return u.hostname, u.port


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--duration", type=float, default=60, help="seconds of workload with faults")
    ap.add_argument("--minutes", type=float, help="the same in minutes (long form)")
    ap.add_argument("--users", type=int, default=6)
    ap.add_argument("--rate", type=float, default=30, help="messages per second, all senders together")
    ap.add_argument("--fault-every", type=float, default=6, help="mean seconds between faults")
    ap.add_argument("--faults", default=",".join(FAULTS), help="comma-separated: " + ",".join(FAULTS))
    ap.add_argument("--freeze", type=float, default=ACK_TIMEOUT * 2.5,
                    help="seconds MariaDB is frozen (longer than the client timeouts)")
    ap.add_argument("--burst", type=int, default=100,
                    help="messages sent to a client while it stops reading (over ws.queue_frames = 64)")
    ap.add_argument("--drain", type=float, default=90, help="seconds allowed to get every send acknowledged")
    ap.add_argument("--catchup", type=float, default=30, help="seconds allowed for every device to catch up")
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--selftest", action="store_true", help="no faults; corrupt MySQL: the checker must fail")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (daemon logs)")
    a = ap.parse_args()
    if a.minutes:
        a.duration = a.minutes * 60
    a.faults = [f for f in a.faults.split(",") if f]
    for f in a.faults:
        if f not in FAULTS:
            ap.error("unknown fault %s" % f)
    if a.selftest:
        a.catchup = min(a.catchup, 8)
    seed = a.seed if a.seed is not None else int.from_bytes(os.urandom(4), "big")
    random.seed(seed)
    print("chaos: seed %d, %s s, %d users, %.0f msgs/s, a fault every ~%.0f s%s" %
          (seed, a.duration, a.users, a.rate, a.fault_every, " (selftest)" if a.selftest else ""), flush=True)
    run = Run(a)
    rc = 1
    try:
        nviol = asyncio.run(run.main())
        rc = 0 if nviol == 0 else 1
    finally:
        run.stack.thaw()
        run.stack.stop()
        run.stack.cleanup(keep=a.keep or rc != 0)
    return rc


if __name__ == "__main__":
    sys.exit(main())
