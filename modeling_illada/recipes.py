"""Run recipes as data (library-only: no Hub file imports this).

A recipe is a dataclass whose fields are everything that decides a training run's result, in commented groups.
`illada train` / `illada adapt` build their flags from the fields (name, type, default, help and choices live once,
here), `training.train` / `adapt.adapt` take a recipe (or its fields as keywords), and the `illada_train.json` written
beside every checkpoint is the recipe itself plus the run's results. Options that steer a run without changing
what it learns (output folder, `--overwrite`, `--resume`, threads, callbacks) are arguments, not recipe fields.

Field metadata: `help`, optional `flag` (the command-line name when it is not the field's), `choices` (the name of
a registry, resolved when the parser is built) and `metavar`.
"""

import argparse
import dataclasses
import json
import os
import types
import typing
from dataclasses import dataclass, field
from typing import ClassVar


def _option(default, help: str, **metadata):
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"help": help, **metadata})
    return field(default=default, metadata={"help": help, **metadata})


@dataclass
class RunRecipe:
    """What every masked-diffusion training run takes: data, objective, optimisation, checkpoints."""

    unused: ClassVar[tuple[str, ...]] = ()  # inherited fields this kind of run does not take (no flag; must stay unset)

    # --- data: plain text (pretraining, packed) and/or JSONL chats (SFT); both together are trained as one mixture
    data: list[str] = _option([], "text files or folders (pretraining; documents packed with EOS between them)")
    sft: list[str] = _option([], 'JSONL chats, one {"messages": [...]} per line (the last assistant turn is trained)')
    eval_data: list[str] = _option([], "held-out files (default: a deterministic split of the data)")
    eval_fraction: float = _option(0.02, "share of the documents held out when no --eval-data is given")
    doc_separator: str | None = _option(None, 'line that separates documents in a text file, e.g. "%%"')
    packing: bool = _option(True, "plain text: one document per sequence, padded with EOS to --seq-length (the "
                                  "model learns to stop) instead of packing", flag="--no-packing")
    # --- objective
    seq_length: int = _option(256, "tokens per training sequence")
    time_sampling: str = _option("stratified", "how the masking time t is drawn across a batch",
                                 choices="TIME_SAMPLING")
    loss_weighting: str = _option("elbo", "elbo: LLaDA's 1/p-weighted loss; uniform: mean CE over masked tokens",
                                  choices="LOSS_WEIGHTING")
    random_length_prob: float = _option(0.01, "probability that a pretraining batch is cut to a random length")
    group_by_length: bool = _option(False, "batch rows of similar length together (less padding; SFT rows are padded "
                                           "with EOS to their batch's longest)")
    # --- optimisation (AdamW, beta2 0.95, gradient clipping at 1)
    batch_size: int = _option(16, "sequences per batch (per device)")
    gradient_accumulation_steps: int = _option(1, "batches per optimiser step", flag="--grad-accum")
    max_steps: int = _option(1000, "optimiser steps")
    learning_rate: float = _option(1e-3, "peak learning rate", flag="--lr")
    warmup_steps: int = _option(100, "linear warm-up steps")
    lr_scheduler: str = _option("cosine", "transformers' scheduler name")
    weight_decay: float = _option(0.1, "AdamW weight decay")
    precision: str = _option("float32", "float32, or mixed precision with float32 weights: bfloat16 or float16 (the "
                                        "Trainer's bf16 / fp16; bfloat16 also runs on CPUs)", choices="PRECISIONS")
    # --- checkpoints and logging
    eval_steps: int = _option(200, "held-out loss every N steps")
    save_steps: int = _option(200, "checkpoint every N steps")
    save_total_limit: int = _option(2, "checkpoints kept")
    logging_steps: int = _option(20, "training loss logged every N steps")
    seed: int = _option(0, "seed of the initialisation, the data order and the masking noise")

    def __post_init__(self):
        for name in ("data", "sft", "eval_data"):
            value = getattr(self, name)
            if isinstance(value, (str, os.PathLike)):
                setattr(self, name, [str(value)])
            else:
                setattr(self, name, [str(v) for v in (value or ())])
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            kind = _base_type(f.type)
            if value is None or kind in (list, str, dict) or kind is object:
                continue
            if kind is float and isinstance(value, int) and not isinstance(value, bool):
                setattr(self, f.name, float(value))
            elif not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
                raise ValueError(f"`{f.name}` must be {kind.__name__}, got {value!r}.")
        defaults = {f.name: f.default for f in dataclasses.fields(self)}
        for name in self.unused:
            if getattr(self, name) not in (defaults[name], [], None):
                raise ValueError(f"{type(self).__name__} does not take `{name}`.")
        for name in ("seq_length", "batch_size", "gradient_accumulation_steps", "max_steps", "save_steps",
                     "eval_steps", "logging_steps", "save_total_limit"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"`{name}` must be a positive integer, got {getattr(self, name)!r}.")
        if self.warmup_steps < 0:
            raise ValueError(f"`warmup_steps` must be >= 0, got {self.warmup_steps!r}.")
        if not 0 <= self.random_length_prob <= 1:
            raise ValueError(f"`random_length_prob` must lie in [0, 1], got {self.random_length_prob!r}.")
        if not self.learning_rate > 0:
            raise ValueError(f"`learning_rate` must be > 0, got {self.learning_rate!r}.")
        if self.precision not in _registry("PRECISIONS"):
            raise ValueError(f"`precision` must be one of {_registry('PRECISIONS')}, got {self.precision!r}.")

    @classmethod
    def build(cls, recipe=None, fields=None):
        """`recipe` (default: this class's defaults) with `fields` replaced: what `train(out, recipe, **fields)` runs."""
        recipe = recipe if recipe is not None else cls()
        if not isinstance(recipe, cls):
            raise ValueError(f"`recipe` must be a {cls.__name__}, got {type(recipe).__name__}.")
        return recipe.replace(**fields) if fields else recipe

    def replace(self, **fields):
        """A copy with `fields` changed; unknown names are an error listing the recipe's fields."""
        known = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(fields) - known)
        if unknown:
            raise ValueError(f"Unknown {type(self).__name__} fields {unknown}; the recipe has {sorted(known)}.")
        return dataclasses.replace(self, **fields)

    def to_dict(self) -> dict:
        """The fields as JSON values (objects, such as a tokenizer passed in Python, by their class name)."""
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            try:
                json.dumps(value)
            except TypeError:
                value = f"<{type(value).__name__}>"
            out[f.name] = value
        return out


