// Test fixture for Azurite, built on the official Azure Storage SDK so that what the tests
// check the shim against (uploads, SAS tokens, public containers) comes from an independent
// implementation. It prints results on stdout; it never reads blobs for verification.
//
// usage: node azfixture.mjs <command> [--key value ...]
//   container --conn C --container N [--public]    create (idempotent)
//   upload    --conn C --container N --blob B --file F [--single-shot]
//                                                  --single-shot: one Put Blob request, not
//                                                  blocks (Azurite ingests it ~1.5x faster)
//   copy      --conn C --from-container A --from-blob B --container N [--blob B2]
//                                                  server-side copy inside the account (on
//                                                  Azurite it shares the data: instant)
//   delete    --conn C --container N --blob B
//   account-sas --conn C [--minutes M] [--start-minutes S]   print an account SAS (read, list)
//   service-sas --conn C --container N [--blob B] [--minutes M] [--perms r]
//                                                  print a blob or container SAS
//   batch     run commands read from stdin in one process (saves the SDK start-up per call);
//             one JSON value a line: ["upload","--conn",...] or {"argv":[...],"export":"NAME"};
//             with "export" it prints the command's output as: export NAME='output'
// HTTPS endpoints with a private CA: set NODE_EXTRA_CA_CERTS=ca.pem.
import fs from 'node:fs';
import readline from 'node:readline';
import {
  BlobServiceClient, StorageSharedKeyCredential, generateAccountSASQueryParameters,
  generateBlobSASQueryParameters, AccountSASPermissions, AccountSASServices,
  AccountSASResourceTypes, BlobSASPermissions, ContainerSASPermissions, SASProtocol,
} from '@azure/storage-blob';

const [cmd, ...rest] = process.argv.slice(2);

function parseOpts(args) {
  const opt = {};
  for (let i = 0; i < args.length; i++) {
    const k = args[i].replace(/^--/, '');
    if (i + 1 < args.length && !args[i + 1].startsWith('--')) opt[k] = args[++i];
    else opt[k] = true;
  }
  return opt;
}

function parseConn(conn) {
  const kv = Object.fromEntries(conn.split(';').filter(Boolean).map((p) => {
    const i = p.indexOf('=');
    return [p.slice(0, i), p.slice(i + 1)];
  }));
  return { name: kv.AccountName, key: kv.AccountKey, endpoint: kv.BlobEndpoint };
}

function window(minutes, startMinutes) {
  const now = Date.now();
  return {
    startsOn: new Date(now + (Number(startMinutes ?? -5)) * 60000),
    expiresOn: new Date(now + Number(minutes ?? 60) * 60000),
  };
}

// Runs one command; returns what it prints (a string) or undefined.
async function run(command, opt) {
  const conn = opt.conn;
  if (typeof conn !== 'string') throw new Error('--conn is required');
  const svc = BlobServiceClient.fromConnectionString(conn);
  const { name, key } = parseConn(conn);
  const cred = new StorageSharedKeyCredential(name, key);
  switch (command) {
    case 'container': {
      const c = svc.getContainerClient(opt.container);
      await c.createIfNotExists(opt.public ? { access: 'blob' } : {});
      if (opt.public) await c.setAccessPolicy('blob');
      return;
    }
    case 'upload': {
      const b = svc.getContainerClient(opt.container).getBlockBlobClient(opt.blob);
      if (opt['single-shot']) {
        const { size } = fs.statSync(opt.file);
        await b.upload(() => fs.createReadStream(opt.file, { highWaterMark: 4 << 20 }), size);
      } else {
        await b.uploadFile(opt.file, { blockSize: 8 << 20, concurrency: 8 });
      }
      const p = await b.getProperties();
      return p.etag;
    }
    case 'copy': {
      const src = svc.getContainerClient(opt['from-container']).getBlobClient(opt['from-blob']);
      const dst = svc.getContainerClient(opt.container).getBlobClient(opt.blob ?? opt['from-blob']);
      const poller = await dst.beginCopyFromURL(src.url, { intervalInMs: 200 });
      const r = await poller.pollUntilDone();
      if (r.copyStatus !== 'success') throw new Error(`copy ended with status ${r.copyStatus}`);
      return r.etag;
    }
    case 'delete': {
      await svc.getContainerClient(opt.container).getBlobClient(opt.blob).deleteIfExists();
      return;
    }
    case 'account-sas': {
      const sas = generateAccountSASQueryParameters({
        ...window(opt.minutes, opt['start-minutes']),
        permissions: AccountSASPermissions.parse('rl'),
        services: AccountSASServices.parse('b').toString(),
        resourceTypes: AccountSASResourceTypes.parse('sco').toString(),
        protocol: SASProtocol.HttpsAndHttp,
      }, cred);
      return sas.toString();
    }
    case 'service-sas': {
      const perms = opt.perms ?? 'r';
      const sas = generateBlobSASQueryParameters({
        containerName: opt.container,
        blobName: opt.blob,
        ...window(opt.minutes, opt['start-minutes']),
        permissions: opt.blob ? BlobSASPermissions.parse(perms) : ContainerSASPermissions.parse(perms),
        protocol: SASProtocol.HttpsAndHttp,
      }, cred);
      return sas.toString();
    }
    default:
      throw new Error(`unknown command ${command}`);
  }
}

// Single quotes make the value literal for sh; a value holding one would break that.
function exportLine(name, value) {
  if (!/^[A-Za-z_][A-Za-z0-9_]*$/.test(name)) throw new Error(`bad export name '${name}'`);
  if (String(value).includes("'")) throw new Error(`value for ${name} contains a single quote`);
  return `export ${name}='${value}'`;
}

async function batch() {
  const lines = readline.createInterface({ input: process.stdin, crlfDelay: Infinity });
  let n = 0;
  for await (const line of lines) {
    n++;
    if (line.trim() === '') continue;
    const entry = JSON.parse(line);
    const argv = Array.isArray(entry) ? entry : entry.argv;
    if (!Array.isArray(argv) || argv.length === 0) throw new Error(`line ${n}: no argv`);
    let out;
    try {
      out = await run(argv[0], parseOpts(argv.slice(1)));
    } catch (e) {
      throw new Error(`line ${n} (${argv[0]}${entry.export ? ` for ${entry.export}` : ''}): ${e.message}`);
    }
    if (entry.export) console.log(exportLine(entry.export, out ?? ''));
  }
}

async function main() {
  if (cmd === 'batch') return batch();
  const out = await run(cmd, parseOpts(rest));
  if (out !== undefined) console.log(out);
  return undefined;
}

main().catch((e) => {
  console.error(`azfixture ${cmd}: ${e.message}`);
  process.exit(1);
});
