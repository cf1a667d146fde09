"""The masked-diffusion objective: weighted cross-entropy on masked positions.

The forward process (which tokens to mask, with which probability) lives with the training code; the model
only needs the loss it reports when `labels` are passed. Notation (code -> LLaDA paper): `labels` -> x_0 at
masked positions (-100 elsewhere), `loss_weights` -> 1 / p_mask already divided by the normaliser
(batch x length for pretraining, batch x answer length for SFT).
"""

import torch
import torch.nn.functional as F


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
