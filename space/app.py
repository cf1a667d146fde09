"""The illada Space: watch a masked diffusion language model unmask its answer, step by step.

Run `python space/app.py` for the embedded demo model (offline, CPU), or point it at any local folder or Hub id with
`--model` / `ILLADA_MODEL` (e.g. `GSAI-ML/iLLaDA-8B-Instruct`); a tokenizer with a chat template gets a chat box.

How it differs from LLaDA's official demo (which re-implements the sampler, finishes the whole run, then replays the
stored states): the sampler here is the package's `model.generate()`, run in a worker thread; its `on_step` callback
puts every `DenoisingStep` on a queue that a Gradio generator event drains, so each frame the browser shows is a step
that has just happened. The frames are kept, so after a run a slider scrubs through them.

Everything the user or the model writes is escaped (`html.escape`) before it is put into HTML, every size a request
controls is checked on the server against `KNOBS` / `LIMITS` (not only by the sliders), and the model-running events
share one queue slot.
"""

import argparse
import html
import math
import os
import queue
import re
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import gradio as gr
import torch

import modeling_illada  # noqa: F401  (registers the illada / llada model types with the Auto classes)
from modeling_illada.remasking import REMASKING
from transformers import AutoModel, AutoTokenizer

HERE = Path(__file__).resolve().parent


# --------------------------------------------------------------------------------------------------------------------
# Controls and limits: one table, used both to draw the sliders and to check requests on the server.


@dataclass(frozen=True)
class Knob:
    """One numeric control: its slider and the bounds every request is checked against."""

    name: str
    label: str
    minimum: float
    maximum: float
    default: float
    step: float
    info: str = ""
    integer: bool = True

    def read(self, value):
        """The value as int/float, or a ValueError naming the control and its bounds."""
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"{self.label} must be a number, got {value!r}.") from None
        if not math.isfinite(number) or not self.minimum <= number <= self.maximum:
            raise ValueError(f"{self.label} must lie between {self.minimum:g} and {self.maximum:g}, got {value!r}.")
        if self.integer:
            if number != int(number):
                raise ValueError(f"{self.label} must be a whole number, got {value!r}.")
            return int(number)
        return number


KNOBS = (  # bounds that keep a CPU run to seconds; shown in this order, two per row
    Knob("max_new_tokens", "Length", 8, 256, 64, 8, "new tokens to unmask"),
    Knob("steps", "Steps", 1, 256, 32, 1, "denoising passes"),
    Knob("block_length", "Block length", 4, 256, 32, 4, "must divide Length"),
    Knob("threshold", "Threshold", 0.0, 1.0, 0.0, 0.05, "0: follow the schedule", False),
    Knob("temperature", "Temperature", 0.0, 2.0, 0.0, 0.05, "0: greedy", False),
    Knob("cfg_scale", "CFG scale", 0.0, 3.0, 0.0, 0.1, "0: no guidance", False),
    Knob("seed", "Seed", 0, 2**31 - 1, 0, 1, "for sampling noise"),
    Knob("pace_ms", "Pace (ms)", 0, 500, 60, 10, "pause per step; 0: none"),
)
KNOB = {knob.name: knob for knob in KNOBS}
REMASKING_DEFAULT = "low_confidence"
LIMITS = {
    "prompt_chars": 4000,  # characters in one prompt, infill text or chat message
    "prompt_tokens": 1024,  # tokens the model reads (chat history included)
    "history_messages": 40,  # chat turns kept
    "blank_tokens": 32,  # mask tokens per blank in infill mode
    "infill_masks": 256,  # mask tokens over all blanks
}
INFILL_MARKER = re.compile(r"\[MASK\]|_{3,}")  # `[MASK]` or three or more underscores
QUEUE_SIZE = 16
PROMPT_EXAMPLES = ["You will", "The best way to predict the future is", "A friend is"]  # the demo model writes fortunes
CHAT_EXAMPLES = ["What is 2 + 2?", "Write a haiku about the sea.", "Explain diffusion models in one sentence."]
INFILL_EXAMPLES = ["A [MASK] in time saves nine.", "You will ___ a tall, dark stranger [MASK]."]


