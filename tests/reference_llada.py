"""Independent re-statements of the published LLaDA reference code, used only as test oracles.

* `llada_forward`: the LLaDA-8B block (`LLaDALlamaBlock`) written directly against OLMo-style tensor names.
* `llada_generate`: the reference sampler of ML-GSAI/LLaDA `generate.py` (paraphrased from its description:
  full-sequence forward each step, `get_num_transfer_tokens`, float64 Gumbel noise, low-confidence / random
  remasking, CFG with the prompt masked out).

Both are written from the algorithm descriptions, not from the package, so a disagreement points at a bug.
"""

import torch
import torch.nn.functional as F


def _rms(x, weight, eps):
    dtype = x.dtype
    x = x.float()
    x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    return weight * x.to(dtype)


def _rope(q, k, theta):
    # q, k: (B, H, T, D); positions 0..T-1; rotate-half convention, float32
    d = q.shape[-1]
    inv = 1.0 / (theta ** (torch.arange(0, d, 2).float() / d))
    t = torch.arange(q.shape[-2]).float()
    freqs = torch.outer(t, inv)
    emb = torch.cat([freqs, freqs], -1)
    cos, sin = emb.cos(), emb.sin()

    def rot(x):
        x1, x2 = x.chunk(2, -1)
        return torch.cat([-x2, x1], -1)

    qf, kf = q.float(), k.float()
    return (qf * cos + rot(qf) * sin).to(q.dtype), (kf * cos + rot(kf) * sin).to(k.dtype)


def llada_forward(sd: dict, cfg: dict, input_ids: torch.Tensor) -> torch.Tensor:
    """Logits of a LLaDA (OLMo-key) checkpoint `sd` with config `cfg` (OLMo names) for `input_ids` (B, T)."""
    p = "model.transformer."
    d, nh = cfg["d_model"], cfg["n_heads"]
    nkv = cfg.get("n_kv_heads") or nh
    hd = d // nh
    eps = cfg["rms_norm_eps"]
    x = F.embedding(input_ids, sd[p + "wte.weight"])
    B, T, _ = x.shape
    for i in range(cfg["n_layers"]):
        b = f"{p}blocks.{i}."
        n = _rms(x, sd[b + "attn_norm.weight"], eps)
        q = (n @ sd[b + "q_proj.weight"].T).view(B, T, nh, hd).transpose(1, 2)
        k = (n @ sd[b + "k_proj.weight"].T).view(B, T, nkv, hd).transpose(1, 2)
        v = (n @ sd[b + "v_proj.weight"].T).view(B, T, nkv, hd).transpose(1, 2)
        q, k = _rope(q, k, cfg["rope_theta"])
        if nkv < nh:
            k = k.repeat_interleave(nh // nkv, dim=1)
            v = v.repeat_interleave(nh // nkv, dim=1)
        a = F.scaled_dot_product_attention(q, k, v, is_causal=False)
        x = x + a.transpose(1, 2).reshape(B, T, d) @ sd[b + "attn_out.weight"].T
        m = _rms(x, sd[b + "ff_norm.weight"], eps)
        x = x + (F.silu(m @ sd[b + "ff_proj.weight"].T) * (m @ sd[b + "up_proj.weight"].T)) @ sd[b + "ff_out.weight"].T
    x = _rms(x, sd[p + "ln_f.weight"], eps)
    return x @ sd[p + "ff_out.weight"].T


def _gumbel(logits, temperature):
    if temperature == 0:
        return logits
    logits = logits.to(torch.float64)
    noise = torch.rand_like(logits, dtype=torch.float64)
    return logits.exp() / (-torch.log(noise)) ** temperature


def _num_transfer_tokens(mask_index, steps):
    mask_num = mask_index.sum(dim=1, keepdim=True)
    base = mask_num // steps
    remainder = mask_num % steps
    out = torch.zeros(mask_num.size(0), steps, dtype=torch.int64) + base
    for i in range(mask_num.size(0)):
        out[i, : remainder[i]] += 1
    return out


@torch.no_grad()
def llada_generate(model_fn, prompt, steps=128, gen_length=128, block_length=128, temperature=0.0,
                   cfg_scale=0.0, remasking="low_confidence", mask_id=126336):
    """The reference sampler; `model_fn(x) -> logits (B, T, V)`."""
    x = torch.full((prompt.shape[0], prompt.shape[1] + gen_length), mask_id, dtype=torch.long)
    x[:, : prompt.shape[1]] = prompt.clone()
    prompt_index = x != mask_id
    assert gen_length % block_length == 0
    num_blocks = gen_length // block_length
    assert steps % num_blocks == 0
    steps = steps // num_blocks
    for nb in range(num_blocks):
        start = prompt.shape[1] + nb * block_length
        end = start + block_length
        block_mask_index = x[:, start:end] == mask_id
        num_transfer = _num_transfer_tokens(block_mask_index, steps)
        for i in range(steps):
            mask_index = x == mask_id
            if cfg_scale > 0.0:
                un_x = x.clone()
                un_x[prompt_index] = mask_id
                logits = model_fn(torch.cat([x, un_x], dim=0))
                logits, un_logits = torch.chunk(logits, 2, dim=0)
                logits = un_logits + (cfg_scale + 1) * (logits - un_logits)
            else:
                logits = model_fn(x)
            x0 = torch.argmax(_gumbel(logits, temperature), dim=-1)
            if remasking == "low_confidence":
                p = F.softmax(logits, dim=-1)
                x0_p = torch.squeeze(torch.gather(p, dim=-1, index=torch.unsqueeze(x0, -1)), -1)
            elif remasking == "random":
                x0_p = torch.rand((x0.shape[0], x0.shape[1]))
            else:
                raise NotImplementedError(remasking)
            x0_p[:, end:] = -float("inf")
            x0 = torch.where(mask_index, x0, x)
            confidence = torch.where(mask_index, x0_p, -float("inf"))
            transfer = torch.zeros_like(x0, dtype=torch.bool)
            for j in range(confidence.shape[0]):
                _, sel = torch.topk(confidence[j], k=int(num_transfer[j, i]))
                transfer[j, sel] = True
            x[transfer] = x0[transfer]
    return x
