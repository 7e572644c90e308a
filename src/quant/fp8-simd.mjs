// The FP8 row quantiser's fast path: WebAssembly SIMD, assembled here (a few hundred bytes; no toolchain, no
// native addon), 16 elements per step. Plain JavaScript so worker threads load it without the TypeScript
// loader. Numbers as the JavaScript loop of src/quant/fp8-kernel.mjs (checked over every 16-bit input and
// scales from tiny to huge in test/quant/fp8-simd.test.ts):
//   amax over the row on the bits: half precision as the integer (h & 0x7fff), fp32 as (bits & 0x7fffffff)
//   (both order as |w|, NaNs above infinity); s = f32(amax / 448), 1 if amax is 0 or NaN;
//   q = e4m3(f32(w / s)) with f32x4.div (IEEE, as the JavaScript double division rounded to fp32).
// E4M3 on the bits of q (a = q without sign): NaN (a > inf) → 0x7f; normal range (a >= 2^-6):
// ((a + 0x7ffff + bit 20 of a) >> 20) - (120 << 3), round to nearest even on the 3 kept mantissa bits, capped
// at 0x7e (448: larger values and ±inf saturate); below: f32(a + 2^14) - bits(2^14) = a in units of 2^-9
// rounded to nearest even by the float adder itself (0..8, 8 being the smallest normal); then the sign.
// f16 → f32 exactly: f32(bits(h & 0x7fff) << 13) * 2^112 (subnormals included), or exponent 0xff for inf/NaN.
// Fast rows (amax finite, s >= 2^-14: every |q| < 464, none NaN) skip saturation and NaN, and for halves divide
// |w| (f16 as |w| * 2^-112 by s * 2^-112) and put w's sign back on the 16-bit codes.

// ---- a minimal WebAssembly assembler ----
const u32 = (n) => {
  const b = [];
  do {
    let c = n & 0x7f;
    n >>>= 7;
    if (n) c |= 0x80;
    b.push(c);
  } while (n);
  return b;
};
const s32 = (n) => {
  const b = [];
  for (;;) {
    const c = n & 0x7f;
    n >>= 7;
    if ((n === 0 && !(c & 0x40)) || (n === -1 && c & 0x40)) return [...b, c];
    b.push(c | 0x80);
  }
};
const vec = (items) => [...u32(items.length), ...items.flat()];
const section = (id, body) => [id, ...u32(body.length), ...body];
const str = (s) => vec([...Buffer.from(s)]);

const I32 = 0x7f, F32 = 0x7d, V128 = 0x7b;
const get = (i) => [0x20, ...u32(i)];
const set = (i) => [0x21, ...u32(i)];
const i32c = (n) => [0x41, ...s32(n | 0)];
const f32c = (x) => [0x43, ...new Uint8Array(Float32Array.of(x).buffer)];
const simd = (op, ...imm) => [0xfd, ...u32(op), ...imm];
const mem = (align = 0, offset = 0) => [...u32(align), ...u32(offset)];
const load = (offset = 0) => simd(0x00, ...mem(0, offset));
const store = () => simd(0x0b, ...mem(0, 0));
const splat32 = (n) => simd(0x0c, ...new Uint8Array(Uint32Array.of(n, n, n, n).buffer));
const shuffle = (lanes) => simd(0x0d, ...lanes);
const op = {
  and: simd(0x4e), or: simd(0x50), bitselect: simd(0x52),
  i8narrow16u: simd(0x66), i16narrow32u: simd(0x86), i16maxu: simd(0x99),
  i16extract0: simd(0x19, 0), i32extract0: simd(0x1b, 0), i16shru: simd(0x8d),
  extLow: simd(0xa9), extHigh: simd(0xaa),
  shl: simd(0xab), shru: simd(0xad), add: simd(0xae), sub: simd(0xb1),
  minu: simd(0xb7), maxu: simd(0xb9), gtu: simd(0x3c), geu: simd(0x40),
  fadd: simd(0xe4), fmul: simd(0xe6), fdiv: simd(0xe7), fsplat: simd(0x13),
};
const I = { add: 0x6a, mul: 0x6c, shl: 0x74, and: 0x71, or: 0x72, ltu: 0x49, geu: 0x4f, select: 0x1b };
const F = { gt: 0x5e, ge: 0x60, mul: 0x94, div: 0x95, reinterpret: 0xbe, store: [0x38, ...mem(2, 0)] };
const block = (...body) => [0x02, 0x40, ...body.flat(Infinity), 0x0b];
const loop = (...body) => [0x03, 0x40, ...body.flat(Infinity), 0x0b];
const brIf = (depth) => [0x0d, ...u32(depth)];
const br = (depth) => [0x0c, ...u32(depth)];

