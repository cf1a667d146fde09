"""Training masked diffusion LMs on the plain `transformers.Trainer` (library-only: no Hub file imports this).

The masked-diffusion objective is split so that nothing in the Trainer needs forking:

* the *forward process* runs in the data collator: it draws one time t per sequence, masks each token with
  probability p = (1 - eps) t + eps and emits `input_ids` (x_t), `labels` (x_0 at masked positions, -100
  elsewhere) and `loss_weights` (1 / p already divided by the normaliser);
* the model's `forward` turns these into `sum(CE * loss_weights)` (`diffusion.masked_diffusion_loss`).

So accelerate, DDP/FSDP, DeepSpeed and peft/LoRA apply exactly as for any HF model. Differences from LLaDA's
published recipe (GUIDELINES.md) are options, not changes: t may be stratified across the batch (MDLM's
low-discrepancy sampler, the default), the whole batch is cut to a random length with probability
`random_length_prob` (LLaDA: 1%), `loss_weighting="uniform"` drops the 1/p weights (dLLM's "uniform"), and
`objective="autoregressive"` trains the same model under a causal mask (`CausalCollator`): an AR baseline of the
same architecture, or the first stage of AR-to-diffusion adaptation (`train(model=<its checkpoint>)`).

Notation (code -> LLaDA paper): `x0` -> x_0, the clean tokens; `noisy` -> x_t; `p` -> p_mask;
`noisable` -> positions the forward process may mask (all for pretraining, the answer for SFT).

Also here: corpora (plain text packed with EOS between documents; JSONL chats through the chat template), a
byte-level BPE tokenizer trained with `tokenizers` (mask token registered as `mask_token`, a small chat
template), and `train()`, which drives `transformers.Trainer` and writes Hub-native checkpoints.
"""

import json
import os
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import torch

EPS = 1e-3  # LLaDA / MDLM: p_mask = (1 - eps) t + eps, so no sequence is left entirely clean

# ---------------------------------------------------------------------------------------------------------------
# 1. The forward process


