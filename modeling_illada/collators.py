"""The forward process of masked diffusion, run in the data collator (library-only: no Hub file imports this).

A collator draws one time t per sequence, masks each token with probability p = (1 - eps) t + eps and emits
`input_ids` (x_t), `labels` (x_0 at masked positions, -100 elsewhere) and `loss_weights` (1 / p already divided by
the normaliser); the model's `forward` turns these into `sum(CE * loss_weights)` (`diffusion.masked_diffusion_loss`).
So nothing in `transformers.Trainer` needs forking. Differences from LLaDA's published recipe (GUIDELINES.md) are
options, not changes: t may be stratified across the batch (MDLM's low-discrepancy sampler, the default), the whole
batch is cut to a random length with probability `random_length_prob` (LLaDA: 1%), `loss_weighting="uniform"` drops
the 1/p weights (dLLM's "uniform"). `CausalCollator` is the autoregressive objective on the same model (a causal
mask, no noise): an AR baseline of the same architecture, or the first stage of AR-to-diffusion adaptation.

Notation (code -> LLaDA paper): `x0` -> x_0, the clean tokens; `noisy` -> x_t; `p` -> p_mask;
`noisable` -> positions the forward process may mask (all for pretraining, the answer for SFT).

Policies are named in tables: `TIME_SAMPLING` (how t is drawn), `LOSS_WEIGHTING` (the per-token weight).
"""

import zlib
from dataclasses import dataclass

import torch

EPS = 1e-3  # LLaDA / MDLM: p_mask = (1 - eps) t + eps, so no sequence is left entirely clean

# ---------------------------------------------------------------------------------------------------------------
# 1. The forward process