// Locals of every function: params src, rows, k, dst, scales; then i32 r, p, end, o, h; f32 s; v128 m, sv, x, q, a.
const [SRC, ROWS, K, DST, SCALES, R, P, END, O, H, S, M, SV, X, Q, A] = Array.from({ length: 16 }, (_, i) => i);
const LOCALS = vec([[...u32(5), I32], [...u32(1), F32], [...u32(5), V128]]);

/**
 * E4M3 codes (in i32 lanes) of the fp32 lanes of local Q, left on the stack. `fast`: the row holds no inf or
 * NaN and s >= 2^-14, so |q| < 464 (at most amax / f32(amax / 448)) and no lane is NaN: no saturation, no NaN.
 */
const e4m3 = (fast) =>
  [
    get(Q), splat32(0x7fffffff), op.and, set(A),
    fast ? [] : splat32(0x7f),
    // normal range, rounded to nearest even on bit 20, capped at 448
    get(A), splat32(0x7ffff), op.add, get(A), i32c(20), op.shru, splat32(1), op.and, op.add,
    i32c(20), op.shru, splat32(120 << 3), op.sub, fast ? [] : [splat32(0x7e), op.minu],
    // below 2^-6: the float adder rounds a to a multiple of 2^-9
    get(A), splat32(0x46800000), op.fadd, splat32(0x46800000), op.sub,
    get(A), splat32(0x3c800000), op.geu, op.bitselect,
    fast ? [] : [get(A), splat32(0x7f800000), op.gtu, op.bitselect],
    get(Q), i32c(24), op.shru, splat32(0x80), op.and, op.or,
  ].flat(Infinity);

/** e4m3(true) for lanes of Q known non-negative (no sign to take off or put back). */
const e4m3Abs = [
  get(Q), splat32(0x7ffff), op.add, get(Q), i32c(20), op.shru, splat32(1), op.and, op.add,
  i32c(20), op.shru, splat32(120 << 3), op.sub,
  get(Q), splat32(0x46800000), op.fadd, splat32(0x46800000), op.sub,
  get(Q), splat32(0x3c800000), op.geu, op.bitselect,
].flat(Infinity);

/** The fp32 lanes (as bits) of the zero-extended 16-bit lanes on the stack. */
const decode = {
  BF16: [i32c(16), op.shl].flat(),
  F16: [
    set(X),
    get(X), splat32(0x7fff), op.and, i32c(13), op.shl, splat32(0x70000000), op.or, // inf / NaN
    get(X), splat32(0x7fff), op.and, i32c(13), op.shl, splat32(0x77800000), op.fmul, // × 2^112
    get(X), splat32(0x7fff), op.and, splat32(0x7c00), op.geu, op.bitselect,
    get(X), splat32(0x8000), op.and, i32c(16), op.shl, op.or,
  ].flat(),
};