@dataclass(frozen=True)
class Settings:
    """One request's sampler settings, checked against `KNOBS`."""

    max_new_tokens: int
    steps: int
    block_length: int
    remasking: str
    temperature: float
    threshold: float
    cfg_scale: float
    seed: int
    pace_ms: int

    @classmethod
    def read(cls, max_new_tokens, steps, block_length, remasking, temperature, threshold, cfg_scale, seed, pace_ms):
        if not isinstance(remasking, str) or remasking not in REMASKING:
            raise ValueError(f"Remasking must be one of {sorted(REMASKING)}, got {remasking!r}.")
        values = dict(max_new_tokens=max_new_tokens, steps=steps, block_length=block_length, temperature=temperature,
                      threshold=threshold, cfg_scale=cfg_scale, seed=seed, pace_ms=pace_ms)
        return cls(remasking=remasking, **{name: KNOB[name].read(value) for name, value in values.items()})

    @classmethod
    def defaults(cls, generation_config=None, context: int | None = None) -> "Settings":
        """The model's own settings (its `generation_config`) when they fit `KNOBS` and leave half the context
        for the prompt; else the knobs' defaults."""
        fallback = {knob.name: knob.default for knob in KNOBS} | {"remasking": REMASKING_DEFAULT}
        try:
            recommended = {name: getattr(generation_config, name, None) for name in fallback}
            recommended["steps"] = recommended["steps"] or recommended["max_new_tokens"]
            recommended["block_length"] = recommended["block_length"] or recommended["max_new_tokens"]
            values = {name: fallback[name] if value is None else value for name, value in recommended.items()}
            values["pace_ms"], values["seed"] = fallback["pace_ms"], fallback["seed"]
            settings = cls.read(**values)
            generation_config.merged(**settings.generate_kwargs())  # a combination generate() accepts
            if context is not None and settings.max_new_tokens > context // 2:
                raise ValueError("too long for the context")
            return settings
        except (ValueError, TypeError, AttributeError):
            return cls.read(**fallback)

    def generate_kwargs(self) -> dict:
        """The knobs `model.generate` takes (threshold 0 means "follow the schedule")."""
        if self.steps > self.max_new_tokens:
            raise ValueError(f"Steps ({self.steps}) is more than Length ({self.max_new_tokens}): every step should "
                             f"reveal at least one token, so use at most {self.max_new_tokens} steps.")
        return dict(max_new_tokens=self.max_new_tokens, steps=self.steps, block_length=self.block_length,
                    remasking=self.remasking, temperature=self.temperature, threshold=self.threshold or None,
                    parallel_decoding=bool(self.threshold),  # the control decides, not a saved `parallel_decoding`
                    cfg_scale=self.cfg_scale, variable_length=False)  # the canvas has a fixed length


# --------------------------------------------------------------------------------------------------------------------
# The model and the bridge from generate()'s callback to a Python generator.


def default_model(fast: bool = False) -> str:
    """The embedded demo model's folder (with `fast`, its distilled variant), or a SystemExit that says how to get
    one."""
    try:
        from modeling_illada.demo import demo_model_path

        path = Path(demo_model_path(fast=True) if fast else demo_model_path())
    except (ImportError, OSError, ValueError) as error:
        raise SystemExit(f"The embedded demo model is not available: {error} Pass a model folder or Hub id: "
                         "`python space/app.py --model GSAI-ML/iLLaDA-8B-Instruct` (or set ILLADA_MODEL).") from None
    if not (path / "config.json").is_file():
        raise SystemExit(f"The embedded demo model is missing: {path} has no config.json. Reinstall the package "
                         "(`pip install -e .`) or pass `--model FOLDER_OR_HUB_ID` (or set ILLADA_MODEL).")
    return str(path)


@dataclass
class Finished:
    """The end of a run: generate()'s output and the compute time (the pacing pauses taken out)."""

    output: object
    seconds: float


