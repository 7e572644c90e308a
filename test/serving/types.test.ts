// The functions of the request-level API's types (src/serving/types.ts): failureText (what a failed request says),
// RequestRejectedError (reason, message, figures) and overMaxSeqLen (the one wording of "prompt + new tokens must
// fit max_seq_len", at and around its boundary). Expected strings are written out from the rule, not the code.
import { describe, expect, it } from "vitest";
import { failureText, overMaxSeqLen, RequestRejectedError } from "../../src/serving/types.ts";

describe("failureText", () => {
  it("the error's message, or 'generation failed' when the result carries none", () => {
    expect(failureText({ error: new Error("step 3 failed: CUDA error") })).toBe("step 3 failed: CUDA error");
    expect(failureText({})).toBe("generation failed");
    expect(failureText({ error: undefined })).toBe("generation failed");
    // An error with an empty message is still the error's (not replaced).
    expect(failureText({ error: new Error("") })).toBe("");
  });
});

describe("RequestRejectedError", () => {
  it("an Error named RequestRejectedError with its reason, message and figures", () => {
    const e = new RequestRejectedError("too_long", "prompt too long", { promptTokens: 300, maxSeqLen: 256 });
    expect(e).toBeInstanceOf(Error);
    expect(e).toBeInstanceOf(RequestRejectedError);
    expect(e.name).toBe("RequestRejectedError");
    expect(e.message).toBe("prompt too long");
    expect(e.reason).toBe("too_long");
    expect(e.details).toEqual({ promptTokens: 300, maxSeqLen: 256 });
    expect(String(e)).toBe("RequestRejectedError: prompt too long");
  });

  it("details default to none", () => {
    const e = new RequestRejectedError("shutting_down", "closing");
    expect(e.details).toEqual({});
    expect(Object.keys(e.details)).toEqual([]);
    expect([e.reason, e.message]).toEqual(["shutting_down", "closing"]);
  });
});

describe("overMaxSeqLen", () => {
  it("undefined while prompt + new tokens fit (up to max_seq_len exactly)", () => {
    expect(overMaxSeqLen(10, 5, 16)).toBeUndefined();
    expect(overMaxSeqLen(10, 6, 16)).toBeUndefined();
    expect(overMaxSeqLen(0, 16, 16)).toBeUndefined();
    expect(overMaxSeqLen(16, 0, 16)).toBeUndefined();
  });

  it("one token over: the sum written out, in the default words and in given ones", () => {
    expect(overMaxSeqLen(10, 7, 16)).toBe(
      "prompt of 10 tokens + max_new_tokens 7 = 17 exceeds max_seq_len 16",
    );
    expect(overMaxSeqLen(17, 0, 16)).toBe(
      "prompt of 17 tokens + max_new_tokens 0 = 17 exceeds max_seq_len 16",
    );
    expect(overMaxSeqLen(250, 100, 256, "max_tokens")).toBe(
      "prompt of 250 tokens + max_tokens 100 = 350 exceeds max_seq_len 256",
    );
    // New tokens larger than the prompt: the sum, not the difference, is what must fit.
    expect(overMaxSeqLen(3, 14, 16)).toBe(
      "prompt of 3 tokens + max_new_tokens 14 = 17 exceeds max_seq_len 16",
    );
  });
});
