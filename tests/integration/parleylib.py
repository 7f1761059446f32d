"""parleylib.py - what the Python integration tests and the chaos suite share: the tally of checks,
names unique per run, HS256 tokens, free ports and waiting, the test config, a small HTTP client,
and starting and stopping daemons and the harness's web server.

Imported by tests/integration/*_test.py and netns.py (same directory: Python puts a script's own
directory on sys.path) and by tests/chaos/*.py (which add tests/integration to sys.path).
Stdlib only.
"""
import asyncio
import base64
import configparser
import hashlib
import hmac
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.parse

BUILD = os.environ.get("PARLEY_BUILDDIR", ".")
SRC = os.environ.get("PARLEY_SRCDIR", ".")
HARNESS = os.path.join(SRC, "tests", "harness")
# Tests of one run share one database: every user, group and room name carries RUN.
RUN = "%x%04x" % (os.getpid(), int.from_bytes(os.urandom(2), "big"))
_n = [0]


# --- checks -------------------------------------------------------------------------------

class Tally:
    """Counts checks and prints one line per check; summary() is the "N passed, N failed" line."""

    def __init__(self, detail_max=None):
        self.passed = 0
        self.failed = 0
        self.detail_max = detail_max

    def check(self, cond, what, detail=""):
        if cond:
            self.passed += 1
            print("ok   %s" % what, flush=True)
        else:
            self.failed += 1
            if self.detail_max:
                detail = str(detail)[:self.detail_max]
            print("FAIL %s %s" % (what, detail), flush=True)
        return cond

    def summary(self):
        return "%d passed, %d failed" % (self.passed, self.failed)


def uname(prefix):
    """A user/group/room/device name unique across the test runs sharing the database."""
    _n[0] += 1
    return "%s_%s_%d" % (prefix, RUN, _n[0])


# --- tokens -------------------------------------------------------------------------------