@dataclass
class Engine:
    """A loaded model and tokenizer, and how a request becomes `model.generate` calls."""

    model: object
    tokenizer: object
    name: str
    _pieces: dict = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)  # one generate() at a time, even after a Stop

    @classmethod
    def load(cls, name: str, device: str | None = None, dtype: str = "auto") -> "Engine":
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        tokenizer = AutoTokenizer.from_pretrained(name)
        model = AutoModel.from_pretrained(name, dtype=dtype if dtype == "auto" else getattr(torch, dtype),
                                          device_map=device)
        return cls(model=model.eval(), tokenizer=tokenizer, name=name)

    @property
    def chat(self) -> bool:
        return bool(getattr(self.tokenizer, "chat_template", None))

    @property
    def mask_token_id(self) -> int:
        mask_id = self.model.generation_config.mask_token_id
        return self.model.config.mask_token_id if mask_id is None else mask_id

    def piece(self, token_id: int) -> str:
        """The text of one token (cached: a run decodes the same ids at every step)."""
        if token_id not in self._pieces:
            self._pieces[token_id] = self.tokenizer.decode([token_id], skip_special_tokens=False)
        return self._pieces[token_id]

    def special(self, token_id: int) -> bool:
        if "special" not in self._pieces:
            self._pieces["special"] = frozenset(self.tokenizer.all_special_ids)
        return token_id in self._pieces["special"]

    def _checked(self, ids: list[int]) -> torch.Tensor:
        if len(ids) > LIMITS["prompt_tokens"]:
            raise ValueError(f"The input is {len(ids)} tokens; the limit is {LIMITS['prompt_tokens']}. "
                             "Shorten it (or clear the chat).")
        return torch.tensor([ids], dtype=torch.long)  # (1, P)

    def encode_prompt(self, text: str) -> torch.Tensor:
        return self._checked(self.tokenizer(text)["input_ids"])

    def encode_chat(self, messages: list[dict]) -> torch.Tensor:
        ids = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=True)["input_ids"]
        return self._checked(list(ids))

    def encode_infill(self, text: str, blank_tokens: int) -> tuple[torch.Tensor, int]:
        """The text with every `[MASK]` / `___` replaced by `blank_tokens` mask tokens; returns (ids, mask count)."""
        pieces = INFILL_MARKER.split(text)
        blanks = len(pieces) - 1
        if blanks == 0:
            raise ValueError("Mark at least one blank with [MASK] or ___ (three underscores).")
        if blanks * blank_tokens > LIMITS["infill_masks"]:
            raise ValueError(f"{blanks} blanks x {blank_tokens} tokens = {blanks * blank_tokens} masks; the limit "
                             f"is {LIMITS['infill_masks']}.")
        starts_with_bos = self.tokenizer("x")["input_ids"][:1] == [self.tokenizer.bos_token_id]
        ids = [self.tokenizer.bos_token_id] if starts_with_bos else []
        for index, piece in enumerate(pieces):
            if index < blanks:
                piece = piece.rstrip()  # the filled tokens bring their own leading space
            if piece:
                ids += self.tokenizer(piece, add_special_tokens=False)["input_ids"]
            if index < blanks:
                ids += [self.mask_token_id] * blank_tokens
        return self._checked(ids), blanks * blank_tokens

    def denoise(self, inputs: torch.Tensor, settings: Settings, **kwargs):
        """Run `model.generate` in a worker thread; yield each `DenoisingStep` as it happens, then `Finished`.

        The worker's `on_step` puts steps on a queue and pauses `settings.pace_ms`; closing this generator (the
        browser left, or Stop) makes the next `on_step` return True, which ends generate() early.
        """
        events, stop = queue.Queue(), threading.Event()
        paused = [0.0]
        generator = torch.Generator(device=self.model.device).manual_seed(settings.seed)

        def on_step(step):
            if stop.is_set():
                return True  # generate() stops after this step
            events.put(step)
            if settings.pace_ms:
                time.sleep(settings.pace_ms / 1000)
                paused[0] += settings.pace_ms / 1000

        def work():
            try:
                with self._lock:
                    start = time.perf_counter()
                    output = self.model.generate(inputs.to(self.model.device), on_step=on_step, generator=generator,
                                                 return_dict_in_generate=True, **kwargs)
                    events.put(Finished(output, time.perf_counter() - start - paused[0]))
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


# --------------------------------------------------------------------------------------------------------------------
# Frames: what the canvas shows after each step, kept so that the slider can redraw any of them.


@dataclass(frozen=True)
class Frame:
    """The canvas after one step, over the shown region (`Trace.start` onward)."""

    step: int  # 1-based; 0 is the canvas before the first step
    block: int
    block_span: tuple[int, int]  # the current block, relative to the region
    tokens: tuple[int, ...]
    revealed_at: tuple[int, ...]  # step that revealed each position (0: given or not yet revealed)
    score: tuple[float, ...]  # remasking score when revealed (NaN otherwise)
    new: frozenset


