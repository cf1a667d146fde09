"""The lm-evaluation-harness model `illada` (library-only): masked diffusion LMs scored and sampled the diffusion way.

Differs from lm-eval's `hf` model, which assumes a causal LM:

* `loglikelihood` uses `likelihood.py`: LLaDA's Monte Carlo lower bound (`scorer=mc`, `mc_num`, `mc_batch_size`,
  `cfg_scale`), iLLaDA's deterministic confidence scorer (`scorer=confidence`) or the exact score of left-to-right
  decoding (`scorer=left_to_right`, for models adapted from causal LMs), with iLLaDA's `padd_eos` and
  `add_bos_token` options. `is_greedy` is computed only with `check_greedy=True` (LLaDA's suffix check: reveal the
  answer one most-confident token at a time and compare); otherwise it is False, as in LLaDA's harness.
* `loglikelihood_rolling` returns the Monte Carlo ELBO of the whole text: a lower bound on log p(text), not the
  exact log-likelihood; perplexities derived from it are upper bounds. With `rolling_scorer=left_to_right` it is the
  exact log-probability under left-to-right decoding instead (one forward per token; for models adapted from
  causal LMs, comparable with their base's perplexity).
* `generate_until` runs the package's diffusion `model.generate` (any `IlladaGenerationConfig` knob can be given as
  a model argument: `steps`, `block_length`, `variable_length`, `remasking`, `threshold`, `cache`, ...) with the
  task's stop sequences as `stop_strings`, then cuts the text at the first one.
* Randomness is seeded per request from `seed` and the request's tokens, so a score does not depend on request
  order or `--limit`, and batch size changes it only by float rounding (sampled generation, `temperature > 0`, is
  seeded per batch of prompts). Every setting that changes scores is returned by `get_model_info`, which lm-eval
  writes into `results["config"]["illada"]`.

How lm-eval finds it: lm-eval 0.4.13 lists its built-in models in `lm_eval.models.MODEL_MAPPING` and reads no entry
points, so a third-party model is known only once its module is imported. Two thin launchers import this module
and hand the arguments, unchanged, to lm-eval's own CLI:

    python -m modeling_illada.lm_eval_model --model illada --model_args pretrained=DIR,scorer=confidence --tasks ...
    illada eval --model illada --model_args pretrained=DIR --tasks ...

From Python: `import modeling_illada.lm_eval_model`, then `lm_eval.simple_evaluate(model="illada",
model_args=...)`, or pass an `IlladaEvalHarness(pretrained=model, tokenizer=tokenizer)` instance.

Upstream names are accepted as aliases: `model_path`, `llh` (scorer), `cfg`, `gen_length`, `var`, `mask_id`.
Note that `steps` is the total number of denoising steps (as in `model.generate`); upstream's variable-length
harness counted steps per block, so its `gen_length=1024,block_length=32,steps=32,var=True` is
`max_new_tokens=1024,block_length=32,steps=1024,variable_length=True` here.
"""

import copy
import hashlib
import json
import logging
import sys
from dataclasses import asdict, dataclass, field

import torch
from tqdm import tqdm

from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import model_registry
from lm_eval.models.utils import handle_stop_sequences, normalize_gen_kwargs

from . import __version__
from .diffusion import logit_shift
from .generation_config import ALIASES as GENERATION_ALIASES
from .generation_config import IlladaGenerationConfig, special_token_id
from .likelihood import SCORERS, TEXT_SCORERS, check_monte_carlo, log_likelihood, text_log_likelihood

logger = logging.getLogger(__name__)

# Upstream harness argument names (LLaDA's `eval_llada.py`, iLLaDA's `eval_illada.py`) -> ours.
ALIASES = {"model_path": "pretrained", "llh": "scorer", "cfg": "cfg_scale",
           **GENERATION_ALIASES}

# Generation knobs that only shape the output object, or come from the task: refused as model arguments.
_OUTPUT_KNOBS = ("return_dict_in_generate", "output_history", "stop_strings")
# Generation knobs a task may set in its gen_kwargs; a model argument of the same name wins.
_TASK_KNOBS = ("max_new_tokens", "temperature", "top_p", "top_k")


