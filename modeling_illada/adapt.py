"""`illada adapt`: turn a pretrained autoregressive causal LM into a masked diffusion LM (library-only: no Hub file
imports this).

The recipe (Dream's and the AR-to-diffusion papers', see `../shared/reference/adaptation.md` in the project):

1. *Load the base*: a causal LM of the Llama / Qwen2 / Mistral family from a local folder, a Hub id, or a GGUF file
   (transformers' `gguf_file=` loader de-quantises it; needs the `gguf` package).
2. *Same weights, this package's classes*: the base's blocks are this package's (same names, `model.layers.N...`),
   so its weights load as they are into an `IlladaForMaskedDiffusion` whose config says `shift_logits=True` (output
   i keeps predicting token i + 1, as the base's head was trained to) and whose attention is bidirectional.
3. *A mask token*: the one asked for (a token string or id of the base's vocabulary), or found automatically: the
   tokenizer's own mask token, else an unused special token (not in the chat template, not a BOS/EOS/pad/unk token
   nor named like one, and not once in the training text; one named mask/reserved/unused first), else one new row
   (`mask_token="new"`, the mean of the embedding rows).
4. *Train* with the masked-diffusion objective on plain text and/or chats, through the same corpora, collators and
   stock `Trainer` as `illada train` (position 0 is never masked: no output predicts it). Full fine-tuning, or
   LoRA through peft (`lora_r`); the mask token's embedding row trains in both (peft's `trainable_token_indices`).
   Optionally the attention is annealed from causal to bidirectional over the first `anneal_steps` steps
   (DiffuLLaMA's schedule): at step s each query also sees a random s / N share of the positions after it.
5. *Save* a Hub-native folder: merged weights, or with `save_adapter` the LoRA adapter and a pointer to its base,
   which `from_pretrained` follows (`adapters.py`). Checkpoints, `--resume` and the recipe file are `illada train`'s.
"""

import json
import time
from pathlib import Path

import torch

from .recipes import AdaptRecipe
from .collators import batch_generator
from .corpus import check_tokenizer, encode_rows, read_corpus
from .training import check_output_dir, diffusion_collator, finish_run, run_trainer

# The causal-LM families whose blocks are this package's: model_type -> how their attention biases read.
SUPPORTED = {
    "llama": lambda c: (bool(getattr(c, "attention_bias", False)), bool(getattr(c, "attention_bias", False)),
                        bool(getattr(c, "mlp_bias", False))),
    "qwen2": lambda c: (True, False, False),  # q/k/v biases, none on o (transformers' Qwen2Attention)
    "mistral": lambda c: (False, False, False),
}
# GGUF `general.architecture` names are those families' model types (transformers reads them into those classes).
GGUF_ARCHITECTURES = tuple(SUPPORTED)
ADAPTER_DTYPES = ("float32", "bfloat16", "float16")
NEW_MASK = "new"
# Special tokens whose names say they have a role (document or turn boundaries, padding) are never chosen as the mask,
# even when a tokenizer does not declare the role (a GGUF file may not name its unk token, say).
ROLE_WORDS = ("endoftext", "eos", "bos", "pad", "unk", "im_start", "im_end", "eot", "begin_of", "end_of")
NEW_MASK_TOKEN = "<|mask|>"


# --- 1. the base --------------------------------------------------------------------------------------------------

def _gguf_architecture(path: Path) -> str:
    """`general.architecture` of a GGUF file, or a clear error naming the file."""
    try:
        from gguf import GGUFReader
    except ImportError:
        raise ImportError("Reading a GGUF base needs the `gguf` package: pip install gguf") from None
    try:
        reader = GGUFReader(str(path))
        field = reader.fields["general.architecture"]
        return bytes(field.parts[field.data[0]]).decode()
    except Exception as error:  # truncated, not GGUF, no architecture: the reader's own errors vary
        raise ValueError(f"{path} is not a readable GGUF file ({type(error).__name__}: {error}).") from None


