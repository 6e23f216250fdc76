// Fault-injecting HTTP proxy for integration tests: listens on 127.0.0.1 (or --host ADDR;
// port 0 unless --port), forwards every request to one upstream (the plain-HTTP Azurite) with its method,
// path and headers unchanged (Shared Key signs them), and injects the fault of the current
// rule into the blob requests it matches. It is a test tool: no TLS, no auth of its own, and
// it does not cache or rewrite anything.
//
// usage: node faultproxy.mjs --target http://127.0.0.1:PORT [--host ADDR] [--port N]
//                            [--rule JSON] [--rate-mbit M] [--exit-on-stdin-eof]
//                            [--max-lifetime-s S]
// Prints "listening <port>" on stdout once it accepts connections.
// --rate-mbit M: all response bodies forwarded from upstream share one token bucket of M
// Mbit/s (10^6 bit/s), served first come first served in pieces of at most 64 KiB: the total
// rate of the origin link, whatever the number of connections.
//
// Control endpoints (never forwarded):
//   POST /__fault   body: a rule (JSON), replaces the current one; {"kind":"none"} clears
//   GET  /__fault   the current rule and how many faults it has left
//   GET  /__stats   {"requests":N,"byMethod":{...},"blobGets":N,"rangedGets":N,
//                    "faults":{"status":N,...},"injected":N,"bytesOut":N,
//                    "inflight":N,"maxInflight":N}   (requests open now / at most at once;
//                    bytesOut: response body bytes sent to clients, control answers aside)
//   POST /__stats/reset
// Rules (count: how many matching requests get the fault, default 1; methods: default
// ["GET"]; match: optional substring the decoded path must contain):
//   {"kind":"status","status":503,"count":3,"retryAfter":1,"errorCode":"ServerBusy"}
//        answer with that status, Retry-After (seconds) and x-ms-error-code, no upstream call
//   {"kind":"reset","count":2,"afterBytes":100000}
//        forward; after afterBytes body bytes destroy the client socket (TCP RST). A response
//        whose body is not longer than afterBytes passes unharmed and does not use up count.
//   {"kind":"truncate","count":1,"afterBytes":N}
//        forward the full headers (Content-Length unchanged), only N body bytes (default
//        half), then close the connection (FIN)
//   {"kind":"stall","count":1,"ms":3000}
//        hold the request ms milliseconds before forwarding it (nothing is sent meanwhile)
//   {"kind":"stall","count":1,"ms":3000,"afterBytes":N}
//        forward the headers and N body bytes, then send nothing for ms milliseconds, then
//        the rest (if the client is still there)
//   {"kind":"rewrite","count":1,"status":200,"dropHeaders":["etag"],"setHeaders":{...},
//    "bodyBytes":N,"fillByte":88}
//        forward, then answer with the upstream response changed (a wrong origin): status
//        replaced, headers dropped/set (names case-insensitive), body cut to N bytes and/or
//        every byte replaced by fillByte; Content-Length is the new body's length unless
//        setHeaders gives one. A non-2xx upstream answer passes unharmed (fault given back).
import http from 'node:http';

const args = process.argv.slice(2);
const opt = {};
for (let i = 0; i < args.length; i++) {
  const k = args[i].replace(/^--/, '');
  if (i + 1 < args.length && !args[i + 1].startsWith('--')) opt[k] = args[++i];
  else opt[k] = true;
}
if (!opt.target) {
  console.error('faultproxy: --target http://host:port is required');
  process.exit(2);
}
const target = new URL(opt.target);
if (target.protocol !== 'http:') {
  console.error('faultproxy: only http:// upstreams are supported');
  process.exit(2);
}

const host = typeof opt.host === 'string' ? opt.host : '127.0.0.1';
const MAX_RATE_MBIT = 100000;
let rateBytesPerMs = 0;
if (opt['rate-mbit'] !== undefined) {
  const m = Number(opt['rate-mbit']);
  if (!(m > 0 && m <= MAX_RATE_MBIT)) {
    console.error(`faultproxy: --rate-mbit must be a number in (0, ${MAX_RATE_MBIT}]`);
    process.exit(2);
  }
  rateBytesPerMs = (m * 1e6) / 8 / 1000;
}

const upstreamAgent = new http.Agent({ keepAlive: true, maxSockets: 256 });
const KINDS = ['none', 'status', 'reset', 'truncate', 'stall', 'rewrite'];
let rule = { kind: 'none' };
let left = 0;
let stats;
let inflight = 0;
function resetStats() {
  stats = {
    requests: 0, byMethod: {}, blobGets: 0, rangedGets: 0, heads: 0,
    faults: { status: 0, reset: 0, truncate: 0, stall: 0, rewrite: 0 }, injected: 0,
    bytesOut: 0, inflight, maxInflight: inflight,
  };
}
resetStats();