@dataclass
class EvalSettings:
    """Every setting of the `illada` lm-eval model that changes a score, recorded in the results.

    Args:
        scorer: one of `likelihood.SCORERS` for `loglikelihood`: `"mc"` (LLaDA's Monte Carlo bound), `"confidence"`
            (iLLaDA's scorer) or `"left_to_right"` (exact under left-to-right decoding).
        rolling_scorer: one of `likelihood.TEXT_SCORERS` for `loglikelihood_rolling`: `"mc"` (the ELBO) or
            `"left_to_right"`.
        mc_num: Monte Carlo samples per request (`mc` scorers).
        mc_batch_size: samples per stratified mini-batch (upstream's `batch_size`); defaults to `min(32, mc_num)`.
        cfg_scale: classifier-free guidance scale, for scoring and generation.
        add_bos_token: prepend BOS to every context (iLLaDA's Base setup).
        padd_eos: append one EOS after every scored sequence (iLLaDA's Base setup).
        check_greedy: compute `is_greedy` by greedy unmasking of the continuation (one extra pass per request).
        seed: base of the per-request seeds.
        max_length: context limit; defaults to the model's `max_position_embeddings`. Longer contexts are cut on
            the left (as lm-eval's `hf` model does), with a warning.
        mask_token_id: overrides the model's mask token.
        generation: `IlladaGenerationConfig` knobs given as model arguments (the rest come from the model's
            generation config and the task's `max_gen_toks` / `temperature`).
    """

    scorer: str = "mc"
    rolling_scorer: str = "mc"
    mc_num: int = 128
    mc_batch_size: int | None = None
    cfg_scale: float = 0.0
    add_bos_token: bool = False
    padd_eos: bool = False
    check_greedy: bool = False
    seed: int = 1234
    max_length: int | None = None
    mask_token_id: int | None = None
    generation: dict = field(default_factory=dict)


def _request_generator(seed: int, *token_lists) -> torch.Generator:
    """A CPU generator seeded from `seed` and the request's tokens: the same request always draws the same masks."""
    digest = hashlib.sha256(json.dumps([seed, *token_lists]).encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))


