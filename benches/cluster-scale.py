#!/usr/bin/env python3
"""How batch jobs scale with worker processes on one PostgreSQL.

For 1, 2 and 4 workers (`precis serve --role worker`) and one api replica
(`--role api`), all on a fresh schema of one PostgreSQL database, posts a
job of --items summarize items to the api, times it until it is done, and
prints items/s, the ratio to one worker, and the database transactions
committed per item. Every process runs the fake model (a debug build with
the `test-backend` feature; `PRECIS_TEST_FAKE_MODEL`), whose cost per item
is fixed: it sleeps 50 ms per word it writes (--words words an item), and
the cache is off, so every item runs it once.

    cargo build --features test-backend
    eval "$(scripts/throwaway-postgres.sh start)"     # or any PostgreSQL URL
    benches/cluster-scale.py --database "$PRECIS_TEST_DATABASE_URL"

A benchmark, not a test: the figures depend on the machine.
"""

import argparse
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
import uuid

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def http(method, url, body=None):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        req.add_header("content-type", "application/json")
    with urllib.request.urlopen(req, timeout=30) as r:
        return r.status, r.read().decode()


def psql(url, sql):
    out = subprocess.run(["psql", url, "-Atc", sql], check=True, capture_output=True, text=True)
    return out.stdout.strip()


def start(binary, url, role, parallel, lease):
    port = free_port()
    env = dict(os.environ, PRECIS_TEST_FAKE_MODEL="1", PRECIS_DATABASE_URL=url)
    proc = subprocess.Popen(
        [binary, "serve", "--quiet", "--no-cache", "--model", "fake", "--role", role,
         "--max-concurrency", str(parallel), "--job-lease-secs", str(lease),
         "--addr", f"127.0.0.1:{port}"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            if http("GET", base + "/ready")[0] == 200:
                return proc, base
        except OSError:
            pass
        if proc.poll() is not None:
            sys.exit(f"precis serve --role {role} exited with {proc.returncode}")
        time.sleep(0.1)
    sys.exit("a node did not become ready")


def run(binary, database, workers, items, words, parallel, lease):
    schema = f"bench_{workers}_{uuid.uuid4().hex[:8]}"
    psql(database, f"CREATE SCHEMA {schema}")
    joiner = "&" if "?" in database else "?"
    url = f"{database}{joiner}options=-c%20search_path%3D{schema}"
    procs = []
    try:
        api, base = start(binary, url, "api", parallel, lease)
        procs.append(api)
        for _ in range(workers):
            procs.append(start(binary, url, "worker", parallel, lease)[0])
        text = " ".join(["FAKE_SLOW"] + ["w"] * (words - 2))
        body = {"task": "summarize",
                "items": [{"text": f"{text} {i}."} for i in range(items)]}
        commits0 = int(psql(database, "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()"))
        t0 = time.time()
        status, answer = http("POST", base + "/v1/jobs", body)
        job = json.loads(answer)["id"]
        while True:
            view = json.loads(http("GET", f"{base}/v1/jobs/{job}")[1])
            if view["state"] not in ("queued", "running"):
                break
            time.sleep(0.1)
        elapsed = time.time() - t0
        # pg_stat counters are flushed at most once a second.
        time.sleep(1.2)
        commits = int(psql(database, "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()")) - commits0
        done = view["progress"]["done"]
        if view["state"] != "done" or done != items:
            sys.exit(f"the job ended {view['state']} with {done} of {items} items")
        return items / elapsed, elapsed, commits / items
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(timeout=30)
        psql(database, f"DROP SCHEMA {schema} CASCADE")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--database", default=os.environ.get("PRECIS_TEST_DATABASE_URL"),
                    help="a postgres:// URL (default: $PRECIS_TEST_DATABASE_URL)")
    ap.add_argument("--binary", default=os.path.join(ROOT, "target", "debug", "precis"),
                    help="a precis built with --features test-backend")
    ap.add_argument("--items", type=int, default=500)
    ap.add_argument("--words", type=int, default=2, help="fake model words per item (50 ms each)")
    ap.add_argument("--parallel", type=int, default=4, help="items a node works on at once")
    ap.add_argument("--lease", type=int, default=30, help="--job-lease-secs")
    ap.add_argument("--workers", default="1,2,4")
    a = ap.parse_args()
    if not a.database:
        sys.exit("no database: pass --database postgres://... or set PRECIS_TEST_DATABASE_URL")
    print(f"{a.items} items, {a.words * 50} ms of fake model each, {a.parallel} at once per worker, lease {a.lease} s")
    print(f"{'workers':>7} {'items/s':>9} {'seconds':>8} {'ratio':>6} {'db commits/item':>16}")
    first = None
    for n in [int(w) for w in a.workers.split(",")]:
        rate, elapsed, per_item = run(a.binary, a.database, n, a.items, a.words, a.parallel, a.lease)
        first = first or rate
        print(f"{n:>7} {rate:>9.1f} {elapsed:>8.1f} {rate / first:>6.2f} {per_item:>16.1f}", flush=True)


if __name__ == "__main__":
    main()
