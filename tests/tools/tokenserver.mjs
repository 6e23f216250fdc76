// Local stand-in for the three Azure token services the shim can use, for integration tests.
// Every token it issues is a JWT that Azurite (--oauth basic) accepts for Blob storage:
// aud https://storage.azure.com, iss https://sts.windows.net/<tenant>/, iat/nbf/exp set
// (Azurite checks nbf <= now <= exp, the iss prefix and the aud; it never checks the signature).
// It listens on 127.0.0.1 only and talks to nothing else. Plain node, no dependencies.
//
// usage: node tokenserver.mjs --tenant T --client-id C --client-secret S
//          --federated-token-file F --identity-header H
//          [--expires-in SECONDS (3599)] [--port P (0 = any free port)] [--port-file FILE]
//   Prints "tokenserver listening on http://127.0.0.1:PORT" on stdout and, with --port-file,
//   writes PORT to FILE (atomically) once it accepts connections. One log line per request
//   on stderr (never secrets or tokens).
//
// Endpoints (responses shaped like the real services):
//   POST /{tenant}/oauth2/v2.0/token        Entra ID client credentials (form body):
//        grant_type=client_credentials, client_id, scope=https://storage.azure.com/.default,
//        and client_secret (must equal --client-secret)       -> flow "client_secret"
//        or client_assertion_type=urn:ietf:params:oauth:client-assertion-type:jwt-bearer and
//        client_assertion (must equal the content of --federated-token-file, read on every
//        request so tests can rotate it; surrounding whitespace ignored) -> "workload_identity"
//        200 {"token_type":"Bearer","expires_in":N,"ext_expires_in":N,"access_token":...}
//        errors: 400/401 {"error":"invalid_client"|...,"error_description":"AADSTS...",
//        "error_codes":[...],"timestamp","trace_id","correlation_id","error_uri"}
//   GET /metadata/identity/oauth2/token?api-version=2018-02-01&resource=R[&client_id=C]
//        Azure IMDS; needs header "Metadata: true" (else 400). client_id, if given, must be
//        --client-id (a user-assigned identity; else 400 "Identity not found"). Numbers are
//        STRINGS as in real IMDS: {"access_token","client_id","expires_in":"N",
//        "expires_on":"EPOCH","ext_expires_in":"N","not_before":"EPOCH","resource",
//        "token_type":"Bearer"}                               -> flow "imds"
//   GET /msi/token?api-version=2019-08-01&resource=R[&client_id=C]
//        App Service / Functions / Container Apps; needs header X-IDENTITY-HEADER equal to
//        --identity-header (else 401). {"access_token","expires_on":EPOCH (a NUMBER),
//        "resource","token_type":"Bearer","client_id"}        -> flow "appservice"
//   GET  /stats         {"issued":{flow:n,...},"rejected":{flow:n,...},"requests":n,
//                        "expires_in":N}
//   POST /stats/reset   zero the counters
//   POST /control       JSON body, any of:
//        {"expires_in":N}                        lifetime of tokens issued from now on
//        {"fail":{"imds":{"count":2,"status":500}}}  fail the next 2 token requests of a flow
//        {"delay_ms":{"imds":1500}}              answer a flow's requests after a delay
//        {"reset":true}                          back to the start-up settings, no faults
//      The harness's server is shared by all tests of a run: a test that uses /control or
//      asserts /stats counts should hold the CTest RESOURCE_LOCK "tokenserver", or start its
//      own instance of this script.
import http from 'node:http';
import fs from 'node:fs';
import crypto from 'node:crypto';

const FLOWS = ['client_secret', 'workload_identity', 'imds', 'appservice'];
const STORAGE_RESOURCES = ['https://storage.azure.com', 'https://storage.azure.com/'];
const STORAGE_SCOPE = 'https://storage.azure.com/.default';
const ASSERTION_TYPE = 'urn:ietf:params:oauth:client-assertion-type:jwt-bearer';
const MAX_BODY_BYTES = 64 * 1024;
// Key for the (unchecked) HS256 signature: the tokens are well-formed JWTs, nothing more.
const SIGNING_KEY = 'blobswarm-test-tokenserver';

