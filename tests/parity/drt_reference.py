#!/usr/bin/env python3
"""Independent pure-PyTorch restatement of the DRT forward pass, for parity checks of the C++ library.

Written from docs/reference-notes.md and the reference spec (§1-8), with the authors' code
(ant-research/long-context-modeling @ aa7fa60, model/DRT.py and model/llama.py) read only to settle
doubts. No flash-attn, no Triton: plain fp32 (or fp64) tensor algebra, evaluated on the CPU by default
so the numbers do not depend on GPU kernels or TF32.

Commands
--------
  make     random weights + tokens -> DIR/weights.safetensors, DIR/tokens.npy and the reference
           results (loss.txt, logits.npy, grads.safetensors; the same computed in float64 as
           loss_fp64.txt, logits_fp64.npy, grads_fp64.safetensors; meta.json).
  compare  the C++ results against DIR's reference, with the issue's bars:
           loss 1e-5 relative, logits 1e-4 absolute, every parameter gradient 1e-3 relative L2.
           Exit status 1 on failure. Needs only numpy (safetensors used when installed).

Semantics (eval mode, batch 1; see README.md for the list and the resolved ambiguities)
-----------------------------------------------------------------------------------------
  * ids < 0 are embedded as pad_id; the lookup gives no gradient to row pad_id (padding_idx); the
    tied head still does.
  * Landmark chunk_id appended to every chunk of L_c tokens; S = L_c + 1 positions per chunk.
  * Decoder self-attention (lower and upper): scale 1/sqrt(d), score - m_h (i - j), key j visible
    iff i - W <= j <= i, GQA head h -> kv head h // (H / H_kv); slopes m from the state dict.
  * Encoder per chunk: enc_prenorm (rms_norm_eps), layers (eps 1e-6, bidirectional, RoPE rotate-half
    theta 10000 at positions 0..S-1, H_kv = H), final norm (1e-6).
  * chunk_k/v_proj; landmark row zeroed (S % 64 == 0) or dropped (S % 64 == 1).
  * Retrieval per group from the group-start stream at landmarks: lmk_norm (eps 1e-5), r = q.kappa/sqrt(D),
    visible iff e < c, top-k_eff (k_eff = min(C, k)) of the noise-free masked scores, weights =
    softmax over the selected scores restricted to visible ones (rows with none -> 0).
  * GCA: queries from chunks 1..C-1 (all S rows), chunk c uses landmark c-1's retrieval, per-chunk
    softmax over the N keys, weighted sum, o_proj; chunk 0 gets 0.
  * Upper layer: a = h + attn(n1(h)); out = a + MLP(n2(a + gca(a))).
  * Final norm (rms_norm_eps), head = lm_head (tied or not), loss = mean CE over targets != -100,
    targets shifted in raw token space, then -100 at landmarks.
"""
import argparse
import json
import math
import os
import sys

import numpy as np

IGNORE = -100


# ----------------------------------------------------------------------------------------------
# safetensors I/O: the `safetensors` package when present, else a minimal numpy implementation of
# the format (8-byte little-endian header length, JSON header, raw little-endian data).
# ----------------------------------------------------------------------------------------------
_ST_DTYPES = {"F32": np.float32, "F64": np.float64, "F16": np.float16, "I64": np.int64, "I32": np.int32}


def st_save(tensors, path):
    """tensors: name -> numpy array."""
    try:
        from safetensors.numpy import save_file
        save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, path, metadata={"format": "pt"})
        return
    except ImportError:
        pass
    names = {v: k for k, v in _ST_DTYPES.items()}
    header, blobs, off = {"__metadata__": {"format": "pt"}}, [], 0
    for k in sorted(tensors):
        a = np.ascontiguousarray(tensors[k])
        b = a.astype(a.dtype.newbyteorder("<"), copy=False).tobytes()
        header[k] = {"dtype": names[a.dtype.type], "shape": list(a.shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(len(h).to_bytes(8, "little"))
        f.write(h)
        for b in blobs:
            f.write(b)


def st_load(path):
    """name -> numpy array (BF16 widened to float32)."""
    try:
        from safetensors.numpy import load_file
        return load_file(path)
    except ImportError:
        pass
    except TypeError:  # BF16 has no numpy dtype: fall through to the manual reader
        pass
    with open(path, "rb") as f:
        raw = f.read()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + n])
    base = 8 + n
    out = {}
    for k, v in header.items():
        if k == "__metadata__":
            continue
        a, b = v["data_offsets"]
        buf = raw[base + a: base + b]
        if v["dtype"] == "BF16":
            arr = (np.frombuffer(buf, dtype="<u2").astype(np.uint32) << 16).view(np.float32)
        else:
            arr = np.frombuffer(buf, dtype=np.dtype(_ST_DTYPES[v["dtype"]]).newbyteorder("<"))
        out[k] = arr.reshape(v["shape"]).copy()
    return out


