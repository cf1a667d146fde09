"""One denoising step of diffusion `generate()`, and the plan of a run (a Hub file, shipped with every checkpoint).

`GenerationPlan` is the layout of a run (region, blocks, steps, threshold, early stop), computed once and the only
place its lengths are checked; `Denoiser.step` is one step of the algorithm in `IlladaGenerationMixin.generate`
(its comments 3.b.i-iv are the numbers of that docstring); `Reporter` is what the caller sees of a run (3.b.v:
history, streamer, `on_step` with the `DenoisingStep` that `step_report` builds); `block_inputs` and
`fill_after_end` are the block's attention and positions (3) and the early-stop fill (3.c).

Differs from transformers' `GenerationMixin`, which appends one token per step to a growing sequence: here the canvas
has its final length from the start (or grows a block at a time with `variable_length`), and a step reveals any
number of its masked positions, chosen by the remasking policy.
"""

from dataclasses import dataclass

import torch

from .generation_config import IlladaGenerationConfig, layout
from .remasking import REMASKING, choose_reveals
from .schedules import SCHEDULES
from .shaping import ShapingContext, shape_logits


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
    def max_block_steps(self) -> int:
        """Steps a block may take: its length with a threshold (at least one reveal per step), else its share."""
        return self.block_length if self.threshold is not None else self.steps_per_block

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
        live = eligible.any(0)  # (Lb,) columns still masked in some row: the only ones the LM head projects
        columns = None if bool(live.all()) else live.nonzero().squeeze(-1)
        logits = self.cache.logits(guided_x, guided_attention, guided_positions, block_start, block_end, block_step,
                                   columns)
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


def block_inputs(x: torch.Tensor, attention: torch.Tensor, block_start: int, block_end: int):
    """`(padding, positions, in_block)` for a block of the canvas `x` `(B, L)` whose prompt has the padding mask
    `attention` `(B, P)`: the canvas' padding mask (None when nothing is padded), positions counted over real tokens
    (a padded row sees its own positions) `(B, L)`, and the block's real columns `(B, Lb)`."""
    batch, prompt_length = attention.shape
    canvas = torch.cat([attention, attention.new_ones(batch, x.shape[1] - prompt_length)], dim=1)  # (B, L)
    positions = (canvas.cumsum(-1) - 1).clamp(min=0)  # (B, L)
    padding = None if bool(canvas.all()) else canvas
    return padding, positions, canvas[:, block_start:block_end].bool()


def fill_after_end(x: torch.Tensor, finished: torch.Tensor, prompt_length: int, end_ids: list, eos_id: int,
                   mask_id: int) -> None:
    """3.c with early stop: in each finished row, everything after its first end token, and every mask, becomes EOS
    (changed in place). A block can hold text after its end token, revealed earlier by confidence: it is not the
    answer."""
    if not bool(finished.any()):
        return
    generated = x[:, prompt_length:]  # (B, G)
    is_end = torch.isin(generated, torch.tensor(end_ids, device=x.device))  # (B, G)
    after_end = (is_end.cumsum(-1) - is_end.long()) > 0  # (B, G)
    x[:, prompt_length:] = torch.where(finished[:, None] & (after_end | (generated == mask_id)), eos_id, generated)


@dataclass
class Reporter:
    """What the caller sees of a run: the streamer, the canvas history and `on_step`; it counts steps and reveals."""

    prompt_length: int
    mask_id: int
    streamer: object = None
    on_step: object = None  # Callable[[DenoisingStep], bool | None]
    history: list | None = None
    steps: int = 0
    revealed: int = 0  # tokens revealed by denoising (not by the EOS fill), summed over rows
    stopped: bool = False  # `on_step` asked to stop

    def start(self, prompt: torch.Tensor) -> None:
        if self.streamer is not None:
            self.streamer.put(prompt.cpu())

    def step(self, result: StepResult, x: torch.Tensor, block: int, block_start: int, block_end: int) -> bool:
        """3.b.v. after a step: history, the streamer's draft, `on_step`; True when `on_step` asked to stop."""
        self.revealed += int(result.revealed.sum())
        if self.history is not None:
            self.history.append(x.clone())
        if self.streamer is not None and hasattr(self.streamer, "put_draft"):
            self.streamer.put_draft(value=x[:, self.prompt_length:].cpu())
        if self.on_step is not None:
            report = step_report(result, x, self.steps, block, block_start, block_end, self.prompt_length, self.mask_id)
            self.stopped = self.on_step(report) is True
        self.steps += 1
        return self.stopped

    def commit(self, block_tokens: torch.Tensor) -> None:
        if self.streamer is not None:
            self.streamer.put(block_tokens.cpu())

    def end(self) -> None:
        if self.streamer is not None:
            self.streamer.end()


__all__ = ["DenoisingStep", "GenerationPlan", "StepResult", "Denoiser", "Reporter", "step_report", "sample_candidates",
           "block_inputs", "fill_after_end"]
