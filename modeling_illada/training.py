"""Training masked diffusion LMs on the plain `transformers.Trainer` (library-only: no Hub file imports this).

The masked-diffusion objective is split so that nothing in the Trainer needs forking:

* the *forward process* runs in the data collator: it draws one time t per sequence, masks each token with
  probability p = (1 - eps) t + eps and emits `input_ids` (x_t), `labels` (x_0 at masked positions, -100
  elsewhere) and `loss_weights` (1 / p already divided by the normaliser);
* the model's `forward` turns these into `sum(CE * loss_weights)` (`diffusion.masked_diffusion_loss`).

So accelerate, DDP/FSDP, DeepSpeed and peft/LoRA apply exactly as for any HF model: under `accelerate launch` each
process trains on its share of every batch (`batch_size` is per process) and one process writes the folder. Each
process draws the masking noise of its own share, so a data-parallel run matches a one-process run at the same global
batch in distribution, not bit for bit (the autoregressive objective, which has no noise, matches exactly). Differences from LLaDA's
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
        shift_logits: the model's `config.shift_logits`: position 0, which no output of a shifted model predicts, is
            then never masked (and not counted in the normaliser).
    """

    mask_token_id: int
    eps: float = EPS
    time_sampling: str = "stratified"
    loss_weighting: str = "elbo"
    generator: torch.Generator | None = None
    seed: int | None = None
    shift_logits: bool = False

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
        noisable = torch.ones_like(x0, dtype=torch.bool)  # (B, L)
        noisable[:, : int(self.shift_logits)] = False  # a shifted model never predicts position 0
        return self.corrupt(x0, noisable, batch * max(length - int(self.shift_logits), 1), generator)


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
        prompt_length = torch.tensor([f["prompt_length"] for f in features]).clamp(min=int(self.shift_logits))  # (B,)
        noisable = torch.arange(length)[None, :] >= prompt_length[:, None]  # (B, L)
        answer_length = (length - prompt_length).clamp(min=1)[:, None].float()  # (B, 1)
        return self.corrupt(x0, noisable, answer_length * len(features))


@dataclass
class CausalCollator:
    """Autoregressive batches for the same model (no diffusion): clean `input_ids`, a causal 4-D `attention_mask`
    `(B, 1, L, L)`, `labels` = the next token at every position and uniform `loss_weights`, so the model's loss is
    the mean next-token cross-entropy. For padded documents (features with `answer_length`, from `pad_documents`) a
    row's labels stop at its first EOS. Used for an autoregressive twin of the same architecture (a baseline) and
    for the AR stage of AR-to-diffusion adaptation (as Dream / DiffuLLaMA start from AR models).

    `labels` are in canvas columns, like the diffusion collators': for an unshifted model (output i predicts column
    i) the target of output i is token i + 1, written at column i (-100 at the last); for a model with
    `shift_logits` (output i already predicts column i + 1) the labels are the tokens themselves, -100 at column 0."""

    shift_logits: bool = False

    def __call__(self, features: list[dict]) -> dict:
        x = torch.tensor([f["input_ids"] for f in features], dtype=torch.long)  # (B, L)
        batch, length = x.shape
        labels = torch.full_like(x, -100)
        if self.shift_logits:
            labels[:, 1:] = x[:, 1:]  # (B, L): column j, scored by output j - 1
        else:
            labels[:, :-1] = x[:, 1:]  # (B, L): the next token, at the column of the output that predicts it
        if "answer_length" in features[0]:  # padded documents: predict up to the first EOS, not the padding
            valid = torch.tensor([f["prompt_length"] + f["answer_length"] for f in features])  # (B,)
            labels[torch.arange(length)[None, :] >= (valid - 1 + int(self.shift_logits))[:, None]] = -100
        causal = torch.ones(length, length, dtype=torch.bool).tril()  # (L, L), True = attend
        weights = (labels != -100).float() / (labels != -100).sum().clamp(min=1)  # (B, L)
        return {"input_ids": x, "attention_mask": causal.expand(batch, 1, length, length).contiguous(),
                "labels": labels, "loss_weights": weights}


# Plain-text objectives (SFT is always diffusion). `train()` picks the collator from the objective and the layout:
# diffusion -> PretrainCollator (packed) or SFTCollator (padded, an empty prompt); autoregressive -> CausalCollator.
OBJECTIVES = ("diffusion", "autoregressive")
PRECISIONS = ("float32", "bfloat16", "float16")  # the Trainer's default, bf16 and fp16 mixed precision

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


def _read_text(path: Path, strict: bool = False) -> str:
    """A file as UTF-8. Undecodable bytes are replaced with U+FFFD and a warning names the file and the first bad
    offset; with `strict` (JSONL, where a replaced byte could hide in a JSON string) they are an error naming the
    file and line."""
    import warnings

    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        if strict:
            raise ValueError(f"{path}:{line}: not UTF-8 (byte {data[error.start]:#04x} at offset {error.start}); "
                             "re-encode the file as UTF-8.") from None
        bad = data.decode("utf-8", errors="replace").count("\ufffd")
        warnings.warn(f"{path}: {bad} bytes are not UTF-8 (the first at line {line}, offset {error.start}); they are "
                      "read as U+FFFD. Re-encode the file as UTF-8 to keep them.", stacklevel=3)
        return data.decode("utf-8", errors="replace")


