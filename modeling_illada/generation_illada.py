"""Diffusion generation for iLLaDA / LLaDA: the replacement for transformers' `GenerationMixin`.

`IlladaGenerationConfig` owns every decoding knob and validates it; `IlladaGenerationMixin.generate()` runs the
published LLaDA sampler (block-wise low-confidence remasking, float64 Gumbel-max sampling, unsupervised CFG) with
batching, variable length, infilling, streamers and a per-step callback. The policies it composes live in their
own files and are looked up by name: `schedules.SCHEDULES`, `remasking.REMASKING`, `guidance.GUIDANCE`,
`caching.CACHES`.

Notation (code -> LLaDA paper): canvas `x` -> x_t, the partially masked sequence; `x0` -> a sample of
p_theta(x_0 | x_t); `confidence` -> the score remasking ranks; `counts` -> tokens revealed per step.
"""

import copy
from dataclasses import dataclass

import torch

from transformers import GenerationConfig
from transformers.utils import ModelOutput, logging

from .caching import CACHES
from .diffusion import logit_shift
from .guidance import guidance_for
from .remasking import REMASKING, choose_reveals
from .schedules import SCHEDULES


# Names users already know from the reference code and Dream -> ours.
ALIASES = {"gen_length": "max_new_tokens", "mask_id": "mask_token_id", "var": "variable_length"}

PARALLEL_DECODING_THRESHOLD = 0.9  # Fast-dLLM's default confidence threshold, used by `parallel_decoding=True`

_METADATA = ("transformers_version", "_from_model_config", "_commit_hash")

logger = logging.get_logger(__name__)


def _defaults() -> dict:
    """Every knob with its default; `None` for steps/block_length means "one block, one token per step"."""
    return {
        # length
        "max_new_tokens": 128,
        "max_length": None,
        "variable_length": False,
        # diffusion
        "steps": None,
        "block_length": None,
        "schedule": "linear",
        "remasking": "low_confidence",
        "threshold": None,
        "parallel_decoding": False,
        "cfg_scale": 0.0,
        "cache": "none",
        "suffix_window": None,
        # sampling of candidates
        "temperature": 0.0,
        "top_k": None,
        "top_p": None,
        # special tokens
        "mask_token_id": None,
        "eos_token_id": None,
        "eot_token_id": None,
        "pad_token_id": None,
        "bos_token_id": None,
        # stopping and EOS handling
        "eos_early_stop": True,
        "stop_strings": None,
        "logits_eos_inf": False,
        "confidence_eos_eot_inf": False,
        # iLLaDA's end-of-thinking control (off unless a boost and the tokens are given)
        "end_think_token_ids": None,
        "end_think_logit_boost": 0.0,
        "end_think_boost_power": 2.0,
        # outputs
        "return_dict_in_generate": False,
        "output_history": False,
    }


def _as_id_list(value) -> list[int]:
    if value is None:
        return []
    return [int(v) for v in (value if isinstance(value, (list, tuple)) else [value])]