/** One row kernel: (src, rows, k, dst, scales), k a multiple of 16, rows packed in src and dst. */
function rowsBody(dtype) {
  const half = dtype !== "F32";
  const rowBytes = [get(K), i32c(half ? 2 : 4), I.mul].flat();
  // amax bits of the row → H
  const amax = half
    ? [
        splat32(0), set(M),
        loop(get(M), get(P), load(), splat32(0x7fff7fff), op.and, op.i16maxu, set(M),
          get(P), i32c(16), I.add, set(P), get(P), get(END), I.ltu, brIf(0)),
        get(M), get(M), get(M), shuffle([8, 9, 10, 11, 12, 13, 14, 15, 0, 1, 2, 3, 4, 5, 6, 7]), op.i16maxu, set(M),
        get(M), get(M), get(M), shuffle([4, 5, 6, 7, 0, 1, 2, 3, 12, 13, 14, 15, 8, 9, 10, 11]), op.i16maxu, set(M),
        get(M), get(M), get(M), shuffle([2, 3, 0, 1, 6, 7, 4, 5, 10, 11, 8, 9, 14, 15, 12, 13]), op.i16maxu,
        op.i16extract0, set(H),
      ]
    : [
        splat32(0), set(M),
        loop(get(M), get(P), load(), splat32(0x7fffffff), op.and, op.maxu, set(M),
          get(P), i32c(16), I.add, set(P), get(P), get(END), I.ltu, brIf(0)),
        get(M), get(M), get(M), shuffle([8, 9, 10, 11, 12, 13, 14, 15, 0, 1, 2, 3, 4, 5, 6, 7]), op.maxu, set(M),
        get(M), get(M), get(M), shuffle([4, 5, 6, 7, 0, 1, 2, 3, 12, 13, 14, 15, 8, 9, 10, 11]), op.maxu,
        op.i32extract0, set(H),
      ];
  // amax as fp32 on the stack
  const amaxF = {
    BF16: [get(H), i32c(16), I.shl, F.reinterpret],
    F32: [get(H), F.reinterpret],
    F16: [
      get(H), i32c(13), I.shl, i32c(0x70000000), I.or, F.reinterpret,
      get(H), i32c(13), I.shl, F.reinterpret, f32c(2 ** 112), F.mul,
      get(H), i32c(0x7c00), I.geu, I.select,
    ],
  }[dtype].flat();
  // s = amax > 0 ? f32(amax / 448) : 1 (NaN > 0 is false)
  const scale = [
    amaxF, f32c(448), F.div, f32c(1), amaxF, f32c(0), F.gt, I.select, set(S),
    get(SCALES), get(R), i32c(4), I.mul, I.add, get(S), F.store,
    get(S), op.fsplat, set(SV),
  ].flat();
  // 16 elements: 32 source bytes (halves) or 64 (fp32) → 16 E4M3 bytes at O
  const step = (fast) => {
    const dec = decode[dtype];
    const quant = (vecOnStack) => [vecOnStack, get(SV), op.fdiv, set(Q), e4m3(fast)];
    if (half && fast) {
      // Halves of a fast row: the quotients of |w| (s > 0: the sign is w's), E4M3 of non-negative lanes, and
      // w's sign put back on the 16-bit codes ((h >> 8) & 0x80), 8 lanes at a time.
      // f16 as |w| × 2^-112 ((h & 0x7fff) << 13: exact, an f32 subnormal for an f16 subnormal) divided by
      // s × 2^-112 (exact: s >= 2^-14): the same quotient, hence the same rounding.
      const absDec = dtype === "F16" ? [i32c(13), op.shl] : [i32c(16), op.shl];
      const abs = (ext) => [get(X), splat32(0x7fff7fff), op.and, ext, absDec, get(SV), op.fdiv, set(Q), e4m3Abs];
      const half8 = (off) => [get(P), load(off), set(X), abs(op.extLow), abs(op.extHigh), op.i16narrow32u,
        get(X), i32c(8), op.i16shru, splat32(0x00800080), op.and, op.or];
      return [get(O), half8(0), half8(16), op.i8narrow16u, store(), get(P), i32c(32), I.add, set(P)];
    }
    return half
      ? [
          get(O),
          quant([get(P), load(0), op.extLow, dec]),
          quant([get(P), load(0), op.extHigh, dec]),
          op.i16narrow32u,
          quant([get(P), load(16), op.extLow, dec]),
          quant([get(P), load(16), op.extHigh, dec]),
          op.i16narrow32u, op.i8narrow16u, store(),
          get(P), i32c(32), I.add, set(P),
        ]
      : [
          get(O),
          quant([get(P), load(0)]), quant([get(P), load(16)]), op.i16narrow32u,
          quant([get(P), load(32)]), quant([get(P), load(48)]), op.i16narrow32u,
          op.i8narrow16u, store(),
          get(P), i32c(64), I.add, set(P),
        ];
  };
  const conv = (fast) => loop(step(fast), get(O), i32c(16), I.add, set(O), get(P), get(END), I.ltu, brIf(0));
  // The row's amax is finite and s >= 2^-14: the fast loop (f16 divisor scaled by 2^-112 for its decoding).
  const fastRow = [get(H), i32c(dtype === "F32" ? 0x7f800000 : dtype === "F16" ? 0x7c00 : 0x7f80), I.ltu,
    get(S), f32c(2 ** -14), F.ge, I.and];
  const fastScale = dtype === "F16" ? [get(S), f32c(2 ** -112), F.mul, op.fsplat, set(SV)] : [];
  const body = [
    i32c(0), set(R),
    block(
      loop(
        get(R), get(ROWS), I.geu, brIf(1),
        get(SRC), set(P), get(SRC), rowBytes, I.add, set(END),
        amax,
        scale,
        get(SRC), set(P), get(DST), set(O),
        fastRow, 0x04, 0x40, fastScale, conv(true), 0x05, conv(false), 0x0b,
        get(END), set(SRC), get(O), set(DST), get(R), i32c(1), I.add, set(R),
        br(0),
      ),
    ),
  ].flat(Infinity);
  return [...LOCALS, ...body, 0x0b];
}