def read_documents(paths, separator: str | None = None) -> list[str]:
    """Documents from plain text files (folders are read recursively). Each file is one document, or, with
    `separator`, the text between lines equal to it (e.g. `"%"` for fortune files). Empty documents are dropped;
    a corpus with none is an error."""
    documents = []
    for path in _files(paths):
        text = _read_text(path)
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


def pack_documents(documents: list[str], tokenizer, seq_length: int, heldout: bool = False) -> list[dict]:
    """Tokenise, join with EOS after every document and cut into `seq_length` chunks (the tail is dropped). A
    `heldout` set shorter than one sequence is kept as one shorter sequence (a small split still gets scored)."""
    if not isinstance(seq_length, int) or seq_length < 1:
        raise ValueError(f"`seq_length` must be a positive integer, got {seq_length!r}.")
    stream = []
    for ids in tokenizer(list(documents), add_special_tokens=False)["input_ids"]:
        stream += ids + [tokenizer.eos_token_id]
    if len(stream) < seq_length and heldout and stream:
        return [{"input_ids": stream}]
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
        for number, line in enumerate(_read_text(path, strict=True).splitlines(), 1):
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
# 5. The training driver

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


@dataclass
class Corpus:
    """A run's documents: plain-text documents and chats, each split into training and held-out parts."""

    texts: list
    chats: list
    heldout_texts: list
    heldout_chats: list

    @property
    def train_documents(self) -> int:
        return len(self.texts) + len(self.chats)

    @property
    def eval_documents(self) -> int:
        return len(self.heldout_texts) + len(self.heldout_chats)


def read_corpus(recipe) -> Corpus:
    """Read `recipe.data` (plain text) and `recipe.sft` (chats); held-out parts from `eval_data`, else a split."""
    if not recipe.data and not recipe.sft:
        raise ValueError("No training data: pass `data` (plain text, pretraining) and/or `sft` (JSONL chats).")
    texts = read_documents(recipe.data, recipe.doc_separator) if recipe.data else []
    chats = read_conversations(recipe.sft) if recipe.sft else []
    if recipe.eval_data:
        heldout = _files(recipe.eval_data)  # folders expanded first: chats are told from text by their suffix
        jsonl = [p for p in heldout if p.suffix == ".jsonl"]
        text_files = [p for p in heldout if p.suffix != ".jsonl"]
        return Corpus(texts, chats, read_documents(text_files, recipe.doc_separator) if text_files else [],
                      read_conversations(jsonl) if jsonl else [])
    texts, heldout_texts = split_documents(texts, recipe.eval_fraction)
    chats, heldout_chats = split_documents(chats, recipe.eval_fraction)
    return Corpus(texts, chats, heldout_texts, heldout_chats)


def encode_rows(corpus: Corpus, tokenizer, recipe) -> tuple[list[dict], list[dict]]:
    """`(train_rows, eval_rows)` for the masked-diffusion objective.

    Plain text alone is packed to `seq_length` (or, with `packing=False`, padded per document); chats go through the
    chat template. With chats (or padding) every row is in SFT layout (`prompt_length`; 0 for text), so text and
    chats form one mixture: a packed text chunk is a row with an empty prompt and no padding, whose loss is the
    pretraining loss."""
    def rows(texts, chats, heldout=False):
        text_rows = []
        if texts:
            text_rows = pack_documents(texts, tokenizer, recipe.seq_length, heldout) if recipe.packing \
                else pad_documents(texts, tokenizer, recipe.seq_length)
        return text_rows + [encode_conversation(tokenizer, chat, recipe.seq_length) for chat in chats]

    train_rows = rows(corpus.texts, corpus.chats)
    eval_rows = rows(corpus.heldout_texts, corpus.heldout_chats, heldout=True)
    if _sft_layout(corpus, recipe):
        for row in train_rows + eval_rows:
            row.setdefault("prompt_length", 0)
    return train_rows, eval_rows


def _sft_layout(corpus: Corpus, recipe) -> bool:
    """Rows are in SFT layout (ragged, `prompt_length`) when there are chats on either side or text is not packed."""
    return bool(corpus.chats or corpus.heldout_chats or not recipe.packing)


def diffusion_collator(corpus: Corpus, recipe, mask_token_id: int, eos_token_id: int, shift_logits: bool = False):
    """The forward process for `encode_rows`' rows: `SFTCollator` for SFT-layout rows, else `PretrainCollator`."""
    common = dict(time_sampling=recipe.time_sampling, loss_weighting=recipe.loss_weighting, seed=recipe.seed,
                  shift_logits=shift_logits)
    if _sft_layout(corpus, recipe):
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
