"""The Space's canvas: the record of one run (`Trace`) and the HTML of any of its steps, the figures and notices.

How it differs from keeping every frame (what a replaying demo does): a masked diffusion sampler never changes a
token once it is revealed, so a run is kept as one row of tokens with the step that revealed each, plus each step's
block: O(length + steps) memory, not O(length x steps), and any step's canvas is rebuilt from it on demand.

Everything the user or the model wrote goes through `html.escape` here, and nowhere else builds HTML from text.
Given text (infill) is drawn as the text it is, not as one chip per sub-word token; generated tokens are chips.
"""

import html
import math
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Frame:
    """The canvas after one step, over the shown region (`Trace.start` onward)."""

    step: int  # 1-based; 0 is the canvas before the first step
    block: int
    block_span: tuple[int, int]  # the current block, relative to the region
    tokens: tuple[int, ...]
    revealed_at: tuple[int, ...]  # step that revealed each position (0: given or not yet revealed)
    score: tuple[float, ...]  # the model's probability of the token when revealed (NaN otherwise)
    new: frozenset


@dataclass
class Trace:
    """One run, compactly: what each position became and when, each step's block, and how the run ended."""

    start: int  # first canvas column shown: the prompt length, or 0 when infilling (the whole text)
    mask_token_id: int
    planned_steps: int  # for the colour scale (with a threshold, a guess that grows)
    exact_plan: bool  # False with a threshold: the status line then shows no total
    blocks: int
    block_length: int | None  # for the block separators (None: one block)
    initial: tuple[int, ...]  # the canvas before the first step: given tokens and masks
    tokens: list[int] = field(default_factory=list)  # each position's token once revealed
    revealed_at: list[int] = field(default_factory=list)
    score: list[float] = field(default_factory=list)
    spans: list[tuple[int, int, int]] = field(default_factory=list)  # per step: (block, start, end), region-relative
    final: tuple[int, ...] | None = None  # the canvas after the run, when it differs (EOS filled after an end)
    figures: dict | None = None
    outcome: str | None = None  # None while it runs; then "done", "stopped", "time" or "client"
    live: bool = False  # its event is still streaming
    elapsed: float = 0.0  # seconds its event streamed (set when it ends)
    notes: list[str] = field(default_factory=list)  # shown under the status line (plain text)
    restore: dict | None = None  # what Stop puts back (the chat before this turn), once

    @classmethod
    def begin(cls, initial: list[int], start: int, mask_token_id: int, planned_steps: int, exact_plan: bool,
              blocks: int, block_length: int | None) -> "Trace":
        return cls(start=start, mask_token_id=mask_token_id, planned_steps=planned_steps, exact_plan=exact_plan,
                   blocks=blocks, block_length=block_length, initial=tuple(initial), tokens=list(initial),
                   revealed_at=[0] * len(initial), score=[math.nan] * len(initial))

    def add(self, step):
        """Record a `DenoisingStep` (batch row 0)."""
        number = len(self.spans) + 1
        new = step.revealed[0, self.start:].nonzero().flatten().tolist()
        tokens, scores = step.tokens[0, self.start:], step.probability[0, self.start:]
        for i in new:
            self.tokens[i], self.revealed_at[i], self.score[i] = int(tokens[i]), number, float(scores[i])
        self.spans.append((step.block, step.block_start - self.start, step.block_end - self.start))
        self.planned_steps = max(self.planned_steps, number)

    def finish(self, output, seconds: float, outcome: str = "done"):
        """Record generate()'s figures, and the EOS that early stopping wrote after the last step, if any."""
        tokens = round(output.tokens_per_forward * output.num_forward_passes)  # committed by denoising
        self.figures = dict(forward_passes=output.num_forward_passes, tokens_per_forward=output.tokens_per_forward,
                            seconds=seconds, tokens=tokens, tokens_per_second=tokens / max(seconds, 1e-9))
        final = tuple(output.sequences[0, self.start:].tolist())
        self.final = final if final != self.frame().tokens else None
        self.outcome = outcome

    @property
    def steps(self) -> int:
        return len(self.spans)

    def frame(self, index: int | None = None) -> Frame:
        """The canvas after step `index` (default: the last), rebuilt from the record."""
        k = self.steps if index is None else min(max(index, 0), self.steps)
        seen = [0 < at <= k for at in self.revealed_at]
        tokens = tuple(t if s else g for t, g, s in zip(self.tokens, self.initial, seen))
        if k == self.steps and self.final is not None:
            tokens = self.final
        block, *span = self.spans[k - 1] if k else (0, 0, 0)
        return Frame(step=k, block=block, block_span=tuple(span), tokens=tokens,
                     revealed_at=tuple(at if s else 0 for at, s in zip(self.revealed_at, seen)),
                     score=tuple(p if s else math.nan for p, s in zip(self.score, seen)),
                     new=frozenset(i for i, at in enumerate(self.revealed_at) if k and at == k))


# Colours: the step that revealed a token picks a hue (early = blue, late = amber); its probability shades it.
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


def _given(text: str) -> str:
    """Given text as it reads: one span per line, a line break between."""
    lines = [f'<span class="given-text">{html.escape(line)}</span>' for line in text.split("\n")]
    return '<span class="nl"></span>'.join(lines)


STOPPED = {"stopped": "", "time": " (time limit)", "client": " (client not reading)"}  # outcome: why it stopped