# ----------------------------------------------------------------------------------------------
# Config
# ----------------------------------------------------------------------------------------------
class Cfg:
    def __init__(self, raw):
        self.raw = raw
        self.V = int(raw["vocab_size"])
        self.D = int(raw["hidden_size"])
        self.H = int(raw["num_attention_heads"])
        self.H_kv = int(raw.get("num_key_value_heads", self.H))
        self.F = int(raw["intermediate_size"])
        self.eps = float(raw.get("rms_norm_eps", 1e-6))  # LlamaConfig default when missing
        self.pad_id = int(raw["pad_id"])
        self.chunk_id = int(raw["chunk_id"])
        self.Lc = int(raw["enc_chunk_size"])
        self.S = self.Lc + 1
        self.k = int(raw["chunk_topk"])
        self.W = int(raw["slide_window"])
        self.enc_layers = int(raw["encoder_layers"])
        self.dec_layers = [int(x) for x in raw["decoder_layers"]]
        self.G = len(self.dec_layers) - 1
        self.tied = bool(raw.get("tie_word_embeddings", False))  # LlamaConfig default False
        self.bias = bool(raw.get("attention_bias", False))
        if self.D % self.H or self.H % self.H_kv:
            raise ValueError("hidden_size % heads or heads % kv_heads is not 0")
        self.d = self.D // self.H
        if not raw.get("enable_alibi", False):
            raise ValueError("this reference implements the ALiBi decoder only (enable_alibi must be true)")
        if self.S % 64 not in (0, 1):
            raise ValueError("enc_chunk_size + 1 must be 0 or 1 mod 64 (reference assertion, DRT.py:771)")
        if self.G < 1:
            raise ValueError("decoder_layers needs at least one upper group")
        self.N = self.S if self.S % 64 == 0 else self.S - 1  # keys per retrieved chunk


def load_cfg(path):
    with open(path) as f:
        return Cfg(json.load(f))


def alibi_slopes(H):
    # m_h = 2^(-8(h+1)/H), computed in double and stored as fp32 (llama.py:315-319).
    x = (2 ** 8) ** (1 / H)
    return np.array([1 / x ** (i + 1) for i in range(H)], dtype=np.float32)