def b64u(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def jwt(claims, secret, header=None, digest=hashlib.sha256):
    """A JWT of exactly these claims and header (default HS256) MACed with secret (str or bytes)."""
    h = b64u(json.dumps(header or {"alg": "HS256", "typ": "JWT"}).encode())
    p = b64u(json.dumps(claims).encode())
    key = secret.encode() if isinstance(secret, str) else secret
    return h + "." + p + "." + b64u(hmac.new(key, (h + "." + p).encode(), digest).digest())


def claims(sub, dev=None, exp_in=3600):
    """The claims of a valid token: sub, iat now, exp in exp_in seconds, dev when given."""
    now = int(time.time())
    c = {"sub": sub, "iat": now, "exp": now + exp_in}
    if dev is not None:
        c["dev"] = dev
    return c


def token(secret, sub, dev=None, exp_in=3600):
    """A valid HS256 token for sub (and device dev)."""
    return jwt(claims(sub, dev, exp_in), secret)


def config_secret(path):
    """The [auth] jwt_secret of a config file (str)."""
    conf = configparser.ConfigParser(interpolation=None)
    conf.read(path)
    return conf["auth"]["jwt_secret"]


def write_conf(path, base, **sections):
    """Write config base with these sections replaced (each a dict) to path."""
    conf = configparser.ConfigParser(interpolation=None)
    conf.read(base)
    for name, kv in sections.items():
        conf[name] = {k: str(v) for k, v in kv.items()}
    with open(path, "w") as f:
        conf.write(f)


# --- waiting ------------------------------------------------------------------------------

def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def can_connect(host, port, timeout=0.2):
    try:
        socket.create_connection((host, port), timeout).close()
        return True
    except OSError:
        return False


def wait_until(fn, timeout=10.0, step=0.05):
    """fn()'s first true value within timeout seconds, else its last value."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        v = fn()
        if v:
            return v
        time.sleep(step)
    return fn()


# --- HTTP ---------------------------------------------------------------------------------

class Resp:
    def __init__(self, status, headers, body):
        self.status = status
        self.headers = {k.lower(): v for k, v in headers}
        self.body = body

    def json(self):
        try:
            return json.loads(self.body)
        except ValueError:
            return None

    def json_or_text(self):
        try:
            return json.loads(self.body)
        except ValueError:
            return self.body

    def __repr__(self):
        return "<%d %r>" % (self.status, self.body[:300])


def request(base, method, path, tok=None, body=None, raw=None, headers=None, timeout=30):
    """One HTTP request to base (http://host:port): tok as a Bearer token, body as JSON or raw
    (str or bytes) as it is; a Resp."""
    u = urllib.parse.urlsplit(base)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=timeout)
    h = dict(headers or {})
    if tok is not None:
        h["Authorization"] = "Bearer " + tok
    data = None
    if raw is not None:
        data = raw if isinstance(raw, bytes) else raw.encode()
    elif body is not None:
        data = json.dumps(body).encode()
    if data is not None:
        h["Content-Type"] = "application/json"
    conn.request(method, path, body=data, headers=h)
    r = conn.getresponse()
    out = Resp(r.status, r.getheaders(), r.read().decode("utf-8", "replace"))
    conn.close()
    return out


async def request_raw(base, method, path, tok=None, body=None):
    """The whole answer (bytes) to one HTTP/1.1 request on asyncio streams: thousands at once,
    no threads. Bound it with asyncio.wait_for."""
    u = urllib.parse.urlsplit(base)
    reader, writer = await asyncio.open_connection(u.hostname, u.port)
    try:
        data = json.dumps(body).encode() if body is not None else b""
        head = "%s %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n" % (method, path, u.hostname)
        if tok is not None:
            head += "Authorization: Bearer %s\r\n" % tok
        if body is not None:
            head += "Content-Type: application/json\r\nContent-Length: %d\r\n" % len(data)
        writer.write(head.encode() + b"\r\n" + data)
        await writer.drain()
        return await reader.read(-1)
    finally:
        writer.close()


def parse_response(raw):
    """(status, [(name, value)], body bytes) of a whole HTTP/1.1 answer, a chunked body decoded."""
    head, _, rest = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = [tuple(x.split(": ", 1)) for x in lines[1:] if ": " in x]
    if {k.lower(): v for k, v in headers}.get("transfer-encoding", "").lower() == "chunked":
        body, pos = b"", 0
        while True:
            end = rest.index(b"\r\n", pos)
            n = int(rest[pos:end].split(b";")[0], 16)
            if n == 0:
                break
            body += rest[end + 2:end + 2 + n]
            pos = end + 2 + n + 2
        rest = body
    return status, headers, rest


# --- WebSocket ----------------------------------------------------------------------------

class Inbox:
    """A WebSocket (python3-websockets) with an inbox: frames read while waiting for another
    one are kept for a later next()."""

    def __init__(self, ws, ready=None):
        self.ws = ws
        self.ready = ready
        self.inbox = []

    async def send(self, obj):
        await self.ws.send(obj if isinstance(obj, (str, bytes)) else json.dumps(obj))

    async def next(self, pred=lambda m: True, timeout=5.0):
        """The first frame (kept or new) that pred accepts, or None after timeout seconds."""
        for i, m in enumerate(self.inbox):
            if pred(m):
                return self.inbox.pop(i)
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            try:
                raw = await asyncio.wait_for(self.ws.recv(), left)
            except asyncio.TimeoutError:
                return None
            m = json.loads(raw)
            if pred(m):
                return m
            self.inbox.append(m)

    async def close(self):
        await self.ws.close()


# --- processes ----------------------------------------------------------------------------

def start_web(dir, fcgi_sock, server="lighttpd", extra=()):
    """Start the harness's web server in dir in front of fcgi_sock (extra: more of its options,
    e.g. ("--ws", "127.0.0.1:PORT")); its base URL. RuntimeError when it does not start."""
    out = subprocess.run([os.path.join(HARNESS, "webserver"), "start", server, dir, "--fcgi", fcgi_sock]
                         + list(extra), capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError("%s: %s" % (server, out.stderr[-300:]))
    for line in out.stdout.splitlines():
        if "PARLEY_HTTP=" in line:
            return line.split("PARLEY_HTTP=", 1)[1].strip().strip("'\"")
    raise RuntimeError("webserver printed no PARLEY_HTTP")


def stop_web(dir):
    subprocess.run([os.path.join(HARNESS, "webserver"), "stop", dir], capture_output=True)


def remove_unless_failed(top, rc):
    """Remove a test's work directory top after a pass (rc 0) unless PARLEY_KEEP is set; else say
    where its logs are."""
    if rc == 0 and not os.environ.get("PARLEY_KEEP"):
        shutil.rmtree(top, ignore_errors=True)
    else:
        print("# logs kept in %s" % top)


def stop_procs(procs, sig=signal.SIGTERM, timeout=10):
    """Signal every process still running, wait for each (SIGKILL after timeout); exit codes."""
    for p in procs:
        if p.poll() is None:
            p.send_signal(sig)
    codes = []
    for p in procs:
        try:
            codes.append(p.wait(timeout))
        except subprocess.TimeoutExpired:
            p.kill()
            codes.append(p.wait())
    return codes
