// Test fixture for Azurite, built on the official Azure Storage SDK so that what the tests
// check the shim against (uploads, SAS tokens, public containers) comes from an independent
// implementation. It prints results on stdout; it never reads blobs for verification.
//
// usage: node azfixture.mjs <command> [--key value ...]
//   container --conn C --container N [--public]    create (idempotent)
//   upload    --conn C --container N --blob B --file F
//   delete    --conn C --container N --blob B
//   account-sas --conn C [--minutes M] [--start-minutes S]   print an account SAS (read, list)
//   service-sas --conn C --container N [--blob B] [--minutes M] [--perms r]
//                                                  print a blob or container SAS
import {
  BlobServiceClient, StorageSharedKeyCredential, generateAccountSASQueryParameters,
  generateBlobSASQueryParameters, AccountSASPermissions, AccountSASServices,
  AccountSASResourceTypes, BlobSASPermissions, ContainerSASPermissions, SASProtocol,
} from '@azure/storage-blob';

const [cmd, ...rest] = process.argv.slice(2);
const opt = {};
for (let i = 0; i < rest.length; i++) {
  const k = rest[i].replace(/^--/, '');
  if (i + 1 < rest.length && !rest[i + 1].startsWith('--')) opt[k] = rest[++i];
  else opt[k] = true;
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

async function main() {
  const conn = opt.conn;
  const svc = BlobServiceClient.fromConnectionString(conn);
  const { name, key } = parseConn(conn);
  const cred = new StorageSharedKeyCredential(name, key);
  switch (cmd) {
    case 'container': {
      const c = svc.getContainerClient(opt.container);
      await c.createIfNotExists(opt.public ? { access: 'blob' } : {});
      if (opt.public) await c.setAccessPolicy('blob');
      return;
    }
    case 'upload': {
      const b = svc.getContainerClient(opt.container).getBlockBlobClient(opt.blob);
      await b.uploadFile(opt.file, { blockSize: 8 << 20, concurrency: 8 });
      const p = await b.getProperties();
      console.log(p.etag);
      return;
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
      console.log(sas.toString());
      return;
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
      console.log(sas.toString());
      return;
    }
    default:
      throw new Error(`unknown command ${cmd}`);
  }
}

main().catch((e) => {
  console.error(`azfixture ${cmd}: ${e.message}`);
  process.exit(1);
});