def load_causal_lm(base: str, gguf_file: str | None = None):
    """`(model, tokenizer, location, gguf_file)` of the base causal LM; errors name what is supported."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    location, path = base, Path(base)
    if path.suffix == ".gguf" or (gguf_file and path.is_dir()):
        file = path if path.suffix == ".gguf" else path / gguf_file
        if not file.is_file():
            raise FileNotFoundError(f"GGUF file {file} does not exist.")
        architecture = _gguf_architecture(file)
        if architecture not in GGUF_ARCHITECTURES:
            raise ValueError(f"{file} holds a GGUF model of architecture {architecture!r}; `illada adapt` supports "
                             f"{sorted(GGUF_ARCHITECTURES)}.")
        location, gguf_file = str(file.parent), file.name
    options = {"gguf_file": gguf_file} if gguf_file else {}
    config = AutoConfig.from_pretrained(location, **options)
    rope = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    if rope.get("rope_type", rope.get("type", "default")) != "default":
        raise ValueError(f"{base} uses RoPE of type {rope.get('rope_type', rope.get('type'))!r}; `illada adapt` "
                         "supports plain RoPE (rope_type 'default'), as iLLaDA, LLaDA and Dream use.")
    architectures = getattr(config, "architectures", None) or []
    if config.model_type not in SUPPORTED or (architectures and not any(a.endswith("ForCausalLM") for a in architectures)):
        raise ValueError(
            f"{base} is a {config.model_type!r} model ({architectures or 'no architectures listed'}); `illada adapt` "
            f"takes a causal LM of the families {sorted(SUPPORTED)} (their blocks are this package's)."
        )
    model = AutoModelForCausalLM.from_pretrained(location, dtype=torch.float32, **options)
    tokenizer = AutoTokenizer.from_pretrained(location, **options)
    return model.eval(), tokenizer, location, gguf_file


def base_pointer(location: str, gguf_file: str | None) -> dict:
    """How an adapter folder names its base (`adapters.resolve_base`): a file of an installed Python distribution
    when it is one (portable across machines; with the distribution's version and the file's recorded sha256, which
    loading checks), else the local path, else the Hub id."""
    path = Path(location)
    if not path.exists():
        return {"repo_id": location, **({"gguf_file": gguf_file} if gguf_file else {})}
    target = (path / gguf_file if gguf_file else path).resolve()
    from importlib import metadata

    from .adapters import recorded_sha256

    for top, names in metadata.packages_distributions().items():
        for name in names:
            try:
                distribution = metadata.distribution(name)
                root = Path(distribution.locate_file("")).resolve()
            except metadata.PackageNotFoundError:
                continue
            if target.is_relative_to(root / top):
                file = target.relative_to(root).as_posix()
                pointer = {"distribution": name, "version": distribution.version, "file": file}
                digest = recorded_sha256(distribution, file)
                return {**pointer, "sha256": digest} if digest else pointer
    return {"path": str(target)}


# --- 2-3. the diffusion model and its mask token ----------------------------------------------------------------

def choose_mask_token(tokenizer, requested, rows: list[dict]) -> tuple[int, bool]:
    """`(mask_token_id, is_new)`; see the module docstring, step 3. `rows` are the encoded training rows."""
    used = {t for row in rows for t in row["input_ids"]}
    vocab = tokenizer.get_vocab()
    if requested == NEW_MASK:
        return len(tokenizer), True
    if requested is not None:
        token_id = int(requested) if str(requested).isdigit() else vocab.get(str(requested))
        if token_id is None or not 0 <= token_id < len(tokenizer):
            raise ValueError(f"`mask_token` {requested!r} is not a token of the base's vocabulary "
                             f"(size {len(tokenizer)}); name a token string, an id, or '{NEW_MASK}'.")
        if token_id in used:
            count = sum(row["input_ids"].count(token_id) for row in rows)
            raise ValueError(f"`mask_token` {requested!r} (id {token_id}) occurs {count} times in the training text: "
                             "the model could not tell it from a mask. Choose an unused token or "
                             f"`mask_token='{NEW_MASK}'`.")
        return token_id, False
    if tokenizer.mask_token_id is not None and tokenizer.mask_token_id not in used:
        return tokenizer.mask_token_id, False
    reserved = {tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id, tokenizer.unk_token_id}
    template = tokenizer.chat_template or ""
    candidates = [
        (token_id, added.content) for token_id, added in sorted(tokenizer.added_tokens_decoder.items())
        if added.special and token_id not in reserved and token_id not in used and added.content not in template
        and not any(role in added.content.lower() for role in ROLE_WORDS)
    ]
    if not candidates:
        return len(tokenizer), True
    named = [c for c in candidates if any(w in c[1].lower() for w in ("mask", "reserved", "unused"))]
    return (named or candidates)[0][0], False


def add_mask_token(tokenizer) -> int:
    """Add a new special token as the tokenizer's mask token (`NEW_MASK_TOKEN`, numbered if that string is taken)
    and return its id, which is always a new row: `len(tokenizer)` before."""
    name, number, vocab = NEW_MASK_TOKEN, 0, tokenizer.get_vocab()
    while name in vocab:
        number += 1
        name = NEW_MASK_TOKEN.replace("mask", f"mask_{number}")
    before = len(tokenizer)
    tokenizer.add_special_tokens({"mask_token": name})
    if tokenizer.mask_token_id != before:
        raise ValueError(f"Adding the mask token {name!r} did not make a new row (got id {tokenizer.mask_token_id}).")
    return before


def _checkpoint_mask_token(checkpoint, requested):
    """The mask token a checkpoint was trained with (its saved tokenizer's), which a resumed run must keep."""
    from transformers import AutoTokenizer

    saved = AutoTokenizer.from_pretrained(checkpoint).mask_token
    if saved is None:
        return requested
    if requested not in (None, saved, NEW_MASK) and str(requested) != str(
            AutoTokenizer.from_pretrained(checkpoint).mask_token_id):
        raise ValueError(f"`mask_token` {requested!r} differs from the one checkpoint {checkpoint} was trained with "
                         f"({saved!r}); resume with the same recipe.")
    return NEW_MASK if requested == NEW_MASK else saved


def diffusion_config(base_config, tokenizer, mask_token_id: int, vocab_size: int):
    """The `IlladaConfig` of the adapted model: the base's sizes, bidirectional, logits shifted, the mask token."""
    from .configuration_illada import IlladaConfig

    get = lambda name, default=None: getattr(base_config, name, default)  # noqa: E731
    rope = get("rope_parameters") or {"rope_theta": get("rope_theta", 10000.0), "rope_type": "default"}
    qkv_bias, out_bias, mlp_bias = SUPPORTED[base_config.model_type](base_config)
    heads = get("num_attention_heads")
    return IlladaConfig(
        vocab_size=vocab_size, hidden_size=get("hidden_size"), intermediate_size=get("intermediate_size"),
        num_hidden_layers=get("num_hidden_layers"), num_attention_heads=heads,
        num_key_value_heads=get("num_key_value_heads") or heads,
        head_dim=get("head_dim") or get("hidden_size") // heads, hidden_act=get("hidden_act", "silu"),
        max_position_embeddings=get("max_position_embeddings"), rope_parameters=dict(rope),
        rms_norm_eps=float(get("rms_norm_eps", 1e-6)), attention_bias=qkv_bias, attention_output_bias=out_bias,
        mlp_bias=mlp_bias, tie_word_embeddings=bool(get("tie_word_embeddings", False)), shift_logits=True,
        mask_token_id=mask_token_id, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
    )


def build_diffusion_model(base_model, tokenizer, mask_token_id: int, is_new: bool):
    """An `IlladaForMaskedDiffusion` holding the base's weights (plus a new mask row, the embeddings' mean)."""
    from .adapters import load_base_into
    from .generation_config import IlladaGenerationConfig
    from .modeling_illada import IlladaForMaskedDiffusion

    vocab = max(base_model.config.vocab_size, mask_token_id + 1)
    config = diffusion_config(base_model.config, tokenizer, mask_token_id, vocab)
    net = IlladaForMaskedDiffusion(config)
    load_base_into(net, dict(base_model.state_dict()))
    if is_new:
        with torch.no_grad():
            embedding = net.get_input_embeddings().weight
            embedding[mask_token_id] = embedding[: base_model.config.vocab_size].mean(0)
            if not config.tie_word_embeddings:
                net.lm_head.weight[mask_token_id] = 0.0
    end_of_turn = tokenizer.convert_tokens_to_ids("<|im_end|>") if "<|im_end|>" in tokenizer.get_vocab() else None
    net.generation_config = IlladaGenerationConfig(
        max_new_tokens=128, steps=128, block_length=32, mask_token_id=mask_token_id, eos_token_id=config.eos_token_id,
        pad_token_id=config.pad_token_id, bos_token_id=config.bos_token_id,
        eot_token_id=end_of_turn if end_of_turn != config.eos_token_id else None,
    )
    return net


def _require_peft() -> None:
    try:
        import peft  # noqa: F401
    except ImportError:
        raise ImportError("LoRA (`lora_r`) needs peft: pip install peft (or drop `lora_r` for full fine-tuning).") \
            from None


def with_lora(net, recipe: AdaptRecipe):
    """The model wrapped by peft with LoRA on `lora_targets` and the mask token's embedding row trainable."""
    _require_peft()
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=recipe.lora_r, lora_alpha=recipe.lora_alpha or 2 * recipe.lora_r, lora_dropout=recipe.lora_dropout,
        target_modules=list(recipe.lora_targets), bias="none",
        trainable_token_indices={"embed_tokens": [net.config.mask_token_id]},
    )
    return get_peft_model(net, config)


