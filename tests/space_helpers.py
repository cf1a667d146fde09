"""Helpers for the Space's tests (tests/test_space.py): a tiny model with a word-level tokenizer, saved to folders
(plain, with a chat template, and "trained on chats")."""

import json
from pathlib import Path

import torch

WORDS = ("the cat dog bird sat ran flew on under a mat tree roof and then it was very small big happy red blue . , ! ? "
         "<b> </b> <script> & \" one two three sun moon star sky sea home road went saw slept sang old new green good "
         "day night cold warm up down in user assistant :").split()
CHAT_TEMPLATE = ("{% for m in messages %}{{ m['role'] }} : {{ m['content'] }} </s> {% endfor %}"
                 "{% if add_generation_prompt %}assistant : {% endif %}")


def word_tokenizer(chat: bool):
    """Special tokens at the tiny config's ids (0 <s>, 1 <pad>, 2 </s>, 3 <mask>), then WORDS: 64 ids in all."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate(["<s>", "<pad>", "</s>", "<mask>", *WORDS])}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<pad>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>",
                                        pad_token="<pad>", mask_token="<mask>")
    if chat:
        tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def save_models(root: Path, tiny_model) -> Path:
    """Three saved tiny models (same weights) under `root`: `plain` completes text, `templated` has a chat template
    (and no chat training), `trained` has both (its `illada_train.json` says `"objective": "sft"`)."""
    model = tiny_model(vocab_size=len(WORDS) + 4, initializer_range=0.6)  # peaky logits: varied tokens
    with torch.no_grad():  # EOS logit 0 (below the best of 63 peaky logits): no early stop, runs take every step
        model.get_input_embeddings().weight[model.config.eos_token_id] = 0
    for name in ("plain", "templated", "trained"):
        model.save_pretrained(root / name)
        word_tokenizer(chat=name != "plain").save_pretrained(root / name)
    (root / "trained" / "illada_train.json").write_text(json.dumps({"objective": "sft"}))
    return root
