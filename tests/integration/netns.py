"""netns.py - several Parley hosts on one machine, each in its own network namespace.

Used by tests/integration/multihost_test.py and bench/bench_multihost.py. Needs root and iproute2
(`ip netns`). Cluster() creates the namespaces <prefix>-svc, -a, -b and -c, joined by a bridge that
lives inside -svc (veth pairs created inside the namespaces: no interface or address of the test
exists outside them), and close() kills every process left in them and deletes them:

    svc  10.77.0.1   MariaDB (TCP 3306), memcached on 11211 and 11212, Redis on 6379 (requirepass)
    a    10.77.0.2   lighttpd :80 -> parley-fcgi (UNIX socket); /ws -> parley-ws (127.0.0.1:8081)
    b    10.77.0.3   the same
    c    10.77.0.9   the clients: enter_client() moves this process's main thread (and every
                     thread it starts later) into it

Every app host uses the same MySQL, the memcached pool of both servers and Redis.
"""
import configparser
import ctypes
import os
import shutil
import signal
import subprocess
import tempfile
import urllib.request

import parleylib as L
from parleylib import wait_until

CLONE_NEWNET = 0x40000000
NET = "10.77.0"
SVC_IP = NET + ".1"
HOST_IP = {"a": NET + ".2", "b": NET + ".3"}
CLIENT_IP = NET + ".9"
MC_PORTS = (11211, 11212)
REDIS_PORT = 6379
MYSQL_PASSWORD = "parley-netns"
REDIS_PASSWORD = "redis-netns-secret"
SECRET = "netns-secret-0123456789abcdef0123456789abcdef"


class NetnsUnavailable(Exception):
    pass


def find_bin(*names):
    for n in names:
        p = shutil.which(n) or ("/usr/sbin/" + n if os.path.exists("/usr/sbin/" + n) else None)
        if p:
            return p
    raise RuntimeError("none of %s found" % (names,))


def run(*args, check=True, timeout=60, **kw):
    r = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout, **kw)
    if check and r.returncode != 0:
        raise RuntimeError("%s: exit %d: %s" % (" ".join(args), r.returncode, (r.stderr or r.stdout)[-2000:]))
    return r


def can_connect(host, port):
    return L.can_connect(host, port, 0.3)


def check_netns():
    """Raise NetnsUnavailable with the reason when namespaces cannot be made here."""
    if os.geteuid() != 0:
        raise NetnsUnavailable("needs root (ip netns add); CI runs as root")
    if not shutil.which("ip"):
        raise NetnsUnavailable("ip (iproute2) is missing: apt-get install iproute2")
    probe = "pmhprobe%d" % os.getpid()
    r = run("ip", "netns", "add", probe, check=False)
    if r.returncode != 0:
        raise NetnsUnavailable("ip netns add failed: %s" % r.stderr.strip())
    run("ip", "netns", "del", probe, check=False)


