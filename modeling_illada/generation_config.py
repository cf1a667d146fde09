"""`IlladaGenerationConfig`: every knob of diffusion `generate()`, its default, its aliases and its checks.

Differs from transformers' `GenerationConfig`: `GenerationConfig.__init__` is not called (most autoregressive knobs mean
nothing to a diffusion sampler, and they are refused rather than silently ignored); a `generation_config.json` written
for autoregressive decoding loads with its AR keys ignored (with a warning), one that is not valid JSON is an error
naming the file. The layout rule (which block lengths and step counts a length allows) is stated once, in
`layout()`, which both the config's checks and the sampler's plan (`denoising.GenerationPlan`) use.
"""

import json
import math

from transformers import GenerationConfig
from transformers.utils import logging

from .caching import CACHES
from .remasking import REMASKING
from .schedules import SCHEDULES

# Names users already know from LLaDA's reference code and iLLaDA -> ours (Dream's names: `diffusion_generate`).
ALIASES = {"gen_length": "max_new_tokens", "mask_id": "mask_token_id", "var": "variable_length"}

PARALLEL_DECODING_THRESHOLD = 0.9  # Fast-dLLM's default confidence threshold, used by `parallel_decoding=True`

_METADATA = ("transformers_version", "_from_model_config", "_commit_hash")

# Knobs about the canvas after the prompt: a model's saved value is not applied when a call fills holes instead
# (`generate` drops it; passed explicitly, it is an error naming it).
CONTINUATION_ONLY = ("suffix_window", "variable_length")

FLAGS = ("variable_length", "parallel_decoding", "eos_early_stop", "logits_eos_inf", "confidence_eos_eot_inf",
         "return_dict_in_generate", "output_history")

logger = logging.get_logger(__name__)


def generation_defaults() -> dict:
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
        "cache_refresh": 1,
        "suffix_window": None,
        # sampling of candidates
        "temperature": 0.0,
        "top_k": None,
        "top_p": None,
        "repetition_penalty": 1.0,
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


def resolve_aliases(knobs: dict) -> dict:
    """`knobs` with every alias renamed to its knob (the one place aliases are read); both given differently is an
    error."""
    knobs = dict(knobs)
    for alias, name in ALIASES.items():
        if alias in knobs:
            value = knobs.pop(alias)
            if knobs.get(name) not in (None, value):
                raise ValueError(f"`{alias}` and `{name}` are the same knob; got two different values.")
            knobs[name] = value
    return knobs


def layout(length: int, block_length: int | None, steps: int | None, threshold: float | None,
           what: str = "`max_new_tokens`") -> tuple[int, int, int]:
    """`(block_length, num_blocks, steps_per_block)` for denoising `length` tokens: the one statement of the rule that
    the block length divides the length, and (without a confidence threshold) the steps divide into the blocks.
    `None` block length / steps mean one block / one token per step."""
    block = block_length or length
    if length % block:
        raise ValueError(
            f"`block_length` ({block}) must divide {what} ({length}): use a multiple of {block}, or a block length "
            f"among the divisors of {length}."
        )
    blocks = length // block
    total = steps or length
    if threshold is None and total % blocks:
        raise ValueError(
            f"`steps` ({total}) must be a multiple of the number of blocks ({blocks} = {what} {length} / block_length "
            f"{block}), so that every block gets the same number of steps."
        )
    return block, blocks, max(total // blocks, 1)


def as_id_list(value) -> list[int]:
    if value is None:
        return []
    return [int(v) for v in (value if isinstance(value, (list, tuple)) else [value])]


def special_token_ids(model, name: str, explicit=None) -> list[int]:
    """Every id of the special token `name` (`mask_token_id`, `eos_token_id`, ...) for `model`: `explicit` when
    given, else the model's generation config, else its config (each may hold one id or a list). The one way the
    sampler, the scorers, the Space and the lm-eval model resolve a special token."""
    for source in (explicit, getattr(getattr(model, "generation_config", None), name, None),
                   getattr(getattr(model, "config", None), name, None)):
        ids = as_id_list(source)
        if ids:
            return ids
    return []


def special_token_id(model, name: str, explicit=None) -> int | None:
    """The first of `special_token_ids(model, name, explicit)`, or None."""
    ids = special_token_ids(model, name, explicit)
    return ids[0] if ids else None


def end_token_ids(model, eos_token_id=None, eot_token_id=None) -> list[int]:
    """The ids that end an answer: every EOS, then the EOT (what follows one is not the answer)."""
    return special_token_ids(model, "eos_token_id", eos_token_id) + special_token_ids(model, "eot_token_id", eot_token_id)


def check_integer(name: str, value, low: int):
    """A ValueError naming `name` unless `value` is None or an integer >= `low` (0 or 1)."""
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < low):
        kind = "non-negative" if low == 0 else "positive"
        raise ValueError(f"`{name}` must be a {kind} integer, got {value!r}.")


