#!/usr/bin/env python3
"""tower-affinity-wsgi against gunicorn (gthread) and Granian (WSGI mode).

Run by hand, not in CI (see README.md beside this file):

    cargo build --release -p tower-affinity-wsgi
    pip install gunicorn granian && apt-get install wrk
    python3 wsgi/benches/compare.py

Every server runs bench_app.py in one process with the same number of
threads (THREADS, 8), and wrk, in its own process, drives it over
127.0.0.1. Each round runs every server once per case; a ratio is taken
within a round, and the report gives the median of the per-round ratios
with the worst and best round beside it.

Cases:
  hello   GET of 13 bytes, 64 connections (wrk -t1 -c64)
  10k     GET of 10 KB, 64 connections
  slow    64 clients read an endless streamed response at 4 KiB every
          20 ms, while wrk times fast GETs on 4 connections: their p99,
          how many were answered, and the server's threads.

Settings from the environment: ROUNDS (3), SECS (5, per wrk run),
THREADS (8), SLOW_CLIENTS (64).
"""

import os
import re
import socket
import statistics
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
ROUNDS = int(os.environ.get("ROUNDS", "3"))
SECS = int(os.environ.get("SECS", "5"))
THREADS = int(os.environ.get("THREADS", "8"))
SLOW_CLIENTS = int(os.environ.get("SLOW_CLIENTS", "64"))
BINARY = os.path.join(ROOT, "target", "release", "tower-affinity-wsgi")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def commands(port):
    bind = "127.0.0.1:%d" % port
    return {
        "tower-affinity-wsgi": [BINARY, "bench_app:app", "--bind", bind,
                                "--workers", str(THREADS), "--max-workers", str(THREADS)],
        "gunicorn-gthread": [sys.executable, "-m", "gunicorn", "-k", "gthread", "-w", "1",
                             "--threads", str(THREADS), "-b", bind, "--log-level", "warning",
                             "bench_app:app"],
        "granian-wsgi": [sys.executable, "-m", "granian", "--interface", "wsgi", "--workers", "1",
                         "--blocking-threads", str(THREADS), "--host", "127.0.0.1",
                         "--port", str(port), "--log-level", "warning", "bench_app:app"],
    }


def wait_listening(port, proc, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("the server exited with %s" % proc.returncode)
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("the server did not listen within %ss" % timeout)


def server_pids(proc):
    """The server and its children (granian and gunicorn fork workers)."""
    pids = [proc.pid]
    try:
        out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(proc.pid)],
                             capture_output=True, text=True).stdout
        pids += [int(p) for p in out.split()]
    except OSError:
        pass
    return pids


def threads(proc):
    total = 0
    for pid in server_pids(proc):
        try:
            total += len(os.listdir("/proc/%d/task" % pid))
        except OSError:
            pass
    return total


def wrk(port, path, connections, secs, latency=False):
    args = ["wrk", "-t1", "-c%d" % connections, "-d%ds" % secs, "--timeout", "%ds" % (secs * 2)]
    if latency:
        args.append("--latency")
    out = subprocess.run(args + ["http://127.0.0.1:%d%s" % (port, path)],
                         capture_output=True, text=True).stdout
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    done = re.search(r"(\d+) requests in", out)
    p99 = re.search(r"\s99%\s+([\d.]+)(us|ms|s)\b", out)
    errors = re.search(r"Socket errors:.*timeout (\d+)", out)
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}
    return {
        "rps": float(rps.group(1)) if rps else 0.0,
        "requests": int(done.group(1)) if done else 0,
        "p99_ms": float(p99.group(1)) * scale[p99.group(2)] if p99 else None,
        "timeouts": int(errors.group(1)) if errors else 0,
    }


class SlowReader(threading.Thread):
    """Reads /stream at 4 KiB every 20 ms until told to stop."""

    def __init__(self, port, stop):
        super().__init__(daemon=True)
        self.port, self.stop, self.started_reading = port, stop, threading.Event()

    def run(self):
        try:
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
            s.connect(("127.0.0.1", self.port))
            s.sendall(b"GET /stream HTTP/1.1\r\nHost: bench\r\n\r\n")
            s.settimeout(60)
            while not self.stop.is_set():
                if s.recv(4096):
                    self.started_reading.set()
                self.stop.wait(0.02)
            s.close()
        except OSError:
            self.started_reading.set()


def slow_case(port, proc):
    stop = threading.Event()
    readers = [SlowReader(port, stop) for _ in range(SLOW_CLIENTS)]
    before = threads(proc)
    for r in readers:
        r.start()
    for r in readers:
        r.started_reading.wait(10)
    # Let the slow streams settle into their stalled state before timing.
    time.sleep(1)
    result = wrk(port, "/hello", 4, SECS, latency=True)
    result["threads_before"] = before
    result["threads_during"] = threads(proc)
    stop.set()
    for r in readers:
        r.join(5)
    return result


def run_server(name, cmd, port, case):
    proc = subprocess.Popen(cmd, cwd=HERE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_listening(port, proc)
        wrk(port, "/hello", 16, 1)  # warm-up
        if case == "slow":
            return slow_case(port, proc)
        return wrk(port, "/10k" if case == "10k" else "/hello", 64, SECS)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def load():
    with open("/proc/loadavg") as f:
        return f.read().split()[:3]


def main():
    if not os.path.exists(BINARY):
        sys.exit("build it first: cargo build --release -p tower-affinity-wsgi")
    print("load average before: %s (nproc %d)" % (" ".join(load()), os.cpu_count()))
    results = {}
    for rnd in range(ROUNDS):
        for case in ("hello", "10k", "slow"):
            for name in ("tower-affinity-wsgi", "gunicorn-gthread", "granian-wsgi"):
                port = free_port()
                r = run_server(name, commands(port)[name], port, case)
                results.setdefault((case, name), []).append(r)
                print("round %d %-5s %-20s %s  load %s" % (rnd + 1, case, name, r, " ".join(load())),
                      flush=True)
    print()
    ours = "tower-affinity-wsgi"
    for case in ("hello", "10k"):
        for other in ("granian-wsgi", "gunicorn-gthread"):
            ratios = [a["rps"] / b["rps"] for a, b in zip(results[(case, ours)], results[(case, other)])
                      if b["rps"] > 0]
            medians = {n: statistics.median(r["rps"] for r in results[(case, n)])
                       for n in (ours, other)}
            if ratios:
                print("%-5s %s / %s: median %.2fx (worst %.2fx, best %.2fx); req/s medians %.0f vs %.0f"
                      % (case, ours, other, statistics.median(ratios), min(ratios), max(ratios),
                         medians[ours], medians[other]))
    for name in (ours, "gunicorn-gthread", "granian-wsgi"):
        rs = results[("slow", name)]
        p99s = [r["p99_ms"] for r in rs if r["p99_ms"] is not None]
        print("slow  %-20s fast requests answered %s, p99 %s ms, timeouts %s, threads %s -> %s"
              % (name, [r["requests"] for r in rs],
                 ["%.1f" % p for p in p99s] or "none", [r["timeouts"] for r in rs],
                 [r["threads_before"] for r in rs], [r["threads_during"] for r in rs]))
    print("load average after: %s" % " ".join(load()))


if __name__ == "__main__":
    main()