@dataclass
class Trace:
    """Every frame of one run, and what the renderer needs to colour them."""

    start: int  # first canvas column shown: the prompt length, or 0 when infilling (the whole text)
    mask_token_id: int
    remasking: str
    planned_steps: int  # for the colour scale (with a threshold, a guess that grows)
    exact_plan: bool  # False with a threshold: the status line then shows no total
    blocks: int
    block_length: int | None  # for the block separators (None: one block)
    frames: list = field(default_factory=list)
    figures: dict | None = None

    @classmethod
    def begin(cls, inputs: torch.Tensor, start: int, new_tokens: int, mask_token_id: int, settings: Settings,
              planned_steps: int, blocks: int) -> "Trace":
        tokens = tuple(inputs[0, start:].tolist()) + (mask_token_id,) * new_tokens
        trace = cls(start=start, mask_token_id=mask_token_id, remasking=settings.remasking,
                    planned_steps=planned_steps, exact_plan=not settings.threshold, blocks=blocks,
                    block_length=new_tokens // blocks if new_tokens and blocks > 1 else None)
        trace.frames.append(Frame(0, 0, (0, 0), tokens, (0,) * len(tokens), (math.nan,) * len(tokens), frozenset()))
        return trace

    def add(self, step) -> Frame:
        """Append the frame of a `DenoisingStep` (batch row 0)."""
        last = self.frames[-1]
        tokens = tuple(step.tokens[0, self.start:].tolist())
        new = frozenset(step.revealed[0, self.start:].nonzero().flatten().tolist())
        scores = step.probability[0, self.start:].tolist()  # in [0, 1] whatever the remasking strategy
        number = step.step + 1
        frame = Frame(
            step=number, block=step.block, block_span=(step.block_start - self.start, step.block_end - self.start),
            tokens=tokens,
            revealed_at=tuple(number if i in new else at for i, at in enumerate(last.revealed_at)),
            score=tuple(scores[i] if i in new else s for i, s in enumerate(last.score)),
            new=new,
        )
        self.frames.append(frame)
        self.planned_steps = max(self.planned_steps, number)
        return frame

    def finish(self, finished: "Finished"):
        """Record generate()'s figures; show the EOS that early stopping wrote after the last step, if any."""
        out = finished.output
        tokens = round(out.tokens_per_forward * out.num_forward_passes)  # committed by denoising
        self.figures = dict(forward_passes=out.num_forward_passes, tokens_per_forward=out.tokens_per_forward,
                            seconds=finished.seconds, tokens=tokens,
                            tokens_per_second=tokens / max(finished.seconds, 1e-9))
        final = tuple(out.sequences[0, self.start:].tolist())
        if final != self.frames[-1].tokens:
            self.frames[-1] = replace(self.frames[-1], tokens=final)

    @property
    def steps(self) -> int:
        return len(self.frames) - 1


# Colours: the step that revealed a token picks a hue (early = blue, late = amber); its score shades it.
PALETTE = ((0x3B, 0x5B, 0xDB), (0x70, 0x48, 0xE8), (0xC2, 0x25, 0x5C), (0xF0, 0x8C, 0x00), (0xF5, 0xB7, 0x00))


def _mix(a, b, t):
    return tuple(round(x + (y - x) * t) for x, y in zip(a, b))


def step_colour(fraction: float, shade: float) -> tuple[str, str]:
    """Background and text colour for a token revealed at `fraction` of the run with the given shade."""
    position = min(max(fraction, 0.0), 1.0) * (len(PALETTE) - 1)
    low = min(int(position), len(PALETTE) - 2)
    rgb = _mix(PALETTE[low], PALETTE[low + 1], position - low)
    rgb = _mix((255, 255, 255), rgb, 0.22 + 0.78 * min(max(shade, 0.0), 1.0))  # low confidence: pale
    linear = [(c / 255) / 12.92 if c <= 10 else ((c / 255 + 0.055) / 1.055) ** 2.4 for c in rgb]
    luminance = 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]  # WCAG relative luminance
    ink_is_dark = (luminance + 0.05) / 0.062 > 1.05 / (luminance + 0.05)  # higher contrast: #111827 or white
    return "#%02x%02x%02x" % rgb, "#111827" if ink_is_dark else "#ffffff"


def _label(text: str) -> str:
    shown = text.strip(" ") or text
    if not shown:
        return "∅"
    if shown.isspace():
        return shown.replace("\n", "↵").replace("\t", "⇥").replace(" ", "␣")
    return shown.replace("\n", "↵")