function setRule(r) {
  if (!r || typeof r !== 'object' || !KINDS.includes(r.kind)) {
    throw new Error(`rule.kind must be one of ${KINDS.join(', ')}`);
  }
  if (r.kind === 'status' && !(Number.isInteger(r.status) && r.status >= 100 && r.status < 600)) {
    throw new Error('status rule needs an integer status');
  }
  rule = { ...r };
  left = r.kind === 'none' ? 0 : Number.isInteger(r.count) ? r.count : 1;
}
if (opt.rule) setRule(JSON.parse(opt.rule));

function matches(req) {
  if (rule.kind === 'none' || left <= 0) return false;
  const methods = Array.isArray(rule.methods) ? rule.methods : ['GET'];
  if (!methods.includes(req.method)) return false;
  if (rule.match) {
    let path = req.url;
    try { path = decodeURIComponent(req.url.split('?')[0]); } catch { /* keep raw */ }
    if (!path.includes(rule.match)) return false;
  }
  return true;
}

// A matching request reserves one fault at once (concurrent requests must not all take the
// last one); a fault that turns out not to apply (body too short) is given back.
function reserveFault() {
  left--;
}
function refundFault() {
  left++;
}
function takeFault(kind) {
  stats.faults[kind]++;
  stats.injected++;
}

function json(res, code, obj) {
  const body = JSON.stringify(obj);
  res.writeHead(code, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) });
  res.end(body);
}

function readBody(req) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    let n = 0;
    req.on('data', (c) => {
      n += c.length;
      if (n > 65536) reject(new Error('control body too large'));
      else chunks.push(c);
    });
    req.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
    req.on('error', reject);
  });
}

async function control(req, res) {
  const path = req.url.split('?')[0];
  try {
    if (path === '/__fault' && req.method === 'POST') {
      setRule(JSON.parse(await readBody(req)));
      return json(res, 200, { rule, left });
    }
    if (path === '/__fault' && req.method === 'GET') return json(res, 200, { rule, left });
    if (path === '/__stats' && req.method === 'GET') return json(res, 200, stats);
    if (path === '/__stats/reset' && req.method === 'POST') {
      resetStats();
      return json(res, 200, stats);
    }
    return json(res, 404, { error: 'unknown control endpoint' });
  } catch (e) {
    return json(res, 400, { error: e.message });
  }
}

// The shared token bucket of --rate-mbit: take(n, cb) calls cb once n bytes may leave, in
// the order asked. A piece may overdraw the bucket; the next waits until the debt is paid.
const BUCKET_BURST_MS = 10; // tokens saved up while idle, in milliseconds of the rate
const bucket = {
  tokens: 0, last: Date.now(), queue: [], timer: null,
  take(n, cb) {
    this.queue.push({ n, cb });
    if (!this.timer) this.run();
  },
  run() {
    this.timer = null;
    const now = Date.now();
    const burst = Math.max(65536, rateBytesPerMs * BUCKET_BURST_MS);
    this.tokens = Math.min(burst, this.tokens + (now - this.last) * rateBytesPerMs);
    this.last = now;
    while (this.queue.length && this.tokens > 0) {
      const { n, cb } = this.queue.shift();
      this.tokens -= n;
      cb();
    }
    if (this.queue.length) {
      this.timer = setTimeout(() => this.run(), Math.max(1, Math.ceil(-this.tokens / rateBytesPerMs)));
    }
  },
};

// Sends an upstream body to the client (ures.pipe(res) unless --rate-mbit is set).
function pump(ures, res) {
  if (!rateBytesPerMs) {
    ures.pipe(res);
    return;
  }
  // 'end' may come while the last piece still waits for tokens: it ends res after it.
  let pending = 0;
  let ended = false;
  ures.on('data', (c) => {
    ures.pause();
    pending++;
    bucket.take(c.length, () => {
      pending--;
      if (res.destroyed) {
        ures.destroy();
        return;
      }
      const ok = res.write(c);
      if (ended && !pending) res.end();
      else if (ok) ures.resume();
      else res.once('drain', () => ures.resume());
    });
  });
  ures.on('end', () => {
    ended = true;
    if (!pending) res.end();
  });
  ures.on('error', () => res.destroy());
  res.on('close', () => ures.destroy());
}

const HOP = new Set(['connection', 'keep-alive', 'proxy-connection', 'transfer-encoding', 'upgrade']);

