// A fake node agent for the adversarial suite: listens on a Unix socket path as whoever runs it
// (tests run it as another uid with setpriv to play a process that bound the agent's path),
// records every frame it receives, and answers like an agent that never serves: hello with
// the default geometry, "miss" to every chunk request. It talks to nothing else.
//
// usage: node fakeagent.mjs --socket PATH --record FILE [--max-lifetime-s N (600)]
//          [--answer-ms N (0: announce no answer time in hello)] [--delay-ms N (0)]
//   --delay-ms delays every chunk answer: a slow but correct agent.
//   Prints "listening" on stdout once it accepts connections. FILE receives, per frame, one
//   line of JSON: {"bytes":N,"frame":<the frame's JSON text>} (raw bytes that are not a frame
//   are recorded as {"bytes":N,"raw":"<base64>"}), so a test can assert both that nothing
//   arrived and what a credential looked like.
import net from 'node:net';
import fs from 'node:fs';

const MAX_FRAME = 64 * 1024;

function parseArgs(argv) {
  const opt = {};
  for (let i = 0; i < argv.length; i += 2) {
    if (!argv[i].startsWith('--') || i + 1 >= argv.length) throw new Error(`bad argument ${argv[i]}`);
    opt[argv[i].slice(2)] = argv[i + 1];
  }
  if (!opt.socket || !opt.record) throw new Error('--socket and --record are required');
  return {
    socket: opt.socket,
    record: opt.record,
    lifetime: Number(opt['max-lifetime-s'] ?? 600),
    answerMs: Number(opt['answer-ms'] ?? 0),
    delayMs: Number(opt['delay-ms'] ?? 0),
  };
}

const cfg = parseArgs(process.argv.slice(2));
fs.writeFileSync(cfg.record, '');
const record = (o) => fs.appendFileSync(cfg.record, JSON.stringify(o) + '\n');

function frame(obj) {
  const body = Buffer.from(JSON.stringify(obj));
  const hdr = Buffer.alloc(4);
  hdr.writeUInt32LE(body.length);
  return Buffer.concat([hdr, body]);
}

const server = net.createServer((sock) => {
  let buf = Buffer.alloc(0);
  sock.on('data', (d) => {
    buf = Buffer.concat([buf, d]);
    while (buf.length >= 4) {
      const n = buf.readUInt32LE(0);
      if (n > MAX_FRAME) {
        record({ bytes: buf.length, raw: buf.toString('base64') });
        sock.destroy();
        return;
      }
      if (buf.length < 4 + n) break;
      const text = buf.subarray(4, 4 + n).toString();
      buf = buf.subarray(4 + n);
      record({ bytes: 4 + n, frame: text });
      let msg = {};
      try {
        msg = JSON.parse(text);
      } catch {
        /* recorded; answer nothing */
      }
      if (msg.op === 'hello') {
        sock.write(frame({ v: 1, chunk_size: 8388608, block_size: 65536, answer_ms: cfg.answerMs }));
      } else if (msg.op === 'chunk') {
        const answer = frame({ status: 'miss', reason: 'fake agent' });
        if (cfg.delayMs > 0) setTimeout(() => sock.destroyed || sock.write(answer), cfg.delayMs);
        else sock.write(answer);
      }
    }
  });
  sock.on('error', () => {});
});

try {
  fs.unlinkSync(cfg.socket);
} catch {
  /* not there */
}
server.listen(cfg.socket, () => {
  fs.chmodSync(cfg.socket, 0o666);
  console.log('listening');
});
setTimeout(() => process.exit(0), cfg.lifetime * 1000).unref();
process.on('SIGTERM', () => process.exit(0));