def load_initial_adapter(model, folder) -> None:
    """Copy a saved adapter's weights (`save_adapter_folder`'s `adapter_model.safetensors`) into the fresh LoRA
    `model`, after checking that its rank, alpha and target modules are the recipe's and that every tensor has a
    place of the same shape: a warm start, not a resume (the optimiser and schedule start anew)."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    folder = Path(folder)
    config_file, weights_file = folder / "adapter_config.json", folder / "adapter_model.safetensors"
    if not config_file.is_file() or not weights_file.is_file():
        raise ValueError(f"`init_adapter` {str(folder)!r} is not an adapter folder: it needs adapter_config.json and "
                         "adapter_model.safetensors (what `--save-adapter` writes).")
    saved = json.loads(config_file.read_text())
    ours = model.peft_config["default"]
    for name in ("r", "lora_alpha"):
        if saved.get(name) != getattr(ours, name):
            raise ValueError(f"`init_adapter` {str(folder)!r} has {name}={saved.get(name)!r}, the recipe "
                             f"{getattr(ours, name)!r}: set `lora_r` / `lora_alpha` to the adapter's.")
    if set(saved.get("target_modules") or ()) != set(ours.target_modules):
        raise ValueError(f"`init_adapter` {str(folder)!r} adapts {sorted(saved.get('target_modules') or ())}, the "
                         f"recipe {sorted(ours.target_modules)}: set `lora_targets` to the adapter's.")
    weights = {k: v.float() for k, v in load_file(str(weights_file)).items()}
    try:
        result = set_peft_model_state_dict(model, weights)
    except RuntimeError as error:  # load_state_dict's "size mismatch for ..."
        raise ValueError(f"`init_adapter` {str(folder)!r} does not fit this base (was it trained on another?): "
                         f"{str(error).splitlines()[-1].strip()}") from None
    if result.unexpected_keys:
        raise ValueError(f"`init_adapter` {str(folder)!r} holds tensors this model has no place for: "
                         f"{sorted(result.unexpected_keys)[:3]}")


# --- 4. attention annealing ---------------------------------------------------------------------------------------

def annealed_mask(input_ids: torch.Tensor, fraction: float, seed: int = 0) -> torch.Tensor:
    """`(B, 1, L, L)` boolean attention (True = attend): causal, plus a random `fraction` of the positions after each
    query, drawn from a generator seeded by `seed` and the batch's tokens (so a resumed run draws the same)."""
    batch, length = input_ids.shape
    generator = batch_generator(seed + 1, input_ids.cpu())
    future = torch.rand(batch, 1, length, length, generator=generator) < fraction  # (B, 1, L, L)
    causal = torch.ones(length, length, dtype=torch.bool).tril()  # (L, L)
    return (causal | future).to(input_ids.device)