# ----------------------------------------------------------------------------------------------
# State-dict layout: name -> (shape, kind); kind in {"linear", "embed", "norm", "bias", "slopes"}
# ----------------------------------------------------------------------------------------------
def state_layout(c):
    D, F, H, d, Hkv = c.D, c.F, c.H, c.d, c.H_kv
    out = [("model.embed_tokens.weight", (c.V, D), "embed")]

    def attn(prefix, kv_heads, alibi, bias):
        if alibi:
            out.append((prefix + "self_attn.m", (H,), "slopes"))
        for nm, rows in (("q", H * d), ("k", kv_heads * d), ("v", kv_heads * d), ("o", D)):
            out.append((prefix + f"self_attn.{nm}_proj.weight", (rows, D if nm != "o" else H * d), "linear"))
            if bias:
                out.append((prefix + f"self_attn.{nm}_proj.bias", (rows,), "bias"))

    def mlp(prefix):
        out.append((prefix + "mlp.gate_proj.weight", (F, D), "linear"))
        out.append((prefix + "mlp.up_proj.weight", (F, D), "linear"))
        out.append((prefix + "mlp.down_proj.weight", (D, F), "linear"))

    def norms(prefix):
        out.append((prefix + "input_layernorm.weight", (D,), "norm"))
        out.append((prefix + "post_attention_layernorm.weight", (D,), "norm"))

    for i in range(c.dec_layers[0]):
        p = f"model.lower_layers.{i}."
        attn(p, Hkv, True, c.bias)
        mlp(p)
        norms(p)
    for g in range(c.G):
        for j in range(c.dec_layers[g + 1]):
            p = f"model.upper_layers.{g}.{j}."
            attn(p, Hkv, True, c.bias)
            out.append((p + "gca.pre_norm.weight", (D,), "norm"))
            for nm in ("q", "o"):
                out.append((p + f"gca.{nm}_proj.weight", (D, D), "linear"))
                if c.bias:
                    out.append((p + f"gca.{nm}_proj.bias", (D,), "bias"))
            mlp(p)
            norms(p)
    for g in range(c.G):
        out.append((f"model.lmk_norms.{g}.weight", (D,), "norm"))
    for e in range(c.enc_layers):
        p = f"model.encoder.layers.{e}."
        attn(p, H, False, False)  # encoder: H_kv = H, no ALiBi buffer, no bias (DRT.py:543-557)
        mlp(p)
        norms(p)
    out.append(("model.encoder.norm.weight", (D,), "norm"))
    for nm in ("chunk_k_proj", "chunk_v_proj"):
        out.append((f"model.{nm}.weight", (D, D), "linear"))
        if c.bias:
            out.append((f"model.{nm}.bias", (D,), "bias"))
    out.append(("model.enc_prenorm.weight", (D,), "norm"))
    out.append(("model.norm.weight", (D,), "norm"))
    out.append(("lm_head.weight", (c.V, D), "embed" if not c.tied else "tied"))
    return out