class IlladaEvalHarness(TemplateLM):
    """lm-eval model for iLLaDA / LLaDA masked diffusion LMs (registered as `illada`).

    Args:
        pretrained: a local folder, a Hub id, or an already loaded model.
        tokenizer: a tokenizer, or its folder / Hub id (default: `pretrained`'s).
        revision, dtype (`"auto"`, `"bfloat16"`, `"float32"`, ...), device (default: CUDA when available),
        trust_remote_code: passed to `from_pretrained`.
        batch_size: requests per forward batch (each `mc` request adds `mc_batch_size` rows).
        chat_template_args: extra keyword arguments for the tokenizer's `apply_chat_template`.
        **settings: the fields of `EvalSettings`, upstream aliases, and `IlladaGenerationConfig` knobs.
    """

    def __init__(self, pretrained=None, tokenizer=None, revision: str | None = None, dtype="auto", device=None,
                 batch_size=1, max_batch_size=None, trust_remote_code: bool = False, chat_template_args=None,
                 **settings):
        super().__init__()
        for alias, name in ALIASES.items():
            if alias in settings:
                if name == "pretrained":
                    pretrained = settings.pop(alias)
                    continue
                settings[name] = settings.pop(alias)
        if pretrained is None:
            raise ValueError("`pretrained` is required: a model folder, a Hub id, or a loaded model.")
        self.settings = self._parse_settings(settings)
        self._batch_size = self._parse_batch_size(batch_size)
        self.chat_template_args = dict(chat_template_args or {})

        from transformers import AutoModel, AutoTokenizer

        if isinstance(pretrained, str):
            self.pretrained, self.revision = pretrained, revision
            torch_dtype = dtype if dtype in ("auto", None) or isinstance(dtype, torch.dtype) else getattr(torch, str(dtype))
            model = AutoModel.from_pretrained(pretrained, revision=revision, dtype=torch_dtype,
                                              trust_remote_code=trust_remote_code)
        else:
            model, self.pretrained, self.revision = pretrained, getattr(pretrained, "name_or_path", ""), revision
        if device is not None and str(device).startswith("cuda") and not torch.cuda.is_available():
            # lm-eval's CLI asks for cuda:0 by default; like its `hf` model, run on the CPU when there is no GPU
            logger.warning("Device %s requested but CUDA is not available: using the CPU.", device)
            device = "cpu"
        if device is None:
            device = model.device if not isinstance(pretrained, str) else "cuda" if torch.cuda.is_available() else "cpu"
        self.model = model.to(device).eval()
        self._device = self.model.device
        if tokenizer is None or isinstance(tokenizer, str):
            source = tokenizer or self.pretrained
            if not source:
                raise ValueError("Pass `tokenizer=` (an object, folder or Hub id): the model has no path to load one from.")
            tokenizer = AutoTokenizer.from_pretrained(source, revision=revision, trust_remote_code=trust_remote_code)
        self.tokenizer = tokenizer

        self.mask_token_id = special_token_id(self.model, "mask_token_id", self.settings.mask_token_id)
        if self.mask_token_id is None:
            self.mask_token_id = getattr(tokenizer, "mask_token_id", None)
        if self.mask_token_id is None:
            raise ValueError("No mask token id in the model's configs or the tokenizer: pass `mask_token_id=`.")
        self.bos_token_id = special_token_id(self.model, "bos_token_id", tokenizer.bos_token_id)
        self.eos_token_id = special_token_id(self.model, "eos_token_id", tokenizer.eos_token_id)
        config_max = getattr(self.model.config, "max_position_embeddings", None)
        self._max_length = self.settings.max_length or config_max
        if self.settings.add_bos_token and self.bos_token_id is None:
            raise ValueError("`add_bos_token=True` but neither the tokenizer nor the model config has a BOS token.")
        if self.settings.padd_eos and self.eos_token_id is None:
            raise ValueError("`padd_eos=True` but neither the tokenizer nor the model config has an EOS token.")
        # The generation knobs are checked now against the model's generation config; the length comes from each
        # task's `max_gen_toks` unless given (0 here defers the checks that need it to generation time).
        base = self._base_generation_config()
        self.default_max_new_tokens = base.max_new_tokens
        self.generation_config = base.merged(**{"max_new_tokens": 0, **self.settings.generation})
        self._warned = set()

    # --- settings ---------------------------------------------------------------------------------------------

    @staticmethod
    def _parse_settings(settings: dict) -> EvalSettings:
        fields = EvalSettings.__dataclass_fields__
        knobs = IlladaGenerationConfig().knobs()
        generation = {k: settings.pop(k) for k in list(settings) if k in knobs and k not in fields}
        refused = sorted(k for k in generation if k in _OUTPUT_KNOBS)
        unknown = sorted(k for k in settings if k not in fields or k == "generation")
        if refused or unknown:
            allowed = sorted(set(fields) - {"generation"}) + sorted(set(knobs) - set(fields) - set(_OUTPUT_KNOBS))
            raise ValueError(
                f"Unknown `illada` model arguments {refused + unknown}; allowed: {allowed} (and the aliases "
                f"{sorted(ALIASES)})."
            )
        parsed = EvalSettings(**settings, generation=generation)
        if parsed.scorer not in SCORERS:
            raise ValueError(f"Unknown `scorer` {parsed.scorer!r}; allowed: {sorted(SCORERS)}.")
        if parsed.rolling_scorer not in TEXT_SCORERS:
            raise ValueError(f"Unknown `rolling_scorer` {parsed.rolling_scorer!r}; allowed: {list(TEXT_SCORERS)}.")
        parsed.mc_batch_size = check_monte_carlo(parsed.mc_num, parsed.mc_batch_size)
        if not isinstance(parsed.cfg_scale, (int, float)) or parsed.cfg_scale < 0:
            raise ValueError(f"`cfg_scale` must be a number >= 0, got {parsed.cfg_scale!r}.")
        if not isinstance(parsed.seed, int):
            raise ValueError(f"`seed` must be an integer, got {parsed.seed!r}.")
        return parsed

    @staticmethod
    def _parse_batch_size(batch_size) -> int:
        if isinstance(batch_size, str) and batch_size.startswith("auto"):
            logger.info("batch_size=%s: the illada model has no automatic batch size; using 1.", batch_size)
            return 1
        try:
            value = int(batch_size)
        except (TypeError, ValueError):
            value = 0
        if value < 1:
            raise ValueError(f"`batch_size` must be a positive integer, got {batch_size!r}.")
        return value

    def _base_generation_config(self) -> IlladaGenerationConfig:
        base = getattr(self.model, "generation_config", None)
        if not isinstance(base, IlladaGenerationConfig):
            base = IlladaGenerationConfig.from_model_config(self.model.config)
        return base

    def get_model_info(self) -> dict:
        """Written by lm-eval into `results["config"]`: the model and every score-changing setting."""
        settings = asdict(self.settings)
        generation = {k: v for k, v in self.generation_config.knobs().items() if k not in _OUTPUT_KNOBS}
        generation["max_new_tokens"] = self.default_max_new_tokens
        for name in _TASK_KNOBS:
            if name not in self.settings.generation:
                generation[name] = f"the task's gen_kwargs (else {generation[name]})"
        settings["generation"] = dict(generation, cfg_scale=self.settings.cfg_scale, mask_token_id=self.mask_token_id)
        settings.update(mask_token_id=self.mask_token_id, bos_token_id=self.bos_token_id,
                        eos_token_id=self.eos_token_id, max_length=self._max_length, batch_size=self._batch_size,
                        seeding="per request: sha256(seed, request tokens)")
        return {
            "illada": settings,
            "illada_version": __version__,
            "model_num_parameters": sum(p.numel() for p in self.model.parameters()),
            "model_dtype": str(self.model.dtype),
            "model_revision": self.revision,
        }

    # --- lm-eval plumbing -------------------------------------------------------------------------------------

    @property
    def eot_token_id(self) -> int:
        return self.eos_token_id

    @property
    def prefix_token_id(self) -> int:
        # an empty context is conditioned on BOS (lm-eval's convention), else on EOS
        return self.bos_token_id if self.bos_token_id is not None else self.eos_token_id

    @property
    def max_length(self) -> int:
        return self._max_length

    @property
    def batch_size(self) -> int:
        return self._batch_size

    @property
    def device(self):
        return self._device

    @property
    def tokenizer_name(self) -> str:
        return self.tokenizer.name_or_path.replace("/", "__")

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs) -> list[int]:
        # BOS is added by `add_bos_token`, never by the tokenizer, so it cannot appear twice
        return self.tokenizer(string, add_special_tokens=bool(add_special_tokens)).input_ids

    def tok_decode(self, tokens, skip_special_tokens: bool = True) -> str:
        return self.tokenizer.decode(tokens, skip_special_tokens=skip_special_tokens)

    def apply_chat_template(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        """The tokenizer's chat template; a template that refuses the system role gets the system text merged into
        the first user turn (as iLLaDA's harness does) instead of losing it."""
        import jinja2

        render = lambda history: self.tokenizer.apply_chat_template(  # noqa: E731
            history, tokenize=False, add_generation_prompt=add_generation_prompt,
            continue_final_message=not add_generation_prompt, **self.chat_template_args,
        )
        try:
            return render(chat_history)
        except jinja2.exceptions.TemplateError:
            system = [m["content"] for m in chat_history if m["role"] == "system"]
            if not system:
                raise
            rest = copy.deepcopy([m for m in chat_history if m["role"] != "system"])
            for message in rest:
                if message["role"] == "user":
                    message["content"] = "\n\n".join(system + [message["content"]])
                    break
            else:
                rest.insert(0, {"role": "user", "content": "\n\n".join(system)})
            return render(rest)

    def _warn_once(self, key: str, message: str, *args):
        if key not in self._warned:
            self._warned.add(key)
            logger.warning(message, *args)

    def _with_bos(self, ids: list[int]) -> list[int]:
        if self.settings.add_bos_token and ids[:1] != [self.bos_token_id]:
            return [self.bos_token_id] + ids
        return ids

    def _fit(self, context: list[int], reserved: int) -> list[int]:
        """The context (with BOS), cut on the left so that it and `reserved` more tokens fit `max_length`. A model
        with shifted logits predicts each token from the one before it: an empty context becomes the prefix token."""
        context = self._with_bos(context)
        if not context and logit_shift(self.model.config):
            context = [self.prefix_token_id]
        room = self._max_length - reserved
        if room < 1:
            raise ValueError(f"{reserved} tokens to score or generate leave no room for a context in `max_length` "
                             f"({self._max_length}).")
        if len(context) > room:
            self._warn_once("truncate", "Contexts longer than max_length (%d) are cut on the left.", self._max_length)
            context = context[len(context) - room:]
            if self.settings.add_bos_token:
                context = [self.bos_token_id] + context[1:]
        return context

    # --- the three request types ------------------------------------------------------------------------------

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs) -> list[tuple[float, bool]]:
        results = [None] * len(requests)
        order = sorted(range(len(requests)), key=lambda i: -len(requests[i][1]) - len(requests[i][2]))
        s = self.settings
        options = dict(cfg_scale=s.cfg_scale, padd_eos=s.padd_eos, mask_token_id=self.mask_token_id,
                       eos_token_id=self.eos_token_id, max_length=self._max_length)
        if s.scorer == "mc":
            options.update(mc_num=s.mc_num, mc_batch_size=s.mc_batch_size)
        with tqdm(total=len(requests), disable=disable_tqdm or self.rank != 0, desc="loglikelihood") as bar:
            for first in range(0, len(order), self._batch_size):
                chunk = [i for i in order[first:first + self._batch_size] if requests[i][2]]
                for i in order[first:first + self._batch_size]:
                    if not requests[i][2]:  # an empty continuation has probability 1
                        results[i] = (0.0, True)
                bar.update(len(order[first:first + self._batch_size]) - len(chunk))
                if not chunk:
                    continue
                contexts = [self._fit(requests[i][1], len(requests[i][2]) + s.padd_eos) for i in chunk]
                continuations = [requests[i][2] for i in chunk]
                if s.scorer == "mc":
                    options["generator"] = [_request_generator(s.seed, c, a) for c, a in zip(contexts, continuations)]
                scores = log_likelihood(self.model, contexts, continuations, scorer=s.scorer, **options).tolist()
                for i, context, continuation, score in zip(chunk, contexts, continuations, scores):
                    greedy = self._is_greedy(context, continuation) if s.check_greedy else False
                    results[i] = (score, greedy)
                    self.cache_hook.add_partial("loglikelihood", requests[i][0], results[i])
                bar.update(len(chunk))
        return results

    def _is_greedy(self, context: list[int], continuation: list[int]) -> bool:
        """LLaDA's suffix check: fill the masked continuation greedily, one most-confident token per step."""
        length = len(continuation)
        canvas = torch.tensor([context + [self.mask_token_id] * length], device=self.device)
        filled = self.model.generate(canvas, generation_config=IlladaGenerationConfig(), max_new_tokens=0,
                                     steps=length, block_length=length, cfg_scale=self.settings.cfg_scale,
                                     mask_token_id=self.mask_token_id)
        return filled[0, len(context):].tolist() == continuation

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """log p of each whole text by `rolling_scorer` (see `likelihood.text_log_likelihood`): the Monte Carlo ELBO,
        a lower bound, or the exact left-to-right score."""
        s = self.settings
        results = []
        for request in tqdm(requests, disable=disable_tqdm or self.rank != 0, desc="loglikelihood_rolling"):
            (text,) = request.args
            ids = self.tok_encode(text)
            if not ids:
                results.append(0.0)  # nothing to predict, as for lm-eval's causal models
                continue
            if logit_shift(self.model.config) and not s.add_bos_token:
                ids = [self.prefix_token_id] + ids  # as lm-eval's causal models: every token of the text is scored
            options = dict(mc_num=s.mc_num, mc_batch_size=s.mc_batch_size,
                           generator=_request_generator(s.seed, ids)) if s.rolling_scorer == "mc" else {}
            score = text_log_likelihood(self.model, [ids], scorer=s.rolling_scorer, add_bos_token=s.add_bos_token,
                                        padd_eos=s.padd_eos, mask_token_id=self.mask_token_id,
                                        bos_token_id=self.bos_token_id, eos_token_id=self.eos_token_id,
                                        max_length=self._max_length, **options).item()
            results.append(score)
            self.cache_hook.add_partial("loglikelihood_rolling", (text,), score)
        return results

    def _generation_knobs(self, gen_kwargs: dict) -> tuple[dict, list[str]]:
        """Knobs for `model.generate` for one group of requests, and its stop strings."""
        kwargs = normalize_gen_kwargs(gen_kwargs, default_max_gen_toks=self.default_max_new_tokens)
        eos_text = self.tokenizer.decode([self.eos_token_id]) if self.eos_token_id is not None else None
        until = handle_stop_sequences(kwargs.pop("until", None), eos=eos_text)
        knobs = dict(self.settings.generation, cfg_scale=self.settings.cfg_scale, mask_token_id=self.mask_token_id)
        knobs.setdefault("max_new_tokens", kwargs.pop("max_gen_toks"))
        kwargs.pop("do_sample", None)
        for name in ("temperature", "top_p", "top_k"):  # the task's sampling settings, unless given as model args
            if name in kwargs:
                knobs.setdefault(name, kwargs.pop(name))
        if kwargs:
            self._warn_once(f"ignored {sorted(kwargs)}", "Generation kwargs %s mean nothing here; ignored.", sorted(kwargs))
        block = knobs.get("block_length") or self.generation_config.block_length
        if block and knobs["max_new_tokens"] % block:  # whole blocks: round the budget up
            knobs["max_new_tokens"] += block - knobs["max_new_tokens"] % block
        return knobs, until

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        results = [None] * len(requests)
        groups = {}
        for i, request in enumerate(requests):
            groups.setdefault(json.dumps(request.args[1], sort_keys=True, default=str), []).append(i)
        end_ids = [i for i in (self.eos_token_id, self.generation_config.eot_token_id) if i is not None]
        bar = tqdm(total=len(requests), disable=disable_tqdm or self.rank != 0, desc="generate_until")
        for indices in groups.values():
            knobs, until = self._generation_knobs(requests[indices[0]].args[1])
            config = self.generation_config.merged(**knobs)
            sampling = config.temperature > 0 or config.remasking == "random"
            indices = sorted(indices, key=lambda i: -len(requests[i].args[0]))
            for first in range(0, len(indices), self._batch_size):
                chunk = indices[first:first + self._batch_size]
                prompts = [self._fit(self.tok_encode(requests[i].args[0]), config.max_new_tokens) for i in chunk]
                width = max(len(p) for p in prompts)
                pad = next(i for i in (self.tokenizer.pad_token_id, self.eos_token_id, 0) if i is not None)
                ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], device=self.device)  # (B, P)
                mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=self.device)
                generator = _request_generator(self.settings.seed, prompts) if sampling else None
                out = self.model.generate(ids, generation_config=config, attention_mask=mask, tokenizer=self.tokenizer,
                                          stop_strings=until or None, generator=generator)
                for i, row in zip(chunk, out[:, width:].tolist()):
                    cut = next((j for j, token in enumerate(row) if token in end_ids), len(row))
                    text = self.tokenizer.decode(row[:cut], skip_special_tokens=True)
                    for stop in until:
                        if stop and stop in text:
                            text = text[: text.index(stop)]
                    results[i] = text
                    self.cache_hook.add_partial("generate_until", requests[i].args, text)
                bar.update(len(chunk))
        bar.close()
        return results


# Registered by path, not by decorator: `python -m modeling_illada.lm_eval_model` runs this file as `__main__`, and
# a path resolves to the one importable class however many times the file is executed.
model_registry.register("illada", target="modeling_illada.lm_eval_model:IlladaEvalHarness")


def main(argv=None) -> int:
    """lm-eval's own command line, unchanged, with the `illada` model registered."""
    from lm_eval.__main__ import cli_evaluate

    sys.argv = ["lm-eval", *(sys.argv[1:] if argv is None else list(argv))]
    cli_evaluate()
    return 0


if __name__ == "__main__":
    sys.exit(main())
