// Scalar activation functions, shared by every op that applies one (linear epilogue, gated_act, gelu, silu).
export type Activation = "none" | "silu" | "gelu_tanh" | "gelu";

const SQRT_2_OVER_PI = Math.sqrt(2 / Math.PI);

export function silu(x: number): number {
  return x / (1 + Math.exp(-x));
}
export function sigmoid(x: number): number {
  return 1 / (1 + Math.exp(-x));
}
/** gelu_new / gelu_pytorch_tanh. */
export function geluTanh(x: number): number {
  return 0.5 * x * (1 + Math.tanh(SQRT_2_OVER_PI * (x + 0.044715 * x * x * x)));
}
export function geluErf(x: number): number {
  return 0.5 * x * (1 + erf(x / Math.SQRT2));
}

// Abramowitz–Stegun 7.1.26 is only 1e-7 accurate; use a series/continued fraction pair instead.
function erf(x: number): number {
  const ax = Math.abs(x);
  if (ax < 2.5) {
    let sum = x;
    let term = x;
    const x2 = x * x;
    for (let n = 1; n < 60; n++) {
      term *= -x2 / n;
      const t = term / (2 * n + 1);
      sum += t;
      if (Math.abs(t) < 1e-17) break;
    }
    return (2 / Math.sqrt(Math.PI)) * sum;
  }
  // Continued fraction for erfc.
  let f = 0;
  for (let n = 60; n >= 1; n--) f = n / 2 / (ax + f);
  const erfc = Math.exp(-ax * ax) / Math.sqrt(Math.PI) / (ax + f);
  return Math.sign(x) * (1 - erfc);
}

export function activationFn(name: string): (x: number) => number {
  switch (name) {
    case "none":
      return (x) => x;
    case "silu":
      return silu;
    case "gelu_tanh":
      return geluTanh;
    case "gelu":
      return geluErf;
    default:
      throw new Error(`unknown activation "${name}" (known: none, silu, gelu_tanh, gelu)`);
  }
}

export function applyActivation(a: Float32Array, name: string): void {
  if (name === "none") return;
  const f = activationFn(name);
  for (let i = 0; i < a.length; i++) a[i] = f(a[i]);
}