@dataclass
class TrainRecipe(RunRecipe):
    """`illada train`: a new model (from a preset and/or config fields) or one to fine-tune."""

    # --- model and tokenizer
    model: str | None = _option(None, "start from this model folder or Hub id (fine-tuning)")
    preset: str | None = _option(None, "a new model from a preset (see `illada presets`)")
    config: object = _option(None, "IlladaConfig fields for a new model: a JSON file or an inline JSON object")
    tokenizer: object = _option(None, "tokenizer folder or Hub id (default: the model's)")
    train_tokenizer_vocab: int | None = _option(None, "train a byte-level BPE tokenizer of VOCAB tokens on the data",
                                                flag="--train-tokenizer", metavar="VOCAB")
    objective: str = _option("diffusion", "diffusion, or autoregressive: the same model under a causal mask (a "
                                          "baseline, or the first stage of AR-to-diffusion adaptation)",
                             choices="OBJECTIVES")


@dataclass
class AdaptRecipe(RunRecipe):
    """`illada adapt`: an autoregressive causal LM turned into a masked diffusion LM (bidirectional attention, logits
    kept shifted, a mask token), trained with the masked-diffusion objective; full fine-tuning or LoRA."""

    # --- the base model
    base: str | None = _option(None, "the causal LM: a local folder, a Hub id, or a .gguf file")
    gguf_file: str | None = _option(None, "a GGUF file inside --base (a folder or Hub repository)")
    mask_token: str | None = _option(None, "the mask token: a token string or id of the base's vocabulary (an "
                                           "unused special token), 'new' for one new row, or unset: found automatically")
    # --- what trains
    lora_r: int | None = _option(None, "LoRA rank (needs peft); unset: full fine-tuning")
    lora_alpha: int | None = _option(None, "LoRA alpha (default: twice the rank)")
    lora_dropout: float = _option(0.0, "LoRA dropout")
    lora_targets: list[str] = _option(["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
                                      "modules LoRA adapts")
    init_adapter: str | None = _option(None, "with LoRA: start from a saved adapter folder (this command's "
                                             "--save-adapter output, e.g. the demo's) instead of a fresh LoRA")
    anneal_steps: int = _option(0, "anneal attention from causal to bidirectional over the first N steps (0: at once)")
    save_adapter: bool = _option(False, "with LoRA: save the adapter and a pointer to its base instead of merged "
                                        "weights (from_pretrained follows the pointer)")
    adapter_dtype: str = _option("float32", "dtype of the saved adapter weights (bfloat16 halves the folder)",
                                 choices="ADAPTER_DTYPES")
    # adaptation starts from a trained model: gentler optimisation defaults than training from scratch
    batch_size: int = _option(8, "sequences per batch (per device)")
    max_steps: int = _option(500, "optimiser steps")
    learning_rate: float = _option(5e-4, "peak learning rate (full fine-tuning wants about 1e-4)", flag="--lr")
    warmup_steps: int = _option(20, "linear warm-up steps")
    weight_decay: float = _option(0.0, "AdamW weight decay")
    eval_steps: int = _option(100, "held-out loss every N steps")
    save_steps: int = _option(100, "checkpoint every N steps")

    def __post_init__(self):
        super().__post_init__()
        if self.lora_r is not None and self.lora_r < 1:
            raise ValueError(f"`lora_r` must be a positive integer (unset for full fine-tuning), got {self.lora_r!r}.")
        if self.anneal_steps < 0:
            raise ValueError(f"`anneal_steps` must be >= 0, got {self.anneal_steps!r}.")
        if self.init_adapter is not None and self.lora_r is None:
            raise ValueError("`init_adapter` continues a LoRA adapter: set `lora_r` (its rank) too.")
        if self.save_adapter and self.lora_r is None:
            raise ValueError("`save_adapter` saves a LoRA adapter: set `lora_r` too (full fine-tuning saves weights).")
        if not 0 <= self.lora_dropout < 1:
            raise ValueError(f"`lora_dropout` must lie in [0, 1), got {self.lora_dropout!r}.")
        if self.adapter_dtype not in _registry("ADAPTER_DTYPES"):
            raise ValueError(f"`adapter_dtype` must be one of {_registry('ADAPTER_DTYPES')}, got {self.adapter_dtype!r}.")


@dataclass
class DistillRecipe(RunRecipe):
    """`illada distill`: certainty-forcing self-distillation of a model on its own greedy trajectories (dParallel's
    recipe, with text replay); see `distill.py`."""

    unused: ClassVar[tuple[str, ...]] = ("packing", "random_length_prob", "eval_data", "group_by_length")

    # --- the teacher and its trajectories
    model: str | None = _option(None, "the teacher (and starting student): a model folder or Hub id")
    trajectories: str | None = _option(None, "JSONL of teacher outputs: read if it exists, else generated and written")
    sft: list[str] = _option([], "JSONL chats whose answers are the targets instead of the teacher's own outputs "
                                 "(e.g. an autoregressive model's answers: no teacher pass)")
    num_prompts: int = _option(1024, "prompts cut from the corpus for the teacher to decode")
    prompt_tokens: list[int] = _option([1, 4], "the shortest and longest prompt, in tokens", nargs=2,
                                       metavar=("MIN", "MAX"))
    max_new_tokens: int = _option(224, "tokens the teacher generates per prompt")
    block_length: int = _option(32, "block length of the teacher's sampler (and of the saved generation config)")
    teacher_cache: str = _option("dual", "cache policy of the teacher's sampler", choices="CACHES")
    generation_batch_size: int = _option(32, "prompts the teacher decodes at once")
    # --- the loss
    certainty_weight: float = _option(1.0, "weight of the entropy of correct predictions")
    text_weight: float = _option(1.0, "weight of the replayed corpus text under the plain diffusion loss (0: none)")
    heldout_fraction: float = _option(0.02, "the share of the corpus the teacher's own training held out (kept unseen)")
    threshold: float = _option(0.9, "parallel-decoding threshold saved with the model")
    # distillation defaults
    eval_fraction: float = _option(0.05, "share of the trajectories held out")
    seq_length: int | None = _option(None, "length of the replayed text sequences (default: the model's context)")
    batch_size: int = _option(8, "trajectories per batch (and as many text sequences with text replay)")
    max_steps: int = _option(800, "optimiser steps")
    learning_rate: float = _option(5e-4, "peak learning rate", flag="--lr")
    warmup_steps: int = _option(20, "linear warm-up steps")
    weight_decay: float = _option(0.0, "AdamW weight decay")
    eval_steps: int = _option(100, "held-out loss every N steps")

    def __post_init__(self):
        super().__post_init__()
        if self.sft and self.trajectories:
            raise ValueError("Pass `sft` (chats whose answers are the targets) or `trajectories` (the teacher's own "
                             "outputs), not both.")
        if self.certainty_weight < 0:
            raise ValueError(f"`certainty_weight` must be >= 0, got {self.certainty_weight!r}.")
        if self.text_weight < 0:
            raise ValueError(f"`text_weight` must be >= 0 (0: no text replay), got {self.text_weight!r}.")
        if not 0 < self.threshold <= 1:
            raise ValueError(f"`threshold` must lie in (0, 1], got {self.threshold!r}.")
        if len(self.prompt_tokens) != 2 or not 1 <= self.prompt_tokens[0] <= self.prompt_tokens[1]:
            raise ValueError(f"`prompt_tokens` must be [MIN, MAX] with 1 <= MIN <= MAX, got {self.prompt_tokens!r}.")


# --- command-line flags from the fields -------------------------------------------------------------------------

def _base_type(annotation):
    """`int | None` -> int, `list[str]` -> list, `object` -> object."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _base_type(args[0])
    if origin is list:
        return list
    return annotation


# Where each registry named by a field's `choices` lives.
REGISTRIES = {"CACHES": "caching", "ADAPTER_DTYPES": "adapt", "TIME_SAMPLING": "collators",
              "LOSS_WEIGHTING": "collators", "OBJECTIVES": "training", "PRECISIONS": "training"}


def _registry(name: str):
    """The names of a policy registry, in its own order (a tuple) or sorted (a table)."""
    import importlib

    registry = getattr(importlib.import_module(f".{REGISTRIES[name]}", __package__), name)
    return list(registry) if isinstance(registry, tuple) else sorted(registry)


def add_recipe_arguments(parser: argparse.ArgumentParser, recipe_class, skip=()) -> None:
    """One flag per field of `recipe_class` (minus `skip`), with the field's default, help and choices."""
    for f in dataclasses.fields(recipe_class):
        if f.name in skip or f.name in recipe_class.unused:
            continue
        meta = f.metadata
        flag = meta.get("flag", "--" + f.name.replace("_", "-"))
        kind = _base_type(f.type)
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        options = {"dest": f.name, "help": meta.get("help"), "default": default}
        if "metavar" in meta:
            options["metavar"] = meta["metavar"]
        if kind is bool:
            options["action"] = "store_false" if default else "store_true"
        elif kind is list:
            options["nargs"] = meta.get("nargs", "+")
            item = typing.get_args(f.type)[0] if typing.get_args(f.type) else str
            if item in (int, float):
                options["type"] = item
        else:
            options["type"] = kind if kind in (int, float) else str
            if "choices" in meta:
                options["choices"] = _registry(meta["choices"])
        parser.add_argument(flag, **options)


def recipe_from_args(recipe_class, args: argparse.Namespace):
    """The recipe whose fields the parsed `args` hold."""
    return recipe_class(**{f.name: getattr(args, f.name) for f in dataclasses.fields(recipe_class)
                           if hasattr(args, f.name)})


__all__ = ["RunRecipe", "TrainRecipe", "AdaptRecipe", "DistillRecipe", "add_recipe_arguments", "recipe_from_args"]