def annealing_trainer(steps: int, seed: int = 0):
    """A `transformers.Trainer` whose training batches attend through `annealed_mask` with fraction
    `global_step / steps` until `steps` steps have run, then bidirectionally (evaluation: always bidirectional). The
    mask is made in `compute_loss`, where `state.global_step` is the step the batch trains (the dataloader builds
    batches ahead of the step, so a collator could not know it)."""
    from transformers import Trainer

    class AnnealingTrainer(Trainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            if model.training and self.state.global_step < steps:
                mask = annealed_mask(inputs["input_ids"], self.state.global_step / steps, seed)
                inputs = {**inputs, "attention_mask": mask}
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)

    return AnnealingTrainer


# --- 5. the driver ------------------------------------------------------------------------------------------------

def adapt(output_dir, recipe=None, *, overwrite: bool = False, resume=None, disable_tqdm: bool = False,
          callbacks=None, log=print, **fields):
    """Adapt `recipe.base` (an autoregressive causal LM) into a masked diffusion LM saved in `output_dir`; returns
    the `Trainer`. `recipe` is an `AdaptRecipe`; `fields` replace its fields (`adapt(out, base="HuggingFaceTB/...",
    data=[...], lora_r=16)`). A non-empty `output_dir` is refused unless `overwrite` or `resume` (True: the last
    checkpoint, or a path); a resumed run rebuilds the model from the same base and recipe and takes the weights
    (or the adapter) and the optimiser from the checkpoint."""
    started = time.time()
    recipe = AdaptRecipe.build(recipe, fields)
    output_dir = Path(output_dir)
    checkpoint = check_output_dir(output_dir, overwrite, resume)
    if not recipe.base:
        raise ValueError("`base` is required: the causal LM to adapt (a folder, a Hub id or a .gguf file).")
    if recipe.lora_r is not None:
        _require_peft()  # before the (slow) base is loaded

    # 1. Documents, the base and its tokenizer
    corpus = read_corpus(recipe)
    base_model, tokenizer, location, gguf_file = load_causal_lm(recipe.base, recipe.gguf_file)
    log(f"base: {type(base_model).__name__}, {sum(p.numel() for p in base_model.parameters()):,} parameters")
    if tokenizer.eos_token_id is None:
        raise ValueError("The base's tokenizer has no EOS token; documents are packed with EOS between them.")
    if recipe.seq_length > base_model.config.max_position_embeddings:
        raise ValueError(f"`seq_length` {recipe.seq_length} exceeds the base's context "
                         f"(`max_position_embeddings` = {base_model.config.max_position_embeddings}).")

    # 2-3. The training rows, the mask token, the diffusion model
    train_rows, eval_rows = encode_rows(corpus, tokenizer, recipe)
    requested = recipe.mask_token
    if checkpoint is not None:  # a resumed run keeps the mask token its checkpoint was trained with
        requested = _checkpoint_mask_token(checkpoint, requested)
    elif recipe.init_adapter:  # so does a warm start: the adapter's mask row is that token's
        requested = _checkpoint_mask_token(recipe.init_adapter, requested)
    mask_id, is_new = choose_mask_token(tokenizer, requested, train_rows + eval_rows)
    if is_new:
        mask_id = add_mask_token(tokenizer)
    else:
        tokenizer.mask_token = tokenizer.convert_ids_to_tokens(mask_id)
    check_tokenizer(tokenizer, sft=bool(recipe.sft))
    log(f"mask token: {tokenizer.mask_token!r} (id {mask_id}{', a new row' if is_new else ''})")
    torch.manual_seed(recipe.seed)  # the new row and LoRA's initialisation
    net = build_diffusion_model(base_model, tokenizer, mask_id, is_new)
    del base_model
    model = with_lora(net, recipe) if recipe.lora_r is not None else net
    if recipe.init_adapter:
        load_initial_adapter(model, recipe.init_adapter)
        log(f"LoRA starts from the adapter in {recipe.init_adapter}")

    # 4. The forward process (position 0 never masked), optionally annealed attention, the stock Trainer
    collator = diffusion_collator(corpus, recipe, mask_id, tokenizer.eos_token_id, shift_logits=True)
    trainer_class = annealing_trainer(recipe.anneal_steps, recipe.seed) if recipe.anneal_steps else None
    trainer = run_trainer(output_dir, recipe, net=model, tokenizer=tokenizer, train_set=train_rows, eval_set=eval_rows,
                          collator=collator, checkpoint=checkpoint, callbacks=callbacks, disable_tqdm=disable_tqdm,
                          trainer_class=trainer_class)

    # 5. The final folder: merged weights, or the adapter and a pointer to the base
    pointer = base_pointer(location, gguf_file)

    def save(folder: Path):
        if recipe.save_adapter:
            save_adapter_folder(trainer.model, tokenizer, folder, pointer, getattr(torch, recipe.adapter_dtype))
            return
        merged = trainer.model.merge_and_unload() if recipe.lora_r is not None else trainer.model
        merged.save_pretrained(folder)
        tokenizer.save_pretrained(folder)

    finish_run(trainer, output_dir, recipe, started=started, checkpoint=checkpoint, save=save, base_pointer=pointer,
               mask_token=tokenizer.mask_token, mask_token_id=mask_id, new_mask_row=is_new,
               trainable_parameters=sum(p.numel() for p in trainer.model.parameters() if p.requires_grad),
               train_sequences=len(train_rows), eval_sequences=len(eval_rows),
               train_documents=corpus.train_documents, eval_documents=corpus.eval_documents)
    return trainer


