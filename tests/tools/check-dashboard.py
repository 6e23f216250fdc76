#!/usr/bin/env python3
"""Checks that every query of the Grafana dashboard names metrics the agent really exports.

The agent leaves a metric family out of /metrics until it has a series, so a freshly started
agent shows few of them. This script therefore makes the agent do what the dashboard graphs,
on loopback only: it starts the agent with peer sharing configured (Redis URL pointing at a
closed port: Redis "down"; peer port bound) and a fake Azure blob endpoint (a thread here that
answers HEAD and ranged GETs for one blob), asks for one chunk twice (a fill from the origin,
then a hit), sends one unsigned request to the peer port (a peer error), scrapes /metrics and
stops the agent. Then every `expr` of the dashboard must name at least one blobswarm_ metric,
each of which appears in that exposition, with the label names its selectors use.

It does not check the dashboard's layout, or that Grafana accepts it.

usage: check-dashboard.py --agent build/agent/blobswarm-agent deploy/grafana/blobswarm-dashboard.json
"""
import argparse
import http.server
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

ACCOUNT = "devstoreaccount1"
BLOB = bytes((i * 7 + 3) & 0xFF for i in range(1 << 20))  # 1 MiB, one chunk
ETAG = '"0x8DCAFEBEEF"'
SAS = "sv=2021-12-02&sr=b&sp=r&se=2099-01-01T00:00:00Z&sig=dGVzdA%3D%3D"
DEADLINE_S = 20


class Origin(http.server.BaseHTTPRequestHandler):
    """Enough of Azure's Get Blob / Get Blob Properties for one blob."""

    def log_message(self, *args):
        pass

    def _head(self, code, length, extra=()):
        self.send_response(code)
        self.send_header("ETag", ETAG)
        self.send_header("Content-Length", str(length))
        self.send_header("x-ms-blob-type", "BlockBlob")
        self.send_header("Last-Modified", "Mon, 01 Jan 2024 00:00:00 GMT")
        for k, v in extra:
            self.send_header(k, v)
        self.end_headers()

    def do_HEAD(self):
        self._head(200, len(BLOB))

    def do_GET(self):
        m = re.fullmatch(r"bytes=(\d+)-(\d+)", self.headers.get("x-ms-range") or self.headers.get("Range") or "")
        if not m:
            self._head(200, len(BLOB))
            self.wfile.write(BLOB)
            return
        a, b = int(m.group(1)), min(int(m.group(2)), len(BLOB) - 1)
        self._head(206, b - a + 1, [("Content-Range", f"bytes {a}-{b}/{len(BLOB)}")])
        self.wfile.write(BLOB[a : b + 1])


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(what, pred):
    end = time.monotonic() + DEADLINE_S
    while time.monotonic() < end:
        v = pred()
        if v:
            return v
        time.sleep(0.05)
    raise SystemExit(f"check-dashboard: timed out waiting for {what}")


