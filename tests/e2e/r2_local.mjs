// Puts and gets objects in the local R2 that `wrangler dev --persist-to DIR` uses, with
// keys taken verbatim (`wrangler r2 object put` rewrites some keys, e.g. `%2f`).
// Same Miniflare setup as wrangler's own `r2 object --local` (wrangler 4.86).
//
//   node r2_local.mjs DIR BUCKET put  < [{"key": "...", "file": "..."}, ...]
//   node r2_local.mjs DIR BUCKET get KEY      (body to stdout; exit 1 if absent)
//   node r2_local.mjs DIR BUCKET list PREFIX  (keys, one per line)
//   node r2_local.mjs DIR BUCKET delete KEY
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { Miniflare } from "miniflare";

const [persistTo, bucketName, command, key] = process.argv.slice(2);
const mf = new Miniflare({
  modules: true,
  script: "export default { fetch() { return new Response(null, { status: 404 }); } }",
  defaultPersistRoot: join(persistTo, "v3"),
  r2Buckets: { BUCKET: bucketName },
});
let status = 0;
try {
  const bucket = await mf.getR2Bucket("BUCKET");
  if (command === "put") {
    const items = JSON.parse(readFileSync(0, "utf8"));
    for (const item of items) {
      // A plain ArrayBuffer: Miniflare's proxy cannot serialise Node Buffers.
      const bytes = readFileSync(item.file);
      await bucket.put(item.key, bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.length));
    }
  } else if (command === "get") {
    const object = await bucket.get(key);
    if (object === null) status = 1;
    else process.stdout.write(Buffer.from(await object.arrayBuffer()));
  } else if (command === "delete") {
    await bucket.delete(key);
  } else if (command === "list") {
    let cursor;
    do {
      const page = await bucket.list({ prefix: key, cursor });
      for (const object of page.objects) process.stdout.write(`${object.key}\n`);
      cursor = page.truncated ? page.cursor : undefined;
    } while (cursor);
  } else {
    throw new Error(`unknown command ${command}`);
  }
} finally {
  await mf.dispose();
}
process.exit(status);