def render_canvas(trace: Trace, engine: Engine, index: int | None = None, running: bool = False) -> str:
    """The HTML of one frame: a chip per position. All token text goes through `html.escape`."""
    frame = trace.frames[-1 if index is None else index]
    masked = sum(token == trace.mask_token_id for token in frame.tokens)
    chips = []
    for i, (token, at, score) in enumerate(zip(frame.tokens, frame.revealed_at, frame.score)):
        in_block = frame.step > 0 and frame.block_span[0] <= i < frame.block_span[1]
        if i and trace.block_length and i % trace.block_length == 0:
            chips.append('<span class="sep"></span>')
        classes = ["tok"] + (["blk"] if in_block else [])
        if token == trace.mask_token_id:
            chips.append(f'<span class="{" ".join(classes + ["mask"])}" title="masked"></span>')
            continue
        text = engine.piece(token)
        if at:
            background, ink = step_colour((at - 1) / max(trace.planned_steps - 1, 1), score)
            classes += ["new"] if i in frame.new else []
            style = f' style="background:{background};color:{ink}"'
            title = f"step {at} · p {score:.3f} · id {token}"
        else:  # given text (infill), or filled with EOS after an end token
            classes += ["given"]
            origin = "filled" if trace.frames[0].tokens[i] == trace.mask_token_id else "given"
            style, title = "", f"{origin} · id {token}"
        classes += ["special"] if engine.special(token) else []
        chips.append(f'<span class="{" ".join(classes)}"{style} title="{html.escape(title)}">'
                     f"{html.escape(_label(text))}</span>")
        if "\n" in text:
            chips.append('<span class="nl"></span>')
    total = trace.steps if trace.figures is not None else trace.planned_steps if trace.exact_plan else None
    status = (f"step {frame.step}" + (f" / {total}" if total else "")) if frame.step else "all masked"
    if trace.blocks > 1 and frame.step:
        status += f" · block {frame.block + 1} / {trace.blocks}"
    status += f" · {masked} mask{'s' * (masked != 1)} left"
    state = "running" if running else ("done" if masked == 0 else "paused")
    return (f'<div class="illada-canvas {state}" data-step="{frame.step}" data-masks="{masked}">'
            f'<div class="canvas-head"><span class="canvas-status">{status}</span>{LEGEND}</div>'
            f'<div class="chips">{"".join(chips)}</div></div>')


LEGEND = ('<span class="legend"><span class="tok mask"></span> mask <span class="ramp"></span> revealed early → late'
          '<span class="swatches"><span style="background:#e7e5fb"></span><span style="background:#7048e8"></span>'
          '</span> low → high confidence <span class="tok blk legend-blk">&nbsp;</span> current block</span>')


def render_notice(message) -> str:
    """An error as the user sees it: the package's parameter names become the controls' labels."""
    text = str(message)
    for knob in KNOBS:
        text = text.replace(f"`{knob.name}`", knob.label)
    return f'<div class="illada-canvas notice"><b>Cannot run this:</b> {html.escape(text)}</div>'


def render_figures(trace: Trace | None, elapsed: float | None = None) -> str:
    if trace is None:
        return '<div class="figures"></div>'
    if trace.figures is None:
        cards = [("step", f"{trace.steps}"), ("elapsed", f"{elapsed or 0:.1f} s")]
    else:
        f = trace.figures
        cards = [("forward passes", f"{f['forward_passes']}"), ("tokens / forward", f"{f['tokens_per_forward']:.2f}"),
                 ("time", f"{f['seconds']:.2f} s"), ("tokens / s", f"{f['tokens_per_second']:.1f}"),
                 ("steps", f"{trace.steps}")]
    return '<div class="figures">' + "".join(
        f'<div class="figure"><span class="value">{value}</span><span class="name">{name}</span></div>'
        for name, value in cards) + "</div>"


# --------------------------------------------------------------------------------------------------------------------
# Events. Each model-running event is a generator: one yield per denoising step, then the final state.


def _message_text(content) -> str:
    """Chat message content as Gradio 6 hands it back (a string, or a list of {"type": "text", ...} parts)."""
    if isinstance(content, str):
        return content
    if isinstance(content, dict):
        return str(content.get("text", ""))
    if isinstance(content, (list, tuple)):
        return "".join(_message_text(part) for part in content)
    return ""


def _bounded_text(text, what: str) -> str:
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"Type some text in the {what} box first.")
    if len(text) > LIMITS["prompt_chars"]:
        raise ValueError(f"The {what} is {len(text)} characters; the limit is {LIMITS['prompt_chars']}.")
    return text