# ----------------------------------------------------------------------------------------------
# The model (torch)
# ----------------------------------------------------------------------------------------------
def make_model_fns(torch):
    F_ = torch.nn.functional

    def rms_norm(x, w, eps):
        # y = x * rsqrt(mean(x^2) + eps) * gamma  (flash RMSNorm; eps inside the rsqrt)
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w

    def linear(x, p, name):
        y = x @ p[name + ".weight"].t()
        b = p.get(name + ".bias")
        return y + b if b is not None else y

    def mlp(x, p, prefix):
        return linear(F_.silu(linear(x, p, prefix + "mlp.gate_proj")) * linear(x, p, prefix + "mlp.up_proj"),
                      p, prefix + "mlp.down_proj")

    def rope_tables(S, d, dtype):
        # HF rotate-half; inv_freq = 1/10000^(arange(0,d,2)/d); cos/sin = [freqs, freqs] (llama.py:121-144).
        inv = 1.0 / (10000.0 ** (torch.arange(0, d, 2, dtype=dtype) / d))
        t = torch.arange(S, dtype=dtype)
        freqs = torch.outer(t, inv)
        emb = torch.cat([freqs, freqs], -1)
        return emb.cos(), emb.sin()

    def rotate_half(x):
        h = x.shape[-1] // 2
        return torch.cat([-x[..., h:], x[..., :h]], -1)

    def decoder_attn(x, p, prefix, c, slopes):
        """Causal sliding-window ALiBi self-attention over the whole (landmark-included) sequence x (P, D)."""
        P = x.shape[0]
        q = linear(x, p, prefix + "self_attn.q_proj").view(P, c.H, c.d).transpose(0, 1)  # (H, P, d)
        k = linear(x, p, prefix + "self_attn.k_proj").view(P, c.H_kv, c.d).transpose(0, 1)
        v = linear(x, p, prefix + "self_attn.v_proj").view(P, c.H_kv, c.d).transpose(0, 1)
        rep = c.H // c.H_kv
        k = k.repeat_interleave(rep, dim=0)  # query head h reads kv head h // rep
        v = v.repeat_interleave(rep, dim=0)
        s = (q @ k.transpose(1, 2)) * (1.0 / math.sqrt(c.d))
        i = torch.arange(P).view(P, 1)
        j = torch.arange(P).view(1, P)
        dist = (i - j).to(s.dtype)
        s = s - slopes.to(s.dtype).view(-1, 1, 1) * dist
        allowed = j <= i
        if c.W >= 0:
            allowed = allowed & (j >= i - c.W)
        s = s.masked_fill(~allowed, float("-inf"))
        o = torch.softmax(s, -1) @ v  # (H, P, d)
        return linear(o.transpose(0, 1).reshape(P, c.H * c.d), p, prefix + "self_attn.o_proj")

    def encoder_attn(x, p, prefix, c, cos, sin):
        """Bidirectional RoPE attention inside each chunk; x (C, S, D)."""
        C, S, _ = x.shape
        q = linear(x, p, prefix + "self_attn.q_proj").view(C, S, c.H, c.d).transpose(1, 2)  # (C, H, S, d)
        k = linear(x, p, prefix + "self_attn.k_proj").view(C, S, c.H, c.d).transpose(1, 2)
        v = linear(x, p, prefix + "self_attn.v_proj").view(C, S, c.H, c.d).transpose(1, 2)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        s = (q @ k.transpose(-1, -2)) * (1.0 / math.sqrt(c.d))
        o = torch.softmax(s, -1) @ v
        return linear(o.transpose(1, 2).reshape(C, S, c.D), p, prefix + "self_attn.o_proj")

    def retrieve(h, p, g, kappa, c, C):
        """Group g's retrieval from the group-start stream h (P, D). Returns idx (C, k_eff), w (C, k_eff)
        and diagnostics."""
        lm = h.view(C, c.S, c.D)[:, c.S - 1, :]
        qh = rms_norm(lm, p[f"model.lmk_norms.{g}.weight"], 1e-5)  # flash RMSNorm default eps (DRT.py:539)
        r = (qh @ kappa.t()) / math.sqrt(c.D)  # (C, C): sqrt(hidden_size), not sqrt(d)
        cc = torch.arange(C).view(C, 1)
        ee = torch.arange(C).view(1, C)
        visible = ee < cc
        masked = r.detach().masked_fill(~visible, float("-inf"))
        k_eff = min(C, c.k)
        idx = torch.topk(masked, k_eff, dim=1).indices  # eval: no Gumbel noise
        sel = r.gather(1, idx)
        valid = visible.gather(1, idx)
        # softmax over the selected scores with masked (-inf) slots at weight 0; rows with nothing
        # visible give 0 (the reference's nan_to_num, DRT.py:627) without any NaN in autograd.
        mx = sel.detach().masked_fill(~valid, float("-inf")).max(1, keepdim=True).values
        mx = torch.where(torch.isfinite(mx), mx, torch.zeros_like(mx))
        e = torch.exp(torch.where(valid, sel - mx, torch.zeros_like(sel))) * valid.to(sel.dtype)
        den = e.sum(1, keepdim=True)
        w = e / torch.where(den > 0, den, torch.ones_like(den))
        # selection margin: gap between the k_eff-th and the next visible score, rows with > k_eff visible
        margin = float("inf")
        rd = r.detach()
        for row in range(C):
            nv = row  # visible chunks of landmark row
            if nv > k_eff:
                vals = torch.sort(rd[row, :nv], descending=True).values
                margin = min(margin, float(vals[k_eff - 1] - vals[k_eff]))
        return idx, w, {"idx": idx.tolist(), "w": w.detach().tolist(), "margin": margin}

    def gca(a, p, prefix, c, C, Kt, Vt, idx, w):
        """GCA layer on the stream a (P, D); Kt, Vt (C, N, D). Chunk c >= 1 uses landmark c-1's retrieval."""
        P = a.shape[0]
        if C < 2:
            return torch.zeros_like(a)
        u = rms_norm(a, p[prefix + "gca.pre_norm.weight"], c.eps)
        q = linear(u, p, prefix + "gca.q_proj").view(C, c.S, c.H, c.d)[1:]  # (Z, M=S, H, d), Z = C-1
        ii = idx[:-1]  # (Z, k)
        ww = w[:-1]
        Kg = Kt[ii].view(C - 1, ii.shape[1], c.N, c.H, c.d)  # (Z, k, N, H, d)
        Vg = Vt[ii].view(C - 1, ii.shape[1], c.N, c.H, c.d)
        s = torch.einsum("zmhd,zinhd->zhimn", q, Kg) * (1.0 / math.sqrt(c.d))
        pr = torch.softmax(s, -1)  # independent softmax per retrieved chunk
        oi = torch.einsum("zhimn,zinhd->zhimd", pr, Vg)
        o = torch.einsum("zhimd,zi->zmhd", oi, ww).reshape((C - 1) * c.S, c.D)
        o = linear(o, p, prefix + "gca.o_proj")
        return torch.cat([torch.zeros(c.S, c.D, dtype=a.dtype), o], 0)

    def forward(p, c, tokens, gca_on=True):
        """p: name -> tensor (params and `m` buffers); tokens: (T,) int64. Returns loss, logits (T, V), diag."""
        T = tokens.shape[0]
        if T % c.Lc:
            raise ValueError(f"token count {T} is not a multiple of enc_chunk_size {c.Lc}")
        C = T // c.Lc
        S = c.S
        P = C * S
        ids = torch.cat([tokens.view(C, c.Lc), torch.full((C, 1), c.chunk_id, dtype=torch.long)], 1).view(P)
        ids = torch.where(ids < 0, torch.full_like(ids, c.pad_id), ids)
        h = F_.embedding(ids, p["model.embed_tokens.weight"], padding_idx=c.pad_id)

        for i in range(c.dec_layers[0]):
            pre = f"model.lower_layers.{i}."
            a = h + decoder_attn(rms_norm(h, p[pre + "input_layernorm.weight"], c.eps), p, pre, c,
                                 p[pre + "self_attn.m"])
            h = a + mlp(rms_norm(a, p[pre + "post_attention_layernorm.weight"], c.eps), p, pre)

        # chunk encoder
        x = rms_norm(h.view(C, S, c.D), p["model.enc_prenorm.weight"], c.eps)
        cos, sin = rope_tables(S, c.d, h.dtype)
        for e in range(c.enc_layers):
            pre = f"model.encoder.layers.{e}."
            x = x + encoder_attn(rms_norm(x, p[pre + "input_layernorm.weight"], 1e-6), p, pre, c, cos, sin)
            x = x + mlp(rms_norm(x, p[pre + "post_attention_layernorm.weight"], 1e-6), p, pre)
        E = rms_norm(x, p["model.encoder.norm.weight"], 1e-6)
        kappa = E[:, S - 1, :]
        Kt = linear(E, p, "model.chunk_k_proj")
        Vt = linear(E, p, "model.chunk_v_proj")
        if S % 64 == 0:
            zero = torch.zeros(C, 1, c.D, dtype=h.dtype)
            Kt = torch.cat([Kt[:, : S - 1], zero], 1)
            Vt = torch.cat([Vt[:, : S - 1], zero], 1)
        else:
            Kt = Kt[:, : S - 1]
            Vt = Vt[:, : S - 1]

        diag = {"groups": []}
        for g in range(c.G):
            idx, w, gd = retrieve(h, p, g, kappa, c, C)
            diag["groups"].append(gd)
            for j in range(c.dec_layers[g + 1]):
                pre = f"model.upper_layers.{g}.{j}."
                a = h + decoder_attn(rms_norm(h, p[pre + "input_layernorm.weight"], c.eps), p, pre, c,
                                     p[pre + "self_attn.m"])
                gout = gca(a, p, pre, c, C, Kt, Vt, idx, w) if gca_on else torch.zeros_like(a)
                h = a + mlp(rms_norm(a + gout, p[pre + "post_attention_layernorm.weight"], c.eps), p, pre)

        hn = rms_norm(h, p["model.norm.weight"], c.eps)
        logits = hn @ p["lm_head.weight"].t()  # (P, V)

        tgt = torch.full((T,), IGNORE, dtype=torch.long)
        tgt[:-1] = tokens[1:]
        tgt = torch.where(tgt < 0, torch.full_like(tgt, IGNORE), tgt)
        tgt = torch.cat([tgt.view(C, c.Lc), torch.full((C, 1), IGNORE, dtype=torch.long)], 1).view(P)
        loss = F_.cross_entropy(logits, tgt, ignore_index=IGNORE, reduction="mean")
        diag["targets"] = int((tgt != IGNORE).sum())
        return loss, logits.view(C, S, c.V)[:, : c.Lc].reshape(T, c.V), diag

    return forward


