// OpenAI-style errors: {"error": {"message", "type", "param", "code"}} with the HTTP status to send.
import { RequestRejectedError } from "../serving/types.ts";

export class ApiError extends Error {
  constructor(
    readonly status: number,
    message: string,
    readonly type = "invalid_request_error",
    readonly param: string | null = null,
    readonly code: string | null = null,
  ) {
    super(message);
  }

  body() {
    return { error: { message: this.message, type: this.type, param: this.param, code: this.code } };
  }
}

/** The batch manager's refusal as the HTTP error a client can act on. */
export function fromRejection(e: RequestRejectedError): ApiError {
  switch (e.reason) {
    case "shutting_down":
      return new ApiError(503, e.message, "service_unavailable", null, "shutting_down");
    case "warming_up":
      return new ApiError(503, e.message, "service_unavailable", null, "warming_up");
    case "too_long":
    case "kv_capacity":
      return new ApiError(400, e.message, "invalid_request_error", "max_tokens", "context_length_exceeded");
    default:
      return new ApiError(400, e.message, "invalid_request_error", "prompt", null);
  }
}

export function toApiError(e: unknown): ApiError {
  if (e instanceof ApiError) return e;
  if (e instanceof RequestRejectedError) return fromRejection(e);
  const err = e as { statusCode?: number; message?: string; code?: string };
  // fastify's own errors (body too large, bad content length, …) keep their 4xx status.
  if (typeof err.statusCode === "number" && err.statusCode >= 400 && err.statusCode < 500)
    return new ApiError(
      err.statusCode,
      err.message ?? "bad request",
      "invalid_request_error",
      null,
      err.code ?? null,
    );
  return new ApiError(500, (err.message ?? String(e)).split("\n")[0], "server_error");
}