class IlladaGenerationConfig(GenerationConfig):
    r"""
    Every decoding knob of `IlladaGenerationMixin.generate`, validated at construction. LLaDA's names
    (`gen_length`, `mask_id`) and iLLaDA's `var` are accepted as aliases. Knobs of autoregressive decoding
    (`num_beams`, `do_sample`, `repetition_penalty`, ...) are refused rather than silently ignored.

    Args:
        max_new_tokens (`int`, defaults to 128): tokens to generate (`gen_length`). `0` fills only the mask
            tokens already in the input (infilling). Passed alone to `generate`, it keeps the saved tokens per step
            and block length where it can (`resized`).
        max_length (`int`, *optional*): prompt plus new tokens; used only when `max_new_tokens` is not given.
        variable_length (`bool`, defaults to `False`): iLLaDA's variable-length generation (`var`): append one
            block of masks at a time, stop after a block that produced EOS or a stop string.
        steps (`int`, *optional*): total denoising steps, split evenly over the blocks; defaults to
            `max_new_tokens` (one token per step).
        block_length (`int`, *optional*): semi-autoregressive block size; defaults to `max_new_tokens` (a single
            block). Must divide `max_new_tokens`.
        schedule (`str`, defaults to `"linear"`): reveal counts per step, one of `schedules.SCHEDULES`.
        remasking (`str`, defaults to `"low_confidence"`): reveal order, one of `low_confidence`, `random`,
            `margin`, `entropy`.
        threshold (`float`, *optional*): reveal every masked token of the block whose confidence exceeds it (at
            least one per step) instead of following the schedule; a block then takes as many steps as it needs.
        parallel_decoding (`bool`, defaults to `False`): confidence-threshold parallel decoding with
            `threshold` 0.9 (Fast-dLLM's default) unless `threshold` is set.
        cfg_scale (`float`, defaults to 0.0): classifier-free guidance scale `s`: `u + (s + 1)(c - u)`.
        cache (`str`, defaults to `"none"`): how logits are computed each step, one of `caching.CACHES`: `none`
            (exact), `prefix` or `dual` (Fast-dLLM's approximate key/value caches, refreshed once per block).
        suffix_window (`int`, *optional*): the model sees only this many masked positions after the block being
            denoised (DPad / Streaming-dLLM suffix pruning; approximate, fewer positions per forward); `None`, the
            default, keeps the whole canvas as LLaDA does. Not combinable with infilling (text after the holes
            must stay visible).
        temperature (`float`, defaults to 0.0): Gumbel noise scale; 0 is greedy.
        top_k (`int`, *optional*), top_p (`float`, *optional*): candidate filtering before sampling.
        mask_token_id (`int`): the mask token; taken from the model config when unset.
        eos_token_id (`int` or `list[int]`), eot_token_id (`int`, *optional*), pad_token_id, bos_token_id.
        eos_early_stop (`bool`, defaults to `True`): once a row has committed an end token (EOS/EOT), its
            remaining masks are filled with EOS after the current block, and generation stops when every row
            has. Tokens up to each row's first end token are exactly those of a full run.
        stop_strings (`str` or `list[str]`, *optional*): stop after a block whose text contains one (needs
            `tokenizer=` in `generate`).
        logits_eos_inf (`bool`): forbid EOS as a candidate (LLaDA's option).
        confidence_eos_eot_inf (`bool`): rank EOS/EOT candidates last, so they are committed only when nothing
            else is left in the block (LLaDA's option, as intended upstream).
        end_think_token_ids (`list[int]`, *optional*): the tokens that close a reasoning trace, e.g.
            `tokenizer.encode("</think>", add_special_tokens=False)` (iLLaDA Instruct's `end_think_text`).
        end_think_logit_boost (`float`, defaults to 0.0): iLLaDA's end-of-thinking control, so that long reasoning
            closes instead of looping. Until a row's generated tokens contain `end_think_token_ids`, each step adds
            `end_think_logit_boost * progress ** end_think_boost_power` to one logit: at the first still-masked
            position of the block, for the next token of the sequence (the one after the longest prefix of it that
            ends just before that position, else its first token). `progress` = that position's share of the whole
            budget, (column - prompt length + 1) / `max_new_tokens`, clipped to [0, 1]; with `variable_length` too.
            0 turns it off (iLLaDA's default; its reasoning evaluations use 100).
        end_think_boost_power (`float`, defaults to 2.0): how late the boost grows (iLLaDA's default 2; its
            reasoning evaluations use 3, and 1 for HumanEval).
        return_dict_in_generate (`bool`): return an `IlladaGenerationOutput` instead of the sequences.
        output_history (`bool`): keep the canvas after every step in the output.
    """

    def __init__(self, **kwargs):
        # We intentionally do not call GenerationConfig.__init__: most autoregressive knobs mean nothing here.
        for alias, name in ALIASES.items():
            if alias in kwargs:
                value = kwargs.pop(alias)
                if kwargs.get(name) not in (None, value):
                    raise ValueError(f"`{alias}` and `{name}` are the same knob; got two different values.")
                kwargs[name] = value
        for key, default in _defaults().items():
            setattr(self, key, kwargs.pop(key, default))
        self.transformers_version = kwargs.pop("transformers_version", None)
        self._from_model_config = kwargs.pop("_from_model_config", None)
        self._commit_hash = kwargs.pop("_commit_hash", None)
        if kwargs:
            raise ValueError(
                f"Unknown generation parameters {sorted(kwargs)}. IlladaGenerationConfig accepts "
                f"{sorted(_defaults())} (and the aliases {sorted(ALIASES)})."
            )
        self.validate()

    def knobs(self) -> dict:
        return {key: getattr(self, key) for key in _defaults()}

    def validate(self, strict: bool = False, **kwargs):
        """Raise a ValueError naming the parameter and its allowed values for any inconsistent knob."""

        def positive_int(name, value, allow_zero=False):
            if value is None:
                return
            if not isinstance(value, int) or isinstance(value, bool) or value < (0 if allow_zero else 1):
                raise ValueError(f"`{name}` must be a {'non-negative' if allow_zero else 'positive'} integer, got {value!r}.")

        positive_int("max_new_tokens", self.max_new_tokens, allow_zero=True)
        positive_int("max_length", self.max_length)
        positive_int("steps", self.steps)
        positive_int("block_length", self.block_length)
        positive_int("top_k", self.top_k)
        positive_int("suffix_window", self.suffix_window, allow_zero=True)
        if self.remasking not in REMASKING:
            raise ValueError(f"Unknown `remasking` {self.remasking!r}; allowed: {sorted(REMASKING)}.")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"Unknown `schedule` {self.schedule!r}; allowed: {sorted(SCHEDULES)}.")
        if self.cache not in CACHES:
            raise ValueError(f"Unknown `cache` {self.cache!r}; allowed: {sorted(CACHES)}.")
        if not isinstance(self.temperature, (int, float)) or self.temperature < 0:
            raise ValueError(f"`temperature` must be >= 0 (0 = greedy), got {self.temperature!r}.")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise ValueError(f"`top_p` must lie in (0, 1], got {self.top_p!r}.")
        if not isinstance(self.cfg_scale, (int, float)) or self.cfg_scale < 0:
            raise ValueError(f"`cfg_scale` must be >= 0, got {self.cfg_scale!r}.")
        if self.threshold is not None and not 0 < self.threshold <= 1:
            raise ValueError(f"`threshold` must lie in (0, 1] (a probability), got {self.threshold!r}.")
        if not isinstance(self.parallel_decoding, bool):
            raise ValueError(f"`parallel_decoding` must be True or False, got {self.parallel_decoding!r}.")
        if self.mask_token_id is not None and (not isinstance(self.mask_token_id, int) or self.mask_token_id < 0):
            raise ValueError(f"`mask_token_id` must be a non-negative integer, got {self.mask_token_id!r}.")
        if isinstance(self.stop_strings, str):
            self.stop_strings = [self.stop_strings]
        for name in ("end_think_logit_boost", "end_think_boost_power"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
                raise ValueError(f"`{name}` must be a number >= 0, got {value!r}.")
        if isinstance(self.end_think_token_ids, int) and not isinstance(self.end_think_token_ids, bool):
            self.end_think_token_ids = [self.end_think_token_ids]
        ids = self.end_think_token_ids
        if ids is not None and (not isinstance(ids, (list, tuple)) or not ids
                                or not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in ids)):
            raise ValueError(f"`end_think_token_ids` must be a non-empty list of token ids (e.g. "
                             f"`tokenizer.encode('</think>', add_special_tokens=False)`), got {ids!r}.")
        if self.end_think_logit_boost > 0 and not ids:
            raise ValueError("`end_think_logit_boost` is set but `end_think_token_ids` is not: pass the ids of the "
                             "end-of-thinking text, e.g. `tokenizer.encode('</think>', add_special_tokens=False)`.")
        if self.max_new_tokens and self.block_length and self.max_new_tokens % self.block_length:
            raise ValueError(
                f"`block_length` ({self.block_length}) must divide `max_new_tokens` ({self.max_new_tokens}): "
                f"use a multiple of {self.block_length}, or a block length among the divisors of {self.max_new_tokens}."
            )
        if self.max_new_tokens and self.steps and self.threshold is None and not self.parallel_decoding:
            num_blocks = self.max_new_tokens // (self.block_length or self.max_new_tokens)
            if self.steps % num_blocks:
                raise ValueError(
                    f"`steps` ({self.steps}) must be a multiple of the number of blocks ({num_blocks} = "
                    f"max_new_tokens {self.max_new_tokens} / block_length {self.block_length}), so that every "
                    "block gets the same number of steps."
                )

    def update(self, **kwargs):
        """Set known knobs (aliases accepted), re-validate, and return the unused kwargs (transformers' contract)."""
        for alias, name in ALIASES.items():
            if alias in kwargs:
                kwargs[name] = kwargs.pop(alias)
        unused = {}
        for key, value in kwargs.items():
            if key in _defaults():
                setattr(self, key, value)
            else:
                unused[key] = value
        self.validate()
        return unused

    def merged(self, **overrides) -> "IlladaGenerationConfig":
        """A validated copy with `overrides` applied; unknown names raise.

        A `max_new_tokens` override alone keeps the saved schedule's shape, so `generate(ids, max_new_tokens=n)` works
        whatever the saved `steps` and `block_length` (see `resized`); knobs given with it are used as given."""
        knobs = self.knobs()
        for alias, name in ALIASES.items():
            if alias in overrides:
                overrides[name] = overrides.pop(alias)
        knobs.update(overrides)
        if overrides.get("max_new_tokens"):
            knobs.update(self.resized(overrides["max_new_tokens"], keep=set(overrides)))
        return type(self)(**knobs)

    def resized(self, max_new_tokens: int, keep=()) -> dict:
        """`block_length` and `steps` for generating `max_new_tokens` instead of the saved `max_new_tokens` (those
        named in `keep` stay as they are):

        * `block_length`: the saved one when it divides the new length; the whole length when that is shorter than
          a block; otherwise the largest divisor of the new length below the saved block (logged);
        * `steps`: the saved tokens per step (`max_new_tokens / steps`) kept, rounded up to a multiple of the
          number of blocks so that every block gets as many steps; `None` (one token per step) stays `None`.
        """
        changes, block = {}, self.block_length
        if "block_length" not in keep and block and max_new_tokens % block:
            divisor = max(d for d in range(1, block + 1) if max_new_tokens % d == 0)
            changes["block_length"] = max_new_tokens if max_new_tokens < block else divisor
            if max_new_tokens > block:
                logger.warning(f"`block_length` {block} does not divide `max_new_tokens` {max_new_tokens}: using "
                               f"blocks of {divisor}. Pass `block_length` to choose.")
            block = changes["block_length"]
        if "steps" not in keep and self.steps and self.max_new_tokens:
            blocks = max(max_new_tokens // (block or max_new_tokens), 1)  # (a bad block is validate's to report)
            steps = max(round(max_new_tokens * self.steps / self.max_new_tokens), 1)
            changes["steps"] = -(-steps // blocks) * blocks  # up to a multiple of the number of blocks
        return changes

    @classmethod
    def from_dict(cls, config_dict: dict, **kwargs) -> "IlladaGenerationConfig":
        """Load a `generation_config.json`. Keys written for autoregressive decoding (an official checkpoint's
        `do_sample`, `num_beams`, ...) are ignored with a warning; constructing the config directly refuses them."""
        known = set(_defaults()) | set(ALIASES) | set(_METADATA)
        ignored = sorted(k for k in config_dict if k not in known)
        if ignored:
            logger.warning(f"Ignoring generation_config keys that diffusion decoding does not use: {ignored}")
        return super().from_dict({k: v for k, v in config_dict.items() if k in known}, **kwargs)

    @staticmethod
    def _get_default_generation_params() -> dict:
        return _defaults()

    @classmethod
    def from_model_config(cls, model_config) -> "IlladaGenerationConfig":
        """Special token ids from the model config; every other knob at its default."""
        get = model_config.get if isinstance(model_config, dict) else lambda k, d=None: getattr(model_config, k, d)
        config = cls(
            mask_token_id=get("mask_token_id"),
            eos_token_id=get("eos_token_id"),
            pad_token_id=get("pad_token_id"),
            bos_token_id=get("bos_token_id"),
        )
        config._from_model_config = True
        return config

    def get_generation_mode(self, *args, **kwargs):
        raise NotImplementedError("IlladaGenerationConfig describes diffusion decoding; it has no autoregressive mode.")


@dataclass
class IlladaGenerationOutput(ModelOutput):
    """
    Args:
        sequences (`torch.LongTensor` of shape `(batch, prompt + generated)`): prompts followed by the generation.
        num_forward_passes (`int`): model calls made (a CFG step counts one call on a doubled batch).
        num_positions_processed (`int`): query positions fed to the model, summed over calls and rows (CFG's
            unconditional rows included); a cache policy feeds fewer than the whole canvas.
        tokens_per_forward (`float`): generated tokens per model call.
        history (`tuple(torch.LongTensor)`, *optional*): the canvas after every step (`output_history=True`).
    """

    sequences: torch.LongTensor | None = None
    num_forward_passes: int | None = None
    num_positions_processed: int | None = None
    tokens_per_forward: float | None = None
    history: tuple[torch.LongTensor, ...] | None = None


@dataclass(frozen=True)
class DenoisingStep:
    """What `on_step` receives after every denoising step (tensors are copies; the dataclass is frozen).

    Args:
        step: 0-based step index over the whole run.
        block: 0-based index of the block being denoised.
        block_start, block_end: its columns in `tokens`.
        prompt_length: columns before the generated region.
        tokens: `(B, L)` the canvas after this step (mask tokens where still masked).
        revealed: `(B, L)` bool, positions revealed at this step.
        confidence: `(B, L)` float, the remasking score of revealed positions (NaN elsewhere); its scale depends
            on the strategy (a probability for `low_confidence`, noise for `random`, a negative entropy ...).
        probability: `(B, L)` float, the model's softmax probability of each revealed token, in [0, 1] whatever
            the strategy (NaN elsewhere): what a visualiser shades by.
        mask_token_id: the mask token.
    """

    step: int
    block: int
    block_start: int
    block_end: int
    prompt_length: int
    tokens: torch.Tensor
    revealed: torch.Tensor
    confidence: torch.Tensor
    probability: torch.Tensor
    mask_token_id: int


def sample_candidates(
    logits: torch.Tensor, temperature: float, top_k=None, top_p=None, generator=None, banned: int | None = None
) -> torch.Tensor:
    """x0 = argmax(logits + temperature * Gumbel noise) in float64 (LLaDA's `add_gumbel_noise`, in log space).

    With temperature 0 it is the argmax of the raw logits. `top_k` / `top_p` restrict the candidates first.
    `banned` (the mask token) is never a candidate: committing it would leave the position masked.
    """
    if banned is not None:
        logits = logits.clone()
        logits[..., banned] = -torch.inf
    if top_k is not None or top_p is not None:
        logits = logits.clone()
        if top_k is not None and top_k < logits.shape[-1]:
            kth = logits.topk(top_k, dim=-1).values[..., -1:]  # (B, L, 1)
            logits = logits.masked_fill(logits < kth, -torch.inf)
        if top_p is not None and top_p < 1:
            sorted_logits, order = logits.sort(dim=-1, descending=True)
            cumulative = sorted_logits.float().softmax(-1).cumsum(-1)
            drop = cumulative - sorted_logits.float().softmax(-1) >= top_p  # keep the smallest set reaching top_p
            logits = logits.masked_fill(drop.scatter(-1, order, drop), -torch.inf)
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits.to(torch.float64)
    noise = torch.rand(logits.shape, dtype=torch.float64, device=logits.device, generator=generator)
    # exp(l) / (-log u)^T has the argmax of l - T * log(-log u): sampling from softmax(l / T)
    return (logits - temperature * torch.log(-torch.log(noise))).argmax(dim=-1)


def boost_end_think(logits, x, eligible, block_start: int, prompt_length: int, budget: int, token_ids,
                    boost: float, power: float) -> torch.Tensor:
    """iLLaDA's end-of-thinking control (see `IlladaGenerationConfig.end_think_logit_boost`): `logits` `(B, Lb, V)`
    of the block `[block_start, block_start + Lb)` of canvas `x` `(B, L)`, with `eligible` `(B, Lb)` its masked
    positions. Returns the logits with one entry raised in each row that has not yet written `token_ids`."""
    sequence = torch.tensor(token_ids, device=x.device)  # (n,)
    n, batch = len(token_ids), x.shape[0]
    generated = x[:, prompt_length:]  # (B, G)
    written = torch.zeros(batch, dtype=torch.bool, device=x.device)
    if generated.shape[1] >= n:
        written = (generated.unfold(1, n, 1) == sequence).all(-1).any(-1)  # (B,) the sequence already appears
    active = eligible.any(-1) & ~written  # (B,)
    first = eligible.int().argmax(-1)  # (B,) first masked position of the block
    column = block_start + first  # (B,)
    token = sequence[0].expand(batch).clone()  # (B,) the next token of the sequence
    matched = torch.zeros(batch, dtype=torch.bool, device=x.device)
    for k in range(n - 1, 0, -1):  # the longest prefix of the sequence that ends just before the column wins
        before = x.gather(1, (column[:, None] + torch.arange(-k, 0, device=x.device)).clamp(min=0))  # (B, k)
        fits = (column - prompt_length >= k) & (before == sequence[:k]).all(-1) & ~matched
        token = torch.where(fits, sequence[k], token)
        matched |= fits
    progress = ((column - prompt_length + 1).double() / budget).clamp(0, 1)  # (B,)
    rows = active.nonzero().squeeze(-1)
    logits = logits.clone()
    logits[rows, first[rows], token[rows]] += (boost * progress[rows] ** power).to(logits.dtype)
    return logits


def _check_shifted_prompt(attention_mask: torch.Tensor, holes: torch.Tensor) -> None:
    """A shifted model predicts column j from output j - 1, so each row's first real token must be given: a row
    with no prompt token, or whose first token is a hole, has nothing to predict it from."""
    real = attention_mask.bool()  # (B, P)
    if not bool(real.any(-1).all()):
        raise ValueError(
            "This model's logits are shifted (`shift_logits=True`: each token is predicted from the one before it), so "
            "every row needs at least one prompt token (a BOS token will do); got a row with none."
        )
    first = real.long().argmax(-1, keepdim=True)  # (B, 1): column of each row's first real token
    if bool(holes.gather(1, first).any()):
        raise ValueError(
            "This model's logits are shifted (`shift_logits=True`), so a row's first token cannot be a mask to fill: "
            "no output predicts it. Start the input with a real token (e.g. BOS)."
        )


class IlladaGenerationMixin:
    """Diffusion `generate()` for masked diffusion LMs. The class name contains "GenerationMixin" on purpose:
    transformers' `can_generate()` looks for it, which makes `generation_config.json` load into
    `IlladaGenerationConfig`."""

    generation_config_class = IlladaGenerationConfig

    @torch.no_grad()
    def generate(
        self,
        inputs: torch.LongTensor | None = None,
        generation_config: IlladaGenerationConfig | None = None,
        attention_mask: torch.Tensor | None = None,
        streamer=None,
        on_step=None,
        tokenizer=None,
        generator: torch.Generator | None = None,
        **kwargs,
    ) -> torch.LongTensor | IlladaGenerationOutput:
        """
        Generate by iterative unmasking. The algorithm (numbers reappear as comments in the body):

        ```
        1. Resolve the generation config (model defaults < `generation_config` < kwargs) and validate it.
        2. Lay out the canvas: prompt, then `max_new_tokens` mask tokens (one block at a time with
           `variable_length`); mask tokens already in the prompt are filled in place.
        3. For each block, left to right:
            a. Spread the block's masks over its steps with the schedule.
            b. For each step (a step whose schedule reveals nothing in any row is skipped: no forward):
                i.   Forward the canvas (conditional and, with CFG, unconditional) for the block's logits.
                ii.  Shape logits (end-of-thinking boost, EOS ban), sample candidates x0 (Gumbel-max in
                     float64).
                iii. Score candidates with the remasking strategy; rank EOS/EOT last if asked.
                iv.  Reveal the best `counts[step]` masked positions of the block (or all above `threshold`).
                v.   Report: history, streamer draft, `on_step(DenoisingStep)`.
            c. Commit: stream the block; rows that produced an end token or stop string are finished.
            d. Stop when every row is finished.
        4. Return the sequences, or an `IlladaGenerationOutput` with forward counts and history.
        ```

        Args:
            inputs (`torch.LongTensor` of shape `(batch, prompt length)`): prompt ids, left-padded for batches.
            generation_config (`IlladaGenerationConfig`, *optional*): overrides the model's defaults.
            attention_mask (`torch.Tensor` of shape `(batch, prompt length)`, *optional*): 1 for tokens, 0 for
                padding. Each row then generates what it would generate alone.
            streamer (*optional*): gets `put(prompt)`, `put_draft(value=canvas)` after every step (when it has
                `put_draft`), `put(block)` for committed tokens and `end()`; `TextDiffusionStreamer` works.
            on_step (`Callable[[DenoisingStep], bool | None]`, *optional*): called after every step; returning `True`
                stops generation there (the positions not yet revealed stay masked in the result).
            tokenizer (*optional*): needed for `stop_strings`.
            generator (`torch.Generator`, *optional*): source of randomness (temperature > 0, `random` remasking).
            kwargs: any `IlladaGenerationConfig` knob, e.g. `max_new_tokens=64, steps=64, block_length=32`.
        """
        # 1. Resolve the generation config
        if inputs is None:
            inputs = kwargs.pop("input_ids", None)
        if inputs is None:
            raise ValueError("`generate` needs `inputs` (the prompt ids, shape (batch, length)).")
        base = generation_config if generation_config is not None else self.generation_config
        if not isinstance(base, IlladaGenerationConfig):
            base = IlladaGenerationConfig(**{k: v for k, v in base.to_dict().items() if k in _defaults()})
        config = base.merged(**kwargs)
        mask_id = config.mask_token_id if config.mask_token_id is not None else self.config.mask_token_id
        if mask_id is None:
            raise ValueError(
                "No mask token id: set `mask_token_id` in the generation config, the model config, or pass "
                "`mask_token_id=` (iLLaDA uses 5; LLaDA checkpoints declare theirs in config.json)."
            )
        eos_ids = _as_id_list(config.eos_token_id if config.eos_token_id is not None else self.config.eos_token_id)
        end_ids = eos_ids + _as_id_list(config.eot_token_id)
        if config.stop_strings and tokenizer is None:
            raise ValueError("`stop_strings` needs the tokenizer: pass `tokenizer=` to `generate`.")
        if config.end_think_logit_boost > 0 and max(config.end_think_token_ids) >= self.config.vocab_size:
            raise ValueError(f"`end_think_token_ids` {config.end_think_token_ids} must lie in [0, vocab_size="
                             f"{self.config.vocab_size}).")

        # 2. Lay out the canvas
        if inputs.dim() == 1:
            inputs = inputs[None]
        if inputs.dim() != 2:
            raise ValueError(f"`inputs` must have shape (batch, length), got {tuple(inputs.shape)}.")
        device = self.device if hasattr(self, "device") else inputs.device
        prompt = inputs.to(device)
        batch, prompt_len = prompt.shape  # (B, P)
        if attention_mask is None:
            attention_mask = torch.ones_like(prompt)
        elif tuple(attention_mask.shape) != (batch, prompt_len):
            raise ValueError(f"`attention_mask` must have the prompt's shape {(batch, prompt_len)}, got {tuple(attention_mask.shape)}.")
        attention_mask = attention_mask.to(device).long()
        new_tokens = config.max_new_tokens
        if kwargs.get("max_new_tokens") is None and "gen_length" not in kwargs and config.max_length is not None:
            new_tokens = config.max_length - prompt_len
            if new_tokens < 0:
                raise ValueError(f"`max_length` ({config.max_length}) is shorter than the prompt ({prompt_len}).")
        prompt_masks = (prompt == mask_id) & attention_mask.bool()  # infilling targets, (B, P)
        infill = bool(prompt_masks.any())
        if new_tokens == 0 and not infill:
            raise ValueError("`max_new_tokens` is 0 and the input holds no mask token: there is nothing to generate.")
        if config.variable_length and infill:
            raise ValueError("`variable_length` generation appends blocks; it cannot be combined with infilling.")
        if config.suffix_window is not None and infill:
            raise ValueError("`suffix_window` hides the canvas after the block; it cannot be combined with infilling "
                             "(the text after the holes must stay visible): set `suffix_window=None`.")
        total = prompt_len + new_tokens
        if total > self.config.max_position_embeddings:
            raise ValueError(
                f"Prompt ({prompt_len}) plus `max_new_tokens` ({new_tokens}) = {total} exceeds the context "
                f"(`max_position_embeddings` = {self.config.max_position_embeddings})."
            )
        if logit_shift(self.config):
            _check_shifted_prompt(attention_mask, prompt_masks)
        region_start = int(prompt_masks.any(0).nonzero()[0]) if infill else prompt_len
        region = total - region_start
        block_length = config.block_length or (region if infill else new_tokens)
        if infill and new_tokens == 0 and "block_length" not in kwargs:
            block_length = region  # pure infilling: one block over the holes, whatever the model's default
        if region % block_length:
            raise ValueError(
                f"`block_length` ({block_length}) must divide the generated region ({region} tokens"
                f"{' from the first mask in the prompt' if infill else ''})."
            )
        num_blocks = region // block_length
        steps = config.steps or region
        threshold = config.threshold
        if threshold is None and config.parallel_decoding:
            threshold = PARALLEL_DECODING_THRESHOLD
        if threshold is None and steps % num_blocks:
            raise ValueError(f"`steps` ({steps}) must be a multiple of the number of blocks ({num_blocks}).")
        steps_per_block = max(steps // num_blocks, 1)
        early_stop = config.eos_early_stop and not infill and bool(end_ids)

        prompt_index = torch.cat(  # conditioning positions, (B, L): what CFG hides
            [~prompt_masks, torch.zeros(batch, new_tokens, dtype=torch.bool, device=device)], dim=1
        )
        guidance = guidance_for(config.cfg_scale, mask_id, prompt_index)
        remasking = REMASKING[config.remasking]
        schedule = SCHEDULES[config.schedule]
        cache = CACHES[config.cache](self, config=config)
        first_block_len = block_length if config.variable_length else new_tokens
        x = torch.cat([prompt, prompt.new_full((batch, first_block_len), mask_id)], dim=1)  # (B, P + n)
        finished = torch.zeros(batch, dtype=torch.bool, device=device)
        history = [] if config.output_history else None
        step_index = 0
        revealed_total = 0  # tokens committed by denoising (not EOS fill), summed over rows
        stopped = False  # set when on_step returns True
        if streamer is not None:
            streamer.put(prompt.cpu())

        # 3. Blocks, left to right
        for block in range(num_blocks):
            block_start = region_start + block * block_length
            block_end = block_start + block_length
            if x.shape[1] < block_end:  # variable length: append the next block of masks only now
                fill = torch.where(finished, eos_ids[0] if eos_ids else mask_id, mask_id)[:, None]  # (B, 1)
                x = torch.cat([x, fill.expand(batch, block_end - x.shape[1])], dim=1)
            mask = torch.cat([attention_mask, attention_mask.new_ones(batch, x.shape[1] - prompt_len)], dim=1)  # (B, L)
            position_ids = (mask.cumsum(-1) - 1).clamp(min=0)  # (B, L): padded rows see their own positions
            batch_x_mask = None if bool(mask.all()) else mask

            # 3.a. the schedule of this block
            block_masked = (x[:, block_start:block_end] == mask_id) & mask[:, block_start:block_end].bool()  # (B, Lb)
            counts = schedule(block_masked.sum(-1), steps_per_block)  # (B, steps_per_block)
            block_step = 0
            while True:
                eligible = (x[:, block_start:block_end] == mask_id) & mask[:, block_start:block_end].bool()  # (B, Lb)
                if not eligible.any() or (threshold is None and block_step >= steps_per_block):
                    break
                step_counts = counts[:, min(block_step, steps_per_block - 1)]  # (B,)
                if threshold is None and not bool(step_counts.any()):  # reveals nothing: the canvas stays, no forward
                    block_step += 1
                    continue
                # 3.b.i. forward (CFG doubles the batch)
                guided_x, guided_mask = guidance.batch(x, batch_x_mask)
                guided_positions = position_ids.repeat(guided_x.shape[0] // batch, 1)
                logits = cache.logits(guided_x, guided_mask, guided_positions, block_start, block_end, block_step)
                logits = guidance.combine(logits)  # (B, Lb, V)
                # 3.b.ii. shape and sample
                if config.end_think_logit_boost > 0:
                    logits = boost_end_think(logits, x, eligible, block_start, prompt_len, new_tokens,
                                             config.end_think_token_ids, config.end_think_logit_boost,
                                             config.end_think_boost_power)
                if config.logits_eos_inf and eos_ids:
                    logits[..., eos_ids] = -torch.inf
                x0 = sample_candidates(logits, config.temperature, config.top_k, config.top_p, generator, mask_id)  # (B, Lb)
                # 3.b.iii. score
                confidence = remasking(logits, x0, generator).float()  # (B, Lb)
                if config.confidence_eos_eot_inf and end_ids:
                    is_end = torch.isin(x0, torch.tensor(end_ids, device=device))
                    confidence = confidence.masked_fill(is_end, torch.finfo(confidence.dtype).min)
                # 3.b.iv. reveal
                reveal = choose_reveals(confidence, eligible, step_counts, threshold)  # (B, Lb)
                x[:, block_start:block_end] = torch.where(reveal, x0, x[:, block_start:block_end])
                revealed_total += int(reveal.sum())
                # 3.b.v. report
                if history is not None:
                    history.append(x.clone())
                if streamer is not None and hasattr(streamer, "put_draft"):
                    streamer.put_draft(value=x[:, prompt_len:].cpu())
                if on_step is not None:
                    revealed = torch.zeros_like(x, dtype=torch.bool)
                    revealed[:, block_start:block_end] = reveal
                    scores = torch.full(x.shape, float("nan"), device=device)
                    scores[:, block_start:block_end] = confidence.masked_fill(~reveal, float("nan"))
                    probability = torch.full(x.shape, float("nan"), device=device)
                    chosen = torch.gather(logits.float().softmax(-1), -1, x0[..., None]).squeeze(-1)  # (B, Lb)
                    probability[:, block_start:block_end] = chosen.masked_fill(~reveal, float("nan"))
                    stopped = on_step(DenoisingStep(
                        step=step_index, block=block, block_start=block_start, block_end=block_end,
                        prompt_length=prompt_len, tokens=x.clone(), revealed=revealed, confidence=scores,
                        probability=probability, mask_token_id=mask_id,
                    )) is True
                step_index += 1
                block_step += 1
                if stopped:
                    break
            if stopped:  # the caller's on_step asked to stop: return the canvas as it is
                break

            # 3.c. commit
            if streamer is not None:
                streamer.put(x[:, block_start:block_end].cpu())
            newly_done = self._rows_finished(x[:, prompt_len:block_end], end_ids, config.stop_strings, tokenizer)
            if early_stop or config.variable_length:
                finished |= newly_done
                if early_stop and bool(finished.any()):  # finished rows: the rest of the canvas is EOS
                    tail = x[:, block_end:]
                    x[:, block_end:] = torch.where(finished[:, None] & (tail == mask_id), eos_ids[0], tail)
            # 3.d. stop
            if (early_stop or config.variable_length) and bool(finished.all()):
                break

        if streamer is not None:
            streamer.end()

        # 4. Return
        if not config.return_dict_in_generate:
            return x
        forwards = cache.forward_passes
        return IlladaGenerationOutput(
            sequences=x,
            num_forward_passes=forwards,
            num_positions_processed=cache.positions_processed,
            tokens_per_forward=revealed_total / batch / max(forwards, 1),
            history=tuple(history) if history is not None else None,
        )

    @staticmethod
    def _rows_finished(generated: torch.Tensor, end_ids: list[int], stop_strings, tokenizer) -> torch.Tensor:
        """(B,) bool: the row's generated tokens contain an end token, or (with a tokenizer) a stop string."""
        done = torch.zeros(generated.shape[0], dtype=torch.bool, device=generated.device)
        if end_ids:
            done |= torch.isin(generated, torch.tensor(end_ids, device=generated.device)).any(-1)
        if stop_strings:
            for row, ids in enumerate(generated.tolist()):
                text = tokenizer.decode(ids, skip_special_tokens=False)
                done[row] |= any(s in text for s in stop_strings)
        return done

    def adjust_generation_fn(
        self,
        generation_config,
        from_auto_class,
        from_pipeline,
        pretrained_model_name_or_path,
        cache_dir,
        force_download,
        proxies,
        local_files_only,
        token,
        revision,
        subfolder,
        trust_remote_code,
        **kwargs,
    ):
        """Called by `from_pretrained`: load `generation_config.json` into `IlladaGenerationConfig`."""
        if generation_config is not None:
            knobs = {k: v for k, v in generation_config.to_dict().items() if k in _defaults() or k in ALIASES}
            self.generation_config = self.generation_config_class(**knobs)
            return
        if pretrained_model_name_or_path is None:
            return
        try:
            loaded = self.generation_config_class.from_pretrained(
                pretrained_model_name_or_path,
                cache_dir=cache_dir,
                force_download=force_download,
                proxies=proxies,
                local_files_only=local_files_only,
                token=token,
                revision=revision,
                subfolder=subfolder,
                _from_auto=from_auto_class,
                _from_pipeline=from_pipeline,
            )
        except OSError:
            return  # no generation_config.json: keep the defaults derived from the model config
        if loaded.mask_token_id is None:
            loaded.mask_token_id = self.config.mask_token_id
        self.generation_config = loaded


__all__ = ["IlladaGenerationConfig", "IlladaGenerationOutput", "IlladaGenerationMixin", "DenoisingStep"]
