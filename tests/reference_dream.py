"""Independent re-statements of Dream-7B's published code, used only as test oracles.

* `dream_forward`: Dream's `DreamModel` forward (Qwen2 blocks: biases on q/k/v, none on o, RoPE cast to the
  activations' dtype, bidirectional SDPA with Dream's optional 4-D boolean mask and position ids, untied head),
  written directly against Dream's key names.
* `dream_sample`: Dream's `_sample` loop from `generation_utils.py`: one canvas, timesteps linspace(1, eps, steps+1),
  logits shifted by one, `origin` / `maskgit_plus` / `topk_margin` / `entropy`, `alg_temp`, torch's global RNG through
  `torch.distributions.Categorical`, `torch.rand` and `torch.multinomial`, as Dream draws.

Written from the algorithm, not from the package, so a disagreement points at a bug.
"""

import torch
import torch.distributions as dists
import torch.nn.functional as F


def _rms(x, weight, eps):
    dtype = x.dtype
    x = x.float()
    return weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)).to(dtype)


def _rotate(x):
    half = x.shape[-1] // 2
    return torch.cat([-x[..., half:], x[..., :half]], -1)


def dream_forward(sd: dict, cfg: dict, input_ids, attention_mask=None, position_ids=None) -> torch.Tensor:
    """Dream's raw logits `(B, T, V)` (output i predicts token i + 1). `attention_mask`: None or a 4-D bool mask."""
    d, nh, nkv = cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"]
    hd, eps, theta = d // nh, cfg["rms_norm_eps"], cfg["rope_theta"]
    x = F.embedding(input_ids, sd["model.embed_tokens.weight"])
    B, T, _ = x.shape
    if position_ids is None:
        position_ids = torch.arange(T)[None].expand(B, -1)
    inv = 1.0 / (theta ** (torch.arange(0, hd, 2, dtype=torch.int64).float() / hd))
    freqs = position_ids[..., None].float() * inv  # (B, T, hd/2)
    emb = torch.cat([freqs, freqs], -1)
    cos, sin = emb.cos().to(x.dtype)[:, None], emb.sin().to(x.dtype)[:, None]  # (B, 1, T, hd)
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        h = _rms(x, sd[p + "input_layernorm.weight"], eps)

        def proj(name, heads):
            w, b = sd[p + f"self_attn.{name}.weight"], sd[p + f"self_attn.{name}.bias"]
            return (h @ w.T + b).view(B, T, heads, hd).transpose(1, 2)

        q, k, v = proj("q_proj", nh), proj("k_proj", nkv), proj("v_proj", nkv)
        q, k = q * cos + _rotate(q) * sin, k * cos + _rotate(k) * sin
        k, v = k.repeat_interleave(nh // nkv, dim=1), v.repeat_interleave(nh // nkv, dim=1)
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=attention_mask, is_causal=False)
        x = x + a.transpose(1, 2).reshape(B, T, d) @ sd[p + "self_attn.o_proj.weight"].T
        h = _rms(x, sd[p + "post_attention_layernorm.weight"], eps)
        gate, up = h @ sd[p + "mlp.gate_proj.weight"].T, h @ sd[p + "mlp.up_proj.weight"].T
        x = x + (F.silu(gate) * up) @ sd[p + "mlp.down_proj.weight"].T
    return _rms(x, sd["model.norm.weight"], eps) @ sd["lm_head.weight"].T


def _sample_tokens(logits, temperature=0.0, top_p=None, top_k=None, margin=False, entropy=False):
    if temperature > 0:
        logits = logits / temperature
    if top_p is not None and top_p < 1:
        sorted_logits, order = torch.sort(logits, descending=True)
        remove = torch.cumsum(F.softmax(sorted_logits, dim=-1), dim=-1) > top_p
        remove[..., 1:] = remove[..., :-1].clone()
        remove[..., 0] = 0
        mask = torch.zeros_like(logits, dtype=torch.bool).scatter_(-1, order, remove)
        logits = logits.masked_fill(mask, torch.finfo(logits.dtype).min)
    if top_k is not None:
        logits = logits.masked_fill(logits < torch.topk(logits, min(top_k, logits.size(-1)))[0][..., -1, None],
                                    torch.finfo(logits.dtype).min)
    probs = torch.softmax(logits, dim=-1)
    if temperature > 0:
        x0 = dists.Categorical(probs=probs).sample()
        confidence = torch.gather(probs, -1, x0.unsqueeze(-1)).squeeze(-1)
    else:
        confidence, x0 = probs.max(dim=-1)
    if margin:
        ranked = torch.sort(probs, dim=-1, descending=True)[0]
        confidence = ranked[:, 0] - ranked[:, 1]
    if entropy:
        confidence = torch.sum(probs * torch.log(probs + 1e-10), dim=-1)
    return confidence, x0


def dream_sample(forward, input_ids, mask_id, max_new_tokens, steps, eps=1e-3, alg="origin", alg_temp=None,
                 temperature=0.0, top_p=None, top_k=None, attention_mask=None):
    """Dream's canvas after `steps` steps; `forward(x, mask4d_or_None, position_ids_or_None)` gives raw logits."""
    x = F.pad(input_ids, (0, max_new_tokens), value=mask_id)
    if attention_mask is not None and bool((attention_mask == 0).any()):
        attention_mask = F.pad(attention_mask, (0, max_new_tokens), value=1)
        tok_idx = attention_mask.long().cumsum(-1) - 1
        tok_idx.masked_fill_(attention_mask == 0, 1)
        attention_mask = torch.logical_and(attention_mask.unsqueeze(1).unsqueeze(-2),
                                           attention_mask.unsqueeze(1).unsqueeze(-1))
    else:
        tok_idx, attention_mask = None, None
    timesteps = torch.linspace(1, eps, steps + 1)
    for i in range(steps):
        mask_index = x == mask_id
        logits = forward(x, attention_mask, tok_idx)
        logits = torch.cat([logits[:, :1], logits[:, :-1]], dim=1)
        mask_logits = logits[mask_index]
        t, s = timesteps[i], timesteps[i + 1]
        if alg == "origin":
            p_transfer = 1 - s / t if i < steps - 1 else 1
            x0 = torch.zeros_like(x[mask_index], dtype=torch.long) + mask_id
            transfer = torch.rand(*x0.shape) < p_transfer
            _, x0[transfer] = _sample_tokens(mask_logits[transfer], temperature, top_p, top_k)
            x[mask_index] = x0.clone()
        else:
            confidence, x0 = _sample_tokens(mask_logits, temperature, top_p, top_k, margin=alg == "topk_margin",
                                            entropy=alg == "entropy")
            num_mask_token = mask_index.sum() / mask_index.shape[0]
            number = int(num_mask_token * (1 - s / t)) if i < steps - 1 else int(num_mask_token)
            full_confidence = torch.full_like(x, -torch.inf, dtype=logits.dtype)
            full_confidence[mask_index] = confidence
            if number > 0:
                if alg_temp is None or alg_temp == 0:
                    _, transfer_index = torch.topk(full_confidence, number)
                else:
                    full_confidence = F.softmax(full_confidence / alg_temp, dim=-1)
                    transfer_index = torch.multinomial(full_confidence, num_samples=number)
                x_ = torch.zeros_like(x, dtype=torch.long) + mask_id
                x_[mask_index] = x0.clone()
                rows = torch.arange(x.size(0)).unsqueeze(1).expand_as(transfer_index)
                x[rows, transfer_index] = x_[rows, transfer_index]
    return x