# ----------------------------------------------------------------------------------------------
# make
# ----------------------------------------------------------------------------------------------
def cmd_make(args):
    import torch

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.set_num_threads(max(1, min(16, os.cpu_count() or 1)))
    c = load_cfg(args.config)
    os.makedirs(args.out, exist_ok=True)
    layout = state_layout(c)

    gen = torch.Generator().manual_seed(args.seed)
    weights = {}
    for name, shape, kind in layout:
        if kind == "tied":
            continue
        if kind == "slopes":
            weights[name] = torch.from_numpy(alibi_slopes(c.H))
        elif kind == "norm":
            weights[name] = 1.0 + args.norm_std * torch.randn(shape, generator=gen)
        elif kind == "bias":
            weights[name] = 0.02 * torch.randn(shape, generator=gen)
        elif kind == "embed":
            std = 0.02 if args.init == "reference" else 1.0 / math.sqrt(c.D)
            t = std * torch.randn(shape, generator=gen)
            if args.init == "reference" and name == "model.embed_tokens.weight":
                t[c.pad_id] = 0.0  # nn.Embedding(padding_idx) init
            weights[name] = t
        else:  # linear (out, in)
            std = 0.02 if args.init == "reference" else 1.0 / math.sqrt(shape[1])
            weights[name] = std * torch.randn(shape, generator=gen)
        weights[name] = weights[name].float().contiguous()
    if c.tied:
        weights["lm_head.weight"] = weights["model.embed_tokens.weight"].clone()
    st_save({k: v.numpy() for k, v in weights.items()}, os.path.join(args.out, "weights.safetensors"))

    T = args.tokens if args.tokens else c.Lc * args.chunks
    if T % c.Lc:
        raise SystemExit(f"--tokens {T} is not a multiple of enc_chunk_size {c.Lc}")
    rng = np.random.RandomState(args.seed + 1)
    toks = rng.randint(0, c.V, size=T).astype(np.int64)
    nneg = int(round(args.neg_frac * T))
    if nneg:
        toks[rng.choice(np.arange(1, T), size=nneg, replace=False)] = IGNORE
    np.save(os.path.join(args.out, "tokens.npy"), toks)

    forward = make_model_fns(torch)
    tokens = torch.from_numpy(toks)
    names = [n for n, _, k in layout if k != "slopes"]
    results = {}
    for dtype, suffix in ((torch.float32, ""), (torch.float64, "_fp64")):
        p = {}
        for n, _, kind in layout:
            if kind == "tied":
                p[n] = p["model.embed_tokens.weight"]
                continue
            t = weights[n].to(dtype).clone()
            if kind != "slopes":
                t.requires_grad_(True)
            p[n] = t
        loss, logits, diag = forward(p, c, tokens)
        loss.backward()
        grads = {}
        for n in names:
            g = p[n].grad
            if g is None:
                g = torch.zeros_like(p[n])
            grads[n] = g.detach().to(dtype).contiguous().clone()
        with open(os.path.join(args.out, f"loss{suffix}.txt"), "w") as f:
            f.write(repr(float(loss)) + "\n")
        np.save(os.path.join(args.out, f"logits{suffix}.npy"), logits.detach().to(dtype).numpy())
        st_save({k: v.numpy() for k, v in grads.items()}, os.path.join(args.out, f"grads{suffix}.safetensors"))
        results[suffix] = (float(loss), logits.detach().double(), diag)

    # diagnostics: how much the retrieval path moves the logits, and how safe the top-k selection is
    with torch.no_grad():
        p32 = {n: (weights[n] if k != "tied" else weights["model.embed_tokens.weight"]) for n, _, k in layout}
        _, lg_off, _ = forward(p32, c, tokens, gca_on=False)
    loss32, lg32, diag = results[""]
    loss64, lg64, _ = results["_fp64"]
    meta = {
        "config": os.path.abspath(args.config), "seed": args.seed, "init": args.init, "norm_std": args.norm_std,
        "T": T, "C": T // c.Lc, "L_c": c.Lc, "S": c.S, "V": c.V, "negative_ids": nneg, "targets": diag["targets"],
        "loss": loss32, "loss_fp64": loss64,
        "logits_fp32_vs_fp64_max_abs": float((lg32 - lg64).abs().max()),
        "gca_effect_on_logits_max_abs": float((lg32 - lg_off.double()).abs().max()),
        "retrieval": diag["groups"],
    }
    with open(os.path.join(args.out, "meta.json"), "w") as f:
        json.dump(meta, f, indent=1)
    print(f"make: {args.config} -> {args.out}")
    print(f"  T={T} tokens, C={T // c.Lc} chunks of S={c.S}, {nneg} ids = -100, {diag['targets']} targets")
    print(f"  loss fp32 {loss32!r}  fp64 {loss64!r}")
    print(f"  logits fp32 vs fp64 max |diff| {meta['logits_fp32_vs_fp64_max_abs']:.3e}")
    print(f"  GCA path moves the logits by max {meta['gca_effect_on_logits_max_abs']:.3e} (bar 1e-4)")
    for g, gd in enumerate(diag["groups"]):
        print(f"  group {g}: top-k selection margin {gd['margin']:.3e}; landmark {len(gd['idx']) - 2} -> "
              f"idx {gd['idx'][-2]} w {[round(x, 4) for x in gd['w'][-2]]}")
        if gd["margin"] < 1e-4:
            print(f"  WARNING: group {g} top-k margin {gd['margin']:.3e} is small; a selection flip is possible")