def save_adapter_folder(peft_model, tokenizer, folder, pointer: dict, dtype=torch.float32) -> None:
    """Write the adapter folder `adapters.py` loads: config (with `adapter_base`) and code, the peft adapter (its
    weights in `dtype`), the tokenizer and the generation config; no base weights."""
    from safetensors.torch import load_file, save_file
    from transformers.dynamic_module_utils import custom_object_save

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    net = peft_model.get_base_model()
    peft_model.save_pretrained(str(folder))  # adapter_config.json + adapter_model.safetensors
    if dtype != torch.float32:
        weights = folder / "adapter_model.safetensors"
        save_file({k: v.to(dtype).contiguous() for k, v in load_file(weights).items()}, str(weights),
                  metadata={"format": "pt"})
    adapter_config = json.loads((folder / "adapter_config.json").read_text())
    adapter_config["base_model_name_or_path"] = json.dumps(pointer)  # informative: the config says what loads
    (folder / "adapter_config.json").write_text(json.dumps(adapter_config, indent=2) + "\n")
    config = net.config
    config.adapter_base = pointer
    config.auto_map = {"AutoConfig": f"configuration_illada.{type(config).__name__}",
                       "AutoModel": f"modeling_illada.{type(net).__name__}",
                       "AutoModelForMaskedLM": f"modeling_illada.{type(net).__name__}"}
    config.architectures = [type(net).__name__]
    try:
        config.save_pretrained(folder)
    finally:
        del config.adapter_base
    net.generation_config.save_pretrained(folder)
    custom_object_save(net, folder, config=config)
    tokenizer.save_pretrained(folder)


__all__ = ["adapt", "load_causal_lm", "choose_mask_token", "add_mask_token", "diffusion_config",
           "build_diffusion_model", "load_initial_adapter", "annealed_mask", "annealing_trainer", "save_adapter_folder",
           "SUPPORTED", "GGUF_ARCHITECTURES"]
