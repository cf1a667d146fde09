"""Diffusion generation for iLLaDA / LLaDA / Dream: the replacement for transformers' `GenerationMixin`.

`IlladaGenerationMixin.generate()` runs the published LLaDA sampler (block-wise low-confidence remasking, float64
Gumbel-max sampling, unsupervised CFG) with batching, variable length, infilling, streamers and a per-step callback.
Its knobs live in `generation_config.IlladaGenerationConfig`; the layout of a run (region, blocks, steps, threshold,
early stop) is computed once, in `GenerationPlan`; one denoising step is `Denoiser.step`; what `on_step` receives is
built by `step_report`. The policies it composes live in their own files and are looked up by name:
`schedules.SCHEDULES`, `remasking.REMASKING`, `guidance.GUIDANCE`, `caching.CACHES`, `shaping.SHAPING`.

Notation (code -> LLaDA paper): canvas `x` -> x_t, the partially masked sequence; `x0` -> a sample of
p_theta(x_0 | x_t); `confidence` -> the score remasking ranks; `counts` -> tokens revealed per step; `holes` ->
mask tokens given in the prompt (infilling); `attention` -> the padding mask (1 = real token).
"""

from dataclasses import dataclass

import torch

from transformers.utils import ModelOutput, logging

from .caching import CACHES
from .diffusion import logit_shift
from .generation_config import (ALIASES, end_token_ids, generation_defaults, layout, resolve_aliases,
                                special_token_id, special_token_ids)
from .generation_config import IlladaGenerationConfig  # noqa: F401  (re-exported: its historical home)
from .guidance import guidance_for
from .remasking import REMASKING, choose_reveals
from .schedules import SCHEDULES
from .shaping import ShapingContext, shape_logits

logger = logging.get_logger(__name__)


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


@dataclass(frozen=True)
class GenerationPlan:
    """The layout of one `generate()` run, computed once from the config and the prompt (`make`): what is denoised
    and in which blocks. Its checks (with `generation_config.layout`) are the only ones on lengths and divisibility.

    Attributes:
        prompt_length: columns of the prompt (left padding included).
        new_tokens: mask tokens appended after the prompt (0: only the prompt's holes are filled).
        region_start: first column denoised: the prompt's end, or its first hole when infilling.
        block_length, num_blocks, steps_per_block: the semi-autoregressive blocks over the region.
        threshold: parallel decoding's confidence threshold, or None (the schedule decides the counts).
        early_stop: rows that wrote an end token get EOS for the rest, and the run stops when all have.
        variable_length: blocks of masks are appended one at a time.
    """

    prompt_length: int
    new_tokens: int
    region_start: int
    block_length: int
    num_blocks: int
    steps_per_block: int
    threshold: float | None
    early_stop: bool
    variable_length: bool

    @classmethod
    def make(cls, config: IlladaGenerationConfig, prompt_length: int, infill: bool, context: int, end_ids: list,
             explicit: set, holes_start: int | None = None) -> "GenerationPlan":
        """The plan for `config` on a prompt of `prompt_length` columns (`infill`: it holds holes, the first at
        column `holes_start`) in a model of `context` positions. `explicit` names the knobs the caller passed."""
        new_tokens = config.max_new_tokens
        if "max_new_tokens" not in explicit and config.max_length is not None:
            new_tokens = config.max_length - prompt_length
            if new_tokens < 0:
                raise ValueError(f"`max_length` ({config.max_length}) is shorter than the prompt ({prompt_length}).")
        if new_tokens == 0 and not infill:
            raise ValueError("`max_new_tokens` is 0 and the input holds no mask token: there is nothing to generate.")
        if config.variable_length and infill:
            raise ValueError("`variable_length` generation appends blocks; it cannot be combined with infilling.")
        if config.suffix_window is not None and infill:
            raise ValueError("`suffix_window` hides the canvas after the block; it cannot be combined with infilling "
                             "(the text after the holes must stay visible): set `suffix_window=None`.")
        total = prompt_length + new_tokens
        if total > context:
            raise ValueError(f"Prompt ({prompt_length}) plus `max_new_tokens` ({new_tokens}) = {total} exceeds the "
                             f"context (`max_position_embeddings` = {context}).")
        region_start = holes_start if infill else prompt_length
        region = total - region_start
        block = config.block_length or region
        if infill and new_tokens == 0 and "block_length" not in explicit:
            block = region  # pure infilling: one block over the holes, whatever the model's default
        what = "the generated region" + (" from the first mask in the prompt" if infill else "")
        block, blocks, steps_per_block = layout(region, block, config.steps, config.effective_threshold, what)
        return cls(prompt_length, new_tokens, region_start, block, blocks, steps_per_block,
                   config.effective_threshold, config.eos_early_stop and not infill and bool(end_ids),
                   config.variable_length)

    def block(self, index: int) -> tuple[int, int]:
        """Columns `[start, end)` of block `index`."""
        start = self.region_start + index * self.block_length
        return start, start + self.block_length

    @property
    def first_canvas_masks(self) -> int:
        """Masks appended to the prompt before the first block: all of them, or one block with variable length."""
        return self.block_length if self.variable_length else self.new_tokens