function parseArgs(argv) {
  const opt = {};
  for (let i = 0; i < argv.length; i++) {
    if (!argv[i].startsWith('--')) throw new Error(`unexpected argument '${argv[i]}'`);
    const k = argv[i].slice(2);
    if (i + 1 >= argv.length) throw new Error(`--${k} needs a value`);
    opt[k] = argv[++i];
  }
  for (const k of ['tenant', 'client-id', 'client-secret', 'federated-token-file', 'identity-header']) {
    if (!opt[k]) throw new Error(`--${k} is required`);
  }
  const expiresIn = Number(opt['expires-in'] ?? 3599);
  if (!Number.isInteger(expiresIn) || expiresIn < 1) throw new Error('--expires-in must be a positive integer');
  const port = Number(opt.port ?? 0);
  if (!Number.isInteger(port) || port < 0 || port > 65535) throw new Error('--port must be 0..65535');
  return {
    tenant: opt.tenant,
    clientId: opt['client-id'],
    clientSecret: opt['client-secret'],
    federatedTokenFile: opt['federated-token-file'],
    identityHeader: opt['identity-header'],
    expiresIn,
    port,
    portFile: opt['port-file'],
  };
}

let cfg;
try {
  cfg = parseArgs(process.argv.slice(2));
} catch (e) {
  console.error(`tokenserver: ${e.message}`);
  process.exit(2);
}
const state = {
  expiresIn: cfg.expiresIn,
  fail: {}, // flow -> {count, status}
  delayMs: {}, // flow -> ms
  issued: Object.fromEntries(FLOWS.map((f) => [f, 0])),
  rejected: Object.fromEntries(FLOWS.map((f) => [f, 0])),
  requests: 0,
  seq: 0,
};

const b64url = (buf) => Buffer.from(buf).toString('base64url');
const nowSec = () => Math.floor(Date.now() / 1000);

// Issues a token for `flow`; returns {token, iat, exp, expiresIn}.
function mintToken(flow, aud) {
  const now = nowSec();
  const expiresIn = state.expiresIn;
  const header = { typ: 'JWT', alg: 'HS256', kid: 'blobswarm-test' };
  const payload = {
    aud,
    iss: `https://sts.windows.net/${cfg.tenant}/`,
    iat: now,
    nbf: now,
    exp: now + expiresIn,
    appid: cfg.clientId,
    appidacr: flow === 'client_secret' ? '1' : '2',
    idtyp: 'app',
    oid: '00000000-0000-4000-8000-0000000000b5',
    sub: '00000000-0000-4000-8000-0000000000b5',
    tid: cfg.tenant,
    uti: crypto.randomBytes(16).toString('base64url'),
    ver: '1.0',
    xms_bs_flow: flow, // which endpoint issued it, for debugging
    xms_bs_seq: ++state.seq, // makes every token distinct
  };
  const input = `${b64url(JSON.stringify(header))}.${b64url(JSON.stringify(payload))}`;
  const sig = crypto.createHmac('sha256', SIGNING_KEY).update(input).digest();
  return { token: `${input}.${b64url(sig)}`, iat: now, exp: now + expiresIn, expiresIn };
}

function send(res, status, body) {
  const text = JSON.stringify(body);
  res.writeHead(status, {
    'Content-Type': 'application/json; charset=utf-8',
    'Content-Length': Buffer.byteLength(text),
    'Cache-Control': 'no-store',
  });
  res.end(text);
}

// An error body shaped like Entra ID's (AADSTS codes as the real service uses them).
function entraError(res, status, error, code, text) {
  const traceId = crypto.randomUUID();
  const correlationId = crypto.randomUUID();
  const ts = new Date().toISOString().replace(/\.\d+Z$/, 'Z');
  send(res, status, {
    error,
    error_description: `AADSTS${code}: ${text} Trace ID: ${traceId} Correlation ID: ${correlationId} Timestamp: ${ts}`,
    error_codes: [code],
    timestamp: ts,
    trace_id: traceId,
    correlation_id: correlationId,
    error_uri: `https://login.microsoftonline.com/error?code=${code}`,
  });
}

function readBody(req) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    let size = 0;
    req.on('data', (c) => {
      size += c.length;
      if (size > MAX_BODY_BYTES) {
        reject(new Error('request body too large'));
        req.destroy();
        return;
      }
      chunks.push(c);
    });
    req.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
    req.on('error', reject);
  });
}

// Applies injected delay and failures for a flow; returns true if the request was answered.
async function injectedFault(flow, res) {
  const delay = state.delayMs[flow] ?? 0;
  if (delay > 0) await new Promise((r) => setTimeout(r, delay));
  const f = state.fail[flow];
  if (f && f.count > 0) {
    f.count--;
    state.rejected[flow]++;
    send(res, f.status, { error: 'temporarily_unavailable', error_description: `injected failure for ${flow}` });
    return true;
  }
  return false;
}

