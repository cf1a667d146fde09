"""Corpora and tokenizers for training runs (library-only: no Hub file imports this).

Plain text is read from files or folders (documents separated by a line, or one per file), split deterministically
into training and held-out parts, and packed to `seq_length` with EOS between documents (or padded one per row);
JSONL chats go through the tokenizer's chat template with only the last assistant turn trained. `train_tokenizer`
trains a byte-level BPE tokenizer with `tokenizers` (the mask token registered as `mask_token`, a small chat template).
`read_corpus` / `encode_rows` turn a recipe's data fields into the rows a collator takes.
"""

import json
import os
import zlib
from dataclasses import dataclass
from pathlib import Path

# ---------------------------------------------------------------------------------------------------------------
# 1. Tokenizer

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
# 2. Corpora


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
# 3. A run's corpus


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
    if sft_layout(corpus, recipe):
        for row in train_rows + eval_rows:
            row.setdefault("prompt_length", 0)
    return train_rows, eval_rows


def sft_layout(corpus: Corpus, recipe) -> bool:
    """Rows are in SFT layout (ragged, `prompt_length`) when there are chats on either side or text is not packed."""
    return bool(corpus.chats or corpus.heldout_chats or not recipe.packing)
