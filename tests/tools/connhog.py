#!/usr/bin/env python3
"""Connection hog for the adversarial tests (tests/integration/security/conn.sh): opens many
connections to an agent and keeps them alive the way an attacker on the node would, then
reports which ones the agent refused or closed, and when. A test tool: it connects only to
the Unix socket path or the loopback address it is given, and runs for a bounded time.

usage:
  connhog.py unix PATH --conns N [--uid UID] [--hello-s S] [--duration S]
      N connections to the agent's Unix socket (as UID if given: privileges are dropped
      before connecting); every S seconds (0: never) a hello frame on each, replies read.
  connhog.py tcp HOST PORT --conns N [--source IP] [--trickle-s S] [--duration S]
      N TCP connections (from the source address IP if given), each sending the start of an
      HTTP request and then one more header line every S seconds, never finishing it
      (slowloris).
Prints "ready OPENED" once the connections are opened, then at the end one JSON line:
  {"opened": n, "connect_failed": n, "busy": n, "closed": [seconds after opening, ...],
   "alive": n}
where "busy" counts connections answered with the agent's busy frame (refused), and
"closed" the others the agent closed, with the time each had been open.
"""
import argparse
import json
import os
import selectors
import socket
import struct
import sys
import time

MAX_CONNS = 5000
MAX_DURATION_S = 120
CONNECT_TIMEOUT_S = 0.5
MAX_FAIL_STREAK = 5


def frame(obj):
    data = json.dumps(obj).encode()
    return struct.pack('<I', len(data)) + data


HELLO = frame({'v': 1, 'op': 'hello'})


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('kind', choices=['unix', 'tcp'])
    ap.add_argument('target', nargs='+')
    ap.add_argument('--conns', type=int, required=True)
    ap.add_argument('--uid', type=int)
    ap.add_argument('--hello-s', type=float, default=0)
    ap.add_argument('--trickle-s', type=float, default=1)
    ap.add_argument('--source')
    ap.add_argument('--duration', type=float, default=10)
    a = ap.parse_args()
    if not 0 < a.conns <= MAX_CONNS or not 0 < a.duration <= MAX_DURATION_S:
        sys.exit(f'connhog: --conns 1..{MAX_CONNS}, --duration up to {MAX_DURATION_S} s')
    if a.kind == 'tcp' and a.target[0] not in ('127.0.0.1', 'localhost'):
        sys.exit('connhog: tcp targets are loopback only')
    if a.uid is not None:
        if os.geteuid() != 0:
            sys.exit('connhog: --uid needs root (the adversarial suite runs as root)')
        os.setgroups([])
        os.setgid(a.uid)
        os.setuid(a.uid)

    sel = selectors.DefaultSelector()
    conns = {}  # socket -> {opened, buf, busy}
    failed = 0
    streak = 0  # connection attempts failed in a row: the agent stopped accepting
    for _ in range(a.conns):
        if streak >= MAX_FAIL_STREAK:
            failed += 1
            continue
        s = None
        try:
            if a.kind == 'unix':
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                s.settimeout(CONNECT_TIMEOUT_S)  # a full backlog blocks connect
                s.connect(a.target[0])
            else:
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                s.settimeout(CONNECT_TIMEOUT_S)
                if a.source:
                    s.bind((a.source, 0))
                s.connect((a.target[0], int(a.target[1])))
                s.sendall(b'GET /healthz HTTP/1.1\r\nHost: agent\r\n')
        except OSError:
            if s:
                s.close()
            failed += 1
            streak += 1
            continue
        streak = 0
        s.setblocking(False)
        conns[s] = {'opened': time.monotonic(), 'buf': b'', 'busy': False}
        sel.register(s, selectors.EVENT_READ)
    print(f'ready {len(conns)}', flush=True)

    busy = 0
    closed = []
    end = time.monotonic() + a.duration
    every = a.hello_s if a.kind == 'unix' else a.trickle_s
    next_send = time.monotonic() + every if every > 0 else float('inf')

    def drop(s, st):
        nonlocal busy
        sel.unregister(s)
        s.close()
        del conns[s]
        if st['busy']:
            busy += 1
        else:
            closed.append(round(time.monotonic() - st['opened'], 2))

    while time.monotonic() < end and conns:
        timeout = max(0.0, min(end, next_send) - time.monotonic())
        for key, _ in sel.select(timeout=min(timeout, 0.2)):
            s = key.fileobj
            st = conns[s]
            try:
                data = s.recv(65536)
            except BlockingIOError:
                continue
            except OSError:
                data = b''
            if not data:
                drop(s, st)
                continue
            st['buf'] += data
            if a.kind == 'unix' and len(st['buf']) >= 4:
                n = struct.unpack('<I', st['buf'][:4])[0]
                if len(st['buf']) >= 4 + n:
                    msg = json.loads(st['buf'][4:4 + n])
                    st['busy'] = st['busy'] or msg.get('status') == 'busy'
                    st['buf'] = st['buf'][4 + n:]
        if time.monotonic() >= next_send:
            line = HELLO if a.kind == 'unix' else b'X-Slow: 1\r\n'
            for s, st in list(conns.items()):
                try:
                    s.send(line)
                except OSError:
                    drop(s, st)
            next_send += every
    print(json.dumps({'opened': a.conns - failed, 'connect_failed': failed, 'busy': busy,
                      'closed': closed, 'alive': len(conns)}), flush=True)


if __name__ == '__main__':
    main()