def exposition(agent):
    origin = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Origin)
    threading.Thread(target=origin.serve_forever, daemon=True).start()
    endpoint = f"http://127.0.0.1:{origin.server_address[1]}/{ACCOUNT}"
    with tempfile.TemporaryDirectory() as d:
        secret = os.path.join(d, "secret")
        fd = os.open(secret, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.write(fd, os.urandom(32).hex().encode())
        os.close(fd)
        closed = free_port()  # nothing listens there: Redis is down
        peer = free_port()
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "BLOBSWARM_AGENT_LISTEN": "127.0.0.1:0",
            "BLOBSWARM_AGENT_PORT_FILE": os.path.join(d, "port"),
            "BLOBSWARM_AGENT_SOCKET": "",
            "BLOBSWARM_STORE_DIR": os.path.join(d, "store"),
            "BLOBSWARM_STORE_BUDGET": "64M",
            "BLOBSWARM_CHUNK_BYTES": "1M",
            "BLOBSWARM_ALLOWED_ENDPOINTS": "http://127.0.0.1:*/" + ACCOUNT,
            "BLOBSWARM_REDIS_URL": f"redis://127.0.0.1:{closed}",
            "BLOBSWARM_PEER_LISTEN": f"127.0.0.1:{peer}",
            "BLOBSWARM_ADVERTISE_ADDR": f"127.0.0.1:{peer}",
            "BLOBSWARM_CLUSTER_SECRET_FILE": secret,
            "BLOBSWARM_NODE_NAME": "dashboard-check",
            "BLOBSWARM_DRAIN_MS": "0",
        }
        log = open(os.path.join(d, "agent.log"), "w+")
        p = subprocess.Popen([agent], env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            port_file = env["BLOBSWARM_AGENT_PORT_FILE"]
            port = wait_for("the agent's port file",
                            lambda: os.path.exists(port_file) and open(port_file).read().strip()
                            or (p.poll() is not None and sys.exit(f"agent exited: {open(log.name).read()}")))
            api = f"http://127.0.0.1:{port}"
            req = {"v": 1, "op": "chunk", "account": ACCOUNT, "container": "models",
                   "blob": "dashboard/check.bin", "etag": ETAG, "chunk": 0,
                   "auth": {"kind": "sas", "endpoint": endpoint, "account": ACCOUNT, "secret": SAS}}
            statuses = []
            for _ in range(2):  # filled from the origin, then a hit
                r = urllib.request.Request(api + "/v1/chunk", data=json.dumps(req).encode(),
                                           headers={"Content-Type": "application/json"})
                with urllib.request.urlopen(r, timeout=DEADLINE_S) as resp:
                    statuses.append(json.loads(resp.headers["X-Blobswarm-Meta"])["status"])
                    resp.read()
            if statuses != ["filled", "hit"]:
                sys.exit(f"check-dashboard: chunk requests answered {statuses}, expected filled, hit;"
                         f" agent log:\n{open(log.name).read()}")
            try:  # unsigned: 401, counted as a peer error
                urllib.request.urlopen(f"http://127.0.0.1:{peer}/v1/peer/chunk?a=x&c=y&b=z&e=e&i=0",
                                       timeout=DEADLINE_S)
            except urllib.error.HTTPError as e:
                if e.code != 401:
                    sys.exit(f"check-dashboard: unsigned peer request answered {e.code}, expected 401")
            with urllib.request.urlopen(api + "/metrics", timeout=DEADLINE_S) as resp:
                text = resp.read().decode()
        finally:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout=DEADLINE_S)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
            origin.shutdown()
            # chunk files are immutable when the agent could set the flag (root here)
            subprocess.run(["chattr", "-R", "-i", os.path.join(d, "store")],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return text


def parse_exposition(text):
    """{sample name: set of label names} for every sample line, and family names."""
    series = {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            series.setdefault(line.split()[2], set())
            continue
        m = re.match(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(\{([^}]*)\})?\s", line)
        if m:
            labels = set(re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)="', m.group(3) or ""))
            series.setdefault(m.group(1), set()).update(labels)
    return series


def exprs(dash):
    for panel in dash.get("panels", []):
        for sub in [panel] + panel.get("panels", []):
            for t in sub.get("targets", []):
                yield sub.get("title", "?"), t.get("expr", "")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--agent", required=True)
    ap.add_argument("dashboard")
    a = ap.parse_args()
    dash = json.load(open(a.dashboard))
    exported = parse_exposition(exposition(a.agent))
    problems, names_used = 0, set()
    queries = list(exprs(dash))
    if not queries:
        print("check-dashboard: the dashboard has no queries")
        return 1
    for title, expr in queries:
        # metric{selectors} or a bare metric name; label names of the selectors
        uses = re.findall(r"\b(blobswarm_[a-z0-9_]+)\s*(\{([^}]*)\})?", expr)
        if not uses:
            print(f"check-dashboard: panel '{title}': query names no blobswarm_ metric: {expr}")
            problems += 1
        for name, _, sel in uses:
            names_used.add(name)
            if name not in exported:
                print(f"check-dashboard: panel '{title}': {name} is not in the agent's /metrics")
                problems += 1
                continue
            for label in re.findall(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)", sel or ""):
                if label not in exported[name] and label not in ("instance", "job", "pod", "node", "namespace"):
                    print(f"check-dashboard: panel '{title}': {name} has no label {label}")
                    problems += 1
        for label in re.findall(r"\b(?:by|without)\s*\(([^)]*)\)", expr):
            for l in (x.strip() for x in label.split(",")):
                if l and l not in ("le", "instance", "job", "pod", "node", "namespace") and \
                        not any(l in exported.get(n, set()) for n, _, _ in uses):
                    print(f"check-dashboard: panel '{title}': no metric of the query has label {l}")
                    problems += 1
    print(f"check-dashboard: {len(queries)} queries, {len(names_used)} metrics used, "
          f"{len(exported)} names exported, {problems} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