function readFederatedToken() {
  try {
    return fs.readFileSync(cfg.federatedTokenFile, 'utf8').trim();
  } catch (e) {
    return null;
  }
}

async function handleEntra(req, res, tenant) {
  if (req.method !== 'POST') return send(res, 405, { error: 'invalid_request', error_description: 'use POST' });
  const ctype = (req.headers['content-type'] ?? '').split(';')[0].trim().toLowerCase();
  const body = await readBody(req);
  const form = new URLSearchParams(body);
  const flow = form.has('client_assertion') ? 'workload_identity' : 'client_secret';
  const reject = (status, error, code, text) => {
    state.rejected[flow]++;
    entraError(res, status, error, code, text);
  };
  if (ctype !== 'application/x-www-form-urlencoded') {
    return reject(400, 'invalid_request', 900144, "The request body must contain the following parameter: 'grant_type'.");
  }
  if (tenant !== cfg.tenant) {
    return reject(400, 'invalid_request', 90002, `Tenant '${tenant}' not found.`);
  }
  if (form.get('grant_type') !== 'client_credentials') {
    return reject(400, 'unsupported_grant_type', 70003, 'The app requested an unsupported grant type.');
  }
  if (form.get('client_id') !== cfg.clientId) {
    return reject(400, 'unauthorized_client', 700016, `Application with identifier '${form.get('client_id')}' was not found in the directory.`);
  }
  if (form.get('scope') !== STORAGE_SCOPE) {
    return reject(400, 'invalid_scope', 70011, `The provided request must include a 'scope' input parameter. The provided value for the input parameter 'scope' is not valid. (expected ${STORAGE_SCOPE})`);
  }
  if (await injectedFault(flow, res)) return undefined;
  if (flow === 'workload_identity') {
    if (form.get('client_assertion_type') !== ASSERTION_TYPE) {
      return reject(400, 'invalid_request', 50027, 'Invalid client_assertion_type.');
    }
    const expected = readFederatedToken();
    if (expected === null || expected === '' || form.get('client_assertion').trim() !== expected) {
      return reject(401, 'invalid_client', 700213, 'No matching federated identity record found for presented assertion.');
    }
  } else if (!form.has('client_secret')) {
    return reject(401, 'invalid_client', 7000218, "The request body must contain the following parameter: 'client_assertion' or 'client_secret'.");
  } else if (form.get('client_secret') !== cfg.clientSecret) {
    return reject(401, 'invalid_client', 7000215, 'Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID.');
  }
  const t = mintToken(flow, 'https://storage.azure.com');
  state.issued[flow]++;
  return send(res, 200, {
    token_type: 'Bearer',
    expires_in: t.expiresIn,
    ext_expires_in: t.expiresIn,
    access_token: t.token,
  });
}

async function handleImds(req, res, q) {
  const flow = 'imds';
  const reject = (status, body) => {
    state.rejected[flow]++;
    send(res, status, body);
  };
  if (req.method !== 'GET') return reject(405, { error: 'invalid_request', error_description: 'Method not allowed' });
  if ((req.headers.metadata ?? '').toLowerCase() !== 'true') {
    return reject(400, { error: 'invalid_request', error_description: 'Required metadata header not specified' });
  }
  if (!q.get('api-version')) {
    return reject(400, { error: 'invalid_request', error_description: "Required query variable 'api-version' is missing" });
  }
  const resource = q.get('resource');
  if (!STORAGE_RESOURCES.includes(resource)) {
    return reject(400, { error: 'invalid_resource', error_description: `AADSTS500011: The resource principal named ${resource} was not found in the tenant.` });
  }
  const cid = q.get('client_id');
  if ((cid !== null && cid !== cfg.clientId) || q.has('object_id') || q.has('msi_res_id') || q.has('mi_res_id')) {
    return reject(400, { error: 'invalid_request', error_description: 'Identity not found' });
  }
  if (await injectedFault(flow, res)) return undefined;
  const t = mintToken(flow, resource);
  state.issued[flow]++;
  return send(res, 200, {
    access_token: t.token,
    client_id: cfg.clientId,
    expires_in: String(t.expiresIn),
    expires_on: String(t.exp),
    ext_expires_in: String(t.expiresIn),
    not_before: String(t.iat),
    resource,
    token_type: 'Bearer',
  });
}

