"""Diffusion generation for iLLaDA / LLaDA / Dream: the replacement for transformers' `GenerationMixin`.

`IlladaGenerationMixin.generate()` runs the published LLaDA sampler (block-wise low-confidence remasking, float64
Gumbel-max sampling, unsupervised CFG) with batching, variable length, infilling, streamers and a per-step callback.
Its knobs live in `generation_config.IlladaGenerationConfig`; the layout of a run (region, blocks, steps, threshold,
early stop) is computed once, in `denoising.GenerationPlan`; one denoising step is `denoising.Denoiser.step`; what the
caller sees (history, streamer, `on_step`) goes through `denoising.Reporter`. The policies it composes live in their own files and are looked up by name:
`schedules.SCHEDULES`, `remasking.REMASKING`, `guidance.GUIDANCE`, `caching.CACHES`, `shaping.SHAPING`.

Notation (code -> LLaDA paper): canvas `x` -> x_t, the partially masked sequence; `x0` -> a sample of
p_theta(x_0 | x_t); `confidence` -> the score remasking ranks; `counts` -> tokens revealed per step; `holes` ->
mask tokens given in the prompt (infilling); `attention` -> the padding mask (1 = real token).
"""

from dataclasses import dataclass

import torch

from transformers.utils import ModelOutput, logging

from .caching import CACHES
from .denoising import (Denoiser, DenoisingStep, GenerationPlan, Reporter, block_inputs, fill_after_end,
                        sample_candidates, step_report)
from .diffusion import logit_shift
from .generation_config import (ALIASES, CONTINUATION_ONLY, IlladaGenerationConfig, end_token_ids, generation_defaults,
                                resolve_aliases, special_token_id, special_token_ids)