class Cluster:
    """Namespaces, services and app hosts; close() undoes everything (also after a failure)."""

    def __init__(self, build, src, redis=True, fallback_interval=1, log_level="info"):
        self.build, self.src = build, src
        self.redis_enabled = redis
        self.fallback_interval = fallback_interval
        self.log_level = log_level
        self.prefix = "pmh%d" % os.getpid()
        self.dir = tempfile.mkdtemp(prefix="parley-netns.")
        self.ns = {}
        self.procs = {}
        self.own_net = os.open("/proc/self/ns/net", os.O_RDONLY)
        self.libc = ctypes.CDLL(None, use_errno=True)
        self.entered = False

    # -- network ---------------------------------------------------------------------------
    def nsx(self, name, *args):
        """argv running args inside namespace name."""
        return ["ip", "netns", "exec", self.ns[name]] + list(args)

    def setup_network(self):
        for n in ("svc", "a", "b", "c"):
            full = "%s-%s" % (self.prefix, n)
            run("ip", "netns", "add", full)
            self.ns[n] = full
            run("ip", "-n", full, "link", "set", "lo", "up")
        svc = self.ns["svc"]
        run("ip", "-n", svc, "link", "add", "br0", "type", "bridge")
        run("ip", "-n", svc, "addr", "add", SVC_IP + "/24", "dev", "br0")
        run("ip", "-n", svc, "link", "set", "br0", "up")
        for n, ip in (("a", HOST_IP["a"]), ("b", HOST_IP["b"]), ("c", CLIENT_IP)):
            run("ip", "-n", svc, "link", "add", "v-" + n, "type", "veth", "peer", "name", "eth0",
                "netns", self.ns[n])
            run("ip", "-n", svc, "link", "set", "v-" + n, "master", "br0", "up")
            run("ip", "-n", self.ns[n], "addr", "add", ip + "/24", "dev", "eth0")
            run("ip", "-n", self.ns[n], "link", "set", "eth0", "up")

    def enter_client(self):
        """Move this thread into the client namespace (threads started later follow it)."""
        fd = os.open("/run/netns/" + self.ns["c"], os.O_RDONLY)
        try:
            if self.libc.setns(fd, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns")
        finally:
            os.close(fd)
        self.entered = True

    # -- services --------------------------------------------------------------------------
    def spawn(self, key, ns, argv, log):
        out = open(os.path.join(self.dir, log), "ab")
        self.procs[key] = subprocess.Popen(self.nsx(ns, *argv), stdout=out, stderr=subprocess.STDOUT,
                                           stdin=subprocess.DEVNULL, start_new_session=True)
        out.close()
        return self.procs[key]

    def start_mysql(self):
        d = os.path.join(self.dir, "mysql")
        os.makedirs(os.path.join(d, "tmp"))
        run(find_bin("mariadb-install-db", "mysql_install_db"), "--no-defaults", "--user=root",
            "--datadir=" + d + "/data", "--tmpdir=" + d + "/tmp", "--auth-root-authentication-method=normal",
            "--skip-test-db", timeout=120)
        self.spawn("mysql", "svc", [find_bin("mariadbd", "mysqld"), "--no-defaults", "--user=root",
                                    "--datadir=" + d + "/data", "--tmpdir=" + d + "/tmp",
                                    "--socket=" + d + "/mysql.sock", "--bind-address=" + SVC_IP,
                                    "--port=3306", "--pid-file=" + d + "/mysql.pid",
                                    "--log-error=" + d + "/mysql.err", "--innodb-flush-log-at-trx-commit=1",
                                    "--innodb-buffer-pool-size=64M", "--max-connections=500",
                                    "--skip-name-resolve", "--character-set-server=utf8mb4",
                                    "--collation-server=utf8mb4_bin"], "mysql.out")
        ok = wait_until(lambda: run("mariadb-admin", "--no-defaults", "--socket=" + d + "/mysql.sock",
                                    "-uroot", "ping", check=False).returncode == 0, 60, 0.2)
        if not ok:
            raise RuntimeError("mariadbd did not start; see %s/mysql.err" % d)
        run("mariadb", "--no-defaults", "--socket=" + d + "/mysql.sock", "-uroot", "-e",
            "CREATE DATABASE parley CHARACTER SET utf8mb4 COLLATE utf8mb4_bin;"
            "CREATE USER 'parley'@'%%' IDENTIFIED BY '%s';"
            "GRANT ALL ON parley.* TO 'parley'@'%%';" % MYSQL_PASSWORD)

    def start_memcached(self, i):
        self.spawn("memcached%d" % i, "svc", [find_bin("memcached"), "-u", "root", "-l", SVC_IP,
                                              "-p", str(MC_PORTS[i]), "-U", "0", "-m", "16", "-c", "1024"],
                   "memcached%d.log" % i)
        if not wait_until(lambda: can_connect(SVC_IP, MC_PORTS[i]) if self.entered else True, 10):
            raise RuntimeError("memcached %d did not listen" % i)

    def start_redis(self):
        self.spawn("redis", "svc", [find_bin("redis-server"), "--bind", SVC_IP, "--port", str(REDIS_PORT),
                                    "--requirepass", REDIS_PASSWORD, "--save", "", "--appendonly", "no",
                                    "--protected-mode", "no", "--dir", self.dir], "redis.log")
        if not wait_until(lambda: can_connect(SVC_IP, REDIS_PORT) if self.entered else True, 10):
            raise RuntimeError("redis-server did not listen")

    def restart_ws(self, h, timeout=15):
        """Stop host h's parley-ws (SIGTERM, a clean shutdown) and start it again; wait until it listens."""
        p = self.procs.get(h + "-ws")
        if p is not None and p.poll() is None:
            p.terminate()
            p.wait(10)
        n = self.log(h + "-ws.log").count("listening on")
        conf = os.path.join(self.dir, h, "parley.conf")
        self.spawn(h + "-ws", h, [os.path.join(self.build, "parley-ws"), "--config", conf], h + "-ws.log")
        if not wait_until(lambda: self.log(h + "-ws.log").count("listening on") > n, timeout, 0.05):
            raise RuntimeError("parley-ws of %s did not start again; see %s/%s-ws.log" % (h, self.dir, h))

    def kill(self, key):
        """SIGKILL one service (redis, memcached0, memcached1, mysql) and wait for it."""
        p = self.procs.get(key)
        if p is not None and p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait(10)

    # -- app hosts -------------------------------------------------------------------------
    def host_conf(self, h):
        d = os.path.join(self.dir, h)
        conf = configparser.ConfigParser(interpolation=None)
        conf["mysql"] = {"host": SVC_IP, "port": "3306", "user": "parley", "password": MYSQL_PASSWORD,
                         "database": "parley"}
        conf["memcached"] = {"servers": ",".join("%s:%d" % (SVC_IP, p) for p in MC_PORTS)}
        if self.redis_enabled:
            conf["redis"] = {"url": "redis://%s:%d" % (SVC_IP, REDIS_PORT), "password": REDIS_PASSWORD,
                             "fallback_interval": str(self.fallback_interval)}
        conf["auth"] = {"jwt_secret": SECRET}
        conf["bus"] = {"dir": os.path.join(d, "bus")}
        conf["fcgi"] = {"listen": os.path.join(d, "fcgi.sock")}
        conf["ws"] = {"listen": "127.0.0.1", "port": "8081"}
        conf["log"] = {"level": self.log_level}
        path = os.path.join(d, "parley.conf")
        with open(path, "w") as f:
            conf.write(f)
        return path

    def start_host(self, h):
        d = os.path.join(self.dir, h)
        os.makedirs(os.path.join(d, "bus"), mode=0o700)
        conf = self.host_conf(h)
        if h == "a":
            run(*self.nsx("a", os.path.join(self.build, "parleyctl"), "--config", conf, "migrate",
                          "--schema-dir", os.path.join(self.src, "schema")), timeout=120)
        self.spawn(h + "-fcgi", h, [os.path.join(self.build, "parley-fcgi"), "--config", conf], h + "-fcgi.log")
        self.spawn(h + "-ws", h, [os.path.join(self.build, "parley-ws"), "--config", conf], h + "-ws.log")
        if not wait_until(lambda: os.path.exists(os.path.join(d, "fcgi.sock")), 15):
            raise RuntimeError("parley-fcgi of %s did not start: see %s/%s-fcgi.log" % (h, self.dir, h))
        run(*self.nsx(h, os.path.join(self.src, "tests/harness/webserver"), "start", "lighttpd",
                      os.path.join(d, "web"), "--fcgi", os.path.join(d, "fcgi.sock"), "--ws", "127.0.0.1:8081",
                      "--port", "80", "--bind", "0.0.0.0"), timeout=60)

    def healthy(self, h):
        try:
            with urllib.request.urlopen("http://%s/health" % HOST_IP[h], timeout=3) as r:
                return r.status == 200
        except Exception:  # noqa: BLE001 - any failure is "not yet"
            return False

    def start(self):
        """The whole cluster; the caller's thread ends up in the client namespace."""
        self.setup_network()
        self.enter_client()
        self.start_mysql()
        for i in range(len(MC_PORTS)):
            self.start_memcached(i)
        if self.redis_enabled:
            self.start_redis()
        for h in ("a", "b"):
            self.start_host(h)
        for h in ("a", "b"):
            if not wait_until(lambda: self.healthy(h), 20, 0.1):
                raise RuntimeError("host %s does not answer /health; logs in %s" % (h, self.dir))

    def log(self, name):
        try:
            with open(os.path.join(self.dir, name), errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def close(self, keep_dir=False):
        if self.entered:
            self.libc.setns(self.own_net, CLONE_NEWNET)
            self.entered = False
        for h in ("a", "b"):
            if h in self.ns:
                run(*self.nsx(h, os.path.join(self.src, "tests/harness/webserver"), "stop",
                              os.path.join(self.dir, h, "web")), check=False)
        for key in (["a-fcgi", "a-ws", "b-fcgi", "b-ws"]):
            p = self.procs.get(key)
            if p is not None and p.poll() is None:
                p.terminate()
        for p in self.procs.values():
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                pass
        # Whatever still runs inside our namespaces (and only there) is ours: kill it.
        for full in self.ns.values():
            r = run("ip", "netns", "pids", full, check=False)
            for pid in r.stdout.split():
                if int(pid) != os.getpid():
                    try:
                        os.kill(int(pid), signal.SIGKILL)
                    except OSError:
                        pass
        for p in self.procs.values():
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                pass
        for full in self.ns.values():
            run("ip", "netns", "del", full, check=False)
        self.ns = {}
        os.close(self.own_net)
        if not keep_dir:
            shutil.rmtree(self.dir, ignore_errors=True)
