"""chaoslib.py - what the fault-injection suite shares: the private stack, tokens, clients, probes.

Everything runs against real processes: the throwaway MariaDB and memcached of
tests/harness/services (PARLEY_TEST_* in the environment, as tests/harness/with-services sets it),
a lighttpd from tests/harness/webserver in front of one parley-fcgi, and parley-ws on a port of
its own. The daemons are children of this process so that they can be killed and restarted.
Stdlib and python3-websockets only.
"""
import asyncio
import configparser
import json
import os
import random
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import urllib.parse

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "integration"))
import parleylib as L  # noqa: E402

BUILD, SRC, HARNESS = L.BUILD, L.SRC, L.HARNESS


def env_required():
    for k in ("PARLEY_TEST_CONFIG", "PARLEY_TEST_DIR", "PARLEY_TEST_MYSQL_SOCKET"):
        if not os.environ.get(k):
            raise SystemExit("run me under tests/harness/with-services (%s is not set)" % k)


# --- tokens -------------------------------------------------------------------------------

def make_token(secret, sub, dev=None, ttl=7200):
    return L.token(secret, sub, dev, ttl)


free_port = L.free_port


# --- /proc probes -------------------------------------------------------------------------

def proc_fds(pid):
    try:
        return len(os.listdir("/proc/%d/fd" % pid))
    except OSError:
        return -1


def proc_rss_kib(pid):
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return -1


def proc_cpu_s(pid):
    """User + system CPU seconds of a process."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return -1.0


def pid_alive(pid):
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    try:	# a zombie is not alive
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


# --- MySQL through the mariadb client ------------------------------------------------------

class MySQL:
    """Queries as root over the harness's socket (the truth the checker compares with)."""

    def __init__(self, sock, db="parley"):
        self.sock, self.db = sock, db

    def rows(self, sql, timeout=30):
        r = subprocess.run(["mariadb", "--no-defaults", "--socket=" + self.sock, "-uroot",
                            "--batch", "--skip-column-names", "--raw", self.db, "-e", sql],
                           capture_output=True, text=True, timeout=timeout)
        if r.returncode != 0:
            raise RuntimeError("mariadb: %s" % r.stderr.strip())
        return [line.split("\t") for line in r.stdout.splitlines()]

    def ok(self):
        try:
            self.rows("SELECT 1", timeout=5)
            return True
        except (RuntimeError, subprocess.TimeoutExpired):
            return False


# --- the stack ------------------------------------------------------------------------------

