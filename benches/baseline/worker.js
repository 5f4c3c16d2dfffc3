// The benchmark baseline: the runtime's floor for a cache in front of R2. The path is
// the key; bodies go from R2 to the response and from the request into R2 as the
// runtime's own streams, never read by the worker. No parsing, no checks, no auth.
export default {
  async fetch(request, env) {
    const key = decodeURIComponent(new URL(request.url).pathname.slice(1));
    if (request.method === "GET") {
      const object = await env.BUCKET.get(key);
      if (object === null) return new Response("not found\n", { status: 404 });
      return new Response(object.body, {
        headers: { "Content-Length": String(object.size), ETag: object.httpEtag },
      });
    }
    if (request.method === "PUT") {
      await env.BUCKET.put(key, request.body);
      return new Response("stored\n", { status: 201 });
    }
    return new Response("method not allowed\n", { status: 405 });
  },
};
