'use strict';
// The S3 emulator of loglet's archive tests: @20minutes/s3rver 4.x, which
// recomputes every SigV4 signature (plain s3rver 3.7.1 stores a request
// signed with a wrong secret), wrapped with what the tests need:
//   --keys FILE    JSON {"ACCESS_KEY_ID": "SECRET", ...}: the only key pairs
//                  accepted; re-read on SIGHUP (credential rotation: the old
//                  pair is revoked, the new one added). The emulator's
//                  built-in S3RVER/S3RVER pair is revoked.
//   --faults FILE  JSON {"slowdown": N} or {"status": 500, "count": N}:
//                  the next N requests are answered with that error before
//                  s3rver sees them (re-read at each request; absent: none);
//                  with "after": K, the K requests before pass first;
//                  {"hang_ms": T, "count": N}: the next N requests get no
//                  answer for T ms (then a 503), as from a stuck server.
//   --log FILE     one JSON line per request: method, url, the
//                  Content-MD5 and x-amz-content-sha256 headers, status.
// Started by tests/tools/s3_emulator.py; installed by scripts/setup.sh
// (`npm ci` in this directory).
const fs = require('fs');
const S3rver = require('@20minutes/s3rver');
const AWSAccount = require('@20minutes/s3rver/lib/models/account');

const args = {};
for (let i = 2; i < process.argv.length; i += 2) args[process.argv[i].replace(/^--/, '')] = process.argv[i + 1];

function loadKeys() {
  const want = JSON.parse(fs.readFileSync(args.keys, 'utf8'));
  const account = AWSAccount.DUMMY_ACCOUNT;
  for (const id of [...account.accessKeys.keys()]) if (!(id in want)) account.revokeAccessKey(id);
  for (const [id, secret] of Object.entries(want)) account.createKeyPair(id, secret);
}
loadKeys();
process.on('SIGHUP', () => {
  loadKeys();
  process.stdout.write('keys reloaded\n');
});

const log = args.log ? fs.openSync(args.log, 'a') : null;

function takeFault() {
  if (!args.faults || !fs.existsSync(args.faults)) return null;
  const f = JSON.parse(fs.readFileSync(args.faults, 'utf8'));
  if (f.after) {
    f.after--;
    fs.writeFileSync(args.faults, JSON.stringify(f));
    return null;
  }
  const left = f.count !== undefined ? f.count : f.slowdown;
  if (!left) return null;
  if (f.count !== undefined) f.count--; else f.slowdown--;
  fs.writeFileSync(args.faults, JSON.stringify(f));
  if (f.hang_ms) return { status: 503, code: 'SlowDown', hang: f.hang_ms };
  if (!f.status) return { status: 503, code: 'SlowDown' };
  return { status: f.status, code: f.status === 403 ? 'AccessDenied' : 'InternalError' };
}

const server = new S3rver({
  address: '127.0.0.1',
  port: Number(args.port || 0),
  directory: args.directory,
  silent: true,
  configureBuckets: (args.buckets || 'archive').split(',').map((name) => ({ name, configs: [] })),
});

server.middleware.unshift(async (ctx, next) => {
  const fault = takeFault();
  if (fault && fault.hang) await new Promise((resolve) => setTimeout(resolve, fault.hang));
  if (fault) {
    ctx.status = fault.status;
    ctx.type = 'application/xml';
    ctx.body = `<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>${fault.code}</Code>` +
      `<Message>injected by the test</Message></Error>`;
    record(ctx, ctx.status);
    return;
  }
  try {
    await next();
    record(ctx, ctx.status);
  } catch (err) {
    // s3rver answers errors (403 SignatureDoesNotMatch…) by throwing.
    record(ctx, err.status || 500);
    throw err;
  }
});

function record(ctx, status) {
  if (log === null) return;
  fs.writeSync(log, JSON.stringify({
    method: ctx.method, url: ctx.url, md5: ctx.get('Content-MD5') || null,
    sha256: ctx.get('x-amz-content-sha256') || null, status,
  }) + '\n');
}

server.run((err, { address, port } = {}) => {
  if (err) {
    process.stderr.write(`s3rver: ${err}\n`);
    process.exit(1);
  }
  process.stdout.write(`listening on ${address}:${port}\n`);
});
