// tsllm-serve under concurrency and shutdown (tiny-llama, CPU): what a helper's hunt with many clients at once found.
import * as http from "node:http";
import { connect, type Socket } from "node:net";
import { describe, expect, it } from "vitest";
import { buildServer } from "../../src/server/app.ts";
import { openBatchManager } from "../../src/serving/open.ts";
import { findTokenizer } from "../../src/text/engine-files.ts";
import { buildFixture } from "../fixtures.ts";
import { metric, startServer, waitIdle } from "./helpers.ts";

/** `p`, or "timeout" after `ms` (a hang shows as a value, not as the test's own timeout). */
function within<T>(p: Promise<T>, ms: number): Promise<T | "timeout"> {
  let timer: NodeJS.Timeout | undefined;
  const t = new Promise<"timeout">((res) => {
    timer = setTimeout(() => res("timeout"), ms);
  });
  return Promise.race([p, t]).finally(() => clearTimeout(timer));
}

/** POSTs `body` through `agent`; resolves once the response's head is in, with its socket and its whole text. */
function post(port: number, agent: http.Agent, body: object) {
  return new Promise<{ res: http.IncomingMessage; socket: Socket; text: Promise<string> }>(
    (resolve, reject) => {
      const rq = http.request(
        {
          agent,
          host: "127.0.0.1",
          port,
          method: "POST",
          path: "/v1/completions",
          headers: { "content-type": "application/json" },
        },
        (res) => {
          let text = "";
          res.setEncoding("utf8");
          res.on("data", (d: string) => {
            text += d;
          });
          resolve({ res, socket: rq.socket!, text: new Promise((ok) => res.on("end", () => ok(text))) });
        },
      );
      rq.on("error", reject);
      rq.end(JSON.stringify(body));
    },
  );
}

describe("tsllm-serve's shutdown with keep-alive clients", () => {
  // uvicorn (vLLM's server) turns keep-alive off for the requests in flight at shutdown, so that they close their
  // connections once answered. Kept alive, close() (tsllm-serve's SIGTERM drain) waited for the client's pool or the
  // 72 s keep-alive timeout after every request had been answered.
  it.each([true, false])(
    "a request in flight at close(), stream %s: answered, its connection closed, close() returns",
    async (stream) => {
      const s = await startServer(await buildFixture("llama"));
      // Node's keep-alive agent keeps an idle socket until the server closes it.
      const agent = new http.Agent({ keepAlive: true });
      try {
        const port = Number(new URL(s.url).port);
        const reply = post(port, agent, {
          model: "tiny",
          prompt: [507, 1],
          max_tokens: 250,
          ignore_eos: true,
          temperature: 0,
          stream,
        });
        // In flight: streamed, its head is out; not streamed, the manager runs it.
        if (stream) await reply;
        else
          for (let t = 0; t < 1000 && s.manager.stats().running === 0; t++)
            await new Promise((r) => setTimeout(r, 5));
        expect(s.manager.stats().running).toBe(1);
        const closed = s.server.app.close();
        // (fastify runs close()'s hooks, then stops listening, on later turns.)
        while (s.server.app.server.listening) await new Promise((r) => setTimeout(r, 1));
        // SIGTERM's drain without time left: the request ends (finish_reason "abort").
        await s.manager.shutdown({ drainTimeoutMs: 0 });
        const { res, socket, text } = await reply;
        const socketClosed = new Promise((r) =>
          socket.destroyed ? r("closed") : socket.once("close", () => r("closed")),
        );
        expect(res.statusCode).toBe(200);
        expect(await text).toContain('"finish_reason":"abort"');
        expect(await within(socketClosed, 5000)).toBe("closed");
        expect(await within(closed, 5000)).toBeUndefined();
        if (!stream) expect(res.headers.connection).toBe("close");
      } finally {
        agent.destroy();
        await s.close();
      }
    },
  );

  // Likewise a connection a client opened and never used (undici opens one for a request the client then aborts
  // before sending it): Node's close() leaves it open, and close() waited for the client to let it go.
  it("a connection opened and never used is closed by close(), which returns", async () => {
    const s = await startServer(await buildFixture("llama"));
    const c = connect(Number(new URL(s.url).port), "127.0.0.1");
    try {
      const clientClosed = new Promise((r) => c.once("close", () => r("closed")));
      c.on("error", () => {});
      await new Promise((r) => c.once("connect", r));
      const connections = () =>
        new Promise<number>((r) => s.server.app.server.getConnections((_e, n) => r(n)));
      while ((await connections()) === 0) await new Promise((r) => setTimeout(r, 1));
      expect(await within(s.server.app.close(), 5000)).toBeUndefined();
      expect(await within(clientClosed, 5000)).toBe("closed");
    } finally {
      c.destroy();
      await s.close();
    }
  });
});

describe("tsllm-serve and a client gone before its request is handled", () => {
  // vLLM aborts a request whose client disconnected, also before its handler ran (the disconnect waits for it as a
  // message). The server listened for the response's "close" only from the handler on: a client gone while fastify
  // read the body had its request generated in full, its KV blocks held, for nobody.
  it.each([true, false])("stream %s: the request is cancelled, not generated in full", async (stream) => {
    const engine = await buildFixture("llama");
    const manager = await openBatchManager(engine, { device: "cpu" });
    const server = buildServer({ manager, tokenizer: findTokenizer(engine).tok, modelName: "tiny" });
    let arrived!: () => void;
    const handlerNext = new Promise<void>((r) => {
      arrived = r;
    });
    // Between the body and the handler: wait there until the client's connection is gone.
    server.app.addHook("preHandler", async (req) => {
      if (req.url !== "/v1/completions") return;
      const socket = req.raw.socket;
      const gone = new Promise((r) => (socket.destroyed ? r(null) : socket.once("close", r)));
      arrived();
      await gone;
      await new Promise((r) => setImmediate(r)); // (the response's own "close" comes after the socket's)
    });
    const url = await server.app.listen({ host: "127.0.0.1", port: 0 });
    try {
      const ac = new AbortController();
      const sent = fetch(`${url}/v1/completions`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ model: "tiny", prompt: [507, 1], max_tokens: 200, ignore_eos: true, stream }),
        signal: ac.signal,
      }).catch((e: Error) => e.name);
      await handlerNext;
      ac.abort();
      expect(await sent).toBe("AbortError");
      // Submitted (the handler ran), then finished.
      const seen = () => manager.stats().requestsFinished + manager.stats().running + manager.stats().queued;
      for (let t = 0; t < 1000 && seen() === 0; t++) await new Promise((r) => setTimeout(r, 5));
      await waitIdle({ manager } as Parameters<typeof waitIdle>[0]);
      expect(manager.stats().requestsFinished).toBe(1);
      expect(manager.stats().tokensGenerated).toBeLessThan(200);
      const m = await (await fetch(`${url}/metrics`)).text();
      expect(metric(m, 'tsllm_request_success_total{finish_reason="abort"}')).toBe(1);
      expect(manager.stats().kvBlocksFree).toBe(manager.stats().kvBlocksTotal);
    } finally {
      await server.app.close();
      await manager.shutdown();
    }
  });
});