# ----------------------------------------------------------------------------------------------
# compare
# ----------------------------------------------------------------------------------------------
LOSS_REL = 1e-5
LOGITS_ABS = 1e-4
GRAD_REL = 1e-3


def rel_l2(a, b):
    nb = float(np.linalg.norm(b.ravel()))
    nd = float(np.linalg.norm((a - b).ravel()))
    return nd / nb if nb > 0 else (0.0 if nd == 0 else float("inf"))


def cmd_compare(args):
    load_file = st_load

    d = args.dir
    with open(os.path.join(d, "meta.json")) as f:
        meta = json.load(f)
    T, C, Lc, S, V = meta["T"], meta["C"], meta["L_c"], meta["S"], meta["V"]
    have64 = os.path.exists(os.path.join(d, "grads_fp64.safetensors"))
    ok = True
    lines = []

    def say(s=""):
        print(s)
        lines.append(s)

    # loss
    ref_loss = float(open(os.path.join(d, "loss.txt")).read())
    loss_rel = abs(args.drt_loss - ref_loss) / abs(ref_loss)
    good = loss_rel <= LOSS_REL
    ok &= good
    say(f"loss    drt {args.drt_loss!r}  ref {ref_loss!r}  rel {loss_rel:.3e}  bar {LOSS_REL:g}  "
        f"{'ok' if good else 'FAIL'}")
    if have64:
        l64 = float(open(os.path.join(d, "loss_fp64.txt")).read())
        say(f"        vs fp64 ref {l64!r}: drt rel {abs(args.drt_loss - l64) / abs(l64):.3e}, "
            f"fp32 ref rel {abs(ref_loss - l64) / abs(l64):.3e}")

    # logits
    ref = np.load(os.path.join(d, "logits.npy")).astype(np.float64)
    got = np.load(args.drt_logits).astype(np.float64)
    got = got.reshape(got.shape[-2], got.shape[-1]) if got.ndim > 2 and np.prod(got.shape[:-2]) == 1 else got
    if got.shape == (C * S, V):
        say(f"logits  drt dump has {C * S} rows (landmarks included): landmark rows dropped for the comparison")
        got = got.reshape(C, S, V)[:, :Lc].reshape(T, V)
    if got.shape != ref.shape:
        say(f"logits  shape mismatch: drt {got.shape} ref {ref.shape}  FAIL")
        ok = False
    else:
        err = np.abs(got - ref)
        good = bool(np.isfinite(got).all()) and float(err.max()) <= LOGITS_ABS
        ok &= good
        say(f"logits  max abs {err.max():.3e}  mean abs {err.mean():.3e}  rel L2 {rel_l2(got, ref):.3e}  "
            f"(ref max |x| {np.abs(ref).max():.3g})  bar {LOGITS_ABS:g}  {'ok' if good else 'FAIL'}")
        if have64:
            r64 = np.load(os.path.join(d, "logits_fp64.npy")).astype(np.float64)
            say(f"        vs fp64 ref: drt max abs {np.abs(got - r64).max():.3e}, fp32 ref max abs "
                f"{np.abs(ref - r64).max():.3e}")

    # gradients
    rg = load_file(os.path.join(d, "grads.safetensors"))
    dg = load_file(args.drt_grads)
    r64 = load_file(os.path.join(d, "grads_fp64.safetensors")) if have64 else {}
    names = sorted(rg)
    w = max(len(n) for n in names)
    say()
    hdr = f"{'gradient':<{w}}  {'shape':>14}  {'|ref|':>9}  {'max abs':>9}  {'rel L2':>9}"
    if have64:
        hdr += f"  {'drt/fp64':>9}  {'ref/fp64':>9}"
    say(hdr + "  status")
    worst = (0.0, "")
    nfail = 0
    for n in names:
        a = rg[n].astype(np.float64)
        if n not in dg:
            say(f"{n:<{w}}  {str(tuple(a.shape)):>14}  missing in the drt dump  FAIL")
            ok = False
            nfail += 1
            continue
        b = dg[n].astype(np.float64)
        if b.shape != a.shape:
            say(f"{n:<{w}}  shape drt {b.shape} ref {a.shape}  FAIL")
            ok = False
            nfail += 1
            continue
        rel = rel_l2(b, a)
        mabs = float(np.abs(b - a).max())
        good = bool(np.isfinite(b).all()) and rel <= GRAD_REL
        ok &= good
        nfail += 0 if good else 1
        if rel > worst[0]:
            worst = (rel, n)
        row = f"{n:<{w}}  {str(tuple(a.shape)):>14}  {np.linalg.norm(a):9.3e}  {mabs:9.3e}  {rel:9.3e}"
        if have64:
            c64 = r64[n].astype(np.float64)
            row += f"  {rel_l2(b, c64):9.3e}  {rel_l2(a, c64):9.3e}"
        say(row + ("  ok" if good else "  FAIL"))
    extra = sorted(set(dg) - set(rg))
    if extra:
        say(f"(ignored: {len(extra)} tensors in the drt dump that are not parameters: {', '.join(extra[:6])}"
            f"{' ...' if len(extra) > 6 else ''})")

    # the pad row of the embedding gets no gradient from the lookup (padding_idx); show it separately
    cfg = load_cfg(meta["config"]) if os.path.exists(meta["config"]) else None
    emb = "model.embed_tokens.weight"
    if cfg is not None and emb in dg and emb in rg and dg[emb].shape == rg[emb].shape:
        a = rg[emb][cfg.pad_id].astype(np.float64)
        b = dg[emb][cfg.pad_id].astype(np.float64)
        r = rel_l2(b, a)
        say(f"pad row {cfg.pad_id} of {emb}: rel L2 {r:.3e}, max abs {np.abs(a - b).max():.3e}"
            f"{'' if r <= GRAD_REL else '  WARN (padding_idx semantics differ?)'}")
    say()
    say(f"gradients: {len(names)} checked, {nfail} over {GRAD_REL:g}; worst rel L2 {worst[0]:.3e} ({worst[1]})")
    say("PARITY PASS" if ok else "PARITY FAIL")
    if args.report:
        with open(args.report, "w") as f:
            f.write("\n".join(lines) + "\n")
    return 0 if ok else 1


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("make", help="random weights and tokens plus the reference loss, logits and gradients")
    m.add_argument("--config", required=True)
    m.add_argument("--out", required=True)
    m.add_argument("--seed", type=int, default=1234)
    m.add_argument("--tokens", type=int, default=0, help="token count (multiple of enc_chunk_size)")
    m.add_argument("--chunks", type=int, default=8, help="chunk count when --tokens is not given")
    m.add_argument("--init", choices=("scaled", "reference"), default="scaled",
                   help="scaled: Linear N(0, 1/fan_in), embedding N(0, 1/D) (default; attention and retrieval "
                        "far from uniform); reference: everything N(0, 0.02), pad row zeroed")
    m.add_argument("--norm-std", type=float, default=0.1, help="RMSNorm gammas ~ 1 + N(0, s^2); 0 = reference init")
    m.add_argument("--neg-frac", type=float, default=0.02, help="fraction of token ids set to -100")
    c = sub.add_parser("compare", help="check the C++ results against DIR's reference")
    c.add_argument("--dir", required=True)
    c.add_argument("--drt-logits", required=True)
    c.add_argument("--drt-grads", required=True)
    c.add_argument("--drt-loss", type=float, required=True)
    c.add_argument("--report", help="also write the table to this file")
    args = ap.parse_args()
    if args.cmd == "make":
        cmd_make(args)
        return 0
    return cmd_compare(args)


if __name__ == "__main__":
    sys.exit(main())
