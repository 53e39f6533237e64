// Score rows against vae-server from Node.js: a health check, then one Score stream.
//
//   npm ci
//   node score.js --server localhost:50051 --model digits --rows rows.json [--proto DIR]
//
// rows.json holds an array of rows (arrays of numbers). Prints one JSON object per line per
// row: kl, recon_nll, neg_elbo (nats), p_value, is_anomaly. --proto is the folder holding
// vae/v1/vae.proto: proto/ in the repository (the default, found from this file) or
// vaeserve/proto/ inside the installed wheel (site-packages). See docs/server.md, "Clients in
// other languages", for the tensor byte layout this file implements.
'use strict';

const fs = require('fs');
const path = require('path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');
const health = require('grpc-health-check');

// keepCase: field names as in the .proto (row_ids, not rowIds); longs: int64 as strings
const LOADER = { keepCase: true, longs: String, enums: String, defaults: true, oneofs: true };
const FLOAT32 = 'FLOAT32';

function args(argv) {
  const out = { server: 'localhost:50051', model: '', rows: '', proto: '', batch: 256 };
  for (let i = 2; i < argv.length; i += 2) out[argv[i].replace(/^--/, '')] = argv[i + 1];
  if (!out.rows) throw new Error('--rows FILE.json is required');
  out.proto = out.proto || path.resolve(__dirname, '..', '..', '..', 'proto');
  return out;
}

// rows [n][d] -> vae.v1.Tensor: FLOAT32, shape [n, d], row-major little-endian bytes
function toTensor(rows) {
  const n = rows.length;
  const d = n ? rows[0].length : 0;
  const data = Buffer.alloc(n * d * 4);
  rows.forEach((row, i) => row.forEach((v, j) => data.writeFloatLE(v, (i * d + j) * 4)));
  return { dtype: FLOAT32, shape: [n, d], data };
}

// vae.v1.Tensor -> flat array. int64 shape dimensions arrive as strings; the data Buffer
// may start at any byte offset, so read it element by element (a Float32Array view would
// need 4-byte alignment).
function fromTensor(t) {
  const count = t.shape.reduce((a, s) => a * Number(s), 1);
  const read = {
    FLOAT32: [4, (b, o) => b.readFloatLE(o)],
    FLOAT64: [8, (b, o) => b.readDoubleLE(o)],
    INT64: [8, (b, o) => Number(b.readBigInt64LE(o))],
    BOOL: [1, (b, o) => b.readUInt8(o) !== 0],
  }[t.dtype];
  if (!read) throw new Error(`unexpected dtype ${t.dtype}`);
  const [size, get] = read;
  const out = new Array(count);
  for (let i = 0; i < count; i++) out[i] = get(t.data, i * size);
  return out;
}

function checkHealth(server) {
  const def = protoLoader.loadSync(health.protoPath, LOADER);
  const Health = grpc.loadPackageDefinition(def).grpc.health.v1.Health;
  const client = new Health(server, grpc.credentials.createInsecure());
  return new Promise((resolve, reject) => {
    client.check({ service: '' }, { deadline: Date.now() + 10000 }, (err, res) => {
      client.close();
      if (err) reject(err);
      else if (res.status !== 'SERVING') reject(new Error(`server health is ${res.status}`));
      else resolve();
    });
  });
}

function score(opts, rows) {
  const def = protoLoader.loadSync('vae/v1/vae.proto', { ...LOADER, includeDirs: [opts.proto] });
  const VaeService = grpc.loadPackageDefinition(def).vae.v1.VaeService;
  const client = new VaeService(opts.server, grpc.credentials.createInsecure());
  return new Promise((resolve, reject) => {
    const results = [];
    const call = client.Score();
    call.on('data', (resp) => {
      if (resp.error) {
        reject(new Error(`batch ${resp.batch_id}: code ${resp.error.code}: ${resp.error.message}`));
        return;
      }
      const cols = ['kl', 'recon_nll', 'neg_elbo', 'p_value', 'is_anomaly'];
      const values = Object.fromEntries(cols.map((c) => [c, fromTensor(resp[c])]));
      const ids = fromTensor(resp.row_ids);
      ids.forEach((id, i) => {
        const row = { row: id };
        cols.forEach((c) => (row[c] = values[c][i]));
        results.push(row);
      });
    });
    call.on('error', reject);
    call.on('end', () => {
      client.close();
      resolve(results);
    });
    const batch = Number(opts.batch);
    for (let start = 0; start < rows.length; start += batch) {
      call.write({
        model: start === 0 ? { name: opts.model, version: 0 } : null,
        batch_id: `b${start / batch}`,
        rows: toTensor(rows.slice(start, start + batch)),
        start_offset: start,
      });
    }
    call.end();
  });
}

async function main() {
  const opts = args(process.argv);
  const rows = JSON.parse(fs.readFileSync(opts.rows, 'utf8'));
  await checkHealth(opts.server);
  for (const r of await score(opts, rows)) console.log(JSON.stringify(r));
}

main().catch((err) => {
  console.error(`score.js: ${err.message}`);
  process.exit(1);
});