def check_number(name: str, value, ok, allowed: str):
    """A ValueError naming `name` and `allowed` unless `value` is None or a finite number that passes `ok`."""
    finite = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if value is not None and (not finite or not ok(value)):
        raise ValueError(f"`{name}` must be {allowed}, got {value!r}.")


class IlladaGenerationConfig(GenerationConfig):
    r"""
    Every decoding knob of `IlladaGenerationMixin.generate`, validated at construction. LLaDA's names
    (`gen_length`, `mask_id`) and iLLaDA's `var` are accepted as aliases. Knobs of autoregressive decoding
    (`num_beams`, `do_sample`, ...) are refused rather than silently ignored.

    Args:
        max_new_tokens (`int`, defaults to 128): tokens to generate (`gen_length`). `0` fills only the mask
            tokens already in the input (infilling). Passed alone to `generate`, it keeps the saved tokens per step
            and block length where it can (`resized`).
        max_length (`int`, *optional*): prompt plus new tokens; used only when `max_new_tokens` is not given.
        variable_length (`bool`, defaults to `False`): iLLaDA's variable-length generation (`var`): append one
            block of masks at a time, stop after a block that produced EOS or a stop string. Not with infilling
            (as `suffix_window`).
        steps (`int`, *optional*): total denoising steps, split evenly over the blocks; defaults to
            `max_new_tokens` (one token per step).
        block_length (`int`, *optional*): semi-autoregressive block size; defaults to `max_new_tokens` (a single
            block). Must divide `max_new_tokens` (`layout`).
        schedule (`str`, defaults to `"linear"`): reveal counts per step, one of `schedules.SCHEDULES`.
        remasking (`str`, defaults to `"low_confidence"`): reveal order, one of `remasking.REMASKING`.
        threshold (`float`, *optional*): reveal every masked token of the block whose confidence exceeds it (at
            least one per step) instead of following the schedule; a block then takes as many steps as it needs.
        parallel_decoding (`bool`, defaults to `False`): confidence-threshold parallel decoding with
            `threshold` 0.9 (Fast-dLLM's default) unless `threshold` is set.
        cfg_scale (`float`, defaults to 0.0): classifier-free guidance scale `s`: `u + (s + 1)(c - u)`.
        cache (`str`, defaults to `"none"`): how logits are computed each step, one of `caching.CACHES`: `none`
            (exact), `prefix` or `dual` (Fast-dLLM's approximate key/value caches, refreshed once per block).
        cache_refresh (`int`, defaults to 1): with `prefix` or `dual`, blocks per full refresh of the cache: 1 is
            Fast-dLLM's (a full forward whenever a block starts); with `n > 1` the blocks in between start with a
            cached step that re-feeds the previous block, whose tokens are now final (dKV-Cache's delayed caching),
            so a full forward comes every `n` blocks. Approximate, cheaper the shorter the blocks; `none` ignores it.
        suffix_window (`int`, *optional*): the model sees only this many masked positions after the block being
            denoised (DPad / Streaming-dLLM suffix pruning; approximate, fewer positions per forward); `None`, the
            default, keeps the whole canvas as LLaDA does. With `cache_refresh=n` the window moves over keys/values
            each refresh stores `n - 1` blocks ahead, so it costs no extra refresh. Not combinable with infilling
            (text after the holes must stay visible): passed to a call that fills holes it is an error, and a
            model's saved window is not applied there (`CONTINUATION_ONLY`).
        temperature (`float`, defaults to 0.0): Gumbel noise scale; 0 is greedy.
        top_k (`int`, *optional*), top_p (`float`, *optional*): candidate filtering before sampling.
        repetition_penalty (`float`, defaults to 1.0): CTRL's penalty (as transformers' `repetition_penalty`), on
            the tokens a row has already generated (committed ones, not the prompt): their positive logits are
            divided by it and negative ones multiplied, before sampling and scoring. 1.0 is off; above 1 discourages
            the loops small models fall into (see `shaping.py`).
        mask_token_id (`int`): the mask token; taken from the model config when unset.
        eos_token_id (`int` or `list[int]`), eot_token_id (`int`, *optional*), pad_token_id, bos_token_id.
        eos_early_stop (`bool`, defaults to `True`): once a row has committed an end token (EOS/EOT), its
            remaining masks, and any text the block holds after that token (revealed earlier, by confidence),
            become EOS after the current block, and generation stops when every row has. Tokens up to each row's
            first end token are exactly those of a full run.
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
        kwargs = resolve_aliases(kwargs)
        for key, default in generation_defaults().items():
            setattr(self, key, kwargs.pop(key, default))
        self.transformers_version = kwargs.pop("transformers_version", None)
        self._from_model_config = kwargs.pop("_from_model_config", None)
        self._commit_hash = kwargs.pop("_commit_hash", None)
        if kwargs:
            raise ValueError(
                f"Unknown generation parameters {sorted(kwargs)}. IlladaGenerationConfig accepts "
                f"{sorted(generation_defaults())} (and the aliases {sorted(ALIASES)})."
            )
        self.validate()

    def knobs(self) -> dict:
        return {key: getattr(self, key) for key in generation_defaults()}

    def validate(self, strict: bool = False, **kwargs):
        """Raise a ValueError naming the parameter and its allowed values for any inconsistent knob."""
        check_integer("max_new_tokens", self.max_new_tokens, 0)
        check_integer("max_length", self.max_length, 1)
        check_integer("steps", self.steps, 1)
        check_integer("block_length", self.block_length, 1)
        check_integer("top_k", self.top_k, 1)
        check_integer("suffix_window", self.suffix_window, 0)
        check_integer("cache_refresh", self.cache_refresh, 1)
        for name, registry in (("remasking", REMASKING), ("schedule", SCHEDULES), ("cache", CACHES)):
            if getattr(self, name) not in registry:
                raise ValueError(f"Unknown `{name}` {getattr(self, name)!r}; allowed: {sorted(registry)}.")
        check_number("temperature", self.temperature, lambda v: v >= 0, "a finite number >= 0 (0 = greedy)")
        check_number("top_p", self.top_p, lambda v: 0 < v <= 1, "a number in (0, 1]")
        check_number("cfg_scale", self.cfg_scale, lambda v: v >= 0, "a finite number >= 0 (0 = no guidance)")
        check_number("threshold", self.threshold, lambda v: 0 < v <= 1, "a number in (0, 1] (a probability)")
        check_number("repetition_penalty", self.repetition_penalty, lambda v: v > 0, "a finite number > 0 (1.0 = off)")
        for name in FLAGS:
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"`{name}` must be True or False, got {getattr(self, name)!r}.")
        for name in ("mask_token_id", "eot_token_id", "pad_token_id", "bos_token_id"):
            check_integer(name, getattr(self, name), 0)
        eos = self.eos_token_id
        if eos is not None and not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0
                                       for i in (eos if isinstance(eos, (list, tuple)) else [eos])):
            raise ValueError(f"`eos_token_id` must be a non-negative token id or a list of them, got {eos!r}.")
        if isinstance(self.stop_strings, str):
            self.stop_strings = [self.stop_strings]
        if self.stop_strings is not None and (
                not isinstance(self.stop_strings, (list, tuple))
                or not all(isinstance(s, str) and s for s in self.stop_strings)):
            raise ValueError(f"`stop_strings` must be a non-empty string or a list of them (an empty string would "
                             f"stop every row at once), got {self.stop_strings!r}.")
        for name in ("end_think_logit_boost", "end_think_boost_power"):
            check_number(name, getattr(self, name), lambda v: v >= 0, "a number >= 0")
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
        if self.max_new_tokens:
            layout(self.max_new_tokens, self.block_length, self.steps, self.effective_threshold)

    @property
    def effective_threshold(self) -> float | None:
        """The confidence threshold parallel decoding uses: `threshold`, or Fast-dLLM's 0.9 with `parallel_decoding`."""
        if self.threshold is None and self.parallel_decoding:
            return PARALLEL_DECODING_THRESHOLD
        return self.threshold

    def update(self, **kwargs):
        """Set known knobs (aliases accepted), re-validate, and return the unused kwargs (transformers' contract)."""
        kwargs = resolve_aliases(kwargs)
        unused = {}
        for key, value in kwargs.items():
            if key in generation_defaults():
                setattr(self, key, value)
            else:
                unused[key] = value
        self.validate()
        return unused

    def merged(self, **overrides) -> "IlladaGenerationConfig":
        """A validated copy with `overrides` applied; unknown names raise.

        A `max_new_tokens` override alone keeps the saved schedule's shape, so `generate(ids, max_new_tokens=n)` works
        whatever the saved `steps` and `block_length` (see `resized`); knobs given with it are used as given."""
        overrides = resolve_aliases(overrides)
        knobs = {**self.knobs(), **overrides}
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
            blocks = max(max_new_tokens // (block or max_new_tokens), 1)  # (a bad block is layout's to report)
            steps = max(round(max_new_tokens * self.steps / self.max_new_tokens), 1)
            changes["steps"] = -(-steps // blocks) * blocks  # up to a multiple of the number of blocks
        return changes

    @classmethod
    def from_dict(cls, config_dict: dict, **kwargs) -> "IlladaGenerationConfig":
        """Load a `generation_config.json`. Keys written for autoregressive decoding (an official checkpoint's
        `do_sample`, `num_beams`, ...) are ignored with a warning; constructing the config directly refuses them."""
        known = set(generation_defaults()) | set(ALIASES) | set(_METADATA)
        ignored = sorted(k for k in config_dict if k not in known)
        if ignored:
            logger.warning(f"Ignoring generation_config keys that diffusion decoding does not use: {ignored}")
        return super().from_dict({k: v for k, v in config_dict.items() if k in known}, **kwargs)

    @classmethod
    def _dict_from_json_file(cls, json_file):
        """The file's JSON: invalid JSON is an error naming the file (transformers raises the `OSError` of a missing
        file, which loading would take for "no generation config" and skip silently)."""
        text = open(json_file, encoding="utf-8").read()
        try:
            return json.loads(text)
        except json.JSONDecodeError as error:
            raise ValueError(f"{json_file} is not valid JSON ({error.msg} at line {error.lineno}, column "
                             f"{error.colno}): fix or remove it.") from None

    @staticmethod
    def _get_default_generation_params() -> dict:
        return generation_defaults()

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


__all__ = ["IlladaGenerationConfig", "ALIASES", "PARALLEL_DECODING_THRESHOLD", "check_integer", "check_number", "layout",
           "resolve_aliases"]