class App:
    """The Space's event functions over one `Engine`, and the Blocks layout that wires them."""

    def __init__(self, engine: Engine):
        self.engine = engine

    # -- shared streaming loop
    def _stream(self, inputs, settings, start, new_tokens, planned_steps, blocks, kwargs):
        """Yield (canvas, trace, scrubber, text, figures) per step, then the final state."""
        engine = self.engine
        trace = Trace.begin(inputs, start, new_tokens, engine.mask_token_id, settings, planned_steps, blocks)
        began = time.perf_counter()
        yield (render_canvas(trace, engine, running=True), trace, _scrubber(trace, False), gr.skip(),
               render_figures(trace, 0.0))
        for item in engine.denoise(inputs, settings, **kwargs):
            if isinstance(item, Finished):
                trace.finish(item)
                text = engine.tokenizer.decode(item.output.sequences[0, start:], skip_special_tokens=True)
                yield render_canvas(trace, engine), trace, _scrubber(trace, True), text, render_figures(trace)
                return
            trace.add(item)
            yield (render_canvas(trace, engine, running=True), trace, _scrubber(trace, False), gr.skip(),
                   render_figures(trace, time.perf_counter() - began))

    def _check(self, kwargs: dict):
        """Let the package validate the combination (e.g. block length must divide length) before any thread runs."""
        self.engine.model.generation_config.merged(**kwargs)

    # -- events
    def generate(self, prompt, *knobs):
        """Complete a prompt: outputs (canvas, trace, scrubber, text, figures)."""
        try:
            settings = Settings.read(*knobs)
            kwargs = settings.generate_kwargs()
            self._check(kwargs)
            inputs = self.engine.encode_prompt(_bounded_text(prompt, "prompt"))
        except ValueError as error:
            yield render_notice(error), gr.skip(), gr.skip(), gr.skip(), gr.skip()
            return
        blocks = settings.max_new_tokens // settings.block_length  # whole: the package checked it divides
        try:
            yield from self._stream(inputs, settings, inputs.shape[1], settings.max_new_tokens, settings.steps, blocks,
                                    kwargs)
        except ValueError as error:
            yield render_notice(error), gr.skip(), gr.skip(), gr.skip(), gr.skip()

    def chat(self, message, history, *knobs):
        """One chat turn: outputs (chatbot, message box, canvas, trace, scrubber, text, figures)."""
        history = list(history or [])[-LIMITS["history_messages"]:]
        try:
            settings = Settings.read(*knobs)
            kwargs = settings.generate_kwargs()
            self._check(kwargs)
            message = _bounded_text(message, "message")
            messages = [{"role": m["role"], "content": html.unescape(_message_text(m["content"]))} for m in history
                        if isinstance(m, dict) and m.get("role") in ("user", "assistant")]
            messages.append({"role": "user", "content": message})
            if sum(len(m["content"]) for m in messages) > 4 * LIMITS["prompt_chars"]:
                raise ValueError("The conversation is too long; clear the chat.")
            inputs = self.engine.encode_chat(messages)
        except ValueError as error:
            yield gr.skip(), gr.skip(), render_notice(error), gr.skip(), gr.skip(), gr.skip(), gr.skip()
            return
        blocks = settings.max_new_tokens // settings.block_length
        # The Chatbot renders HTML (sanitised, not escaped), so it is given escaped text; history is unescaped above.
        shown = [{"role": m["role"], "content": html.escape(m["content"])} for m in messages]
        try:
            for canvas, trace, scrubber, text, figures in self._stream(
                inputs, settings, inputs.shape[1], settings.max_new_tokens, settings.steps, blocks, kwargs
            ):
                reply = html.escape(text) if isinstance(text, str) else f"… denoising, step {trace.steps}"
                yield shown + [{"role": "assistant", "content": reply}], "", canvas, trace, scrubber, text, figures
        except ValueError as error:  # raised by generate() itself: put the conversation back as it was
            yield shown[:-1], message, render_notice(error), gr.skip(), gr.skip(), gr.skip(), gr.skip()

    def infill(self, text, blank_tokens, *knobs):
        """Fill the marked blanks in place (`max_new_tokens=0`, one block): outputs as `generate`."""
        try:
            settings = Settings.read(*knobs)
            blank = Knob("blank_tokens", "Tokens per blank", 1, LIMITS["blank_tokens"], 4, 1).read(blank_tokens)
            inputs, masks = self.engine.encode_infill(_bounded_text(text, "infill"), blank)
            region = inputs.shape[1] - int((inputs[0] == self.engine.mask_token_id).nonzero()[0])  # first blank on
            steps = min(settings.steps, masks)
            kwargs = dict(max_new_tokens=0, steps=steps, block_length=region, remasking=settings.remasking,
                          temperature=settings.temperature, threshold=settings.threshold or None,
                          cfg_scale=settings.cfg_scale, variable_length=False)
            self._check(kwargs)
        except ValueError as error:
            yield render_notice(error), gr.skip(), gr.skip(), gr.skip(), gr.skip()
            return
        try:
            yield from self._stream(inputs, settings, 0, 0, steps, 1, kwargs)  # the whole text is the canvas
        except ValueError as error:
            yield render_notice(error), gr.skip(), gr.skip(), gr.skip(), gr.skip()

    def scrub(self, trace, step):
        """Redraw the kept frame `step` of the last run (the slider)."""
        if not isinstance(trace, Trace):  # no run yet
            return gr.skip()
        try:
            index = min(max(int(float(step)), 0), trace.steps)  # the slider's bounds, enforced here too
        except (TypeError, ValueError, OverflowError):
            return gr.skip()
        return render_canvas(trace, self.engine, index)

    def replay(self, trace):
        """Play the kept frames again: outputs (canvas, scrubber)."""
        if not isinstance(trace, Trace):
            yield gr.skip(), gr.skip()
            return
        for index in range(trace.steps + 1):
            yield render_canvas(trace, self.engine, index), gr.Slider(value=index)
            time.sleep(min(0.08, 4.0 / max(trace.steps, 1)))

    # -- layout
    def build(self) -> gr.Blocks:
        engine = self.engine
        with gr.Blocks(title="illada · watch a diffusion LM unmask") as demo:
            gr.HTML(_header(engine))
            trace = gr.State(None)
            with gr.Row(equal_height=False):
                with gr.Column(scale=5, min_width=340):
                    with gr.Tabs():
                        with gr.Tab("Chat" if engine.chat else "Generate", id="generate"):
                            if engine.chat:
                                chatbot = gr.Chatbot(label="Conversation", height=320, elem_id="chatbot",
                                                     render_markdown=False, buttons=["copy"])
                                prompt = gr.Textbox(label="Message", placeholder="Ask something…", lines=1, max_lines=6,
                                                    max_length=LIMITS["prompt_chars"], elem_id="prompt")
                            else:
                                prompt = gr.Textbox(label="Prompt", placeholder=PROMPT_EXAMPLES[0], lines=4,
                                                    max_length=LIMITS["prompt_chars"], elem_id="prompt")
                            with gr.Row():
                                run = gr.Button("Generate", variant="primary", elem_id="generate", scale=3)
                                stops = [gr.Button("Stop", variant="secondary", elem_id="stop", scale=1)]
                            gr.Examples(CHAT_EXAMPLES if engine.chat else PROMPT_EXAMPLES, [prompt], label="Try")
                        with gr.Tab("Infill", id="infill"):
                            gr.Markdown("Mark blanks with `[MASK]` or `___`; each becomes *Tokens per blank* masks "
                                        "that are filled in place, as one block (Length and Block length do not "
                                        "apply).")
                            infill_text = gr.Textbox(label="Text with blanks", lines=4, elem_id="infill-text",
                                                     value=INFILL_EXAMPLES[0],
                                                     max_length=LIMITS["prompt_chars"])
                            blank = gr.Slider(1, LIMITS["blank_tokens"], value=4, step=1, label="Tokens per blank")
                            with gr.Row():
                                fill = gr.Button("Fill the blanks", variant="primary", elem_id="fill", scale=3)
                                stops.append(gr.Button("Stop", variant="secondary", scale=1))
                            gr.Examples(INFILL_EXAMPLES, [infill_text], label="Try")
                    with gr.Accordion("Sampler", open=True, elem_id="sampler"):
                        defaults = Settings.defaults(engine.model.generation_config,
                                                     engine.model.config.max_position_embeddings)
                        remasking = gr.Radio(sorted(REMASKING), value=defaults.remasking, label="Remasking",
                                             info="which masked positions a step reveals first")
                        controls = {}
                        for pair in zip(KNOBS[::2], KNOBS[1::2]):
                            with gr.Row():
                                for knob in pair:
                                    controls[knob.name] = _control(knob, getattr(defaults, knob.name))
                with gr.Column(scale=7, min_width=420):
                    canvas = gr.HTML(_empty_canvas(), elem_id="canvas", min_height=220)
                    with gr.Row(equal_height=False, elem_classes="scrub-row"):
                        scrubber = gr.Slider(0, 1, value=0, step=1, label="Step", interactive=False,
                                             elem_id="scrubber", scale=6, info="after a run, drag to scrub")
                        play = gr.Button("▶ Replay", size="sm", scale=1, min_width=96, elem_id="replay")
                    text = gr.Textbox(label="Text", lines=3, interactive=False, elem_id="final-text", buttons=["copy"])
                    figures = gr.HTML(render_figures(None), elem_id="figures")
            knobs = [controls["max_new_tokens"], controls["steps"], controls["block_length"], remasking,
                     controls["temperature"], controls["threshold"], controls["cfg_scale"], controls["seed"],
                     controls["pace_ms"]]
            streams = [canvas, trace, scrubber, text, figures]
            common = dict(concurrency_limit=1, concurrency_id="model", show_progress="hidden")
            if engine.chat:
                fn, inputs, outputs, name = self.chat, [prompt, chatbot, *knobs], [chatbot, prompt, *streams], "chat"
            else:
                fn, inputs, outputs, name = self.generate, [prompt, *knobs], streams, "generate"
            events = [run.click(fn, inputs, outputs, api_name=name, **common),
                      prompt.submit(fn, inputs, outputs, api_name=f"{name}_submit", api_visibility="undocumented",
                                    **common)]
            events.append(fill.click(self.infill, [infill_text, blank, *knobs], streams, api_name="infill", **common))
            for stop in stops:
                stop.click(None, None, None, cancels=events)
            scrubber.input(self.scrub, [trace, scrubber], canvas, api_name="scrub", show_progress="hidden",
                           concurrency_limit=8, trigger_mode="always_last")
            play.click(self.replay, [trace], [canvas, scrubber], api_name="replay", show_progress="hidden",
                       concurrency_limit=4)
        demo.queue(max_size=QUEUE_SIZE)
        return demo


