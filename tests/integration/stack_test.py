#!/usr/bin/python3
"""stack_test.py - scripts/stack start after a crash, and two starts at once (issue 8, defect 6).

Run by tests/integration/test_stack.sh (PARLEY_SRCDIR, PARLEY_BUILDDIR). Starts a whole stack
(its own MariaDB, memcached, parley-fcgi, parley-ws, lighttpd) in a temporary PARLEY_STACK_DIR on
free ports. This process makes itself a child subreaper and never reaps the daemons it adopts, so
a daemon killed with SIGKILL stays a zombie, as it does under an init that has not reaped it yet:
the case where `kill -0` said "running" and start left the daemon down.
Prints "N passed, N failed" last; exit status 1 when anything failed.
"""
import ctypes
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

import parleylib as L
from parleylib import free_port

T = L.Tally()
check = T.check
PR_SET_CHILD_SUBREAPER = 36
DAEMONS = (("run/parley-fcgi.pid", "parley-fcgi"), ("run/parley-ws.pid", "parley-ws"),
           ("web/server.pid", "lighttpd"))


def state(pid):
    """The state letter of /proc/PID/stat ("Z" for a zombie), or None when there is no such pid."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


def comm(pid):
    try:
        with open("/proc/%d/comm" % pid) as f:
            return f.read().strip()
    except OSError:
        return None


def ours(prog, var):
    """Live (not zombie) processes running prog whose command line or environment names var."""
    found = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        pid = int(d)
        if comm(pid) != prog or state(pid) in (None, "Z", "X"):
            continue
        try:
            with open("/proc/%d/cmdline" % pid, "rb") as f:
                cmd = f.read()
        except OSError:
            continue
        if var.encode() in cmd:
            found.append(pid)
    return sorted(found)


def ppid(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return 0


KEEP = set()          # zombies we keep on purpose (the crashed daemons)
STOP_REAPER = threading.Event()
ADOPTED = ("mariadbd", "memcached", "lighttpd", "parley-fcgi", "parley-ws")


def reaper():
    """Reap the daemons we adopted once they exit (so stop sees them go), except those in KEEP.
    Only daemons: subprocess's own children are left for subprocess to wait for."""
    me = os.getpid()
    while not STOP_REAPER.wait(0.05):
        for d in os.listdir("/proc"):
            if d.isdigit() and int(d) not in KEEP and state(int(d)) == "Z" and ppid(int(d)) == me and \
                    comm(int(d)) in ADOPTED:
                try:
                    os.waitpid(int(d), os.WNOHANG)
                except ChildProcessError:
                    pass


def read_pid(var, rel):
    try:
        with open(os.path.join(var, rel)) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return 0


def wait_until(fn, timeout=10.0):
    return L.wait_until(fn, timeout, 0.1)


def health(port):
    try:
        with urllib.request.urlopen("http://127.0.0.1:%d/health" % port, timeout=3) as r:
            return r.status == 200
    except Exception:  # noqa: BLE001 - any failure is "not answering"
        return False


def main():
    srcdir = os.environ.get("PARLEY_SRCDIR") or os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
    stack = os.path.join(srcdir, "scripts", "stack")
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        check(False, "prctl(PR_SET_CHILD_SUBREAPER)", os.strerror(ctypes.get_errno()))
        return
    var = tempfile.mkdtemp(prefix="parley-stack-test.")
    threading.Thread(target=reaper, daemon=True).start()
    http_port, ws_port = free_port(), free_port()
    env = dict(os.environ, PARLEY_STACK_DIR=var, PARLEY_HTTP_PORT=str(http_port),
               PARLEY_WS_PORT=str(ws_port))
    env.pop("PARLEY_STACK_LOCKED", None)

    def run(*args, timeout=300):
        return subprocess.run([stack, *args], env=env, capture_output=True, text=True, timeout=timeout)

    try:
        r = run("start")
        if not check(r.returncode == 0, "scripts/stack start", r.stdout + r.stderr):
            return
        check(wait_until(lambda: health(http_port), 10), "the stack answers /health")
        # kill -9 every daemon of ours: each stays a zombie (we never reap it)
        old = {}
        for rel, prog in DAEMONS:
            pid = read_pid(var, rel)
            check(pid > 0 and comm(pid) == prog, "%s runs (pid %d)" % (prog, pid))
            old[prog] = pid
            KEEP.add(pid)
            os.kill(pid, signal.SIGKILL)
        for prog, pid in old.items():
            check(wait_until(lambda: state(pid) == "Z", 5), "%s killed with SIGKILL is a zombie (not reaped)" % prog,
                  state(pid))
        t0 = time.monotonic()
        r = run("start")
        check(r.returncode == 0, "scripts/stack start right after the crash", r.stdout + r.stderr)
        for rel, prog in DAEMONS:
            pid = read_pid(var, rel)
            check(pid != old[prog] and state(pid) not in (None, "Z") and comm(pid) == prog,
                  "start restarted %s (pid %d -> %d, state %s)" % (prog, old[prog], pid, state(pid)))
        check(wait_until(lambda: health(http_port), 10), "and the stack answers /health again (%.1f s)" %
              (time.monotonic() - t0))
        r = run("status")
        check(r.returncode == 0 and "stopped" not in r.stdout, "status says everything runs", r.stdout)
        KEEP.clear()

        # a pid file naming some other live process is not taken for the daemon
        with open(os.path.join(var, "run", "parley-ws.pid"), "w") as f:
            f.write("%d\n" % os.getpid())
        r = run("status")
        check("parley-ws: stopped" in r.stdout, "a pid file naming another program is not a running daemon",
              r.stdout)
        pids = ours("parley-ws", var)
        for pid in pids:  # the real one, whose pid file was overwritten: stop it by hand
            os.kill(pid, signal.SIGTERM)
        wait_until(lambda: not ours("parley-ws", var), 10)

        r = run("stop")
        check(r.returncode == 0, "scripts/stack stop", r.stdout + r.stderr)
        check(not ours("parley-fcgi", var) and not ours("parley-ws", var),
              "stop leaves no daemon running", (ours("parley-fcgi", var), ours("parley-ws", var)))

        # two starts at once: one daemon each, the one in the pid file
        procs = [subprocess.Popen([stack, "start"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  text=True) for _ in range(2)]
        outs = [p.communicate(timeout=300)[0] for p in procs]
        check(all(p.returncode == 0 for p in procs), "two concurrent starts both succeed", outs)
        time.sleep(0.5)
        for prog, rel in (("parley-fcgi", "run/parley-fcgi.pid"), ("parley-ws", "run/parley-ws.pid")):
            running = ours(prog, var)
            check(running == [read_pid(var, rel)], "two concurrent starts: exactly one %s, the one in its pid file"
                  % prog, (running, read_pid(var, rel)))
        check(wait_until(lambda: health(http_port), 10), "and the stack answers /health")
    finally:
        run("stop")
        for prog in ("parley-fcgi", "parley-ws", "lighttpd"):
            for pid in ours(prog, var):
                os.kill(pid, signal.SIGKILL)
        KEEP.clear()
        time.sleep(0.3)
        STOP_REAPER.set()
        shutil.rmtree(var, ignore_errors=True)


if __name__ == "__main__":
    try:
        main()
    except Exception as e:  # noqa: BLE001 - a crash of the test is a failure
        import traceback
        traceback.print_exc()
        check(False, "stack_test crashed: %r" % e)
    print(T.summary(), flush=True)
    sys.exit(1 if T.failed else 0)
