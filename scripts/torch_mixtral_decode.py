"""Peer baseline for scripts/gpu-moe-bench.sh: Mixtral in PyTorch with a static KV cache, SDPA attention and
torch.compile(mode="reduce-overhead") around each decode step (../shared/bench/torch_static_decode.py's Llama, with
its MLP replaced by the sparse MoE block). Random weights, shapes from a Hugging Face config.json.
The MoE block, gpt-fast style: with few (token, expert) pairs the picked experts' weights are gathered (reads only
those experts, as at batch 1); otherwise every expert runs on every token weighted by the routing (static shapes
for CUDA graphs; a decode batch of 64 tokens is routed to all 8 experts anyway).

usage: python3 torch_mixtral_decode.py CONFIG.json [--bs 1,64] [--isl 128] [--osl 128] [--dtype bf16|fp16]
Prints one JSON line per batch size: output tokens/s and ms per decode step (prefill included in s).
"""
import argparse, json, time, torch, torch.nn as nn, torch.nn.functional as F

ap = argparse.ArgumentParser()
ap.add_argument("config"); ap.add_argument("--bs", default="1,64")
ap.add_argument("--isl", type=int, default=128); ap.add_argument("--osl", type=int, default=128)
ap.add_argument("--dtype", default="bf16")
a = ap.parse_args()
c = json.load(open(a.config))
D, FF, L, H = c["hidden_size"], c["intermediate_size"], c["num_hidden_layers"], c["num_attention_heads"]
KV, V = c.get("num_key_value_heads", H), c["vocab_size"]
E, K = c["num_local_experts"], c["num_experts_per_tok"]
HD = c.get("head_dim") or D // H
theta = c.get("rope_theta", 10000.0)
torch.set_default_dtype(torch.float16 if a.dtype == "fp16" else torch.bfloat16)
dev = "cuda"


class MoE(nn.Module):
    def __init__(s):
        super().__init__()
        s.gate = nn.Linear(D, E, bias=False)
        s.w1 = nn.Parameter(torch.randn(E, FF, D) * 0.02); s.w3 = nn.Parameter(torch.randn(E, FF, D) * 0.02)
        s.w2 = nn.Parameter(torch.randn(E, D, FF) * 0.02)

    def forward(s, x):  # [T, D]
        p = F.softmax(s.gate(x).float(), -1)
        w, idx = torch.topk(p, K, -1)
        w = (w / w.sum(-1, keepdim=True)).to(x.dtype)
        if x.shape[0] * K <= E:  # few pairs: only the picked experts' weights
            h = F.silu(torch.einsum("td,tkfd->tkf", x, s.w1[idx])) * torch.einsum("td,tkfd->tkf", x, s.w3[idx])
            return (torch.einsum("tkf,tkdf->tkd", h, s.w2[idx]) * w[..., None]).sum(1)
        dense = torch.zeros(x.shape[0], E, dtype=x.dtype, device=x.device).scatter(1, idx, w)
        h = F.silu(torch.einsum("td,efd->tef", x, s.w1)) * torch.einsum("td,efd->tef", x, s.w3)
        return (torch.einsum("tef,edf->ted", h, s.w2) * dense[..., None]).sum(1)


class Layer(nn.Module):
    def __init__(s):
        super().__init__()
        s.wqkv = nn.Linear(D, (H + 2 * KV) * HD, bias=False); s.wo = nn.Linear(H * HD, D, bias=False)
        s.moe = MoE()
        s.n1 = nn.RMSNorm(D, eps=1e-5); s.n2 = nn.RMSNorm(D, eps=1e-5)

    def forward(s, x, cos, sin, pos, kc, vc, mask):
        b, t, _ = x.shape
        q, k, v = s.wqkv(s.n1(x)).split([H * HD, KV * HD, KV * HD], -1)
        q, k, v = q.view(b, t, H, HD), k.view(b, t, KV, HD), v.view(b, t, KV, HD)

        def rope(z):
            z1, z2 = z[..., : HD // 2], z[..., HD // 2 :]
            return torch.cat([z1 * cos - z2 * sin, z2 * cos + z1 * sin], -1)

        q, k, v = rope(q).transpose(1, 2), rope(k).transpose(1, 2), v.transpose(1, 2)
        kc.index_copy_(2, pos, k); vc.index_copy_(2, pos, v)
        o = F.scaled_dot_product_attention(q, kc, vc, attn_mask=mask, enable_gqa=KV != H)
        x = x + s.wo(o.transpose(1, 2).reshape(b, t, H * HD))
        return x + s.moe(s.n2(x).reshape(b * t, D)).view(b, t, D)


class Model(nn.Module):
    def __init__(s, bs, max_len):
        super().__init__()
        s.emb = nn.Embedding(V, D); s.layers = nn.ModuleList(Layer() for _ in range(L))
        s.norm = nn.RMSNorm(D, eps=1e-5); s.head = nn.Linear(D, V, bias=False)
        s.kc = [torch.zeros(bs, KV, max_len, HD, device=dev) for _ in range(L)]
        s.vc = [torch.zeros(bs, KV, max_len, HD, device=dev) for _ in range(L)]
        inv = 1.0 / (theta ** (torch.arange(0, HD // 2, device=dev, dtype=torch.float32) / (HD // 2)))
        f = torch.outer(torch.arange(max_len, device=dev, dtype=torch.float32), inv)
        s.cos, s.sin = f.cos().to(torch.get_default_dtype()), f.sin().to(torch.get_default_dtype())
        s.causal = torch.tril(torch.ones(max_len, max_len, dtype=torch.bool, device=dev))

    def forward(s, ids, pos):
        x = s.emb(ids); cos = s.cos[pos][None, :, None]; sin = s.sin[pos][None, :, None]
        mask = s.causal[pos][None, None]
        for l, kc, vc in zip(s.layers, s.kc, s.vc):
            x = l(x, cos, sin, pos, kc, vc, mask)
        return s.head(s.norm(x[:, -1:]))


def bench(bs):
    with torch.device(dev), torch.no_grad():
        m = Model(bs, a.isl + a.osl).eval()
    step = torch.compile(m, mode="reduce-overhead", fullgraph=True)
    ids = torch.randint(0, V, (bs, a.isl), device=dev)

    def gen():
        tok = m(ids, torch.arange(a.isl, device=dev)).argmax(-1)
        for i in range(a.osl - 1):
            tok = step(tok, torch.tensor([a.isl + i], device=dev)).argmax(-1)

    with torch.inference_mode():
        t = time.perf_counter(); gen(); torch.cuda.synchronize(); warm = time.perf_counter() - t
        t = time.perf_counter(); gen(); torch.cuda.synchronize(); dt = time.perf_counter() - t
    print(json.dumps({"system": "torch-compile-static", "config": a.config.split("/")[-1], "dtype": a.dtype,
                      "bs": bs, "isl": a.isl, "osl": a.osl, "s": round(dt, 3), "compile_s": round(warm, 1),
                      "out_tok_s": round(bs * a.osl / dt, 1), "ms_per_step": round(dt / a.osl * 1e3, 2)}), flush=True)
    del m, step; torch._dynamo.reset(); torch.cuda.empty_cache()


for bs in map(int, a.bs.split(",")):
    bench(bs)