def _control(knob: Knob, value):
    if knob.name == "seed":
        return gr.Number(value, label=knob.label, info=knob.info, precision=0, minimum=knob.minimum,
                         maximum=knob.maximum, elem_id="seed")
    return gr.Slider(knob.minimum, knob.maximum, value=value, step=knob.step, label=knob.label, info=knob.info,
                     elem_id=knob.name.replace("_", "-"))


def _scrubber(trace: Trace, done: bool):
    steps = trace.steps
    if done:
        return gr.Slider(minimum=0, maximum=max(steps, 1), value=steps, interactive=True,
                         info=f"{steps} steps, kept: drag to scrub")
    return gr.Slider(minimum=0, maximum=max(trace.planned_steps, steps, 1), value=steps, interactive=False,
                     info="live: the step being shown")


def _empty_canvas() -> str:
    return ('<div class="illada-canvas empty"><div class="canvas-head"><span class="canvas-status">The canvas'
            f'</span>{LEGEND}</div><div class="chips placeholder">Press <b>Generate</b>: the answer starts as a row '
            "of masks, and each denoising step reveals some of them, as it happens.</div></div>")


def _display_name(name: str) -> str:
    """A Hub id as it is; a local folder by its name (the demo model's folder reads "demo_model")."""
    return Path(name).name if Path(name).is_dir() else name


