"""What `IlladaModel.forward` accepts (a Hub file): the cache argument, token ids, attention masks and positions, each
checked with a message naming the argument, and what the attention kernel gets from them.

Differs from transformers' causal models: no causal mask is ever built. A 2-D padding mask only hides padded keys
(through `masking_utils.create_bidirectional_mask`); a 4-D mask (block-causal, packed, ...) is used as given. Default
positions count real tokens only under left padding, so a padded row sees the positions it would see alone. Checks
that read tensor values are skipped while tracing (`torch.compile`, `torch.export`).
"""

import torch
from transformers.masking_utils import create_bidirectional_mask


def prepare_attention_mask(config, attention_mask, inputs_embeds: torch.Tensor, kv_len: int):
    """Validate a 2-D padding mask `(B, K)` or a 4-D mask `(B|1, 1|H, Q, K)` and return what the configured attention
    implementation takes. A 2-D mask goes through transformers' `create_bidirectional_mask` (None when nothing is
    padded, a bool or additive 4-D mask, a flex `BlockMask`, or the 2-D mask for flash-attention); a 4-D mask is used
    as given (bool True = attend, or additive float). Apart from the 0/1 check of a 2-D mask (skipped when traced),
    nothing here reads the mask's values."""
    if attention_mask is None:
        return None
    batch, q_len = inputs_embeds.shape[:2]
    implementation = config._attn_implementation or "eager"
    if attention_mask.dim() == 2:
        if tuple(attention_mask.shape) != (batch, kv_len):
            raise ValueError(
                f"2-D `attention_mask` must have shape (batch, key length) = {(batch, kv_len)}, got {tuple(attention_mask.shape)}."
            )
        if "flash" in implementation and q_len != kv_len:
            raise ValueError(
                f"`attn_implementation={implementation!r}` cannot attend from {q_len} queries to {kv_len} padded keys "
                "(a cached step of a padded batch): use 'sdpa' for cached generation of padded batches."
            )
        if not torch.compiler.is_compiling() and attention_mask.dtype != torch.bool and \
                not bool(((attention_mask == 0) | (attention_mask == 1)).all()):  # a value check: skipped when traced
            raise ValueError("A 2-D `attention_mask` must hold 0 (padding) and 1 (token) only; got other values (a 4-D "
                             "float mask is taken as additive).")
        return create_bidirectional_mask(config=config, inputs_embeds=inputs_embeds, attention_mask=attention_mask)
    if attention_mask.dim() == 4:
        b, h, q, k = attention_mask.shape
        if b not in (1, batch) or q != q_len or k != kv_len:
            raise ValueError(
                f"4-D `attention_mask` must have shape (batch or 1, 1 or heads, query length, key length) = "
                f"({batch}, 1, {q_len}, {kv_len}), got {tuple(attention_mask.shape)}."
            )
        if "flash" in implementation:
            raise ValueError(
                f"`attn_implementation={implementation!r}` takes a 2-D padding mask only; a 4-D mask needs 'sdpa', "
                "'eager' or 'flex_attention'."
            )
        if attention_mask.dtype == torch.bool or not attention_mask.is_floating_point():
            attention_mask = attention_mask.bool()
            if implementation in ("sdpa", "eager"):
                return attention_mask
            # additive, for the kernels that add a mask
            return torch.where(attention_mask, 0.0, torch.finfo(inputs_embeds.dtype).min).to(inputs_embeds.dtype)
        return attention_mask.to(inputs_embeds.dtype)
    raise ValueError(f"`attention_mask` must be 2-D (batch, length) or 4-D (batch, 1, query, key), got {attention_mask.dim()}-D.")


def resolve_cache(past_key_values, cache):
    """The cache, given under either name (`cache` from transformers 5.24, `past_key_values` before), but not both."""
    if cache is not None and past_key_values is not None:
        raise ValueError("Pass the cache once: as `cache` or as `past_key_values`, not both.")
    return past_key_values if cache is None else cache


def check_outputs_requested(config, kwargs: dict) -> None:
    if kwargs.get("output_attentions") and config._attn_implementation != "eager":
        raise ValueError(
            f"`output_attentions=True` needs eager attention ({config._attn_implementation!r} does not compute "
            "the weights): call `model.set_attn_implementation('eager')` first, or load with "
            "`attn_implementation='eager'`."
        )


def check_input_ids(input_ids, vocab_size: int) -> None:
    if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2:
        raise ValueError(f"`input_ids` must be a 2-D tensor (batch, length), got "
                         f"{tuple(input_ids.shape) if isinstance(input_ids, torch.Tensor) else type(input_ids).__name__}.")
    if input_ids.is_floating_point() or input_ids.is_complex() or input_ids.dtype == torch.bool:
        raise ValueError(f"`input_ids` must hold integer token ids, got a {input_ids.dtype} tensor.")
    if not torch.compiler.is_compiling() and input_ids.numel():  # a value check: skipped when traced
        low, high = int(input_ids.min()), int(input_ids.max())
        if low < 0 or high >= vocab_size:
            raise ValueError(f"`input_ids` holds ids outside the vocabulary [0, {vocab_size}): min {low}, max {high}.")


def prepare_position_ids(config, position_ids, attention_mask, cache, past_len: int, inputs_embeds: torch.Tensor,
                         kv_len: int) -> torch.Tensor:
    """The positions of the fed rows, `(B, L)`: as given, else counted over real tokens (a 2-D mask, no cache), else
    `past_len, past_len + 1, ...`; none may reach `max_position_embeddings`."""
    batch, q_len = inputs_embeds.shape[:2]
    if position_ids is None:
        if attention_mask is not None and attention_mask.dim() == 2 and cache is None:
            position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)  # (B, L)
        else:
            position_ids = torch.arange(past_len, past_len + q_len, device=inputs_embeds.device)[None].expand(batch, -1)
    if position_ids.shape[-1] != q_len:
        raise ValueError(f"`position_ids` must have length {q_len} (the input length), got shape {tuple(position_ids.shape)}.")
    longest = kv_len
    if not torch.compiler.is_compiling() and position_ids.numel():  # a value check: skipped when traced
        longest = max(longest, int(position_ids.max()) + 1)
    if longest > config.max_position_embeddings:
        raise ValueError(
            f"Sequence length {longest} exceeds `max_position_embeddings` ({config.max_position_embeddings})."
        )
    return position_ids


__all__ = ["check_input_ids", "check_outputs_requested", "prepare_attention_mask", "prepare_position_ids",
           "resolve_cache"]