@dataclass(frozen=True)
class StepResult:
    """One denoising step's outcome over the block: candidates `x0`, their `confidence`, which were `revealed`
    `(B, Lb)` each, and the shaped `logits` `(B, Lb, V)`."""

    x0: torch.Tensor
    confidence: torch.Tensor
    revealed: torch.Tensor
    logits: torch.Tensor


@dataclass
class Denoiser:
    """The policies of one run, looked up once, and the step they make together (`step`)."""

    plan: GenerationPlan
    config: IlladaGenerationConfig
    mask_id: int
    eos_ids: list
    end_ids: list
    guidance: object
    cache: object
    generator: torch.Generator | None = None

    def __post_init__(self):
        self.remasking = REMASKING[self.config.remasking]
        self.schedule = SCHEDULES[self.config.schedule]
        self.end_tensor = torch.tensor(self.end_ids) if self.end_ids else None

    def step(self, x, attention, positions, block_start, block_end, eligible, counts, block_step) -> StepResult:
        """One denoising step over the block `[block_start, block_end)` of the canvas `x` `(B, L)` (changed in
        place): `eligible` `(B, Lb)` its still-masked positions, `counts` `(B,)` how many each row reveals."""
        config, batch = self.config, x.shape[0]
        # 3.b.i. forward (CFG doubles the batch)
        guided_x, guided_attention = self.guidance.batch(x, attention)
        guided_positions = positions.repeat(guided_x.shape[0] // batch, 1)
        logits = self.cache.logits(guided_x, guided_attention, guided_positions, block_start, block_end, block_step)
        logits = self.guidance.combine(logits)  # (B, Lb, V)
        # 3.b.ii. shape (SHAPING) and sample candidates
        context = ShapingContext(x, eligible, block_start, self.plan.prompt_length, self.plan.new_tokens,
                                 tuple(self.eos_ids), self.mask_id, config)
        logits = shape_logits(logits, context)
        x0 = sample_candidates(logits, config.temperature, config.top_k, config.top_p, self.generator,
                               self.mask_id)  # (B, Lb)
        # 3.b.iii. score; EOS/EOT ranked last if asked
        confidence = self.remasking(logits, x0, self.generator).float()  # (B, Lb)
        if config.confidence_eos_eot_inf and self.end_tensor is not None:
            is_end = torch.isin(x0, self.end_tensor.to(x0.device))
            confidence = confidence.masked_fill(is_end, torch.finfo(confidence.dtype).min)
        # 3.b.iv. reveal
        revealed = choose_reveals(confidence, eligible, counts, self.plan.threshold)  # (B, Lb)
        x[:, block_start:block_end] = torch.where(revealed, x0, x[:, block_start:block_end])
        return StepResult(x0, confidence, revealed, logits)


def step_report(result: StepResult, x, index: int, block: int, block_start: int, block_end: int, prompt_length: int,
                mask_id: int) -> "DenoisingStep":
    """The `DenoisingStep` `on_step` receives: copies of the canvas and of this step's reveals, confidences and
    probabilities, over the whole canvas (NaN where nothing was revealed)."""
    revealed = torch.zeros_like(x, dtype=torch.bool)  # (B, L)
    revealed[:, block_start:block_end] = result.revealed
    confidence = torch.full(x.shape, float("nan"), device=x.device)  # (B, L)
    confidence[:, block_start:block_end] = result.confidence.masked_fill(~result.revealed, float("nan"))
    chosen = torch.gather(result.logits.float().softmax(-1), -1, result.x0[..., None]).squeeze(-1)  # (B, Lb)
    probability = torch.full(x.shape, float("nan"), device=x.device)  # (B, L)
    probability[:, block_start:block_end] = chosen.masked_fill(~result.revealed, float("nan"))
    return DenoisingStep(step=index, block=block, block_start=block_start, block_end=block_end,
                         prompt_length=prompt_length, tokens=x.clone(), revealed=revealed, confidence=confidence,
                         probability=probability, mask_token_id=mask_id)


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
    ) -> "torch.LongTensor | IlladaGenerationOutput":
        """
        Generate by iterative unmasking. The algorithm (numbers reappear as comments in the body):

        ```
        1. Resolve the generation config (model defaults < `generation_config` < kwargs) and validate it.
        2. Plan the run (`GenerationPlan`) and lay out the canvas: prompt, then `max_new_tokens` mask tokens (one
           block at a time with `variable_length`); mask tokens already in the prompt are filled in place.
        3. For each block, left to right:
            a. Spread the block's masks over its steps with the schedule.
            b. For each step (a step whose schedule reveals nothing in any row is skipped: no forward), `Denoiser.step`:
                i.   Forward the canvas (conditional and, with CFG, unconditional) for the block's logits.
                ii.  Shape logits (`shaping.SHAPING`: end-of-thinking boost, repetition penalty, EOS ban), sample
                     candidates x0 (Gumbel-max in float64).
                iii. Score candidates with the remasking strategy; rank EOS/EOT last if asked.
                iv.  Reveal the best `counts[step]` masked positions of the block (or all above `threshold`).
                v.   Report: history, streamer draft, `on_step(DenoisingStep)` (`step_report`).
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
        config = self._run_config(generation_config, kwargs)
        kwargs = resolve_aliases(kwargs)
        mask_id = special_token_id(self, "mask_token_id", config.mask_token_id)
        if mask_id is None:
            raise ValueError(
                "No mask token id: set `mask_token_id` in the generation config, the model config, or pass "
                "`mask_token_id=` (iLLaDA uses 5; LLaDA checkpoints declare theirs in config.json)."
            )
        eos_ids = special_token_ids(self, "eos_token_id", config.eos_token_id)
        end_ids = end_token_ids(self, config.eos_token_id, config.eot_token_id)  # eos_ids, then the EOT
        self._check_ids(config, mask_id, end_ids, tokenizer)

        # 2. Plan the run and lay out the canvas
        prompt, attention = self._prompt(inputs, attention_mask)  # (B, P) each
        batch, prompt_len = prompt.shape
        holes = (prompt == mask_id) & attention.bool()  # infilling targets, (B, P)
        infill = bool(holes.any())
        if logit_shift(self.config):
            _check_shifted_prompt(attention, holes)
        try:
            plan = GenerationPlan.make(config, prompt_len, infill, self.config.max_position_embeddings, end_ids,
                                       set(kwargs), int(holes.any(0).nonzero()[0]) if infill else None)
        except ValueError as error:
            raise ValueError(self._explain(error, generation_config, kwargs)) from None
        prompt_index = torch.cat(  # conditioning positions, (B, L): what CFG hides
            [~holes, torch.zeros(batch, plan.new_tokens, dtype=torch.bool, device=prompt.device)], dim=1)
        denoiser = Denoiser(plan, config, mask_id, eos_ids, end_ids, guidance_for(config.cfg_scale, mask_id, prompt_index),
                            CACHES[config.cache](self, config=config), generator)
        x = torch.cat([prompt, prompt.new_full((batch, plan.first_canvas_masks), mask_id)], dim=1)  # (B, P + n)
        finished = torch.zeros(batch, dtype=torch.bool, device=x.device)  # (B,)
        history = [] if config.output_history else None
        step_index, revealed_total, stopped = 0, 0, False  # revealed: by denoising (not EOS fill), over rows
        if streamer is not None:
            streamer.put(prompt.cpu())

        # 3. Blocks, left to right
        for block in range(plan.num_blocks):
            block_start, block_end = plan.block(block)
            if x.shape[1] < block_end:  # variable length: append the next block of masks only now
                fill = torch.where(finished, eos_ids[0] if eos_ids else mask_id, mask_id)[:, None]  # (B, 1)
                x = torch.cat([x, fill.expand(batch, block_end - x.shape[1])], dim=1)
            canvas_attention = torch.cat([attention, attention.new_ones(batch, x.shape[1] - prompt_len)], dim=1)  # (B, L)
            positions = (canvas_attention.cumsum(-1) - 1).clamp(min=0)  # (B, L): padded rows see their own positions
            padding = None if bool(canvas_attention.all()) else canvas_attention
            in_block = canvas_attention[:, block_start:block_end].bool()  # (B, Lb)

            # 3.a. the schedule of this block
            counts = denoiser.schedule(((x[:, block_start:block_end] == mask_id) & in_block).sum(-1),
                                       plan.steps_per_block)  # (B, steps_per_block)
            for block_step in range(plan.block_length if plan.threshold is not None else plan.steps_per_block):
                eligible = (x[:, block_start:block_end] == mask_id) & in_block  # (B, Lb)
                if not eligible.any():
                    break
                step_counts = counts[:, min(block_step, plan.steps_per_block - 1)]  # (B,)
                if plan.threshold is None and not bool(step_counts.any()):  # reveals nothing: no forward
                    continue
                # 3.b. one denoising step (i-iv in `Denoiser.step`)
                result = denoiser.step(x, padding, positions, block_start, block_end, eligible, step_counts, block_step)
                revealed_total += int(result.revealed.sum())
                # 3.b.v. report
                if history is not None:
                    history.append(x.clone())
                if streamer is not None and hasattr(streamer, "put_draft"):
                    streamer.put_draft(value=x[:, prompt_len:].cpu())
                if on_step is not None:
                    report = step_report(result, x, step_index, block, block_start, block_end, prompt_len, mask_id)
                    stopped = on_step(report) is True
                step_index += 1
                if stopped:
                    break
            if stopped:  # the caller's on_step asked to stop: return the canvas as it is
                break

            # 3.c. commit
            if streamer is not None:
                streamer.put(x[:, block_start:block_end].cpu())
            if plan.early_stop or plan.variable_length:
                finished |= self._rows_finished(x[:, prompt_len:block_end], end_ids, config.stop_strings, tokenizer)
                if plan.early_stop and bool(finished.any()):  # finished rows: all after their first end token is EOS
                    generated = x[:, prompt_len:]  # (B, L): a block can hold text after its end token (revealed
                    is_end = torch.isin(generated, torch.tensor(end_ids, device=x.device))  # earlier, by confidence)
                    after_end = (is_end.cumsum(-1) - is_end.long()) > 0  # (B, L)
                    x[:, prompt_len:] = torch.where(finished[:, None] & (after_end | (generated == mask_id)),
                                                    eos_ids[0], generated)
                # 3.d. stop
                if bool(finished.all()):
                    break

        if streamer is not None:
            streamer.end()

        # 4. Return
        if not config.return_dict_in_generate:
            return x
        forwards = denoiser.cache.forward_passes
        return IlladaGenerationOutput(
            sequences=x, num_forward_passes=forwards, num_positions_processed=denoiser.cache.positions_processed,
            tokens_per_forward=revealed_total / batch / max(forwards, 1),
            history=tuple(history) if history is not None else None,
        )

    def _run_config(self, generation_config, kwargs) -> IlladaGenerationConfig:
        """The model's defaults < `generation_config` < `kwargs`, validated. An error names each knob as the caller
        passed it (an alias too), and says so when the offending value came from the model's saved config."""
        base = generation_config if generation_config is not None else self.generation_config
        if not isinstance(base, IlladaGenerationConfig):
            base = IlladaGenerationConfig(**{k: v for k, v in base.to_dict().items() if k in generation_defaults()})
        try:
            return base.merged(**kwargs)
        except ValueError as error:
            raise ValueError(self._explain(error, generation_config, kwargs)) from None

    def _explain(self, error: ValueError, generation_config, kwargs) -> str:
        """An error's message with each knob named as the caller passed it (an alias too), and, when the offending
        value came from the model's saved generation config, saying so."""
        message = str(error)
        for alias, name in ALIASES.items():
            if alias in kwargs:
                message = message.replace(f"`{name}`", f"`{alias}` (`{name}`)")
        if generation_config is None and isinstance(self.generation_config, IlladaGenerationConfig):
            given = set(resolve_aliases({k: None for k in kwargs}))
            saved = [k for k in generation_defaults() if getattr(self.generation_config, k) != generation_defaults()[k]
                     and k not in given and f"`{k}`" in message]
            if saved:
                message += (f" (`{saved[0]}` = {getattr(self.generation_config, saved[0])!r} comes from the model's "
                            f"saved generation config: pass `{saved[0]}=` to override it)")
        return message

    def _prompt(self, inputs, attention_mask) -> tuple[torch.Tensor, torch.Tensor]:
        """`(prompt, attention)` on the model's device, checked: integer ids in the vocabulary, a 0/1 mask."""
        if inputs is None:
            raise ValueError("`generate` needs `inputs` (the prompt ids, shape (batch, length)).")
        if not isinstance(inputs, torch.Tensor):
            raise ValueError(f"`inputs` must be a tensor of token ids, got {type(inputs).__name__}: pass "
                             "`torch.tensor([ids])` (or the tokenizer's `return_tensors='pt'`).")
        if inputs.is_floating_point() or inputs.is_complex() or inputs.dtype == torch.bool:
            raise ValueError(f"`inputs` must hold integer token ids, got a {inputs.dtype} tensor.")
        if inputs.dim() == 1:
            inputs = inputs[None]
        if inputs.dim() != 2:
            raise ValueError(f"`inputs` must have shape (batch, length), got {tuple(inputs.shape)}.")
        vocab = self.config.vocab_size
        if inputs.numel() and (int(inputs.min()) < 0 or int(inputs.max()) >= vocab):
            raise ValueError(f"`inputs` holds ids outside the vocabulary [0, {vocab}): min {int(inputs.min())}, "
                             f"max {int(inputs.max())}.")
        device = self.device if hasattr(self, "device") else inputs.device
        prompt = inputs.to(device).long()
        if attention_mask is None:
            return prompt, torch.ones_like(prompt)
        if tuple(attention_mask.shape) != tuple(prompt.shape):
            raise ValueError(f"`attention_mask` must have the prompt's shape {tuple(prompt.shape)}, "
                             f"got {tuple(attention_mask.shape)}.")
        if not bool(((attention_mask == 0) | (attention_mask == 1)).all()):
            raise ValueError("`attention_mask` must hold 0 (padding) and 1 (token) only; got other values.")
        return prompt, attention_mask.to(device).long()

    def _check_ids(self, config, mask_id: int, end_ids: list, tokenizer) -> None:
        vocab = self.config.vocab_size
        for name, ids in (("mask_token_id", [mask_id]), ("eos_token_id / eot_token_id", end_ids),
                          ("end_think_token_ids", config.end_think_token_ids or [])):
            bad = [i for i in ids if not 0 <= i < vocab]
            if bad:
                raise ValueError(f"`{name}` {bad} must lie in [0, vocab_size={vocab}).")
        if config.stop_strings and tokenizer is None:
            raise ValueError("`stop_strings` needs the tokenizer: pass `tokenizer=` to `generate`.")

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
            knobs = {k: v for k, v in generation_config.to_dict().items() if k in generation_defaults() or k in ALIASES}
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
        except ValueError as error:  # a file that is there but wrong is an error naming it, never skipped
            where = f"{pretrained_model_name_or_path}/{subfolder + '/' if subfolder else ''}generation_config.json"
            message = str(error)
            raise ValueError(message if "generation_config.json" in message else f"{where}: {message}") from None
        if loaded.mask_token_id is None:
            loaded.mask_token_id = self.config.mask_token_id
        self.generation_config = loaded


__all__ = ["IlladaGenerationConfig", "IlladaGenerationOutput", "IlladaGenerationMixin", "DenoisingStep",
           "GenerationPlan", "Denoiser", "StepResult", "step_report", "sample_candidates"]
