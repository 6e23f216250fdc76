// A tampering HTTP relay for the cluster tests: an agent advertises this relay's address to
// its peers, and the relay forwards their requests unchanged (method, path, headers: the
// signature still holds) to the agent's real peer server, but inverts one byte of the body
// of each 2xx answer whose path starts with --match. The headers pass unchanged, so the
// chunk record still names the true SHA-256 and length: the receiver must notice the bytes
// differ and drop them. It is a test tool: no TLS, no auth of its own.
//
// usage: node tamperproxy.mjs --target http://IP:PORT [--host ADDR] [--port N]
//                             [--match /v1/peer/chunk] [--offset N] [--count N]
//                             [--max-lifetime-s S]
//   --offset N   body byte to invert (default 4096; the last byte if the body is shorter)
//   --count N    tamper with at most N answers (default: every one)
// Prints "listening <port>" on stdout once it accepts connections.
// Control: GET /__stats -> {"requests":N,"tampered":N,"bytesOut":N}; POST /__stats/reset.
import http from 'node:http';

const args = process.argv.slice(2);
const opt = {};
for (let i = 0; i < args.length; i++) {
  const k = args[i].replace(/^--/, '');
  if (i + 1 < args.length && !args[i + 1].startsWith('--')) opt[k] = args[++i];
  else opt[k] = true;
}
function die(msg) {
  console.error(`tamperproxy: ${msg}`);
  process.exit(2);
}
if (typeof opt.target !== 'string') die('--target http://host:port is required');
const target = new URL(opt.target);
if (target.protocol !== 'http:') die('only http:// targets are supported');
const host = typeof opt.host === 'string' ? opt.host : '127.0.0.1';
const match = typeof opt.match === 'string' ? opt.match : '/v1/peer/chunk';
const offset = Number(opt.offset ?? 4096);
if (!(Number.isInteger(offset) && offset >= 0)) die('--offset must be an integer >= 0');
let left = opt.count === undefined ? Infinity : Number(opt.count);
if (!(left >= 0)) die('--count must be a number >= 0');

const HOP = new Set(['connection', 'keep-alive', 'proxy-connection', 'transfer-encoding', 'upgrade']);
const upstreamAgent = new http.Agent({ keepAlive: true, maxSockets: 256 });
let stats;
function resetStats() {
  stats = { requests: 0, tampered: 0, bytesOut: 0 };
}
resetStats();

function json(res, code, obj) {
  const body = JSON.stringify(obj);
  res.writeHead(code, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) });
  res.end(body);
}

function rawWithout(raw, drop) {
  const out = [];
  for (let i = 0; i + 1 < raw.length; i += 2) {
    if (!drop.has(raw[i].toLowerCase())) out.push(raw[i], raw[i + 1]);
  }
  return out;
}

const server = http.createServer((req, res) => {
  const path = req.url.split('?')[0];
  if (path === '/__stats' && req.method === 'GET') return json(res, 200, stats);
  if (path === '/__stats/reset' && req.method === 'POST') {
    resetStats();
    return json(res, 200, stats);
  }
  stats.requests++;
  const headers = {};
  for (let i = 0; i + 1 < req.rawHeaders.length; i += 2) {
    const k = req.rawHeaders[i];
    if (HOP.has(k.toLowerCase())) continue;
    headers[k] = headers[k] === undefined ? req.rawHeaders[i + 1] : `${headers[k]}, ${req.rawHeaders[i + 1]}`;
  }
  const ureq = http.request({
    host: target.hostname, port: target.port, method: req.method, path: req.url, headers,
    agent: upstreamAgent,
  }, (ures) => {
    const len = Number(ures.headers['content-length'] ?? NaN);
    const ok = ures.statusCode >= 200 && ures.statusCode < 300;
    let at = -1; // the body offset to invert, -1: none
    if (ok && req.method === 'GET' && path.startsWith(match) && len > 0 && left > 0) {
      left--;
      stats.tampered++;
      at = Math.min(offset, len - 1);
    }
    res.writeHead(ures.statusCode, ures.statusMessage, rawWithout(ures.rawHeaders, HOP));
    let pos = 0;
    ures.on('data', (c) => {
      if (at >= pos && at < pos + c.length) {
        c = Buffer.from(c);
        c[at - pos] ^= 0xff;
      }
      pos += c.length;
      stats.bytesOut += c.length;
      if (!res.write(c)) {
        ures.pause();
        res.once('drain', () => ures.resume());
      }
    });
    ures.on('end', () => res.end());
    ures.on('error', () => res.destroy());
    res.on('close', () => ures.destroy());
  });
  ureq.on('error', (e) => {
    if (!res.headersSent) json(res, 502, { error: `upstream: ${e.message}` });
    else res.destroy();
  });
  req.pipe(ureq);
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
setTimeout(quit, Number(opt['max-lifetime-s'] ?? 1800) * 1000).unref();
