"""Helpers for the Space's tests (tests/test_space.py).

A tiny model with a word-level tokenizer saved to folders (plain, with a chat template, and "trained on chats"), and
HTTP clients of the Space's API written against Gradio's documented REST protocol (`POST /gradio_api/call/<api>`,
then `GET /gradio_api/call/<api>/<event_id>` streams server-sent events): one that reads its stream (or leaves
after a few events), and one that sends an oversized body.
"""

import json
import select
import socket
import time
from pathlib import Path
from urllib.parse import urlsplit

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


def submit(url: str, api: str, data: list, deadline: float) -> tuple[str, int]:
    """POST a call; a full queue (503) is retried every 0.25 s until `deadline`. Returns (event id, retries)."""
    import httpx

    retries = 0
    while True:
        response = httpx.post(f"{url}/gradio_api/call/{api}", json={"data": data}, timeout=30)
        if response.status_code != 503 or time.monotonic() > deadline:
            response.raise_for_status()
            return response.json()["event_id"], retries
        retries += 1
        time.sleep(0.25)


def read_stream(url: str, api: str, event_id: str, timeout: float, keep: int | None = None) -> list[tuple[str, str]]:
    """Read a call's server-sent events until `complete` / `error` (or, with `keep`, close after that many
    events: a client that leaves). Returns [(event, data)]."""
    import httpx

    events, name = [], None
    with httpx.stream("GET", f"{url}/gradio_api/call/{api}/{event_id}", timeout=timeout) as response:
        for line in response.iter_lines():
            if line.startswith("event:"):
                name = line.split(":", 1)[1].strip()
            elif line.startswith("data:") and name != "heartbeat":
                events.append((name, line.split(":", 1)[1].strip()))
                if name in ("complete", "error") or (keep is not None and len(events) >= keep):
                    break
    return events


def oversized(url: str, api: str, total_bytes: int, declare_length: bool) -> tuple[int | None, int]:
    """POST a chat history of about `total_bytes` (a JSON list of tiny messages) over a raw socket, declaring its
    Content-Length or streaming it chunked; stop sending once the server answers. Returns (status, bytes sent)."""
    parts = urlsplit(url)
    head = (f"POST /gradio_api/call/{api} HTTP/1.1\r\nHost: {parts.hostname}\r\nContent-Type: application/json\r\n"
            + (f"Content-Length: {total_bytes}\r\n" if declare_length else "Transfer-Encoding: chunked\r\n")
            + "\r\n").encode()
    chunk = b'{"role": "user", "content": "hi"}, ' * 2000  # 70 kB of messages
    sent, reply = 0, b""
    with socket.create_connection((parts.hostname, parts.port), timeout=30) as connection:
        try:
            connection.sendall(head)
            while sent < total_bytes and not select.select([connection], [], [], 0)[0]:
                connection.sendall(chunk if declare_length else b"%x\r\n%s\r\n" % (len(chunk), chunk))
                sent += len(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass
        try:
            reply = connection.recv(256)
        except OSError:
            pass
    return (int(reply.split()[1]) if reply.startswith(b"HTTP/") else None), sent