from .guidance import guidance_for

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
        given, kwargs = kwargs, resolve_aliases(kwargs)  # errors name the knobs as given
        mask_id, eos_ids, end_ids = self._special_ids(config, tokenizer)

        # 2. Plan the run and lay out the canvas
        prompt, attention = self._prompt(inputs, attention_mask)  # (B, P) each
        batch, prompt_len = prompt.shape
        holes = (prompt == mask_id) & attention.bool()  # infilling targets, (B, P)
        if bool(holes.any()):
            config = self._drop_saved_continuation_knobs(config, generation_config, kwargs)
        plan = self._plan(config, generation_config, given, attention, holes, end_ids)
        prompt_index = torch.cat(  # conditioning positions, (B, L): what CFG hides
            [~holes, torch.zeros(batch, plan.new_tokens, dtype=torch.bool, device=prompt.device)], dim=1)
        denoiser = Denoiser(plan, config, mask_id, eos_ids, end_ids, guidance_for(config.cfg_scale, mask_id, prompt_index),
                            CACHES[config.cache](self, config=config), generator)
        reporter = Reporter(prompt_len, mask_id, streamer, on_step, [] if config.output_history else None)
        x = torch.cat([prompt, prompt.new_full((batch, plan.first_canvas_masks), mask_id)], dim=1)  # (B, P + n)
        finished = torch.zeros(batch, dtype=torch.bool, device=x.device)  # (B,)
        reporter.start(prompt)

        # 3. Blocks, left to right
        for block in range(plan.num_blocks):
            block_start, block_end = plan.block(block)
            if x.shape[1] < block_end:  # variable length: append the next block of masks only now
                fill = torch.where(finished, eos_ids[0] if eos_ids else mask_id, mask_id)[:, None]  # (B, 1)
                x = torch.cat([x, fill.expand(batch, block_end - x.shape[1])], dim=1)
            padding, positions, in_block = block_inputs(x, attention, block_start, block_end)  # in_block: (B, Lb)

            # 3.a. the schedule of this block
            counts = denoiser.schedule(((x[:, block_start:block_end] == mask_id) & in_block).sum(-1),
                                       plan.steps_per_block)  # (B, steps_per_block)
            for block_step in range(plan.max_block_steps):
                eligible = (x[:, block_start:block_end] == mask_id) & in_block  # (B, Lb)
                if not eligible.any():
                    break
                step_counts = counts[:, min(block_step, plan.steps_per_block - 1)]  # (B,)
                if plan.threshold is None and not bool(step_counts.any()):  # reveals nothing: no forward
                    continue
                # 3.b. one denoising step (i-iv in `Denoiser.step`), then 3.b.v. report
                result = denoiser.step(x, padding, positions, block_start, block_end, eligible, step_counts, block_step)
                if reporter.step(result, x, block, block_start, block_end):
                    break
            if reporter.stopped:  # the caller's on_step asked to stop: return the canvas as it is
                break

            # 3.c. commit
            reporter.commit(x[:, block_start:block_end])
            if plan.early_stop or plan.variable_length:
                finished |= self._rows_finished(x[:, prompt_len:block_end], end_ids, config.stop_strings, tokenizer)
                if plan.early_stop:
                    fill_after_end(x, finished, prompt_len, end_ids, eos_ids[0], mask_id)
                # 3.d. stop
                if bool(finished.all()):
                    break
        reporter.end()

        # 4. Return
        if not config.return_dict_in_generate:
            return x
        forwards = denoiser.cache.forward_passes
        return IlladaGenerationOutput(
            sequences=x, num_forward_passes=forwards, num_positions_processed=denoiser.cache.positions_processed,
            tokens_per_forward=reporter.revealed / batch / max(forwards, 1),
            history=tuple(reporter.history) if reporter.history is not None else None,
        )

    def _special_ids(self, config, tokenizer) -> tuple[int, list[int], list[int]]:
        """`(mask_id, eos_ids, end_ids)` of a run (end_ids: the EOS ids, then the EOT), checked against the vocabulary."""
        mask_id = special_token_id(self, "mask_token_id", config.mask_token_id)
        if mask_id is None:
            raise ValueError(
                "No mask token id: set `mask_token_id` in the generation config, the model config, or pass "
                "`mask_token_id=` (iLLaDA uses 5; LLaDA checkpoints declare theirs in config.json)."
            )
        eos_ids = special_token_ids(self, "eos_token_id", config.eos_token_id)
        end_ids = end_token_ids(self, config.eos_token_id, config.eot_token_id)
        self._check_ids(config, mask_id, end_ids, tokenizer)
        return mask_id, eos_ids, end_ids

    def _plan(self, config, generation_config, kwargs, attention, holes, end_ids) -> GenerationPlan:
        """The run's `GenerationPlan`; its errors name the knobs as the caller passed them."""
        infill = bool(holes.any())
        if logit_shift(self.config):
            _check_shifted_prompt(attention, holes)
        try:
            return GenerationPlan.make(config, attention.shape[1], infill, self.config.max_position_embeddings, end_ids,
                                       set(resolve_aliases(kwargs)), int(holes.any(0).nonzero()[0]) if infill else None)
        except ValueError as error:
            raise ValueError(self._explain(error, generation_config, kwargs)) from None

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

    def _drop_saved_continuation_knobs(self, config, generation_config, kwargs) -> IlladaGenerationConfig:
        """`config` for infilling: the model's saved `CONTINUATION_ONLY` knobs (how it continues a prompt, e.g. a
        suffix window) back at their defaults; a value the caller passed stays, and `GenerationPlan` refuses it."""
        if generation_config is not None:
            return config
        defaults = generation_defaults()
        dropped = {k: defaults[k] for k in CONTINUATION_ONLY if k not in kwargs and getattr(config, k) != defaults[k]}
        return config.merged(**dropped) if dropped else config

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


# IlladaGenerationConfig (from generation_config), DenoisingStep, GenerationPlan, Denoiser, step_report and
# sample_candidates (from denoising) are re-exported: this module was their first home.
__all__ = ["IlladaGenerationConfig", "IlladaGenerationOutput", "IlladaGenerationMixin", "DenoisingStep",
           "GenerationPlan", "Denoiser", "step_report", "sample_candidates"]
