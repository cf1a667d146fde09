"""How each denoising step obtains logits for the block being denoised.

A cache policy owns the model calls of one `generate()` run. `NoCache` is the reference computation: a full
forward over the whole canvas at every step (LLaDA has no KV cache), projecting only the block's positions
through the LM head, which is exact. Approximate policies that reuse keys/values across steps register here
under their own names.
"""

import torch


class NoCache:
    """Recompute every position at every step; logits only for `[block_start, block_end)`."""

    name = "none"

    def __init__(self, model, **kwargs):
        self.model = model
        self.forward_passes = 0
        self.positions_processed = 0

    def logits(
        self,
        x: torch.Tensor,
        attention_mask: torch.Tensor | None,
        position_ids: torch.Tensor,
        block_start: int,
        block_end: int,
        step: int,
    ) -> torch.Tensor:
        """`(B', block_end - block_start, V)` logits for the block, given the whole canvas `x` `(B', L)`."""
        self.forward_passes += 1
        self.positions_processed += x.shape[0] * x.shape[1]
        out = self.model(
            input_ids=x, attention_mask=attention_mask, position_ids=position_ids,
            logits_to_keep=slice(block_start, block_end),
        )
        return out.logits


CACHES = {"none": NoCache}
