// CORS for tsllm-serve, as vLLM's OpenAI-compatible server does it: Starlette's CORSMiddleware configured by
// --allowed-origins, --allowed-methods, --allowed-headers (JSON lists, each ["*"] by default) and --allow-credentials
// (off by default) (vllm/entrypoints/openai/cli_args.py FrontendArgs, api_server.py build_app). Without it a browser
// client (a web UI calling the server from another origin) was refused: no Access-Control-Allow-Origin, and the
// preflight OPTIONS was a 404, or a 401 under --api-key.
//
// The default is vLLM's, any origin ("*"), because a vLLM user's browser client expects it to work as it does there,
// and it gives a page no more than it can already do: the server takes no cookies or other ambient credentials (the
// only one is the --api-key bearer key, which a page must hold to send), and without credentials a browser sends a
// cross-origin request with no credentials either. What "*" adds is that a page may read the answers to requests it
// makes itself. A server without --api-key that browsers of untrusted pages can reach (it listens on 127.0.0.1 by
// default) should name its origins with --allowed-origins.
import fastifyCors from "@fastify/cors";
import type { FastifyInstance } from "fastify";

export interface CorsOptions {
  /** Origins allowed to read responses ("*": any). */
  allowedOrigins: string[];
  /** Methods a preflight allows ("*": all). */
  allowedMethods: string[];
  /** Request headers a preflight allows ("*": whatever the preflight asks for). */
  allowedHeaders: string[];
  /** Access-Control-Allow-Credentials: true. */
  allowCredentials: boolean;
}

/** vLLM's defaults. */
export const DEFAULT_CORS: CorsOptions = {
  allowedOrigins: ["*"],
  allowedMethods: ["*"],
  allowedHeaders: ["*"],
  allowCredentials: false,
};

/** Starlette's ALL_METHODS, what allow_methods ["*"] answers. */
const ALL_METHODS = ["DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT"];
/** Starlette's SAFELISTED_HEADERS, always allowed beside a list of headers (Content-Type: application/json too). */
const SAFELISTED_HEADERS = ["Accept", "Accept-Language", "Content-Language", "Content-Type"];

/**
 * Answers preflights (before any other onRequest hook, so before the API key check: a browser sends no
 * Authorization header with one) and adds the CORS headers to every response. Register before the other hooks.
 */
export function registerCors(app: FastifyInstance, c: CorsOptions): void {
  const anyOrigin = c.allowedOrigins.includes("*");
  app.register(fastifyCors, {
    // Any origin with credentials: the request's own origin, as Starlette answers a preflight then (browsers refuse
    // a credentialed response that says "*"). A list: the request's origin when it is one of them, else none.
    origin: anyOrigin ? (c.allowCredentials ? true : "*") : c.allowedOrigins,
    methods: c.allowedMethods.includes("*") ? ALL_METHODS : c.allowedMethods,
    // Left out for ["*"]: the plugin then echoes the headers the preflight asks for, as Starlette does.
    ...(c.allowedHeaders.includes("*")
      ? {}
      : { allowedHeaders: [...new Set([...SAFELISTED_HEADERS, ...c.allowedHeaders])].sort() }),
    credentials: c.allowCredentials,
    // Starlette's max_age and its 200 for a preflight.
    maxAge: 600,
    optionsSuccessStatus: 200,
  });
}