def uniform_times(batch: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """t ~ U[0, 1) independently per sequence (LLaDA)."""
    return torch.rand(batch, generator=generator)  # (B,)


def stratified_times(batch: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """One uniform u, then t_i = (u + i) / B in a random order: the batch covers [0, 1) evenly (MDLM's
    low-discrepancy sampler; same expectation, lower variance)."""
    u = torch.rand(1, generator=generator)
    t = (u + torch.arange(batch)) / batch  # (B,)
    return t[torch.randperm(batch, generator=generator)]


TIME_SAMPLING = {"uniform": uniform_times, "stratified": stratified_times}


def mask_probability(t: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """p_mask = (1 - eps) t + eps."""
    return (1 - eps) * t + eps


def elbo_weights(masked: torch.Tensor, p: torch.Tensor, normaliser) -> torch.Tensor:
    """LLaDA's loss: 1 / p_mask per masked token, over the normaliser (batch x length, or batch x answer length).
    Its expectation is the ELBO bound on the NLL per token."""
    return masked.float() / p[:, None] / normaliser  # (B, L)


def uniform_weights(masked: torch.Tensor, p: torch.Tensor, normaliser) -> torch.Tensor:
    """The mean cross-entropy over the batch's masked tokens (no 1/p): not the ELBO, but a lower-variance gradient
    (dLLM's "uniform" loss weight); trains faster at small scale. Evaluate with the ELBO all the same."""
    return masked.float() / masked.sum().clamp(min=1)  # (B, L)


LOSS_WEIGHTING = {"elbo": elbo_weights, "uniform": uniform_weights}


def forward_process(x0, p, mask_token_id: int, noisable=None, generator=None):
    """Mask each token of `x0` `(B, L)` independently with probability `p` `(B,)`, only where `noisable`.

    Returns `(noisy, masked)`: x_t `(B, L)` and the bool mask of replaced positions `(B, L)`."""
    draws = torch.rand(x0.shape, generator=generator)  # (B, L)
    masked = draws < p[:, None]
    if noisable is not None:
        masked &= noisable
    return torch.where(masked, torch.full_like(x0, mask_token_id), x0), masked


def batch_generator(seed: int, x0: torch.Tensor) -> torch.Generator:
    """A generator seeded by `seed` and a checksum of the batch `x0`. torch's CPU generator keeps only the low 32
    bits of its seed, so both are folded into 32 bits (seed 0 gives the checksum itself)."""
    checksum = zlib.crc32(x0.to(torch.int64).numpy().tobytes())
    return torch.Generator().manual_seed((checksum + seed * 0x9E3779B1) % 2**32)


@dataclass
class MaskedDiffusionCollator:
    """Shared part of the collators: draw t, noise x_0 and build `labels` / `loss_weights`.

    Args:
        mask_token_id: the id written over masked positions.
        eps: floor of the masking probability.
        time_sampling: how t is drawn across the batch, one of `TIME_SAMPLING` (`"stratified"`, `"uniform"`).
        loss_weighting: the per-token weights, one of `LOSS_WEIGHTING` (`"elbo"`: LLaDA's 1/p, the default;
            `"uniform"`: mean CE over masked tokens).
        generator: a `torch.Generator` for the noise of every batch, in call order.
        seed: with no `generator`, each batch's noise comes from a generator seeded by `seed` and a checksum of the
            batch's tokens. A batch's noise then does not depend on what ran before it, so a resumed run (which
            skips the batches already seen) and dataloader workers draw exactly what an uninterrupted run draws.
            `train()` passes its `seed`. With neither, torch's global RNG is used.
        shift_logits: the model's `config.shift_logits`: position 0, which no output of a shifted model predicts, is
            then never masked (and not counted in the normaliser).
    """

    mask_token_id: int
    eps: float = EPS
    time_sampling: str = "stratified"
    loss_weighting: str = "elbo"
    generator: torch.Generator | None = None
    seed: int | None = None
    shift_logits: bool = False

    def __post_init__(self):
        if not isinstance(self.mask_token_id, int) or isinstance(self.mask_token_id, bool) or self.mask_token_id < 0:
            raise ValueError(f"`mask_token_id` must be a non-negative integer, got {self.mask_token_id!r}.")
        if self.time_sampling not in TIME_SAMPLING:
            raise ValueError(f"Unknown `time_sampling` {self.time_sampling!r}; allowed: {sorted(TIME_SAMPLING)}.")
        if self.loss_weighting not in LOSS_WEIGHTING:
            raise ValueError(f"Unknown `loss_weighting` {self.loss_weighting!r}; allowed: {sorted(LOSS_WEIGHTING)}.")
        if not 0 < self.eps < 1:
            raise ValueError(f"`eps` must lie in (0, 1), got {self.eps!r}.")

    def batch_generator(self, x0: torch.Tensor) -> torch.Generator | None:
        """The generator for the batch `x0` (see `seed`)."""
        if self.generator is not None or self.seed is None:
            return self.generator
        return batch_generator(self.seed, x0)

    def corrupt(self, x0: torch.Tensor, noisable: torch.Tensor, normaliser: torch.Tensor | float,
                generator: torch.Generator | None = None) -> dict:
        """Apply the forward process to `x0` `(B, L)`; `normaliser` is a scalar or `(B, 1)`."""
        generator = generator if generator is not None else self.batch_generator(x0)
        t = TIME_SAMPLING[self.time_sampling](x0.shape[0], generator)  # (B,)
        p = mask_probability(t, self.eps)  # (B,)
        noisy, masked = forward_process(x0, p, self.mask_token_id, noisable, generator)
        labels = torch.where(masked, x0, torch.full_like(x0, -100))  # (B, L)
        loss_weights = LOSS_WEIGHTING[self.loss_weighting](masked, p, normaliser)  # (B, L)
        return {"input_ids": noisy, "labels": labels, "loss_weights": loss_weights}


@dataclass
class PretrainCollator(MaskedDiffusionCollator):
    """Pretraining batches: features are `{"input_ids": [L ids]}` of equal length (packed text).

    The loss is `sum_masked CE / p` divided by batch x length, all positions counted (LLaDA). With probability
    `random_length_prob` the whole batch is cut to a length drawn uniformly from [1, L] (LLaDA uses 0.01), so
    the model also sees short sequences."""

    random_length_prob: float = 0.0

    def __call__(self, features: list[dict]) -> dict:
        x0 = torch.tensor([f["input_ids"] for f in features], dtype=torch.long)  # (B, L)
        generator = self.batch_generator(x0)
        if self.random_length_prob and torch.rand(1, generator=generator).item() < self.random_length_prob:
            x0 = x0[:, : int(torch.randint(1, x0.shape[1] + 1, (1,), generator=generator))]
        batch, length = x0.shape
        noisable = torch.ones_like(x0, dtype=torch.bool)  # (B, L)
        noisable[:, : int(self.shift_logits)] = False  # a shifted model never predicts position 0
        return self.corrupt(x0, noisable, batch * max(length - int(self.shift_logits), 1), generator)


@dataclass
class SFTCollator(MaskedDiffusionCollator):
    """SFT batches: features are `{"input_ids": prompt + answer + EOS, "prompt_length": int}`.

    Rows are padded to the longest with EOS, and the padding is part of the answer (visible, trained: the model
    learns to stop), as in LLaDA. The prompt is never masked. Each row's loss is normalised by its answer length
    (padding included) and the batch by its size: `sum_masked CE / p / answer_length / B`."""

    eos_token_id: int | None = None

    def __post_init__(self):
        super().__post_init__()
        if not isinstance(self.eos_token_id, int) or self.eos_token_id < 0:
            raise ValueError(
                f"`eos_token_id` must be a non-negative integer (answers are padded with EOS), got {self.eos_token_id!r}."
            )

    def __call__(self, features: list[dict]) -> dict:
        length = max(len(f["input_ids"]) for f in features)
        x0 = torch.full((len(features), length), self.eos_token_id, dtype=torch.long)  # (B, L)
        for row, f in enumerate(features):
            x0[row, : len(f["input_ids"])] = torch.tensor(f["input_ids"], dtype=torch.long)
        prompt_length = torch.tensor([f["prompt_length"] for f in features]).clamp(min=int(self.shift_logits))  # (B,)
        noisable = torch.arange(length)[None, :] >= prompt_length[:, None]  # (B, L)
        answer_length = (length - prompt_length).clamp(min=1)[:, None].float()  # (B, 1)
        return self.corrupt(x0, noisable, answer_length * len(features))


@dataclass
class CausalCollator:
    """Autoregressive batches for the same model (no diffusion): clean `input_ids`, a causal 4-D `attention_mask`
    `(B, 1, L, L)`, `labels` = the next token at every position and uniform `loss_weights`, so the model's loss is
    the mean next-token cross-entropy. For padded documents (features with `answer_length`, from `pad_documents`) a
    row's labels stop at its first EOS. Used for an autoregressive twin of the same architecture (a baseline) and
    for the AR stage of AR-to-diffusion adaptation (as Dream / DiffuLLaMA start from AR models).

    `labels` are in canvas columns, like the diffusion collators': for an unshifted model (output i predicts column
    i) the target of output i is token i + 1, written at column i (-100 at the last); for a model with
    `shift_logits` (output i already predicts column i + 1) the labels are the tokens themselves, -100 at column 0."""

    shift_logits: bool = False

    def __call__(self, features: list[dict]) -> dict:
        x = torch.tensor([f["input_ids"] for f in features], dtype=torch.long)  # (B, L)
        batch, length = x.shape
        labels = torch.full_like(x, -100)
        if self.shift_logits:
            labels[:, 1:] = x[:, 1:]  # (B, L): column j, scored by output j - 1
        else:
            labels[:, :-1] = x[:, 1:]  # (B, L): the next token, at the column of the output that predicts it
        if "answer_length" in features[0]:  # padded documents: predict up to the first EOS, not the padding
            valid = torch.tensor([f["prompt_length"] + f["answer_length"] for f in features])  # (B,)
            labels[torch.arange(length)[None, :] >= (valid - 1 + int(self.shift_logits))[:, None]] = -100
        causal = torch.ones(length, length, dtype=torch.bool).tril()  # (L, L), True = attend
        weights = (labels != -100).float() / (labels != -100).sum().clamp(min=1)  # (B, L)
        return {"input_ids": x, "attention_mask": causal.expand(batch, 1, length, length).contiguous(),
                "labels": labels, "loss_weights": weights}