function rawWithout(raw, drop) {
  const out = [];
  for (let i = 0; i + 1 < raw.length; i += 2) {
    if (!drop.has(raw[i].toLowerCase())) out.push(raw[i], raw[i + 1]);
  }
  return out;
}

// Forwards req upstream; hands the upstream response to onResponse(ures) or answers 502.
function forward(req, res, onResponse) {
  const headers = {};
  for (let i = 0; i + 1 < req.rawHeaders.length; i += 2) {
    const k = req.rawHeaders[i];
    if (HOP.has(k.toLowerCase())) continue;
    headers[k] = headers[k] === undefined ? req.rawHeaders[i + 1] : `${headers[k]}, ${req.rawHeaders[i + 1]}`;
  }
  const ureq = http.request({
    host: target.hostname, port: target.port, method: req.method, path: req.url,
    headers, agent: upstreamAgent,
  }, onResponse);
  ureq.on('error', (e) => {
    if (!res.headersSent) json(res, 502, { error: `upstream: ${e.message}` });
    else res.destroy();
  });
  req.pipe(ureq);
}

function passThrough(req, res) {
  forward(req, res, (ures) => {
    res.writeHead(ures.statusCode, ures.statusMessage, rawWithout(ures.rawHeaders, HOP));
    pump(ures, res);
  });
}

function injectStatus(req, res) {
  takeFault('status');
  const code = rule.status;
  const errorCode = rule.errorCode ?? (code === 503 ? 'ServerBusy' : code === 500 ? 'InternalError' : 'InjectedFault');
  const headers = { 'x-ms-error-code': errorCode, 'content-type': 'application/xml' };
  if (rule.retryAfter !== undefined) headers['retry-after'] = String(rule.retryAfter);
  const body = req.method === 'HEAD' ? '' :
    `<?xml version="1.0" encoding="utf-8"?><Error><Code>${errorCode}</Code><Message>injected by faultproxy</Message></Error>`;
  headers['content-length'] = Buffer.byteLength(body);
  req.resume();
  res.writeHead(code, headers);
  res.end(body);
}

// Forwards, then cuts the body after `limit` bytes: `how` is 'reset' (RST) or 'truncate' (FIN).
function injectCut(req, res, how) {
  forward(req, res, (ures) => {
    const len = Number(ures.headers['content-length'] ?? NaN);
    const limit = how === 'reset' ? Number(rule.afterBytes ?? 0)
      : rule.afterBytes !== undefined ? Number(rule.afterBytes) : Math.floor(len / 2);
    if (!(ures.statusCode >= 200 && ures.statusCode < 300) || !(len > limit)) {
      refundFault();
      res.writeHead(ures.statusCode, ures.statusMessage, rawWithout(ures.rawHeaders, HOP));
      pump(ures, res);
      return;
    }
    takeFault(how);
    res.writeHead(ures.statusCode, ures.statusMessage, rawWithout(ures.rawHeaders, HOP));
    res.flushHeaders();
    let sent = 0;
    let done = false;
    ures.on('data', (chunk) => {
      if (done) return;
      const room = limit - sent;
      const part = chunk.length <= room ? chunk : chunk.subarray(0, room);
      sent += part.length;
      const cut = sent >= limit;
      if (part.length) {
        stats.bytesOut += part.length;
        res.socket.write(part);
      }
      if (!cut) return;
      done = true;
      ures.destroy();
      const sock = res.socket;
      if (how === 'reset') {
        // let the written bytes leave, then abort the connection
        setTimeout(() => (sock.resetAndDestroy ? sock.resetAndDestroy() : sock.destroy()), 20);
      } else {
        sock.end();
      }
    });
    ures.on('error', () => res.destroy());
  });
}

// Forwards the headers and `after` body bytes, pauses `ms`, then sends the rest.
function injectStallBody(req, res, after, ms) {
  forward(req, res, (ures) => {
    const len = Number(ures.headers['content-length'] ?? NaN);
    res.writeHead(ures.statusCode, ures.statusMessage, rawWithout(ures.rawHeaders, HOP));
    if (!(ures.statusCode >= 200 && ures.statusCode < 300) || !(len > after)) {
      refundFault();
      pump(ures, res);
      return;
    }
    takeFault('stall');
    res.flushHeaders();
    let sent = 0;
    let paused = false;
    ures.on('data', (chunk) => {
      if (paused || sent >= after) {
        res.write(chunk);
        return;
      }
      const head = chunk.subarray(0, after - sent);
      const rest = chunk.subarray(head.length);
      sent += head.length;
      if (head.length) res.write(head);
      if (sent < after) return;
      paused = true;
      ures.pause();
      setTimeout(() => {
        if (res.destroyed) {
          ures.destroy();
          return;
        }
        if (rest.length) res.write(rest);
        ures.resume();
      }, ms);
    });
    ures.on('end', () => res.end());
    ures.on('error', () => res.destroy());
    res.on('close', () => ures.destroy());
  });
}