/** (src, n, dst): E4M3 codes of n fp32 bit patterns (n a multiple of 16), for the tests' exhaustive sweeps. */
function encodeBody() {
  const code = (off) => [get(P), load(off), set(Q), e4m3(false)];
  const body = [
    get(SRC), set(P), get(SRC), get(ROWS), i32c(4), I.mul, I.add, set(END), get(K), set(O),
    block(
      get(P), get(END), I.geu, brIf(0),
      loop(
        get(O), code(0), code(16), op.i16narrow32u, code(32), code(48), op.i16narrow32u, op.i8narrow16u, store(),
        get(P), i32c(64), I.add, set(P), get(O), i32c(16), I.add, set(O),
        get(P), get(END), I.ltu, brIf(0),
      ),
    ),
  ].flat(Infinity);
  // Params (src, n, dst, -, -): the row kernels' type; their locals too.
  return [...LOCALS, ...body, 0x0b];
}

const NAMES = ["BF16", "F16", "F32", "encode"];
function moduleBytes() {
  const type = section(1, vec([[0x60, ...vec([I32, I32, I32, I32, I32]), ...vec([])]]));
  const funcs = section(3, vec(NAMES.map(() => [0])));
  const memory = section(5, vec([[0x00, ...u32(1)]]));
  const exports = section(7, vec([...NAMES.map((n, i) => [...str(n), 0x00, ...u32(i)]), [...str("mem"), 0x02, 0]]));
  const bodies = [rowsBody("BF16"), rowsBody("F16"), rowsBody("F32"), encodeBody()];
  const code = section(10, vec(bodies.map((b) => [...u32(b.length), ...b])));
  return new Uint8Array([0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00, ...type, ...funcs, ...memory, ...exports, ...code]);
}

let compiled = null;
/** The compiled module, or null where this JavaScript engine lacks WebAssembly SIMD. */
function wasmModule() {
  if (compiled === null) {
    try {
      compiled = new WebAssembly.Module(moduleBytes());
    } catch {
      compiled = false;
    }
  }
  return compiled || null;
}

const PAGE = 65536;
/** Source bytes per call: rows are copied in and out in blocks of about this size (fits the L2 cache). */
const BLOCK_BYTES = 1 << 18;

/** One thread's instance: its own memory, grown to the largest block asked for. */
class Instance {
  constructor(mod) {
    this.x = new WebAssembly.Instance(mod, {}).exports;
    this.mem = this.x.mem;
  }
  /** Byte views of [0, bytes) of the memory, grown when needed. */
  bytes(bytes) {
    const have = this.mem.buffer.byteLength;
    if (bytes > have) this.mem.grow(Math.ceil((bytes - have) / PAGE));
    return new Uint8Array(this.mem.buffer);
  }
}
let instance = null;
function inst() {
  if (instance === null) {
    const mod = wasmModule();
    instance = mod ? new Instance(mod) : false;
  }
  return instance || null;
}

/** Whether the SIMD path can quantise rows of k elements here. */
export function simdRows(k) {
  return k > 0 && k % 16 === 0 && inst() !== null;
}

const ELEM = { BF16: 2, F16: 2, F32: 4 };
/**
 * Rows [r0, r0 + n) of one source part (rows of k elements, in its stored dtype) → E4M3 `values` and fp32
 * `scales` at rows [out, out + n). Needs simdRows(k).
 * @param {"BF16" | "F16" | "F32"} dtype
 * @param {Uint16Array | Float32Array} data
 */
export function quantizeRowsSimd(dtype, data, k, r0, n, values, scales, out) {
  const it = inst();
  const eb = ELEM[dtype];
  const block = Math.max(1, Math.floor(BLOCK_BYTES / (k * eb)));
  const src = new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
  const fn = it.x[dtype];
  for (let r = 0; r < n; r += block) {
    const rows = Math.min(block, n - r);
    const inBytes = rows * k * eb;
    const dst = inBytes, sc = dst + rows * k; // dst: rows * k bytes, then rows fp32 scales (4-aligned: k % 16 = 0)
    const m = it.bytes(sc + 4 * rows);
    m.set(src.subarray((r0 + r) * k * eb, (r0 + r) * k * eb + inBytes), 0);
    fn(0, rows, k, dst, sc);
    values.set(m.subarray(dst, dst + rows * k), (out + r) * k);
    scales.set(new Float32Array(m.buffer, sc, rows), out + r);
  }
}

/** E4M3 codes of fp32 bit patterns (bits.length a multiple of 16), through the SIMD conversion. */
export function encodeE4m3Simd(bits) {
  const it = inst();
  if (!it) throw new Error("WebAssembly SIMD is not available");
  const n = bits.length;
  const m = it.bytes(5 * n);
  new Uint32Array(m.buffer, 0, n).set(bits);
  it.x.encode(0, n, 4 * n, 0, 0);
  return m.slice(4 * n, 5 * n);
}