async function handleAppService(req, res, q) {
  const flow = 'appservice';
  const reject = (status, body) => {
    state.rejected[flow]++;
    send(res, status, body);
  };
  if (req.method !== 'GET') return reject(405, { statusCode: 405, message: 'Method not allowed' });
  if (req.headers['x-identity-header'] !== cfg.identityHeader) {
    return reject(401, { statusCode: 401, message: 'Unauthorized: X-IDENTITY-HEADER missing or invalid' });
  }
  if (!q.get('api-version')) {
    return reject(400, { statusCode: 400, message: "Required query parameter 'api-version' is missing" });
  }
  const resource = q.get('resource');
  if (!STORAGE_RESOURCES.includes(resource)) {
    return reject(400, { statusCode: 400, message: `Invalid resource '${resource}'` });
  }
  const cid = q.get('client_id');
  if (cid !== null && cid !== cfg.clientId) {
    return reject(400, { statusCode: 400, message: 'Identity not found' });
  }
  if (await injectedFault(flow, res)) return undefined;
  const t = mintToken(flow, resource);
  state.issued[flow]++;
  return send(res, 200, {
    access_token: t.token,
    expires_on: t.exp,
    resource,
    token_type: 'Bearer',
    client_id: cfg.clientId,
  });
}

async function handleControl(req, res) {
  let c;
  try {
    c = JSON.parse((await readBody(req)) || '{}');
  } catch (e) {
    return send(res, 400, { error: `bad JSON: ${e.message}` });
  }
  if (c.reset) {
    state.expiresIn = cfg.expiresIn;
    state.fail = {};
    state.delayMs = {};
  }
  if (c.expires_in !== undefined) {
    if (!Number.isInteger(c.expires_in) || c.expires_in < 1) return send(res, 400, { error: 'expires_in must be a positive integer' });
    state.expiresIn = c.expires_in;
  }
  for (const [flow, f] of Object.entries(c.fail ?? {})) {
    if (!FLOWS.includes(flow)) return send(res, 400, { error: `unknown flow ${flow}` });
    state.fail[flow] = { count: Number(f.count ?? 1), status: Number(f.status ?? 500) };
  }
  for (const [flow, ms] of Object.entries(c.delay_ms ?? {})) {
    if (!FLOWS.includes(flow)) return send(res, 400, { error: `unknown flow ${flow}` });
    state.delayMs[flow] = Number(ms);
  }
  return send(res, 200, { expires_in: state.expiresIn, fail: state.fail, delay_ms: state.delayMs });
}

async function route(req, res) {
  const url = new URL(req.url, 'http://127.0.0.1');
  const p = url.pathname;
  const entra = /^\/([^/]+)\/oauth2\/v2\.0\/token$/.exec(p);
  if (p === '/metadata/identity/oauth2/token') return handleImds(req, res, url.searchParams);
  if (p === '/msi/token') return handleAppService(req, res, url.searchParams);
  if (entra) return handleEntra(req, res, decodeURIComponent(entra[1]));
  if (p === '/stats' && req.method === 'GET') {
    return send(res, 200, { issued: state.issued, rejected: state.rejected, requests: state.requests, expires_in: state.expiresIn });
  }
  if (p === '/stats/reset' && req.method === 'POST') {
    for (const f of FLOWS) state.issued[f] = state.rejected[f] = 0;
    state.requests = 0;
    return send(res, 200, { issued: state.issued, rejected: state.rejected, requests: 0 });
  }
  if (p === '/control' && req.method === 'POST') return handleControl(req, res);
  return send(res, 404, { error: 'not_found', error_description: `no endpoint ${req.method} ${p}` });
}

const server = http.createServer((req, res) => {
  state.requests++;
  res.on('finish', () => {
    // Path only: the query can carry client ids, never log bodies (secrets, assertions).
    const path = req.url.split('?')[0];
    process.stderr.write(`${new Date().toISOString()} ${req.method} ${path} ${res.statusCode}\n`);
  });
  route(req, res).catch((e) => {
    if (!res.headersSent) send(res, 500, { error: 'server_error', error_description: e.message });
    else res.destroy();
  });
});
server.keepAliveTimeout = 5000;

server.listen(cfg.port, '127.0.0.1', () => {
  const { port } = server.address();
  if (cfg.portFile) {
    fs.writeFileSync(`${cfg.portFile}.tmp`, `${port}\n`);
    fs.renameSync(`${cfg.portFile}.tmp`, cfg.portFile);
  }
  console.log(`tokenserver listening on http://127.0.0.1:${port}`);
});
server.on('error', (e) => {
  console.error(`tokenserver: ${e.message}`);
  process.exit(1);
});

for (const sig of ['SIGTERM', 'SIGINT']) {
  process.once(sig, () => {
    server.close(() => process.exit(0));
    server.closeAllConnections();
    setTimeout(() => process.exit(0), 1000).unref();
  });
}
