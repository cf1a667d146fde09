"""Training masked diffusion LMs on the plain `transformers.Trainer` (library-only: no Hub file imports this).

The objective runs in the data collator (`collators.py`: the forward process) and the model's `forward` (the
weighted loss), so accelerate, DDP/FSDP, DeepSpeed and peft/LoRA apply exactly as for any HF model: under
`accelerate launch` each process trains on its share of every batch (`batch_size` is per process) and one process
writes the folder. Each process draws the masking noise of its own share, so a data-parallel run matches a
one-process run at the same global batch in distribution, not bit for bit (the autoregressive objective, which has no
noise, matches exactly). `objective="autoregressive"` trains the same model under a causal mask: an AR baseline of the
same architecture, or the first stage of AR-to-diffusion adaptation (`train(model=<its checkpoint>)`).

Here: the model and generation config of a new run, the output-folder rule, `TrainingArguments` from a recipe, the
shared run driver (`run_trainer`, `finish_run`, also used by `adapt` and `distill`) and `train()`, which writes
Hub-native checkpoints. Corpora and tokenizers are in `corpus.py`.
"""

import json
import os
import time
from pathlib import Path

import torch

from .collators import CausalCollator, PretrainCollator, SFTCollator
from .corpus import (Corpus, check_tokenizer, encode_rows, pack_documents, pad_documents, read_corpus, sft_layout,
                     train_tokenizer)

# Plain-text objectives (SFT is always diffusion). `train()` picks the collator from the objective and the layout:
# diffusion -> PretrainCollator (packed) or SFTCollator (padded, an empty prompt); autoregressive -> CausalCollator.
OBJECTIVES = ("diffusion", "autoregressive")
PRECISIONS = ("float32", "bfloat16", "float16")  # the Trainer's default, bf16 and fp16 mixed precision


# ---------------------------------------------------------------------------------------------------------------
# 1. Model and generation config for a run


def model_config(tokenizer, seq_length: int, preset: str | None = None, config: dict | str | None = None):
    """`(config, generation_config)` for a new model: a preset and/or a dict (or path to a config.json) of
    `IlladaConfig` fields; the vocabulary and special ids come from the tokenizer."""
    from .configuration_illada import IlladaConfig
    from .generation_config import IlladaGenerationConfig
    from .presets import load_preset

    config = read_config_fields(config)
    skip = ("architectures", "auto_map", "transformers_version")
    fields = {k: v for k, v in (config or {}).items() if not k.startswith("_") and k not in skip}
    fields.update(
        mask_token_id=tokenizer.mask_token_id, eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id, pad_token_id=tokenizer.pad_token_id,
        vocab_size=max(int(fields.get("vocab_size") or 0), len(tokenizer)),
    )
    if preset is not None:
        cfg, generation = load_preset(preset, **{k: v for k, v in fields.items() if k != "model_type"})
        generation = generation.merged()
    else:
        fields.pop("model_type", None)
        cfg, generation = IlladaConfig(**fields), IlladaGenerationConfig(max_new_tokens=64, steps=64, block_length=32)
    if seq_length > cfg.max_position_embeddings:
        raise ValueError(
            f"`seq_length` {seq_length} exceeds the model's context (`max_position_embeddings` = "
            f"{cfg.max_position_embeddings}); use a shorter sequence length or a larger context."
        )
    eot = tokenizer.convert_tokens_to_ids("<|eot|>") if "<|eot|>" in tokenizer.get_vocab() else None
    generation.update(mask_token_id=cfg.mask_token_id, eos_token_id=cfg.eos_token_id, pad_token_id=cfg.pad_token_id,
                      bos_token_id=cfg.bos_token_id, eot_token_id=eot)
    return cfg, generation


# ---------------------------------------------------------------------------------------------------------------
# 2. The training driver

RECIPE_FILE = "illada_train.json"  # the recipe of the run and its results, written beside the weights


