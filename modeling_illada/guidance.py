"""Classifier-free guidance for masked diffusion (SMDM's unsupervised CFG, as LLaDA uses it).

The unconditional pass is the same canvas with every prompt token replaced by the mask token; both passes run as
one batch `[cond; uncond]` and combine as `u + (s + 1) * (c - u)`. Shared by generation and likelihood scoring.
"""

import torch


class NoGuidance:
    name = "none"

    def __init__(self, scale: float = 0.0, mask_token_id: int | None = None, prompt_index: torch.Tensor | None = None):
        pass

    def batch(self, x: torch.Tensor, attention_mask: torch.Tensor | None):
        return x, attention_mask

    def combine(self, logits: torch.Tensor) -> torch.Tensor:
        return logits


class ClassifierFreeGuidance:
    name = "cfg"

    def __init__(self, scale: float, mask_token_id: int, prompt_index: torch.Tensor):
        self.scale = scale
        self.mask_token_id = mask_token_id
        self.prompt_index = prompt_index  # (B, L) bool: positions that are conditioning, not canvas

    def batch(self, x: torch.Tensor, attention_mask: torch.Tensor | None):
        prompt_index = self.prompt_index[:, : x.shape[1]]
        if prompt_index.shape[1] < x.shape[1]:  # the canvas grew (variable length): new columns are canvas
            pad = torch.zeros(x.shape[0], x.shape[1] - prompt_index.shape[1], dtype=torch.bool, device=x.device)
            prompt_index = torch.cat([prompt_index, pad], dim=1)
        unconditional = x.masked_fill(prompt_index, self.mask_token_id)  # (B, L)
        attention = None if attention_mask is None else torch.cat([attention_mask, attention_mask])  # (2B, L)
        return torch.cat([x, unconditional]), attention  # (2B, L)

    def combine(self, logits: torch.Tensor) -> torch.Tensor:
        cond, uncond = logits.chunk(2, dim=0)
        return uncond + (self.scale + 1) * (cond - uncond)


GUIDANCE = {"none": NoGuidance, "cfg": ClassifierFreeGuidance}


def guidance_for(scale: float, mask_token_id: int, prompt_index: torch.Tensor):
    """The guidance object for a CFG scale: none at 0, classifier-free above."""
    return GUIDANCE["cfg" if scale > 0 else "none"](scale, mask_token_id, prompt_index)
