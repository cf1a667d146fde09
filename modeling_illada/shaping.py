"""Logits shaping: what a denoising step does to the block's logits before candidates are sampled and scored.

Each policy is a small object with a `name`, `active(config)` (whether the generation config turns it on) and
`__call__(logits, context)`, which returns the shaped `(B, Lb, V)` logits of the block. `SHAPING` lists them in the
order they apply; the sampler runs the active ones (`shape_logits`). The shaped logits feed both the candidates and
their confidence, so a penalised token is also less likely to be revealed early.

* `end_think`: iLLaDA's end-of-thinking control (`end_think_logit_boost`, see `IlladaGenerationConfig`).
* `repetition`: CTRL's repetition penalty (`repetition_penalty`) on the tokens a row has already generated.
* `eos_ban`: LLaDA's `logits_eos_inf`, EOS never a candidate.
"""

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class ShapingContext:
    """What a policy may read: the canvas `x` `(B, L)`, the block's still-masked positions `eligible` `(B, Lb)`,
    where the block starts, where the generated region starts, the token budget and the end ids."""

    x: torch.Tensor
    eligible: torch.Tensor
    block_start: int
    prompt_length: int
    budget: int
    eos_ids: tuple
    mask_token_id: int
    config: object


class EndThinkBoost:
    """iLLaDA's end-of-thinking control: until a row's generated tokens contain `end_think_token_ids`, add
    `boost * progress ** power` to one logit, the next token of that sequence at the block's first masked position."""

    name = "end_think"

    def active(self, config) -> bool:
        return config.end_think_logit_boost > 0

    def __call__(self, logits: torch.Tensor, context: ShapingContext) -> torch.Tensor:
        config, x, eligible = context.config, context.x, context.eligible
        token_ids, prompt_length = config.end_think_token_ids, context.prompt_length
        sequence = torch.tensor(token_ids, device=x.device)  # (n,)
        n, batch = len(token_ids), x.shape[0]
        generated = x[:, prompt_length:]  # (B, G)
        written = torch.zeros(batch, dtype=torch.bool, device=x.device)
        if generated.shape[1] >= n:
            written = (generated.unfold(1, n, 1) == sequence).all(-1).any(-1)  # (B,) the sequence already appears
        active = eligible.any(-1) & ~written  # (B,)
        first = eligible.int().argmax(-1)  # (B,) first masked position of the block
        column = context.block_start + first  # (B,)
        token = sequence[0].expand(batch).clone()  # (B,) the next token of the sequence
        matched = torch.zeros(batch, dtype=torch.bool, device=x.device)
        for k in range(n - 1, 0, -1):  # the longest prefix of the sequence that ends just before the column wins
            before = x.gather(1, (column[:, None] + torch.arange(-k, 0, device=x.device)).clamp(min=0))  # (B, k)
            fits = (column - prompt_length >= k) & (before == sequence[:k]).all(-1) & ~matched
            token = torch.where(fits, sequence[k], token)
            matched |= fits
        progress = ((column - prompt_length + 1).double() / context.budget).clamp(0, 1)  # (B,)
        rows = active.nonzero().squeeze(-1)
        logits = logits.clone()
        boost = config.end_think_logit_boost * progress[rows] ** config.end_think_boost_power
        logits[rows, first[rows], token[rows]] += boost.to(logits.dtype)
        return logits


class RepetitionPenalty:
    """CTRL's penalty on every token a row has committed in its generated region (not the prompt, not masks, not end
    tokens): positive logits divided by `repetition_penalty`, negative ones multiplied, at every position of the block."""

    name = "repetition"

    def active(self, config) -> bool:
        return config.repetition_penalty != 1.0

    def __call__(self, logits: torch.Tensor, context: ShapingContext) -> torch.Tensor:
        penalty = context.config.repetition_penalty
        generated = context.x[:, context.prompt_length:]  # (B, G)
        seen = torch.zeros(logits.shape[0], logits.shape[-1], dtype=torch.bool, device=logits.device)  # (B, V)
        seen.scatter_(1, generated, True)
        seen[:, context.mask_token_id] = False
        if context.eos_ids:
            seen[:, list(context.eos_ids)] = False
        seen = seen[:, None, :]  # (B, 1, V), the same for every position of the block
        penalised = torch.where(logits > 0, logits / penalty, logits * penalty)
        return torch.where(seen, penalised, logits)


class EosBan:
    """LLaDA's `logits_eos_inf`: EOS is never a candidate."""

    name = "eos_ban"

    def active(self, config) -> bool:
        return config.logits_eos_inf

    def __call__(self, logits: torch.Tensor, context: ShapingContext) -> torch.Tensor:
        if not context.eos_ids:
            return logits
        logits = logits.clone()
        logits[..., list(context.eos_ids)] = -torch.inf
        return logits


SHAPING = (EndThinkBoost(), RepetitionPenalty(), EosBan())


def shape_logits(logits: torch.Tensor, context: ShapingContext, policies=None) -> torch.Tensor:
    """Apply the active policies of `SHAPING` (or `policies`), in order."""
    for policy in policies if policies is not None else SHAPING:
        if policy.active(context.config):
            logits = policy(logits, context)
    return logits


__all__ = ["SHAPING", "ShapingContext", "shape_logits", "EndThinkBoost", "RepetitionPenalty", "EosBan"]