class Proc:
    """A daemon of ours run as a child: start, kill -9, restart, probes."""

    def __init__(self, name, argv, ready, logpath):
        self.name, self.argv, self.ready, self.logpath = name, argv, ready, logpath
        self.proc = None
        self.starts = 0

    @property
    def pid(self):
        return self.proc.pid if self.proc else -1

    def start(self, timeout=15):
        log = open(self.logpath, "ab")
        self.proc = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        log.close()
        self.starts += 1
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("%s exited with %s at start; see %s" %
                                   (self.name, self.proc.returncode, self.logpath))
            if self.ready():
                return
            time.sleep(0.05)
        raise RuntimeError("%s did not come up; see %s" % (self.name, self.logpath))

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def kill9(self):
        if self.alive():
            self.proc.kill()
        if self.proc:
            self.proc.wait()

    def stop(self):
        if self.alive():
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class Stack:
    """parley-fcgi behind lighttpd and parley-ws on one bus, on the harness's MariaDB/memcached."""

    def __init__(self, ws_opts=None, fcgi_opts=None, other=None, ws_prefix=None, commit_drop=False):
        env_required()
        self.svc = os.environ["PARLEY_TEST_DIR"]
        self.mysql_sock = os.environ["PARLEY_TEST_MYSQL_SOCKET"]
        self.mc_sock = os.environ.get("PARLEY_TEST_MEMCACHED_SOCKET") or os.path.join(self.svc, "memcached.sock")
        # Short path: UNIX socket names (bus, fcgi) are limited to about 100 bytes.
        self.work = tempfile.mkdtemp(prefix="chaos.", dir="/tmp")
        os.chmod(self.work, 0o711)
        self.bus = os.path.join(self.work, "bus")
        self.fcgi_sock = os.path.join(self.work, "fcgi.sock")
        self.ws_port = free_port()
        base = configparser.ConfigParser(interpolation=None)
        base.read(os.environ["PARLEY_TEST_CONFIG"])
        self.secret = base["auth"]["jwt_secret"]
        conf = configparser.ConfigParser(interpolation=None)
        for sec in base.sections():
            if sec not in ("bus", "fcgi", "ws", "log"):
                conf[sec] = dict(base[sec])
        conf["bus"] = {"dir": self.bus}
        # The daemons may reach MariaDB through tests/harness/mysql-commit-drop, which loses the
        # reply to one COMMIT each time its arm file is created.
        self.proxy = None
        self.arm = os.path.join(self.work, "commit-drop.arm")
        if commit_drop:
            self.proxy_sock = os.path.join(self.work, "mysql-proxy.sock")
            conf["mysql"]["socket"] = self.proxy_sock
            self.proxy = Proc("mysql-commit-drop", ["/usr/bin/python3", os.path.join(HARNESS, "mysql-commit-drop"),
                                                    self.proxy_sock, self.mysql_sock, self.arm],
                              lambda: os.path.exists(self.proxy_sock), os.path.join(self.work, "proxy.log"))
        conf["fcgi"] = {"listen": self.fcgi_sock, "socket_mode": "0660", "threads": "4"}
        conf["ws"] = {"listen": "127.0.0.1", "port": str(self.ws_port)}
        conf["log"] = {"level": "warn"}
        for k, v in (fcgi_opts or {}).items():
            conf["fcgi"][k] = str(v)
        for k, v in (ws_opts or {}).items():
            conf["ws"][k] = str(v)
        for sec, kv in (other or {}).items():
            if sec not in conf:
                conf[sec] = {}
            for k, v in kv.items():
                conf[sec][k] = str(v)
        self.conf = os.path.join(self.work, "parley.conf")
        with open(self.conf, "w") as f:
            conf.write(f)
        self.db = MySQL(self.mysql_sock)
        self.fcgi = Proc("parley-fcgi", [os.path.join(BUILD, "parley-fcgi"), "-c", self.conf],
                         lambda: os.path.exists(self.fcgi_sock) and self._connects_unix(self.fcgi_sock),
                         os.path.join(self.work, "fcgi.log"))
        ws_argv = [os.path.join(BUILD, "parley-ws"), "--config", self.conf]
        self.ws = Proc("parley-ws", (ws_prefix or []) + ws_argv,
                       lambda: self._connects_tcp(self.ws_port), os.path.join(self.work, "ws.log"))
        self.web_dir = os.path.join(self.work, "web")
        self.http = None

    @staticmethod
    def _connects_unix(path):
        s = socket.socket(socket.AF_UNIX)
        try:
            s.connect(path)
            return True
        except OSError:
            return False
        finally:
            s.close()

    @staticmethod
    def _connects_tcp(port):
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return True
        except OSError:
            return False

    def start(self, fcgi=True, ws=True):
        if self.proxy:
            self.proxy.start()
        if fcgi:
            self.start_fcgi()
            out = subprocess.run([os.path.join(HARNESS, "webserver"), "start", "lighttpd", self.web_dir,
                                  "--fcgi", self.fcgi_sock, "--ws", "127.0.0.1:%d" % self.ws_port],
                                 capture_output=True, text=True)
            if out.returncode != 0:
                raise RuntimeError("lighttpd did not start: " + out.stderr)
            self.http = out.stdout.strip().split("=", 1)[1]
        if ws:
            self.ws.start()
        self.ws_url = "ws://127.0.0.1:%d/ws" % self.ws_port

    def start_fcgi(self):
        # A parley-fcgi killed with -9 leaves its socket file behind; the next one replaces it.
        self.fcgi.start()

    def stop(self):
        self.ws.stop()
        self.fcgi.stop()
        if self.http:
            subprocess.run([os.path.join(HARNESS, "webserver"), "stop", self.web_dir], capture_output=True)
        if self.proxy:
            self.proxy.stop()

    def cleanup(self, keep=False):
        if keep:
            print("work directory kept: %s" % self.work, flush=True)
        else:
            shutil.rmtree(self.work, ignore_errors=True)

    def token(self, user, dev=None):
        return make_token(self.secret, user, dev)

    # --- the services' processes (faults) ---

    def _pidfile(self, name):
        try:
            with open(os.path.join(self.svc, name)) as f:
                return int(f.read().strip())
        except (OSError, ValueError):
            return -1

    def mysql_pid(self):
        return self._pidfile("mysql.pid")

    def memcached_pid(self):
        return self._pidfile("memcached.pid")

    @staticmethod
    def _kill9(pid, down_s):
        """SIGKILL pid (when there is one), wait up to 5 s for it to go, then down_s seconds more."""
        if pid > 0:
            os.kill(pid, signal.SIGKILL)
            for _ in range(100):
                if not pid_alive(pid):
                    break
                time.sleep(0.05)
        time.sleep(down_s)

    def mysql_kill9_restart(self, down_s=1.0):
        self._kill9(self.mysql_pid(), down_s)
        # The pid file is stale now: restart-mysql finds nothing to stop and starts mariadbd.
        r = subprocess.run([os.path.join(HARNESS, "services"), "restart-mysql", self.svc],
                           capture_output=True, text=True, timeout=120)
        if r.returncode != 0:
            raise RuntimeError("MariaDB did not restart: " + r.stderr)

    def memcached_kill9_restart(self, down_s=1.0):
        self._kill9(self.memcached_pid(), down_s)
        self.memcached_start()

    def memcached_start(self):
        try:
            os.unlink(self.mc_sock)
        except OSError:
            pass
        user = ["-u", "root"] if os.getuid() == 0 else []
        # The same command line as tests/harness/services.
        subprocess.run(["memcached"] + user + ["-s", self.mc_sock, "-a", "0700", "-m", "64", "-c", "1024",
                        "-P", os.path.join(self.svc, "memcached.pid"), "-d"], check=True)
        for _ in range(100):
            if os.path.exists(self.mc_sock):
                return
            time.sleep(0.05)
        raise RuntimeError("memcached did not restart")

    def drop_commit_reply(self, timeout=10.0):
        """Arm the proxy: the next COMMIT's reply is lost. True once it was."""
        open(self.arm, "w").close()
        end = time.time() + timeout
        while time.time() < end:
            if not os.path.exists(self.arm):
                return True
            time.sleep(0.05)
        os.unlink(self.arm)
        return False

    def freeze(self, pid, secs):
        os.kill(pid, signal.SIGSTOP)
        try:
            time.sleep(secs)
        finally:
            os.kill(pid, signal.SIGCONT)

    def thaw(self):
        """No service is left stopped (a run interrupted during a freeze)."""
        for pid in (self.mysql_pid(), self.memcached_pid()):
            if pid > 0:
                try:
                    os.kill(pid, signal.SIGCONT)
                except OSError:
                    pass

    def ensure_services(self):
        """After the faults: every part is up (a fault interrupted mid-way is repaired)."""
        self.thaw()
        if not pid_alive(self.mysql_pid()):
            self.mysql_kill9_restart(0)
        if not pid_alive(self.memcached_pid()):
            self.memcached_start()
        if not self.fcgi.alive():
            self.start_fcgi()
        if not self.ws.alive():
            self.ws.start()