def check_output_dir(output_dir: Path, overwrite: bool, resume) -> str | None:
    """Refuse a non-empty output folder unless asked; return the checkpoint to resume from (or None)."""
    from transformers.trainer_utils import get_last_checkpoint

    output_dir = Path(output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise ValueError(f"The output folder {str(output_dir)!r} is a file: name a folder to write the model into.")
    if resume:
        checkpoint = get_last_checkpoint(str(output_dir)) if resume is True and output_dir.is_dir() else resume
        if checkpoint is True or checkpoint is None or not Path(checkpoint).is_dir():
            where = str(output_dir) if resume is True else str(resume)
            raise ValueError(
                f"`resume`: no checkpoint to resume from in {where!r} (looked for checkpoint-N folders)."
                if resume is True else f"`resume`: {where!r} is not a checkpoint folder."
            )
        return str(checkpoint)
    if output_dir.exists() and any(output_dir.iterdir()) and not overwrite:
        raise ValueError(
            f"The output folder {str(output_dir)!r} exists and is not empty: pass `overwrite=True` (--overwrite) to "
            "write into it, or `resume=True` (--resume) to continue its last checkpoint."
        )
    return None


def training_arguments(output_dir, recipe, *, has_eval: bool, disable_tqdm: bool = False):
    """The `TrainingArguments` of a run from its recipe: AdamW (beta2 0.95), gradient clipping at 1, a fixed step
    budget, losses only at evaluation (no logits gathered)."""
    from transformers import TrainingArguments

    return TrainingArguments(
        output_dir=str(output_dir), max_steps=recipe.max_steps, per_device_train_batch_size=recipe.batch_size,
        per_device_eval_batch_size=recipe.batch_size, gradient_accumulation_steps=recipe.gradient_accumulation_steps,
        learning_rate=recipe.learning_rate, warmup_steps=recipe.warmup_steps, lr_scheduler_type=recipe.lr_scheduler,
        weight_decay=recipe.weight_decay, adam_beta2=0.95, max_grad_norm=1.0, logging_steps=recipe.logging_steps,
        eval_strategy="steps" if has_eval else "no", eval_steps=recipe.eval_steps, save_strategy="steps",
        save_steps=recipe.save_steps, save_total_limit=recipe.save_total_limit, seed=recipe.seed, report_to="none",
        remove_unused_columns=False, dataloader_num_workers=0, disable_tqdm=disable_tqdm, prediction_loss_only=True,
        bf16=recipe.precision == "bfloat16", fp16=recipe.precision == "float16",
        # without an accelerator, say so: bf16 then runs on the CPU, and `accelerate launch` processes join over gloo
        use_cpu=not torch.accelerator.is_available(),
        **_length_grouping(getattr(recipe, "group_by_length", False)),
    )


def _length_grouping(enabled: bool) -> dict:
    """The `TrainingArguments` option that groups rows by length (its name changed within transformers 5)."""
    from dataclasses import fields

    from transformers import TrainingArguments

    if not enabled:
        return {}
    names = {f.name for f in fields(TrainingArguments)}
    return {"train_sampling_strategy": "group_by_length"} if "train_sampling_strategy" in names \
        else {"group_by_length": True}


def diffusion_collator(corpus: Corpus, recipe, mask_token_id: int, eos_token_id: int, shift_logits: bool = False):
    """The forward process for `encode_rows`' rows: `SFTCollator` for SFT-layout rows, else `PretrainCollator`."""
    common = dict(time_sampling=recipe.time_sampling, loss_weighting=recipe.loss_weighting, seed=recipe.seed,
                  shift_logits=shift_logits)
    if sft_layout(corpus, recipe):
        return SFTCollator(mask_token_id, eos_token_id=eos_token_id, **common)
    return PretrainCollator(mask_token_id, random_length_prob=recipe.random_length_prob, **common)


def run_trainer(output_dir, recipe, *, net, tokenizer, train_set, eval_set, collator, checkpoint=None,
                callbacks=None, disable_tqdm=False, trainer_class=None):
    """Train `net` on the stock `transformers.Trainer` (or `trainer_class`, a subclass) and return the Trainer;
    `finish_run` then saves the run."""
    from transformers import Trainer

    args = training_arguments(output_dir, recipe, has_eval=bool(eval_set), disable_tqdm=disable_tqdm)
    trainer = (trainer_class or Trainer)(
        model=net, args=args, data_collator=collator, train_dataset=train_set, eval_dataset=eval_set or None,
        processing_class=tokenizer, callbacks=callbacks,
    )
    trainer.train(resume_from_checkpoint=checkpoint)
    return trainer


def finish_run(trainer, output_dir, recipe, *, started: float, checkpoint=None, save=None, **results) -> dict:
    """Save the final Hub-native folder (`save(output_dir)` on the main process, default `trainer.save_model`), drop
    the Trainer's pickle, evaluate once more and write `RECIPE_FILE`: the recipe's fields, then the run's results. `train_loss` is the
    mean training loss over every logged step of the run, the resumed part and the part before included."""
    output_dir = Path(output_dir)
    parameters = sum(p.numel() for p in trainer.model.parameters())  # as trained (a LoRA run's include the adapter)
    main = trainer.is_world_process_zero()  # data parallel: one process writes the folder
    if save is None:
        trainer.save_model(str(output_dir))  # every process takes part (FSDP / DeepSpeed gather the weights); one writes
    elif main:
        save(output_dir)
    if main:
        (output_dir / "training_args.bin").unlink(missing_ok=True)  # a pickle; the recipe below is the record
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    metrics = {"train_loss": sum(losses) / len(losses) if losses else None, "global_step": trainer.state.global_step}
    if trainer.eval_dataset is not None:
        metrics["eval_loss"] = trainer.evaluate()["eval_loss"]
    record = {"recipe": type(recipe).__name__, **recipe.to_dict(), **results,
              "parameters": parameters,
              "wall_seconds": round(time.time() - started, 1), "resumed_from": checkpoint, **metrics}
    if main:
        (output_dir / RECIPE_FILE).write_text(json.dumps(record, indent=2) + "\n")
    trainer.accelerator.wait_for_everyone()  # no process returns before the folder is complete
    return record


def train(output_dir, recipe=None, *, overwrite: bool = False, resume=None, disable_tqdm: bool = False,
          callbacks=None, log=None, **fields):
    """Train a masked diffusion LM with `transformers.Trainer` and save it Hub-native in `output_dir`.

    `recipe` is a `recipes.TrainRecipe` (default: all defaults); `fields` replace its fields (`train(out,
    data=[...], max_steps=200)`). Pretraining reads plain text (`data`: files or folders, documents packed with EOS
    between them, split by `doc_separator` lines; with `packing=False` each document is one sequence padded with
    EOS, see `pad_documents`); SFT reads JSONL chats (`sft`); both together train on the mixture. Held-out data is
    `eval_data`, or else a deterministic `eval_fraction` of the documents; its loss is reported every `eval_steps`.
    The model is new (from `preset` and/or `config` fields) or loaded from `model`; the tokenizer is `tokenizer` (a
    folder, Hub id or object), the model's, or one trained here with `train_tokenizer_vocab` tokens. Checkpoints
    (`checkpoint-N`) and the final folder hold config + safetensors + our code + auto_map, the tokenizer and
    generation_config.json. A non-empty `output_dir` is refused unless `overwrite` or `resume` (True: the last
    checkpoint; or a path). `log` is accepted for the command line's sake (the Trainer reports progress itself).
    Returns the `Trainer`.
    """
    from transformers import AutoTokenizer

    from .modeling_illada import IlladaForMaskedDiffusion
    from .presets import check_memory
    from .recipes import TrainRecipe

    started = time.time()
    recipe = TrainRecipe.build(recipe, fields)
    output_dir = Path(output_dir)
    checkpoint = check_output_dir(output_dir, overwrite, resume)
    if recipe.objective not in OBJECTIVES or (recipe.sft and recipe.objective != "diffusion"):
        allowed = ["diffusion"] if recipe.sft else sorted(OBJECTIVES)
        raise ValueError(f"Unknown `objective` {recipe.objective!r} for {'SFT' if recipe.sft else 'plain text'}; "
                         f"allowed: {allowed}.")
    if recipe.model is not None and (recipe.preset is not None or recipe.config is not None):
        raise ValueError("`preset` / `config` describe a new model: they cannot be combined with `model` (fine-tuning).")

    # 1. Documents and the held-out split
    corpus = read_corpus(recipe)

    # 2. Tokenizer and model (a resumed run takes both from its checkpoint, whatever else is passed)
    source = checkpoint or recipe.model
    tokenizer = recipe.tokenizer
    if isinstance(tokenizer, (str, os.PathLike)):
        tokenizer = AutoTokenizer.from_pretrained(tokenizer)
    if checkpoint is not None or (tokenizer is None and source is not None):
        tokenizer = AutoTokenizer.from_pretrained(source)
    elif tokenizer is None:
        if not recipe.train_tokenizer_vocab:
            raise ValueError("No tokenizer: pass `tokenizer` (folder or Hub id), `model`, or `train_tokenizer_vocab`.")
        texts = corpus.texts + [m["content"] for chat in corpus.chats for m in chat]
        tokenizer = train_tokenizer(texts, recipe.train_tokenizer_vocab)
    check_tokenizer(tokenizer, sft=bool(recipe.sft))
    if source is not None:
        net = load_model(source)  # a checkpoint too: the Auto classes keep its model type (LLaDA, Dream)
        check_model_fits(net, tokenizer, recipe.seq_length)
    else:
        config = read_config_fields(recipe.config)
        cfg, generation = model_config(tokenizer, recipe.seq_length, recipe.preset, config)
        check_memory(cfg, torch.float32, "cpu", what=f"Preset {recipe.preset!r}" if recipe.preset else "The model")
        torch.manual_seed(recipe.seed)
        net = IlladaForMaskedDiffusion(cfg)
        net.generation_config = generation
    shift = bool(getattr(net.config, "shift_logits", False))

    # 3. Datasets and the forward process
    if recipe.objective == "autoregressive":
        layout = pack_documents if recipe.packing else pad_documents
        train_set = layout(corpus.texts, tokenizer, recipe.seq_length)
        eval_set = (pack_documents(corpus.heldout_texts, tokenizer, recipe.seq_length, heldout=True) if recipe.packing
                    else pad_documents(corpus.heldout_texts, tokenizer, recipe.seq_length)) if corpus.heldout_texts else []
        collator = CausalCollator(shift_logits=shift)
    else:
        train_set, eval_set = encode_rows(corpus, tokenizer, recipe)
        collator = diffusion_collator(corpus, recipe, tokenizer.mask_token_id, tokenizer.eos_token_id, shift)

    # 4. The plain Trainer, 5. the final folder and the recipe
    trainer = run_trainer(output_dir, recipe, net=net, tokenizer=tokenizer, train_set=train_set, eval_set=eval_set,
                          collator=collator, checkpoint=checkpoint, callbacks=callbacks, disable_tqdm=disable_tqdm)
    finish_run(trainer, output_dir, recipe, started=started, checkpoint=checkpoint,
               train_sequences=len(train_set), eval_sequences=len(eval_set),
               train_documents=corpus.train_documents, eval_documents=corpus.eval_documents)
    return trainer


def read_config_fields(config) -> dict | None:
    """`config` as a dict of config fields: a dict as it is, an inline JSON object, or the path of a JSON file."""
    if config is None or isinstance(config, dict):
        return config
    text = str(config)
    inline = text.lstrip().startswith("{")
    if not inline:
        if not Path(text).is_file():
            raise ValueError(f"`config`: {text!r} is neither a JSON object nor a file (no such file).")
        text = Path(text).read_text(encoding="utf-8")
    try:
        fields = json.loads(text)
    except json.JSONDecodeError as error:
        where = "the inline `config`" if inline else f"`config` file {config}"
        raise ValueError(f"{where} is not valid JSON: {error.msg} at line {error.lineno}, column {error.colno}.") \
            from None
    if not isinstance(fields, dict):
        raise ValueError(f"`config` must be a JSON object of IlladaConfig fields, got {type(fields).__name__}.")
    return fields


def check_model_fits(net, tokenizer, seq_length: int) -> None:
    """Refuse a model whose context is shorter than the sequences, or whose mask token is not the tokenizer's."""
    if seq_length > net.config.max_position_embeddings:
        raise ValueError(
            f"`seq_length` {seq_length} exceeds the model's context "
            f"(`max_position_embeddings` = {net.config.max_position_embeddings})."
        )
    if net.config.mask_token_id != tokenizer.mask_token_id:
        raise ValueError(
            f"The tokenizer's mask token id ({tokenizer.mask_token_id}) differs from the model's "
            f"`mask_token_id` ({net.config.mask_token_id})."
        )


def load_model(source):
    """A model of this package from a folder or Hub id, through the Auto classes (so LLaDA's and Dream's layouts
    map too; the package registered them when it was imported)."""
    from transformers import AutoModel

    return AutoModel.from_pretrained(source)
