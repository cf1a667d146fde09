"""Dream's sampler: `model.diffusion_generate(...)`, as Dream-7B's own code runs it, on every model of this package.

Dream (HKUNLP, Dream-org/Dream-v0-*-7B) decodes one canvas: the prompt, then `max_new_tokens` mask tokens, denoised
over `steps` passes whose times fall linearly from 1 to `eps`. At the step from time t to s, `alg="origin"` reveals
each masked position independently with probability 1 - s/t (all that remain at the last step), sampling its token;
the confidence algorithms (`maskgit_plus`, `topk_margin`, `entropy`) score every masked position and reveal the
`int(m * (1 - s/t))` best, m being the batch's mean number of masks (all of them at the last step), or, with
`alg_temp`, that many drawn from softmax(confidence / alg_temp). Candidates come from the logits tempered by
`temperature`, then cut by `top_p` and `top_k`; the confidences are read from those same probabilities. Dream's
schedule therefore reveals a different number per step than LLaDA's even split (`schedules.py`): few at first, more
towards the end.

This restatement follows Dream's published `generation_utils.py` step for step (its names, defaults, hooks, history,
left-padded batches as a 4-D mask with position ids), and differs from it only where noted:

* the logits are lined up with the canvas through the model's own `shift_logits` (Dream's models shift; LLaDA's do
  not), so the sampler also runs LLaDA / iLLaDA checkpoints;
* `generator=` may be passed; without it the draws come from torch's global RNG in Dream's order (a `torch.rand`
  per step for `origin`, a categorical draw per sampled token, a multinomial draw for `alg_temp`), so a seeded run
  is token-for-token Dream's. With a generator the same calls draw from it instead;
* bad input is refused by name (Dream's `validate` accepts anything), and a failed categorical draw is an error,
  not a silent fall-back to the argmax;
* Dream's settings come from `DreamGenerationConfig` (its defaults, special tokens from the model), as Dream's own
  `diffusion_generate` builds them; this package's `generate()` keeps its own config and knobs.
"""

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from transformers import GenerationConfig
from transformers.utils import ModelOutput

from .diffusion import align_predictions, logit_shift
from .generation_config import check_integer, check_number


def _defaults() -> dict:
    """Dream's `DreamGenerationConfig` fields with Dream's defaults."""
    return {
        "temperature": 0.0,
        "top_p": None,
        "top_k": None,
        "max_length": 20,
        "max_new_tokens": None,
        "eps": 1e-3,
        "steps": 512,
        "alg": "origin",
        "alg_temp": None,
        "num_return_sequences": 1,
        "return_dict_in_generate": False,
        "output_history": False,
        "mask_token_id": None,
        "pad_token_id": None,
        "bos_token_id": None,
        "eos_token_id": None,
    }


# --- Dream's token sampling ---------------------------------------------------------------------------------------

