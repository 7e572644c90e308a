# Emulates one warp's tile math of decode variant 4 (attention_decode_mma.cu) with the PTX fragment semantics of
# ldmatrix (.trans), mma.sync m16n8k16 and movmatrix.trans, in numpy: the old layout (heads as the 16 rows, GPU-verified)
# must reproduce Q K^T and P V, which checks the emulation; then the keys-as-rows layout must give K Q^T and V^T P^T.
# python3 native/tests/decode_mma_fragments.py (prints four "ok: True")
import numpy as np
rng = np.random.default_rng(1)
DP, LD = 128, 136
def ldmatrix(smem, addr_of_lane, trans=False):
    # addr_of_lane(l) -> (row, col) start of the 8-element row that lane l supplies (lanes 8i..8i+7: matrix i rows)
    regs = [[None]*4 for _ in range(32)]
    for mi in range(4):
        rows = [addr_of_lane(8*mi + r) for r in range(8)]
        M = np.array([[smem[rr, cc + j] for j in range(8)] for (rr, cc) in rows])  # 8x8 stored matrix
        if trans: M = M.T
        for lane in range(32):
            regs[lane][mi] = (M[lane // 4, 2*(lane % 4)], M[lane // 4, 2*(lane % 4) + 1])
    return regs
def mma(c, a, b0, b1):
    # c[lane] 4 floats; a[lane] 4 pairs (a0a1,a2a3,a4a5,a6a7); b0/b1[lane] pairs. Build full matrices.
    A = np.zeros((16, 16)); B = np.zeros((16, 8)); C = np.zeros((16, 8))
    for l in range(32):
        g, t = l // 4, l % 4
        for i in range(2):
            A[g, 2*t+i] = a[l][0][i]; A[g+8, 2*t+i] = a[l][1][i]; A[g, 2*t+8+i] = a[l][2][i]; A[g+8, 2*t+8+i] = a[l][3][i]
            B[2*t+i, g] = b0[l][i]; B[2*t+8+i, g] = b1[l][i]
            C[g, 2*t+i] = c[l][i]; C[g+8, 2*t+i] = c[l][2+i]
    D = C + A @ B
    return [[D[l//4, 2*(l%4)], D[l//4, 2*(l%4)+1], D[l//4+8, 2*(l%4)], D[l//4+8, 2*(l%4)+1]] for l in range(32)]
def movmatrix_trans(x):  # x[lane] pair of row lane/4 cols 2(lane%4)..
    M = np.zeros((8, 8))
    for l in range(32): M[l//4, 2*(l%4)], M[l//4, 2*(l%4)+1] = x[l]
    M = M.T
    return [(M[l//4, 2*(l%4)], M[l//4, 2*(l%4)+1]) for l in range(32)]

Q = rng.standard_normal((16, DP)); K = rng.standard_normal((16, DP)); V = rng.standard_normal((16, DP))
sQ = np.zeros((16, LD)); sQ[:, :DP] = Q
sK = np.zeros((16, LD)); sK[:, :DP] = K
sV = np.zeros((16, LD)); sV[:, :DP] = V
# ---- old kernel: S = Q K^T (16 heads x 16 keys), O = P V
qa = [ldmatrix(sQ, lambda l, kk=kk: (l & 15, kk*16 + (l >> 4)*8)) for kk in range(DP//16)]
sc = [[[0.0]*4 for _ in range(32)] for _ in range(2)]
for kk in range(DP//16):
    b = ldmatrix(sK, lambda l: (((l >> 4)*8 + (l & 7)), kk*16 + ((l >> 3) & 1)*8))
    # note: old kernel's qa regs order = matrices 0..3 as ldmatrix returns; A frag order a0a1,a2a3,a4a5,a6a7
    sc[0] = mma(sc[0], qa[kk], [b[l][0] for l in range(32)], [b[l][1] for l in range(32)])
    sc[1] = mma(sc[1], qa[kk], [b[l][2] for l in range(32)], [b[l][3] for l in range(32)])
S = np.zeros((16, 16))
for l in range(32):
    g, t = l//4, l % 4
    for n in range(2):
        S[g, n*8+2*t], S[g, n*8+2*t+1], S[g+8, n*8+2*t], S[g+8, n*8+2*t+1] = sc[n][l]
print("old S ok:", np.allclose(S, Q @ K.T))
P = rng.random((16, 16))
pa = []
for l in range(32):
    g, t = l//4, l % 4
    pa.append([(P[g, 2*t], P[g, 2*t+1]), (P[g+8, 2*t], P[g+8, 2*t+1]), (P[g, 8+2*t], P[g, 9+2*t]), (P[g+8, 8+2*t], P[g+8, 9+2*t])])
O = np.zeros((16, DP))
for d2 in range(DP//16):
    b = ldmatrix(sV, lambda l: ((((l >> 3) & 1)*8 + (l & 7)), (d2*2 + (l >> 4))*8), trans=True)
    o0 = mma([[0]*4]*32, pa, [b[l][0] for l in range(32)], [b[l][1] for l in range(32)])
    o1 = mma([[0]*4]*32, pa, [b[l][2] for l in range(32)], [b[l][3] for l in range(32)])
    for l in range(32):
        g, t = l//4, l % 4
        for dn, oo in ((2*d2, o0), (2*d2+1, o1)):
            O[g, dn*8+2*t], O[g, dn*8+2*t+1], O[g+8, dn*8+2*t], O[g+8, dn*8+2*t+1] = oo[l]
print("old O ok:", np.allclose(O, P @ V))
# ---- new kernel: S^T = K Q^T (16 keys x 8 heads), O^T = V^T P^T
Q8 = Q[:8]
qb = {}
for kk in range(0, DP//16, 2):
    r = ldmatrix(sQ, lambda l: (l & 7, kk*16 + (l >> 3)*8))
    qb[kk] = ([r[l][0] for l in range(32)], [r[l][1] for l in range(32)])
    qb[kk+1] = ([r[l][2] for l in range(32)], [r[l][3] for l in range(32)])
st = [[0.0]*4 for _ in range(32)]
for kk in range(DP//16):
    ka = ldmatrix(sK, lambda l: ((l & 7) + ((l >> 3) & 1)*8, kk*16 + (l >> 4)*8))
    st = mma(st, ka, qb[kk][0], qb[kk][1])
ST = np.zeros((16, 8))
for l in range(32):
    g, t = l//4, l % 4
    ST[g, 2*t], ST[g, 2*t+1], ST[g+8, 2*t], ST[g+8, 2*t+1] = st[l]
print("new S^T ok:", np.allclose(ST, K @ Q8.T))
PT = rng.random((16, 8))  # keys x heads, in the C layout of st
x0 = [(PT[l//4, 2*(l%4)], PT[l//4, 2*(l%4)+1]) for l in range(32)]
x1 = [(PT[l//4+8, 2*(l%4)], PT[l//4+8, 2*(l%4)+1]) for l in range(32)]
pb0, pb1 = movmatrix_trans(x0), movmatrix_trans(x1)
OT = np.zeros((DP, 8))
for m in range(DP//16):
    va = ldmatrix(sV, lambda l: ((l & 7) + (l >> 4)*8, m*16 + ((l >> 3) & 1)*8), trans=True)
    o = mma([[0]*4]*32, va, pb0, pb1)
    for l in range(32):
        g, t = l//4, l % 4
        OT[16*m+g, 2*t], OT[16*m+g, 2*t+1], OT[16*m+g+8, 2*t], OT[16*m+g+8, 2*t+1] = o[l]
print("new O^T ok:", np.allclose(OT, V.T @ PT))