def _header(engine: Engine) -> str:
    params = sum(p.numel() for p in engine.model.parameters())
    size = next(f"{params / scale:.1f}{unit}" for scale, unit in ((1e9, "B"), (1e6, "M"), (1e3, "K"), (1, ""))
                if params >= scale or unit == "")
    mode = "chat" if engine.chat else "completion"
    return (f'<div class="illada-header"><div><h1>illada <span>· watch a diffusion language model unmask</span></h1>'
            "<p>A masked diffusion LM starts from a canvas of masks and reveals tokens in parallel. Each frame below "
            "is streamed from <code>model.generate()</code> as it runs: tokens are coloured by the step that revealed"
            " them and shaded by the model's confidence.</p></div><div class=\"badges\">"
            f'<span class="badge">{html.escape(_display_name(engine.name))}</span>'
            f'<span class="badge">{size} parameters</span>'
            f'<span class="badge">{html.escape(str(engine.model.device))} · {mode}</span></div></div>')


def launch(demo: gr.Blocks, **kwargs):
    """Launch with the Space's look (in Gradio 6 the theme and CSS are `launch()` arguments)."""
    return demo.launch(css_paths=[HERE / "style.css"], theme=gr.themes.Soft(primary_hue="violet", neutral_hue="slate"),
                       footer_links=["api"], **kwargs)


def main(argv=None):
    parser = argparse.ArgumentParser(description="The illada Space: watch a diffusion LM unmask.")
    parser.add_argument("--model", default=os.environ.get("ILLADA_MODEL"),
                        help="local folder or Hub id (default: $ILLADA_MODEL, else the embedded demo model)")
    parser.add_argument("--fast", action="store_true",
                        help="with no --model: the embedded demo model after certainty-forcing distillation, whose "
                        "saved settings decode several tokens per step (threshold 0.9, dual cache)")
    parser.add_argument("--device", default=os.environ.get("ILLADA_DEVICE"),
                        help="cpu, cuda, ... (default: $ILLADA_DEVICE, else cuda when available)")
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    parser.add_argument("--host", default=None, help="default: Gradio's (127.0.0.1, or $GRADIO_SERVER_NAME)")
    parser.add_argument("--port", type=int, default=None, help="default: Gradio's (7860, or $GRADIO_SERVER_PORT)")
    args = parser.parse_args(argv)
    engine = Engine.load(args.model or default_model(args.fast), device=args.device, dtype=args.dtype)
    launch(App(engine).build(), server_name=args.host, server_port=args.port)


if __name__ == "__main__":
    main()
