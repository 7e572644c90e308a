// Host tensors for the reference executor: fp32 for floating values, int32 for indices.
export class HostTensor {
  constructor(
    readonly shape: number[],
    readonly data: Float32Array | Int32Array,
  ) {
    const n = shape.reduce((a, b) => a * b, 1);
    if (n !== data.length)
      throw new Error(`HostTensor: shape [${shape}] needs ${n} elements, got ${data.length}`);
  }
  static zeros(shape: number[]): HostTensor {
    return new HostTensor(shape, new Float32Array(shape.reduce((a, b) => a * b, 1)));
  }
  get f32(): Float32Array {
    if (!(this.data instanceof Float32Array)) throw new Error("expected a float tensor");
    return this.data;
  }
  get i32(): Int32Array {
    if (!(this.data instanceof Int32Array)) throw new Error("expected an int32 tensor");
    return this.data;
  }
  /** Rows × last dim view helpers. */
  get cols(): number {
    return this.shape[this.shape.length - 1];
  }
  get rows(): number {
    return this.data.length / this.cols;
  }
}