def ws_metric(port, name, secret=None):
    """A gauge or counter of parley-ws's /metrics (None when it does not answer)."""
    import urllib.request
    if secret is None:
        import configparser as _cp
        c = _cp.ConfigParser(interpolation=None)
        c.read(os.environ["PARLEY_TEST_CONFIG"])
        secret = c["auth"]["jwt_secret"]
    # /metrics wants a valid token, as parley-fcgi's does.
    req = urllib.request.Request("http://127.0.0.1:%d/metrics" % port,
                                 headers={"Authorization": "Bearer " + make_token(secret, "metrics")})
    try:
        with urllib.request.urlopen(req, timeout=3) as r:
            for line in r.read().decode().splitlines():
                if line.startswith("parley_ws_" + name + " "):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


# --- a small asyncio HTTP/1.1 client (thousands at once, no threads) ------------------------

class HTTPError(Exception):
    pass


async def http(base, method, path, tok=None, body=None, timeout=10.0):
    """(status, decoded JSON or None, headers). Raises OSError/asyncio.TimeoutError on transport failure."""
    raw = await asyncio.wait_for(L.request_raw(base, method, path, tok, body), timeout)
    if b"\r\n\r\n" not in raw:
        raise HTTPError("incomplete answer")
    status, headers, rest = L.parse_response(raw)
    hd = {k.lower(): v for k, v in headers}
    try:
        j = json.loads(rest) if rest else None
    except ValueError:
        j = None
    return status, j, hd


def abort_transport(transport):
    """Drop a TCP connection the way a vanished client does: no FIN handshake, an RST."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
    transport.abort()


def backoff(attempt, base=0.1, cap=3.0):
    """Exponential backoff with full jitter (what a well-behaved client does)."""
    return random.uniform(0, min(cap, base * (2 ** min(attempt, 10))))