function injectStall(req, res) {
  const ms = Number(rule.ms ?? 3000);
  if (rule.afterBytes !== undefined) return injectStallBody(req, res, Number(rule.afterBytes), ms);
  takeFault('stall');
  let gone = false;
  res.on('close', () => { gone = true; });
  req.pause();
  setTimeout(() => {
    if (gone) return;
    req.resume();
    passThrough(req, res);
  }, ms);
}

function injectRewrite(req, res) {
  forward(req, res, (ures) => {
    const parts = [];
    ures.on('data', (c) => parts.push(c));
    ures.on('error', () => res.destroy());
    ures.on('end', () => {
      let body = Buffer.concat(parts);
      if (!(ures.statusCode >= 200 && ures.statusCode < 300)) {
        refundFault();
        res.writeHead(ures.statusCode, ures.statusMessage, rawWithout(ures.rawHeaders, HOP));
        res.end(body);
        return;
      }
      takeFault('rewrite');
      if (rule.bodyBytes !== undefined) body = body.subarray(0, Math.min(body.length, Number(rule.bodyBytes)));
      if (rule.fillByte !== undefined) body = Buffer.alloc(body.length, Number(rule.fillByte));
      const set = Object.fromEntries(Object.entries(rule.setHeaders ?? {}).map(([k, v]) => [k.toLowerCase(), String(v)]));
      const head = req.method === 'HEAD'; // keeps the blob's Content-Length unless told
      const drop = new Set([...HOP, ...(head ? [] : ['content-length']),
        ...(rule.dropHeaders ?? []).map((h) => h.toLowerCase()), ...Object.keys(set)]);
      const headers = rawWithout(ures.rawHeaders, drop);
      for (const [k, v] of Object.entries(set)) headers.push(k, v);
      if (!head && set['content-length'] === undefined) headers.push('content-length', String(body.length));
      res.writeHead(rule.status ?? ures.statusCode, headers);
      res.end(req.method === 'HEAD' ? undefined : body);
    });
  });
}

// Counts the body bytes written to res (bytesOut), whichever path writes them.
function countBody(res) {
  const write = res.write.bind(res);
  const end = res.end.bind(res);
  const len = (c) => (typeof c === 'string' ? Buffer.byteLength(c) : c ? c.length : 0);
  res.write = (c, ...rest) => {
    stats.bytesOut += len(c);
    return write(c, ...rest);
  };
  res.end = (c, ...rest) => {
    if (typeof c !== 'function') stats.bytesOut += len(c);
    return end(c, ...rest);
  };
}

const server = http.createServer((req, res) => {
  if (req.url.startsWith('/__')) {
    control(req, res);
    return;
  }
  stats.requests++;
  countBody(res);
  stats.inflight = ++inflight;
  stats.maxInflight = Math.max(stats.maxInflight, inflight);
  res.once('close', () => { stats.inflight = --inflight; });
  stats.byMethod[req.method] = (stats.byMethod[req.method] ?? 0) + 1;
  if (req.method === 'HEAD') stats.heads++;
  if (req.method === 'GET') {
    stats.blobGets++;
    if (req.headers['x-ms-range'] || req.headers.range) stats.rangedGets++;
  }
  if (!matches(req)) return passThrough(req, res);
  reserveFault();
  switch (rule.kind) {
    case 'status': return injectStatus(req, res);
    case 'reset': return injectCut(req, res, 'reset');
    case 'truncate': return injectCut(req, res, 'truncate');
    case 'stall': return injectStall(req, res);
    case 'rewrite': return injectRewrite(req, res);
    default: return passThrough(req, res);
  }
});
server.keepAliveTimeout = 30000;
server.on('clientError', (e, sock) => sock.destroy());

server.listen(Number(opt.port ?? 0), host, () => {
  process.stdout.write(`listening ${server.address().port}\n`);
});

function quit() {
  server.close();
  upstreamAgent.destroy();
  process.exit(0);
}
process.on('SIGTERM', quit);
process.on('SIGINT', quit);
if (opt['exit-on-stdin-eof']) {
  process.stdin.on('end', quit);
  process.stdin.on('error', quit);
  process.stdin.resume();
}
const lifetime = Number(opt['max-lifetime-s'] ?? 1800);
setTimeout(quit, lifetime * 1000).unref();