def render_canvas(trace: Trace, engine, index: int | None = None, running: bool = False) -> str:
    """The HTML of one frame: given text as text, a chip per generated position."""
    frame = trace.frame(index)
    masked = sum(token == trace.mask_token_id for token in frame.tokens)
    chips, given = [], []

    def flush():
        if given:
            chips.append(_given(engine.tokenizer.decode(given, skip_special_tokens=False)))
            given.clear()

    for i, (token, at, score) in enumerate(zip(frame.tokens, frame.revealed_at, frame.score)):
        if i and trace.block_length and i % trace.block_length == 0:
            flush()
            chips.append('<span class="sep"></span>')
        was_given = trace.initial[i] != trace.mask_token_id
        if was_given and not engine.special(token):
            given.append(token)
            continue
        flush()
        classes = ["tok"] + (["blk"] if frame.step and frame.block_span[0] <= i < frame.block_span[1] else [])
        if token == trace.mask_token_id:
            chips.append(f'<span class="{" ".join(classes + ["mask"])}" title="masked"></span>')
            continue
        text = engine.piece(token)
        if at:
            background, ink = step_colour((at - 1) / max(trace.planned_steps - 1, 1), score)
            classes += ["new"] if i in frame.new else []
            style = f' style="background:{background};color:{ink}"'
            title = f"step {at} · p {score:.3f} · id {token}"
        else:  # a given special token, or EOS filled after an end token
            classes += ["given"]
            style, title = "", f"{'given' if was_given else 'filled'} · id {token}"
        classes += ["special"] if engine.special(token) else []
        chips.append(f'<span class="{" ".join(classes)}"{style} title="{html.escape(title)}">'
                     f"{html.escape(_label(text))}</span>")
        if "\n" in text:
            chips.append('<span class="nl"></span>')
    flush()
    last = frame.step == trace.steps
    stopped = last and not running and trace.outcome in STOPPED
    total = trace.steps if trace.outcome else trace.planned_steps if trace.exact_plan else None
    status = (f"step {frame.step}" + (f" / {total}" if total else "")) if frame.step else "all masked"
    if stopped:
        status = f"stopped at step {frame.step}{STOPPED[trace.outcome]}"
    if trace.blocks > 1 and frame.step:
        status += f" · block {frame.block + 1} / {trace.blocks}"
    status += f" · {masked} mask{'s' * (masked != 1)} left"
    state = "running" if running else "stopped" if stopped else "done" if masked == 0 else "paused"
    notes = "".join(f'<div class="canvas-note">{html.escape(note)}</div>' for note in trace.notes)
    return (f'<div class="illada-canvas {state}" data-step="{frame.step}" data-masks="{masked}">'
            f'<div class="canvas-head"><span class="canvas-status">{status}</span>{LEGEND}</div>{notes}'
            f'<div class="chips">{"".join(chips)}</div></div>')


LEGEND = ('<span class="legend"><span class="tok mask"></span> mask <span class="ramp"></span> revealed early → late'
          '<span class="swatches"><span style="background:#e7e5fb"></span><span style="background:#7048e8"></span>'
          '</span> low → high confidence <span class="tok blk legend-blk">&nbsp;</span> current block</span>')


def empty_canvas() -> str:
    return ('<div class="illada-canvas empty"><div class="canvas-head"><span class="canvas-status">The canvas'
            f'</span>{LEGEND}</div><div class="chips placeholder">Press <b>Generate</b>: the answer starts as a row '
            "of masks, and each denoising step reveals some of them, as it happens.</div></div>")


def render_notice(message, controls) -> str:
    """An error as the user sees it: the package's parameter names become the controls' labels, any other
    `name` is shown as code."""
    text = str(message)
    for control in controls:
        text = text.replace(f"`{control.name}`", control.label)
    parts = html.escape(text).split("`")
    if len(parts) % 2 == 0:  # an unpaired backtick is text
        parts[-2:] = ["`".join(parts[-2:])]
    shown = "".join(f"<code>{part}</code>" if i % 2 else part for i, part in enumerate(parts))
    return f'<div class="illada-canvas notice"><b>Cannot run this:</b> {shown}</div>'


def render_figures(trace: Trace | None, elapsed: float | None = None) -> str:
    if trace is None:
        return '<div class="figures"></div>'
    if trace.figures is None:
        cards = [("step", f"{trace.steps}"), ("elapsed", f"{elapsed or 0:.1f} s")]
        if trace.outcome in STOPPED:
            cards.append(("run", "stopped"))
    else:
        f = trace.figures
        cards = [("forward passes", f"{f['forward_passes']}"), ("tokens / forward", f"{f['tokens_per_forward']:.2f}"),
                 ("time", f"{f['seconds']:.2f} s"), ("tokens / s", f"{f['tokens_per_second']:.1f}"),
                 ("steps", f"{trace.steps}")]
    return '<div class="figures">' + "".join(
        f'<div class="figure"><span class="value">{value}</span><span class="name">{name}</span></div>'
        for name, value in cards) + "</div>"


def display_name(name: str) -> str:
    """A Hub id as it is; a local folder by its name (the demo model's folder reads "demo_model")."""
    return Path(name).name if Path(name).is_dir() else name


def render_header(engine, mode: str) -> str:
    params = sum(p.numel() for p in engine.model.parameters())
    size = next(f"{params / scale:.1f}{unit}" for scale, unit in ((1e9, "B"), (1e6, "M"), (1e3, "K"), (1, ""))
                if params >= scale or unit == "")
    return (f'<div class="illada-header"><div><h1>illada <span>· watch a diffusion language model unmask</span></h1>'
            "<p>A masked diffusion LM starts from a canvas of masks and reveals tokens in parallel. Each frame below "
            "is streamed from <code>model.generate()</code> as it runs: tokens are coloured by the step that revealed"
            " them and shaded by the model's confidence.</p></div><div class=\"badges\">"
            f'<span class="badge">{html.escape(display_name(engine.name))}</span>'
            f'<span class="badge">{size} parameters</span>'
            f'<span class="badge">{html.escape(str(engine.model.device))} · {html.escape(mode)} model</span>'
            "</div></div>")
