"""Which masked positions a denoising step reveals.

Each strategy scores every position's sampled candidate (higher = reveal first); `choose_reveals` then takes, per
row, the `k` best eligible positions, or with a confidence `threshold` every eligible position above it (at least
one), as Fast-dLLM's parallel decoding does. Names follow LLaDA (`low_confidence`, `random`) and Dream (`margin`
for `topk_margin`, `entropy`). Scores use the raw (un-tempered) logits, as LLaDA computes its confidence.
"""

import torch
import torch.nn.functional as F


class LowConfidenceRemasking:
    """Score = probability of the sampled token (LLaDA `low_confidence`, Dream `maskgit_plus`)."""

    name = "low_confidence"

    def __call__(self, logits: torch.Tensor, x0: torch.Tensor, generator=None) -> torch.Tensor:
        probs = F.softmax(logits, dim=-1)  # (B, L, V), in the logits' dtype as LLaDA does
        return torch.gather(probs, -1, x0[..., None]).squeeze(-1)  # (B, L)


class RandomRemasking:
    """Score = uniform noise: a random reveal order (LLaDA `random`)."""

    name = "random"

    def __call__(self, logits: torch.Tensor, x0: torch.Tensor, generator=None) -> torch.Tensor:
        return torch.rand(x0.shape, device=x0.device, generator=generator)  # (B, L)


class MarginRemasking:
    """Score = top-1 minus top-2 probability (Dream `topk_margin`)."""

    name = "margin"

    def __call__(self, logits: torch.Tensor, x0: torch.Tensor, generator=None) -> torch.Tensor:
        top2 = F.softmax(logits.float(), dim=-1).topk(2, dim=-1).values  # (B, L, 2)
        return top2[..., 0] - top2[..., 1]


class EntropyRemasking:
    """Score = negative entropy of the predictive distribution (Dream `entropy`)."""

    name = "entropy"

    def __call__(self, logits: torch.Tensor, x0: torch.Tensor, generator=None) -> torch.Tensor:
        log_probs = F.log_softmax(logits.float(), dim=-1)  # (B, L, V)
        return (log_probs.exp() * log_probs).sum(-1)


REMASKING = {strategy.name: strategy for strategy in (LowConfidenceRemasking(), RandomRemasking(),
                                                       MarginRemasking(), EntropyRemasking())}


def choose_reveals(
    confidence: torch.Tensor, eligible: torch.Tensor, counts: torch.Tensor, threshold: float | None = None
) -> torch.Tensor:
    """Positions to reveal this step, as a bool `(B, L)`.

    Args:
        confidence: `(B, L)` scores, higher first.
        eligible: `(B, L)` bool, the still-masked positions of the current block.
        counts: `(B,)` how many to reveal per row (ignored with `threshold`).
        threshold: reveal every eligible position whose score exceeds it, and at least the best one.
    """
    scores = confidence.float().masked_fill(~eligible, -torch.inf)  # (B, L)
    if threshold is not None:
        best = scores.argmax(-1, keepdim=True)  # (B, 1)
        reveal = (scores > threshold) & eligible
        reveal.scatter_(1, best, True)
        return reveal & eligible
    reveal = torch.zeros_like(eligible)
    k_max = int(counts.max()) if counts.numel() else 0
    if k_max == 0:
        return reveal
    top = scores.topk(k_max, dim=-1).indices  # (B, k_max)
    take = torch.arange(k_max, device=counts.device)[None, :] < counts[:, None]  # (B, k_max)
    reveal.scatter_(1, top, take)
    return reveal & eligible