def _top_p(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Keep the smallest set of tokens whose probability reaches `top_p` (the first one always)."""
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    drop = sorted_logits.softmax(-1).cumsum(-1) > top_p  # (N, V), in sorted order
    drop = torch.cat([torch.zeros_like(drop[..., :1]), drop[..., :-1]], dim=-1)  # keep the token that crosses it
    return logits.masked_fill(torch.zeros_like(drop).scatter(-1, order, drop), torch.finfo(logits.dtype).min)


def _top_k(logits: torch.Tensor, top_k: int) -> torch.Tensor:
    kth = logits.topk(min(top_k, logits.shape[-1]), dim=-1).values[..., -1:]  # (N, 1)
    return logits.masked_fill(logits < kth, torch.finfo(logits.dtype).min)


def dream_candidates(logits: torch.Tensor, temperature: float, top_p=None, top_k=None, generator=None):
    """`(probs, x0, p_x0)` for `(N, V)` logits: Dream's `sample_tokens` before its confidence variants."""
    if temperature > 0:
        logits = logits / temperature
    if top_p is not None and top_p < 1:
        logits = _top_p(logits, top_p)
    if top_k is not None:
        logits = _top_k(logits, top_k)
    probs = logits.softmax(-1)  # (N, V)
    if temperature > 0:  # Dream's Categorical(probs).sample(): one multinomial draw over the normalised rows
        normalised = probs / probs.sum(-1, keepdim=True)
        if not bool(torch.isfinite(normalised).all()):
            raise ValueError("The tempered probabilities are not finite (NaN or inf logits): check `temperature`.")
        x0 = torch.multinomial(normalised, 1, replacement=True, generator=generator)[:, 0]  # (N,)
        return probs, x0, probs.gather(-1, x0[:, None])[:, 0]
    p_x0, x0 = probs.max(dim=-1)
    return probs, x0, p_x0


class MaskgitPlus:
    """Confidence = probability of the chosen token (Dream `maskgit_plus`, LLaDA's low confidence)."""

    name = "maskgit_plus"

    def __call__(self, probs, p_x0):
        return p_x0


class TopkMargin:
    """Confidence = top-1 minus top-2 probability (Dream `topk_margin`)."""

    name = "topk_margin"

    def __call__(self, probs, p_x0):
        top2 = probs.sort(dim=-1, descending=True).values[:, :2]  # (N, 2)
        return top2[:, 0] - top2[:, 1]


class NegativeEntropy:
    """Confidence = sum p log(p + 1e-10), the negative entropy (Dream `entropy`)."""

    name = "entropy"

    def __call__(self, probs, p_x0):
        return (probs * torch.log(probs + 1e-10)).sum(-1)


# `origin` has no confidence: each masked position is revealed with probability 1 - s/t, in random order.
ORIGIN = "origin"
CONFIDENCE = {alg.name: alg for alg in (MaskgitPlus(), TopkMargin(), NegativeEntropy())}
ALGORITHMS = (ORIGIN, *CONFIDENCE)


class DreamGenerationConfig(GenerationConfig):
    r"""
    The settings of `diffusion_generate`, with Dream's names and defaults (`_defaults()`), validated when built.

    Args:
        max_new_tokens (`int`, *optional*): tokens to generate; else `max_length` (prompt + new, default 20 more
            than the prompt, capped at the context) decides, as in Dream.
        steps (`int`, defaults to 512): denoising passes over the canvas.
        eps (`float`, defaults to 1e-3): the last time of the linear schedule from 1.
        alg (`str`, defaults to `"origin"`): one of `ALGORITHMS`: `origin`, `maskgit_plus`, `topk_margin`, `entropy`.
        alg_temp (`float`, *optional*): > 0 draws the revealed positions from softmax(confidence / alg_temp) instead
            of taking the best.
        temperature (`float`, defaults to 0.0), top_p (`float`, *optional*), top_k (`int`, *optional*).
        num_return_sequences (`int`, defaults to 1): samples per prompt (rows repeated).
        return_dict_in_generate, output_history (`bool`): return a `DreamGenerationOutput`, with the canvas after
            every step.
        mask_token_id, pad_token_id, bos_token_id, eos_token_id: from the model when unset.
    """

    def __init__(self, **kwargs):
        # As Dream's config, and as IlladaGenerationConfig: GenerationConfig.__init__ is not called.
        for key, default in _defaults().items():
            setattr(self, key, kwargs.pop(key, default))
        self.transformers_version = kwargs.pop("transformers_version", None)
        self._from_model_config = kwargs.pop("_from_model_config", False)
        self._commit_hash = kwargs.pop("_commit_hash", None)
        kwargs.pop("generation_kwargs", None)  # Dream's unused wild card
        if kwargs:
            raise ValueError(f"Unknown Dream generation parameters {sorted(kwargs)}; diffusion_generate accepts "
                             f"{sorted(_defaults())}.")
        self.validate()

    def validate(self, strict: bool = False, **kwargs):
        check_integer("steps", self.steps, 1)
        check_integer("max_new_tokens", self.max_new_tokens, 1)
        check_integer("max_length", self.max_length, 1)
        check_integer("top_k", self.top_k, 1)
        check_integer("num_return_sequences", self.num_return_sequences, 1)
        check_integer("mask_token_id", self.mask_token_id, 0)
        check_number("temperature", self.temperature, lambda v: v >= 0, "a finite number >= 0 (0 = greedy)")
        check_number("top_p", self.top_p, lambda v: 0 < v <= 1, "in (0, 1]")
        check_number("eps", self.eps, lambda v: 0 < v < 1, "in (0, 1), the last time of the schedule")
        check_number("alg_temp", self.alg_temp, lambda v: v >= 0, "a finite number >= 0 (0 or None: the best)")
        if self.alg not in ALGORITHMS:
            raise ValueError(f"Unknown Dream `alg` {self.alg!r}; allowed: {list(ALGORITHMS)}.")
        for name in ("return_dict_in_generate", "output_history"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"`{name}` must be True or False, got {getattr(self, name)!r}.")

    def update(self, **kwargs):
        unused = {k: v for k, v in kwargs.items() if k not in _defaults()}
        for key, value in kwargs.items():
            if key in _defaults():
                setattr(self, key, value)
        self.validate()
        return unused

    @classmethod
    def from_model_config(cls, model_config) -> "DreamGenerationConfig":
        """Dream's defaults with the model's special tokens (what Dream's `diffusion_generate` starts from)."""
        config = cls(**{k: getattr(model_config, k, None) for k in
                        ("mask_token_id", "pad_token_id", "bos_token_id", "eos_token_id")})
        config._from_model_config = True
        return config

    def get_generation_mode(self, *args, **kwargs):
        raise NotImplementedError("DreamGenerationConfig describes diffusion decoding; it has no autoregressive mode.")


@dataclass
class DreamGenerationOutput(ModelOutput):
    """
    Args:
        sequences (`torch.LongTensor` of shape `(batch * num_return_sequences, max_length)`): prompts and generations.
        history (`tuple(torch.LongTensor)`, *optional*): the canvas after every step (`output_history=True`).
    """

    sequences: torch.LongTensor | None = None
    history: tuple[torch.LongTensor, ...] | None = None


class DreamSamplerMixin:
    """`diffusion_generate`, Dream's method, on the model classes (see the module docstring)."""

    @torch.no_grad()
    def diffusion_generate(self, inputs: torch.LongTensor | None = None,
                           generation_config: DreamGenerationConfig | None = None, generator=None, **kwargs):
        """
        Dream's sampler. The algorithm (numbers reappear as comments):

        ```
        1. Settings: `generation_config` (default: Dream's defaults with the model's special tokens) < kwargs.
        2. Canvas: the prompt right-padded with masks to `max_length`; a left-padded batch gets a 4-D mask and
           position ids counted over real tokens; rows repeated `num_return_sequences` times.
        3. For each of `steps` steps, from time t to s on the linear schedule 1 -> eps:
            a. forward the canvas; line the logits up with it (`shift_logits`); the logits hook may change them;
            b. reveal: `origin` samples each masked position with probability 1 - s/t; the others sample every
               masked position and reveal the int(mean masks x (1 - s/t)) most confident (all at the last step);
            c. the tokens hook may change the canvas; the history keeps it.
        4. Return the canvas, or a `DreamGenerationOutput` with the history.
        ```

        Args:
            inputs (`torch.LongTensor` of shape `(batch, prompt length)`): prompt ids, left-padded for batches.
            generation_config (`DreamGenerationConfig`, *optional*).
            generator (`torch.Generator`, *optional*): where the draws come from (default: torch's global RNG, in
                Dream's order).
            kwargs: `attention_mask`, `generation_tokens_hook_func(step, x, logits) -> x` (called once before the
                first step with `(None, x, None)`), `generation_logits_hook_func(step, x, logits) -> logits`, and any
                `DreamGenerationConfig` field (`max_new_tokens`, `steps`, `alg`, `temperature`, ...).
        """
        # 1. Settings
        tokens_hook = kwargs.pop("generation_tokens_hook_func", None) or (lambda step, x, logits: x)
        logits_hook = kwargs.pop("generation_logits_hook_func", None) or (lambda step, x, logits: logits)
        attention_mask = kwargs.pop("attention_mask", None)
        if inputs is None:
            inputs = kwargs.pop("input_ids", None)
        if not isinstance(inputs, torch.Tensor) or inputs.dim() != 2 or inputs.is_floating_point():
            raise ValueError("`inputs` must be a 2-D tensor of token ids (batch, prompt length).")
        config = copy.deepcopy(generation_config) if generation_config is not None \
            else DreamGenerationConfig.from_model_config(self.config)
        if not isinstance(config, DreamGenerationConfig):
            raise ValueError("`generation_config` must be a DreamGenerationConfig (Dream's names and defaults).")
        user_max_length = "max_length" in kwargs
        unknown = config.update(**kwargs)
        if unknown:
            raise ValueError(f"Unknown Dream generation parameters {sorted(unknown)}; diffusion_generate accepts "
                             f"{sorted(_defaults())} and the hooks `generation_tokens_hook_func`, "
                             "`generation_logits_hook_func`.")
        for name in ("mask_token_id", "pad_token_id", "bos_token_id", "eos_token_id"):
            for source in (getattr(self, "generation_config", None), self.config):
                if getattr(config, name) is None:
                    setattr(config, name, getattr(source, name, None))
        mask_id = config.mask_token_id
        if mask_id is None:
            raise ValueError("No mask token id: pass `mask_token_id=` or set it in the model config.")
        prompt_len = inputs.shape[1]
        if config.max_new_tokens is not None:
            max_length = prompt_len + config.max_new_tokens
        elif not user_max_length and config.max_length == _defaults()["max_length"]:
            max_length = min(config.max_length + prompt_len, self.config.max_position_embeddings)
        else:
            max_length = config.max_length
        if prompt_len >= max_length:
            raise ValueError(f"The prompt ({prompt_len} tokens) is not shorter than `max_length` ({max_length}): "
                             "set `max_new_tokens`.")
        if max_length > self.config.max_position_embeddings:
            raise ValueError(f"Prompt plus new tokens ({max_length}) exceeds the context (`max_position_embeddings` "
                             f"= {self.config.max_position_embeddings}).")

        # 2. Canvas
        device = self.device
        x = inputs.to(device)
        if attention_mask is not None:
            if tuple(attention_mask.shape) != tuple(inputs.shape):
                raise ValueError(f"`attention_mask` must have the prompt's shape {tuple(inputs.shape)}, "
                                 f"got {tuple(attention_mask.shape)}.")
            attention_mask = attention_mask.to(device)
        if config.num_return_sequences > 1:
            x = x.repeat_interleave(config.num_return_sequences, dim=0)
            if attention_mask is not None:
                attention_mask = attention_mask.repeat_interleave(config.num_return_sequences, dim=0)
        x = F.pad(x, (0, max_length - prompt_len), value=mask_id)  # (B, N)
        position_ids = None
        if attention_mask is not None and bool((attention_mask == 0).any()):
            real = F.pad(attention_mask, (0, max_length - prompt_len), value=1).bool()  # (B, N)
            position_ids = (real.long().cumsum(-1) - 1).masked_fill(~real, 1)  # (B, N), as Dream counts them
            attention_mask = (real[:, None, None, :] & real[:, None, :, None])  # (B, 1, N, N): pads see nothing
        else:
            attention_mask = None
        shift = logit_shift(self.config)
        timesteps = torch.linspace(1, config.eps, config.steps + 1, device=device)  # (steps + 1,)
        history = [] if config.return_dict_in_generate and config.output_history else None
        x = tokens_hook(None, x, None)

        # 3. Steps
        for i in range(config.steps):
            is_mask = x == mask_id  # (B, N)
            # 3.a. forward
            logits = self(input_ids=x, attention_mask=attention_mask, position_ids=position_ids).logits
            logits = logits_hook(i, x, align_predictions(logits, shift))  # (B, N, V): row j predicts column j
            # 3.b. reveal
            self._dream_step(x, is_mask, logits[is_mask], timesteps[i], timesteps[i + 1], i == config.steps - 1,
                             config, generator)
            # 3.c. hooks and history
            x = tokens_hook(i, x, logits)
            if history is not None:
                history.append(x.clone())

        # 4. Return
        if config.return_dict_in_generate:
            return DreamGenerationOutput(sequences=x, history=tuple(history) if history is not None else None)
        return x

    @staticmethod
    def _dream_step(x, is_mask, mask_logits, t, s, last: bool, config, generator) -> None:
        """One reveal, in place on the canvas `x` `(B, N)`: `mask_logits` `(M, V)` are the logits of its masks."""
        mask_id = config.mask_token_id
        if config.alg == ORIGIN:
            p_transfer = 1 - s / t if not last else 1
            x0 = torch.full_like(x[is_mask], mask_id)  # (M,)
            transfer = torch.rand(x0.shape, device=x.device, generator=generator) < p_transfer
            x0[transfer] = dream_candidates(mask_logits[transfer], config.temperature, config.top_p, config.top_k,
                                            generator)[1]
            x[is_mask] = x0
            return
        probs, x0, p_x0 = dream_candidates(mask_logits, config.temperature, config.top_p, config.top_k, generator)
        confidence = CONFIDENCE[config.alg](probs, p_x0)  # (M,)
        masks_per_row = is_mask.sum() / is_mask.shape[0]  # the batch mean, as Dream counts
        count = int(masks_per_row * (1 - s / t)) if not last else int(masks_per_row)
        if count <= 0:
            return
        full_confidence = torch.full(x.shape, -torch.inf, dtype=mask_logits.dtype, device=x.device)  # (B, N)
        full_confidence[is_mask] = confidence.to(mask_logits.dtype)
        if not config.alg_temp:
            chosen = full_confidence.topk(count, dim=-1).indices  # (B, count)
        else:
            weights = (full_confidence / config.alg_temp).softmax(-1)
            chosen = torch.multinomial(weights, num_samples=count, generator=generator)  # (B, count)
        candidates = torch.full_like(x, mask_id)
        candidates[is_mask] = x0
        rows = torch.arange(x.shape[0], device=x.device)[:, None].expand_as(chosen)
        x[rows, chosen] = candidates[rows, chosen]


__all__ = ["DreamGenerationConfig", "DreamGenerationOutput", "DreamSamplerMixin", "ALGORITHMS", "dream_candidates"]
