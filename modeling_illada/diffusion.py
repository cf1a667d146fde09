"""The masked-diffusion objective, and which model output predicts which token.

The forward process (which tokens to mask, with which probability) lives with the training code; the model
only needs the loss it reports when `labels` are passed. Notation (code -> LLaDA paper): `labels` -> x_0 at
masked positions (-100 elsewhere), `loss_weights` -> 1 / p_mask already divided by the normaliser
(batch x length for pretraining, batch x answer length for SFT).

Shifted logits. LLaDA and iLLaDA predict the token at column j from output j. A model adapted from an autoregressive
one (Dream, `illada adapt`; config `shift_logits=True`) keeps its head's alignment: output j predicts column j + 1,
so the prediction for column j is output j - 1, and column 0, which no output predicts, is never masked (Dream's
sampler lets column 0 read its own output; it is never a target there either). Everything that meets logits with
tokens (the loss below, the sampler and its caches, the likelihood scorers, distillation) asks `prediction_rows`
which outputs to compute, or `align_predictions` to line a full forward up with the canvas. `labels` are always
in canvas columns, as for transformers' causal LMs, whose loss shifts them.
"""

import torch
import torch.nn.functional as F


def logit_shift(config) -> int:
    """1 when output j predicts column j + 1 (`config.shift_logits`), else 0."""
    return int(bool(getattr(config, "shift_logits", False)))


def prediction_rows(start: int, end: int, shift: int) -> slice | torch.Tensor:
    """The outputs that predict canvas columns `[start, end)`: the same columns, or each column's left neighbour for
    a shifted model (a slice while `start >= 1`; column 0 reads its own output, as Dream's sampler does)."""
    if not shift:
        return slice(start, end)
    if start >= 1:
        return slice(start - 1, end - 1)
    return torch.cat([torch.zeros(1, dtype=torch.long), torch.arange(0, max(end - 1, 0))])[: end - start]


def align_predictions(logits: torch.Tensor, shift: int) -> torch.Tensor:
    """`(B, L, V)` outputs of a full forward, reordered so that row j predicts column j (Dream's
    `cat([logits[:, :1], logits[:, :-1]])` for a shifted model; unchanged otherwise)."""
    if not shift:
        return logits
    return torch.cat([logits[:, :1], logits[:, :-1]], dim=1)


def masked_diffusion_loss(
    logits: torch.Tensor, labels: torch.Tensor, loss_weights: torch.Tensor | None = None
) -> torch.Tensor:
    """Cross-entropy of `labels` under `logits` where `labels != -100`.

    Args:
        logits: `(B, L, V)` predictions of x_0.
        labels: `(B, L)` target ids, `-100` where no loss is taken.
        loss_weights: `(B, L)` per-token weights. With weights the loss is `sum(CE * w)` (the weights carry the
            normalisation, as LLaDA's 1/p_mask estimator needs); without, the mean CE over labelled positions.
    """
    if labels.shape != logits.shape[:2]:
        raise ValueError(f"`labels` must have shape {tuple(logits.shape[:2])} (batch, length), got {tuple(labels.shape)}.")
    token_loss = F.cross_entropy(
        logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100, reduction="none"
    ).view_as(labels)  # (B, L), 0 where ignored
    if loss_weights is None:
        return token_loss.sum() / (labels != -100).sum().clamp(min=1)
    if loss_weights.shape != labels.shape:
        raise ValueError(f"`loss_weights` must have the shape of `labels` {tuple(labels.shape)}, got {tuple(loss_weights.shape)}.")
    return (token_loss * loss_weights.to(token_loss.dtype) * (labels != -100)).sum()