def uniform_times(batch: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """t ~ U[0, 1) independently per sequence (LLaDA)."""
    return torch.rand(batch, generator=generator)  # (B,)


def stratified_times(batch: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """One uniform u, then t_i = (u + i) / B in a random order: the batch covers [0, 1) evenly (MDLM's
    low-discrepancy sampler; same expectation, lower variance)."""
    u = torch.rand(1, generator=generator)
    t = (u + torch.arange(batch)) / batch  # (B,)
    return t[torch.randperm(batch, generator=generator)]


TIME_SAMPLING = {"uniform": uniform_times, "stratified": stratified_times}


def mask_probability(t: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """p_mask = (1 - eps) t + eps."""
    return (1 - eps) * t + eps


def elbo_weights(masked: torch.Tensor, p: torch.Tensor, normaliser) -> torch.Tensor:
    """LLaDA's loss: 1 / p_mask per masked token, over the normaliser (batch x length, or batch x answer length).
    Its expectation is the ELBO bound on the NLL per token."""
    return masked.float() / p[:, None] / normaliser  # (B, L)


def uniform_weights(masked: torch.Tensor, p: torch.Tensor, normaliser) -> torch.Tensor:
    """The mean cross-entropy over the batch's masked tokens (no 1/p): not the ELBO, but a lower-variance gradient
    (dLLM's "uniform" loss weight); trains faster at small scale. Evaluate with the ELBO all the same."""
    return masked.float() / masked.sum().clamp(min=1)  # (B, L)


LOSS_WEIGHTING = {"elbo": elbo_weights, "uniform": uniform_weights}


def forward_process(x0, p, mask_token_id: int, noisable=None, generator=None):
    """Mask each token of `x0` `(B, L)` independently with probability `p` `(B,)`, only where `noisable`.

    Returns `(noisy, masked)`: x_t `(B, L)` and the bool mask of replaced positions `(B, L)`."""
    draws = torch.rand(x0.shape, generator=generator)  # (B, L)
    masked = draws < p[:, None]
    if noisable is not None:
        masked &= noisable
    return torch.where(masked, torch.full_like(x0, mask_token_id), x0), masked


def batch_generator(seed: int, x0: torch.Tensor) -> torch.Generator:
    """A generator seeded by `seed` and a checksum of the batch `x0`. torch's CPU generator keeps only the low 32
    bits of its seed, so both are folded into 32 bits (seed 0 gives the checksum itself)."""
    checksum = zlib.crc32(x0.to(torch.int64).numpy().tobytes())
    return torch.Generator().manual_seed((checksum + seed * 0x9E3779B1) % 2**32)


@dataclass
class MaskedDiffusionCollator:
    """Shared part of the collators: draw t, noise x_0 and build `labels` / `loss_weights`.

    Args:
        mask_token_id: the id written over masked positions.
        eps: floor of the masking probability.
        time_sampling: how t is drawn across the batch, one of `TIME_SAMPLING` (`"stratified"`, `"uniform"`).
        loss_weighting: the per-token weights, one of `LOSS_WEIGHTING` (`"elbo"`: LLaDA's 1/p, the default;
            `"uniform"`: mean CE over masked tokens).
        generator: a `torch.Generator` for the noise of every batch, in call order.
        seed: with no `generator`, each batch's noise comes from a generator seeded by `seed` and a checksum of the
            batch's tokens. A batch's noise then does not depend on what ran before it, so a resumed run (which
            skips the batches already seen) and dataloader workers draw exactly what an uninterrupted run draws.
            `train()` passes its `seed`. With neither, torch's global RNG is used.
    """

    mask_token_id: int
    eps: float = EPS
    time_sampling: str = "stratified"
    loss_weighting: str = "elbo"
    generator: torch.Generator | None = None
    seed: int | None = None

    def __post_init__(self):
        if not isinstance(self.mask_token_id, int) or isinstance(self.mask_token_id, bool) or self.mask_token_id < 0:
            raise ValueError(f"`mask_token_id` must be a non-negative integer, got {self.mask_token_id!r}.")
        if self.time_sampling not in TIME_SAMPLING:
            raise ValueError(f"Unknown `time_sampling` {self.time_sampling!r}; allowed: {sorted(TIME_SAMPLING)}.")
        if self.loss_weighting not in LOSS_WEIGHTING:
            raise ValueError(f"Unknown `loss_weighting` {self.loss_weighting!r}; allowed: {sorted(LOSS_WEIGHTING)}.")
        if not 0 < self.eps < 1:
            raise ValueError(f"`eps` must lie in (0, 1), got {self.eps!r}.")

    def batch_generator(self, x0: torch.Tensor) -> torch.Generator | None:
        """The generator for the batch `x0` (see `seed`)."""
        if self.generator is not None or self.seed is None:
            return self.generator
        return batch_generator(self.seed, x0)

    def corrupt(self, x0: torch.Tensor, noisable: torch.Tensor, normaliser: torch.Tensor | float,
                generator: torch.Generator | None = None) -> dict:
        """Apply the forward process to `x0` `(B, L)`; `normaliser` is a scalar or `(B, 1)`."""
        generator = generator if generator is not None else self.batch_generator(x0)
        t = TIME_SAMPLING[self.time_sampling](x0.shape[0], generator)  # (B,)
        p = mask_probability(t, self.eps)  # (B,)
        noisy, masked = forward_process(x0, p, self.mask_token_id, noisable, generator)
        labels = torch.where(masked, x0, torch.full_like(x0, -100))  # (B, L)
        loss_weights = LOSS_WEIGHTING[self.loss_weighting](masked, p, normaliser)  # (B, L)
        return {"input_ids": noisy, "labels": labels, "loss_weights": loss_weights}


@dataclass
class PretrainCollator(MaskedDiffusionCollator):
    """Pretraining batches: features are `{"input_ids": [L ids]}` of equal length (packed text).

    The loss is `sum_masked CE / p` divided by batch x length, all positions counted (LLaDA). With probability
    `random_length_prob` the whole batch is cut to a length drawn uniformly from [1, L] (LLaDA uses 0.01), so
    the model also sees short sequences."""

    random_length_prob: float = 0.0

    def __call__(self, features: list[dict]) -> dict:
        x0 = torch.tensor([f["input_ids"] for f in features], dtype=torch.long)  # (B, L)
        generator = self.batch_generator(x0)
        if self.random_length_prob and torch.rand(1, generator=generator).item() < self.random_length_prob:
            x0 = x0[:, : int(torch.randint(1, x0.shape[1] + 1, (1,), generator=generator))]
        batch, length = x0.shape
        return self.corrupt(x0, torch.ones_like(x0, dtype=torch.bool), batch * length, generator)


@dataclass
class SFTCollator(MaskedDiffusionCollator):
    """SFT batches: features are `{"input_ids": prompt + answer + EOS, "prompt_length": int}`.

    Rows are padded to the longest with EOS, and the padding is part of the answer (visible, trained: the model
    learns to stop), as in LLaDA. The prompt is never masked. Each row's loss is normalised by its answer length
    (padding included) and the batch by its size: `sum_masked CE / p / answer_length / B`."""

    eos_token_id: int | None = None

    def __post_init__(self):
        super().__post_init__()
        if not isinstance(self.eos_token_id, int) or self.eos_token_id < 0:
            raise ValueError(
                f"`eos_token_id` must be a non-negative integer (answers are padded with EOS), got {self.eos_token_id!r}."
            )

    def __call__(self, features: list[dict]) -> dict:
        length = max(len(f["input_ids"]) for f in features)
        x0 = torch.full((len(features), length), self.eos_token_id, dtype=torch.long)  # (B, L)
        for row, f in enumerate(features):
            x0[row, : len(f["input_ids"])] = torch.tensor(f["input_ids"], dtype=torch.long)
        prompt_length = torch.tensor([f["prompt_length"] for f in features])  # (B,)
        noisable = torch.arange(length)[None, :] >= prompt_length[:, None]  # (B, L)
        answer_length = (length - prompt_length).clamp(min=1)[:, None].float()  # (B, 1)
        return self.corrupt(x0, noisable, answer_length * len(features))


@dataclass
class CausalCollator:
    """Autoregressive batches for the same model (no diffusion): clean `input_ids`, a causal 4-D `attention_mask`
    `(B, 1, L, L)`, `labels` = the next token at every position (-100 at the last) and uniform `loss_weights`, so
    the model's loss is the mean next-token cross-entropy. For padded documents (features with `answer_length`,
    from `pad_documents`) a row's labels stop at its first EOS. Used for an autoregressive twin of the same architecture
    (a baseline) and for the AR stage of AR-to-diffusion adaptation (as Dream / DiffuLLaMA start from AR models)."""

    def __call__(self, features: list[dict]) -> dict:
        x = torch.tensor([f["input_ids"] for f in features], dtype=torch.long)  # (B, L)
        batch, length = x.shape
        labels = torch.full_like(x, -100)
        labels[:, :-1] = x[:, 1:]  # (B, L)
        if "answer_length" in features[0]:  # padded documents: predict up to the first EOS, not the padding
            valid = torch.tensor([f["prompt_length"] + f["answer_length"] for f in features])  # (B,)
            labels[torch.arange(length)[None, :] >= (valid - 1)[:, None]] = -100
        causal = torch.ones(length, length, dtype=torch.bool).tril()  # (L, L), True = attend
        weights = (labels != -100).float() / (labels != -100).sum().clamp(min=1)  # (B, L)
        return {"input_ids": x, "attention_mask": causal.expand(batch, 1, length, length).contiguous(),
                "labels": labels, "loss_weights": weights}


# Plain-text objectives (SFT is always diffusion). `train()` picks the collator from the objective and the layout:
# diffusion -> PretrainCollator (packed) or SFTCollator (padded, an empty prompt); autoregressive -> CausalCollator.
OBJECTIVES = ("diffusion", "autoregressive")

# ---------------------------------------------------------------------------------------------------------------
# 2. Tokenizer

SPECIAL_TOKENS = {"bos_token": "<|bos|>", "pad_token": "<|pad|>", "eos_token": "<|eos|>", "mask_token": "<|mask|>"}
CHAT_TOKENS = ["<|start|>", "<|end|>", "<|eot|>"]
# LLaDA's chat layout with shorter names: <bos><|start|>role<|end|>\ncontent<|eot|> ... <|start|>assistant<|end|>\n
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}<|start|>{{ message['role'] }}<|end|>\n"
    "{{ message['content'] }}<|eot|>{% endfor %}{% if add_generation_prompt %}<|start|>assistant<|end|>\n{% endif %}"
)


def train_tokenizer(texts, vocab_size: int = 4096, min_frequency: int = 2):
    """A byte-level BPE tokenizer trained on `texts` with `tokenizers`, wrapped for transformers.

    Ids 0-3 are bos, pad, eos, mask (iLLaDA's order for the first three), then the chat tokens; the mask token
    is registered as `tokenizer.mask_token`, and `CHAT_TEMPLATE` is set so SFT and chat work."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = list(SPECIAL_TOKENS.values()) + CHAT_TOKENS
    if not isinstance(vocab_size, int) or vocab_size < 256 + len(specials):
        raise ValueError(
            f"`vocab_size` must be an integer >= {256 + len(specials)} (256 bytes + special tokens), got {vocab_size!r}."
        )
    texts = list(texts)
    if not any(t.strip() for t in texts):
        raise ValueError("Cannot train a tokenizer on an empty corpus.")
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=specials, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    backend.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, extra_special_tokens=CHAT_TOKENS, chat_template=CHAT_TEMPLATE, **SPECIAL_TOKENS
    )


def check_tokenizer(tokenizer, sft: bool = False):
    """Refuse a tokenizer the objective cannot use, naming what is missing."""
    if tokenizer.mask_token_id is None:
        raise ValueError(
            "The tokenizer has no mask token (`tokenizer.mask_token` is None): masked diffusion needs one. Register it "
            "with `tokenizer.add_special_tokens({'mask_token': '<|mask|>'})` (and resize the model's embeddings), or "
            "train a tokenizer with `train_tokenizer` / `illada train --train-tokenizer VOCAB`."
        )
    if tokenizer.eos_token_id is None:
        raise ValueError(
            "The tokenizer has no EOS token (`tokenizer.eos_token` is None): documents are packed with EOS between them."
        )
    if sft and not tokenizer.chat_template:
        raise ValueError("SFT data goes through the tokenizer's chat template, but `tokenizer.chat_template` is unset.")


# ---------------------------------------------------------------------------------------------------------------
# 3. Corpora


def _files(paths) -> list[Path]:
    files = []
    for path in [Path(p) for p in ([paths] if isinstance(paths, (str, os.PathLike)) else paths)]:
        if path.is_dir():
            files += sorted(p for p in path.rglob("*") if p.is_file())
        elif path.is_file():
            files.append(path)
        else:
            raise ValueError(f"Data path {str(path)!r} does not exist.")
    return files


def read_documents(paths, separator: str | None = None) -> list[str]:
    """Documents from plain text files (folders are read recursively). Each file is one document, or, with
    `separator`, the text between lines equal to it (e.g. `"%"` for fortune files). Empty documents are dropped;
    a corpus with none is an error."""
    documents = []
    for path in _files(paths):
        text = path.read_text(encoding="utf-8", errors="replace")
        if separator is None:
            parts = [text]
        else:
            parts, current = [], []
            for line in text.splitlines():
                if line.strip() == separator:
                    parts.append("\n".join(current))
                    current = []
                else:
                    current.append(line)
            parts.append("\n".join(current))
        documents += [p.strip("\n") for p in parts if p.strip()]
    if not documents:
        raise ValueError(f"The corpus is empty: no text in {[str(p) for p in _files(paths)] or paths}.")
    return documents


def split_documents(documents: list, eval_fraction: float) -> tuple[list, list]:
    """A deterministic train / held-out split by a hash of each document (order-independent; duplicates land on
    the same side). With at least two documents, each side gets one."""
    if not 0 <= eval_fraction < 1:
        raise ValueError(f"`eval_fraction` must lie in [0, 1), got {eval_fraction!r}.")
    if eval_fraction == 0:
        return list(documents), []
    key = lambda d: zlib.crc32(json.dumps(d, sort_keys=True).encode()) / 2**32  # noqa: E731
    train = [d for d in documents if key(d) >= eval_fraction]
    heldout = [d for d in documents if key(d) < eval_fraction]
    if len(documents) >= 2 and not heldout:
        heldout, train = train[-1:], train[:-1]
    if len(documents) >= 2 and not train:
        train, heldout = heldout[:1], heldout[1:]
    return train, heldout


def pack_documents(documents: list[str], tokenizer, seq_length: int) -> list[dict]:
    """Tokenise, join with EOS after every document and cut into `seq_length` chunks (the tail is dropped)."""
    if not isinstance(seq_length, int) or seq_length < 1:
        raise ValueError(f"`seq_length` must be a positive integer, got {seq_length!r}.")
    stream = []
    for ids in tokenizer(list(documents), add_special_tokens=False)["input_ids"]:
        stream += ids + [tokenizer.eos_token_id]
    if len(stream) < seq_length:
        raise ValueError(f"The corpus has {len(stream)} tokens, fewer than one sequence of `seq_length` {seq_length}.")
    return [{"input_ids": stream[i : i + seq_length]} for i in range(0, len(stream) - seq_length + 1, seq_length)]


def pad_documents(documents: list[str], tokenizer, seq_length: int) -> list[dict]:
    """One sequence per document (no packing): its tokens, then EOS up to `seq_length`. This is LLaDA's SFT
    layout with an empty prompt: the EOS padding is trained, so the model learns where a text ends and fills the
    rest of a long canvas with EOS. On short documents EOS then dominates a masked position's prediction, which
    low-confidence remasking commits first (see the demo model card). A document of
    `seq_length` tokens or more keeps its first `seq_length` and no EOS (it did not end there)."""
    if not isinstance(seq_length, int) or seq_length < 2:
        raise ValueError(f"`seq_length` must be an integer >= 2, got {seq_length!r}.")
    rows = []
    for ids in tokenizer(list(documents), add_special_tokens=False)["input_ids"]:
        ids = ids + [tokenizer.eos_token_id] if len(ids) < seq_length else ids[:seq_length]
        rows.append({"input_ids": ids + [tokenizer.eos_token_id] * (seq_length - len(ids)), "prompt_length": 0,
                     "answer_length": len(ids)})
    return rows


ROLES = ("system", "user", "assistant")


def read_conversations(paths) -> list[list[dict]]:
    """Chats from JSONL files: one conversation per line, `{"messages": [{"role", "content"}, ...]}` (or the bare
    list), roles among `ROLES`, ending with an assistant turn (the answer that is trained)."""
    conversations = []
    for path in _files(paths):
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{where}: not valid JSON ({error.msg}).") from None
            messages = record.get("messages") if isinstance(record, dict) else record
            valid = (
                isinstance(messages, list) and len(messages) >= 2
                and all(isinstance(m, dict) and m.get("role") in ROLES and isinstance(m.get("content"), str)
                        for m in messages)
                and messages[-1]["role"] == "assistant"
            )
            if not valid:
                raise ValueError(
                    f"{where}: not a conversation. Expected "
                    f"{{\"messages\": [{{\"role\": ..., \"content\": ...}}, ...]}} "
                    f"with at least two turns, roles among {list(ROLES)}, string contents, and an assistant turn last."
                )
            conversations.append([{"role": m["role"], "content": m["content"]} for m in messages])
    if not conversations:
        raise ValueError(f"The SFT corpus is empty: no conversation in {[str(p) for p in _files(paths)]}.")
    return conversations


def encode_conversation(tokenizer, messages: list[dict], seq_length: int) -> dict:
    """`{"input_ids": prompt + answer + EOS, "prompt_length"}` for one chat; the answer is the last assistant
    turn, cut to fit `seq_length`. A prompt that leaves no room for an answer is an error."""
    prompt_text = tokenizer.apply_chat_template(messages[:-1], add_generation_prompt=True, tokenize=False)
    full_text = tokenizer.apply_chat_template(messages, tokenize=False)
    prompt = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
    full = tokenizer(full_text, add_special_tokens=False)["input_ids"]
    if full[: len(prompt)] != prompt:
        raise ValueError("The tokenizer's chat template does not render the prompt as a prefix of the conversation.")
    if len(prompt) >= seq_length:
        raise ValueError(
            f"A prompt has {len(prompt)} tokens, which leaves no room for its answer within `seq_length` {seq_length}."
        )
    answer = (full[len(prompt) :] + [tokenizer.eos_token_id])[: seq_length - len(prompt)]
    return {"input_ids": prompt + answer, "prompt_length": len(prompt)}


# ---------------------------------------------------------------------------------------------------------------
# 4. Model and generation config for a run


def model_config(tokenizer, seq_length: int, preset: str | None = None, config: dict | str | None = None):
    """`(config, generation_config)` for a new model: a preset and/or a dict (or path to a config.json) of
    `IlladaConfig` fields; the vocabulary and special ids come from the tokenizer."""
    from .configuration_illada import IlladaConfig
    from .generation_illada import IlladaGenerationConfig
    from .presets import load_preset

    if isinstance(config, (str, os.PathLike)):
        config = json.loads(Path(config).read_text()) if Path(config).is_file() else json.loads(config)
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
# 5. The training driver

RECIPE_FILE = "illada_train.json"  # the arguments of the run and its results, written beside the weights


def _check_output_dir(output_dir: Path, overwrite: bool, resume) -> str | None:
    """Refuse a non-empty output folder unless asked; return the checkpoint to resume from (or None)."""
    from transformers.trainer_utils import get_last_checkpoint

    if resume:
        checkpoint = get_last_checkpoint(str(output_dir)) if resume is True and output_dir.is_dir() else resume
        if checkpoint is True or checkpoint is None or not Path(checkpoint).is_dir():
            raise ValueError(
                f"`resume`: no checkpoint to resume from in {str(output_dir)!r} (looked for checkpoint-N folders)."
            )
        return str(checkpoint)
    if output_dir.exists() and any(output_dir.iterdir()) and not overwrite:
        raise ValueError(
            f"The output folder {str(output_dir)!r} exists and is not empty: pass `overwrite=True` (--overwrite) to "
            "write into it, or `resume=True` (--resume) to continue its last checkpoint."
        )
    return None


def training_arguments(
    output_dir, *, has_eval: bool, batch_size: int, gradient_accumulation_steps: int, max_steps: int,
    learning_rate: float, warmup_steps: int, lr_scheduler: str, weight_decay: float, eval_steps: int,
    save_steps: int, save_total_limit: int, logging_steps: int, seed: int, disable_tqdm: bool = False,
):
    """The `TrainingArguments` of a run (shared with `bench/train_figures.py`, whose autoregressive twin must see
    the same optimiser, schedule and batches): AdamW (beta2 0.95), gradient clipping at 1, fixed step budget."""
    from transformers import TrainingArguments

    return TrainingArguments(
        output_dir=str(output_dir), max_steps=max_steps, per_device_train_batch_size=batch_size,
        per_device_eval_batch_size=batch_size, gradient_accumulation_steps=gradient_accumulation_steps,
        learning_rate=learning_rate, warmup_steps=warmup_steps, lr_scheduler_type=lr_scheduler,
        weight_decay=weight_decay, adam_beta2=0.95, max_grad_norm=1.0, logging_steps=logging_steps,
        eval_strategy="steps" if has_eval else "no", eval_steps=eval_steps, save_strategy="steps",
        save_steps=save_steps, save_total_limit=save_total_limit, seed=seed, report_to="none",
        remove_unused_columns=False, dataloader_num_workers=0, disable_tqdm=disable_tqdm,
    )


def train(
    output_dir,
    data=(),
    sft=(),
    eval_data=(),
    eval_fraction: float = 0.02,
    doc_separator: str | None = None,
    packing: bool = True,
    model: str | None = None,
    tokenizer=None,
    train_tokenizer_vocab: int | None = None,
    preset: str | None = None,
    config: dict | str | None = None,
    seq_length: int = 256,
    batch_size: int = 16,
    gradient_accumulation_steps: int = 1,
    max_steps: int = 1000,
    learning_rate: float = 1e-3,
    warmup_steps: int = 100,
    lr_scheduler: str = "cosine",
    weight_decay: float = 0.1,
    objective: str = "diffusion",
    time_sampling: str = "stratified",
    loss_weighting: str = "elbo",
    random_length_prob: float = 0.01,
    eval_steps: int = 200,
    save_steps: int = 200,
    save_total_limit: int = 2,
    logging_steps: int = 20,
    seed: int = 0,
    overwrite: bool = False,
    resume=None,
    disable_tqdm: bool = False,
    callbacks=None,
):
    """Train a masked diffusion LM with `transformers.Trainer` and save it Hub-native in `output_dir`.

    Pretraining reads plain text (`data`: files or folders, documents packed with EOS between them; split by
    `doc_separator` lines; with `packing=False` each document is one sequence padded with EOS, see
    `pad_documents`); SFT reads JSONL chats (`sft`). Held-out data is `eval_data`, or else a deterministic
    `eval_fraction` of the documents; its loss is reported every `eval_steps`. The model is new (from `preset`
    and/or `config` fields) or loaded from `model`; the tokenizer is `tokenizer` (a folder, Hub id or object),
    the model's, or one trained here with `train_tokenizer_vocab` tokens. Checkpoints (`checkpoint-N`) and the
    final folder hold config + safetensors + our code + auto_map, the tokenizer and generation_config.json.
    A non-empty `output_dir` is refused unless `overwrite` or `resume` (True: the last checkpoint; or a path).
    Returns the `Trainer`.
    """
    from transformers import AutoTokenizer, Trainer

    from .modeling_illada import IlladaForMaskedDiffusion

    started = time.time()
    output_dir = Path(output_dir)
    checkpoint = _check_output_dir(output_dir, overwrite, resume)
    if bool(data) == bool(sft):
        raise ValueError("Pass exactly one of `data` (plain text, pretraining) or `sft` (JSONL chats).")
    if objective not in OBJECTIVES or (sft and objective != "diffusion"):
        allowed = ["diffusion"] if sft else sorted(OBJECTIVES)
        raise ValueError(f"Unknown `objective` {objective!r} for {'SFT' if sft else 'plain text'}; allowed: {allowed}.")

    # 1. Documents and the held-out split
    documents = read_conversations(sft) if sft else read_documents(data, doc_separator)
    if eval_data:
        heldout = read_conversations(eval_data) if sft else read_documents(eval_data, doc_separator)
        train_docs = documents
    else:
        train_docs, heldout = split_documents(documents, eval_fraction)

    # 2. Tokenizer and model (a resumed run takes both from its checkpoint, whatever else is passed)
    if model is not None and (preset is not None or config is not None):
        raise ValueError("`preset` / `config` describe a new model: they cannot be combined with `model` (fine-tuning).")
    source = checkpoint or model
    if isinstance(tokenizer, (str, os.PathLike)):
        tokenizer = AutoTokenizer.from_pretrained(tokenizer)
    if checkpoint is not None or (tokenizer is None and source is not None):
        tokenizer = AutoTokenizer.from_pretrained(source)
    elif tokenizer is None:
        if not train_tokenizer_vocab:
            raise ValueError("No tokenizer: pass `tokenizer` (folder or Hub id), `model`, or `train_tokenizer_vocab`.")
        texts = [m["content"] for chat in train_docs for m in chat] if sft else train_docs
        tokenizer = train_tokenizer(texts, train_tokenizer_vocab)
    check_tokenizer(tokenizer, sft=bool(sft))
    if source is not None:
        net = IlladaForMaskedDiffusion.from_pretrained(source) if checkpoint else _load_model(source)
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
    else:
        cfg, generation = model_config(tokenizer, seq_length, preset, config)
        torch.manual_seed(seed)
        net = IlladaForMaskedDiffusion(cfg)
        net.generation_config = generation

    # 3. Datasets and the forward process
    if sft:
        train_set = [encode_conversation(tokenizer, chat, seq_length) for chat in train_docs]
        eval_set = [encode_conversation(tokenizer, chat, seq_length) for chat in heldout]
        collator = SFTCollator(tokenizer.mask_token_id, time_sampling=time_sampling, loss_weighting=loss_weighting,
                               seed=seed, eos_token_id=tokenizer.eos_token_id)
    else:
        layout = pack_documents if packing else pad_documents
        train_set = layout(train_docs, tokenizer, seq_length)
        eval_set = layout(heldout, tokenizer, seq_length) if heldout else []
        if objective == "autoregressive":
            collator = CausalCollator()
        elif packing:
            collator = PretrainCollator(tokenizer.mask_token_id, time_sampling=time_sampling, seed=seed,
                                        loss_weighting=loss_weighting, random_length_prob=random_length_prob)
        else:  # padded documents are SFT rows with an empty prompt
            collator = SFTCollator(tokenizer.mask_token_id, time_sampling=time_sampling, seed=seed,
                                   loss_weighting=loss_weighting, eos_token_id=tokenizer.eos_token_id)

    # 4. The plain Trainer
    args = training_arguments(
        output_dir, has_eval=bool(eval_set), batch_size=batch_size,
        gradient_accumulation_steps=gradient_accumulation_steps, max_steps=max_steps, learning_rate=learning_rate,
        warmup_steps=warmup_steps, lr_scheduler=lr_scheduler,
        weight_decay=weight_decay, eval_steps=eval_steps, save_steps=save_steps, save_total_limit=save_total_limit,
        logging_steps=logging_steps, seed=seed, disable_tqdm=disable_tqdm,
    )
    trainer = Trainer(
        model=net, args=args, data_collator=collator, train_dataset=train_set, eval_dataset=eval_set or None,
        processing_class=tokenizer, callbacks=callbacks,
    )
    result = trainer.train(resume_from_checkpoint=checkpoint)

    # 5. The final Hub-native folder and the recipe
    trainer.save_model(str(output_dir))
    (output_dir / "training_args.bin").unlink(missing_ok=True)  # a pickle; the recipe below is the record
    metrics = {"train_loss": result.training_loss, "global_step": trainer.state.global_step}
    if eval_set:
        metrics["eval_loss"] = trainer.evaluate()["eval_loss"]
    recipe = {
        "objective": "sft" if sft else objective, "data": [str(p) for p in _as_list(data or sft)],
        "eval_data": [str(p) for p in _as_list(eval_data)], "eval_fraction": eval_fraction,
        "doc_separator": doc_separator, "packing": packing, "model": str(model) if model else None, "preset": preset,
        "config": config if not isinstance(config, os.PathLike) else str(config),
        "train_tokenizer_vocab": train_tokenizer_vocab, "seq_length": seq_length, "batch_size": batch_size,
        "gradient_accumulation_steps": gradient_accumulation_steps, "max_steps": max_steps,
        "learning_rate": learning_rate, "warmup_steps": warmup_steps, "lr_scheduler": lr_scheduler,
        "weight_decay": weight_decay, "time_sampling": time_sampling, "loss_weighting": loss_weighting,
        "random_length_prob": random_length_prob,
        "seed": seed, "train_sequences": len(train_set), "eval_sequences": len(eval_set),
        "train_documents": len(train_docs), "eval_documents": len(heldout),
        "parameters": sum(p.numel() for p in net.parameters()), "wall_seconds": round(time.time() - started, 1),
        "resumed_from": checkpoint, **metrics,
    }
    (output_dir / RECIPE_FILE).write_text(json.dumps(recipe, indent=2) + "\n")
    return trainer


def _as_list(paths):
    return [paths] if isinstance(paths, (str, os.PathLike)) else list(paths or ())


def _load_model(source):
    from transformers import AutoModel

    from . import IlladaConfig  # noqa: F401  (registers the Auto classes)

    return AutoModel.from_pretrained(source)

