"""The Space's settings: the sampler controls, the limits every request is held to, and the examples.

`CONTROLS` is the one declaration of the sampler controls and their order: the sliders are drawn from it, the model
events take their values in this order, `Settings.read` checks them against it, and `Settings.generate_kwargs` picks
the ones `model.generate()` takes. `LIMITS` holds every other bound (text sizes, time per run, request bytes, queue).

How it differs from a plain table of sliders: the bounds are checked on the server too (a request can bypass the
sliders), and the length bounds follow the loaded model (`Controls.for_model`): a control never offers a value the
model's context cannot hold.
"""

import math
import re
from dataclasses import dataclass, replace
from types import MappingProxyType

from modeling_illada.remasking import REMASKING


@dataclass(frozen=True)
class Knob:
    """One numeric control: its widget and the bounds every request is checked against."""

    name: str  # the `model.generate()` knob (or, with `generate=False`, the Space's own)
    label: str
    minimum: float
    maximum: float
    default: float
    step: float
    info: str = ""
    integer: bool = True
    generate: bool = True  # passed to model.generate()
    widget: str = "slider"  # or "number"

    def read(self, value):
        """The value as int/float, or a ValueError naming the control and its bounds."""
        if isinstance(value, bool):
            raise ValueError(f"{self.label} must be a number, got {value!r}.")
        try:
            number = float(value)
        except (TypeError, ValueError, OverflowError):
            raise ValueError(f"{self.label} must be a number, got {value!r}.") from None
        if not math.isfinite(number) or not self.minimum <= number <= self.maximum:
            raise ValueError(f"{self.label} must lie between {self.minimum:g} and {self.maximum:g}, got {value!r}.")
        if self.integer:
            if number != int(number):
                raise ValueError(f"{self.label} must be a whole number, got {value!r}.")
            return int(number)
        return number

    def capped(self, maximum: float) -> "Knob":
        """This knob with its maximum lowered to `maximum`, on its step grid (default clamped into range)."""
        top = self.minimum + math.floor((min(maximum, self.maximum) - self.minimum) / self.step) * self.step
        if top < self.minimum:
            raise ValueError(f"{self.label} cannot fit: the model allows at most {maximum:g}, the minimum is "
                             f"{self.minimum:g}.")
        return replace(self, maximum=top, default=min(self.default, top))


@dataclass(frozen=True)
class Choice:
    """One control with named options (a radio)."""

    name: str
    label: str
    options: tuple[str, ...]
    default: str
    info: str = ""
    generate: bool = True

    def read(self, value):
        if not isinstance(value, str) or value not in self.options:
            raise ValueError(f"{self.label} must be one of {list(self.options)}, got {value!r}.")
        return value


class Controls(tuple):
    """The controls (`CONTROLS`), possibly with one model's length bounds; `controls["steps"]` finds one by name."""

    def __getitem__(self, key):
        if isinstance(key, str):
            return next(c for c in self if c.name == key)
        return tuple.__getitem__(self, key)

    def for_model(self, context: int, min_prompt: int) -> "Controls":
        """Length, Steps and Block length capped so that the shortest prompt (`min_prompt` tokens) plus Length fits
        the model's `context` (its `max_position_embeddings`)."""
        length = self["max_new_tokens"].capped(context - min_prompt)  # steps and blocks are at most the length
        return Controls(c.capped(length.maximum) if c.name in LENGTH_KNOBS else c for c in self)


# The sampler controls, in the order they are shown and sent: the radio, then the sliders two per row. Bounds keep a
# CPU run to seconds; `for_model` lowers the length bounds to what the model's context holds.
CONTROLS = Controls((
    Choice("remasking", "Remasking", tuple(sorted(REMASKING)), "low_confidence",
           "which masked positions a step reveals first"),
    Knob("max_new_tokens", "Length", 8, 256, 64, 8, "new tokens to unmask"),
    Knob("steps", "Steps", 1, 256, 32, 1, "denoising passes"),
    Knob("block_length", "Block length", 1, 256, 32, 1, "must divide Length"),
    Knob("threshold", "Threshold", 0.0, 1.0, 0.0, 0.05, "0: follow the schedule", integer=False),
    Knob("temperature", "Temperature", 0.0, 2.0, 0.0, 0.05, "0: greedy", integer=False),
    Knob("cfg_scale", "CFG scale", 0.0, 3.0, 0.0, 0.1, "0: no guidance", integer=False),
    Knob("seed", "Seed", 0, 2**31 - 1, 0, 1, "for sampling noise", generate=False, widget="number"),
    Knob("pace_ms", "Pace (ms)", 0, 500, 60, 10, "pause per step; 0: none", generate=False),
))
LENGTH_KNOBS = ("max_new_tokens", "steps", "block_length")  # bounded by the model's context


@dataclass(frozen=True)
class Limits:
    """Every bound a request is held to besides the controls' own (checked on the server, not only in the page)."""

    prompt_chars: int = 4000  # characters in one prompt, infill text or chat message (each history message too)
    prompt_tokens: int = 1024  # tokens the model reads (chat history included)
    history_messages: int = 40  # chat messages kept (older ones are dropped before anything else reads them)
    blank_tokens: int = 32  # mask tokens per blank in infill mode
    infill_masks: int = 256  # mask tokens over all blanks
    run_seconds: float = 60.0  # wall clock per run, pauses and waiting for a slow reader included
    unread_frames: int = 8  # frames a client may fall behind before the run waits for it to read
    stall_seconds: float = 3.0  # a run whose client then reads nothing for this long ends (the client is gone)
    request_bytes: int = 2 * 1024 * 1024  # HTTP request body, refused (413) before it is parsed
    queue_size: int = 16  # requests waiting for the model slot; more are refused ("queue full")
    sessions: int = 1000  # browser / API sessions whose state (the last run) the server keeps
    stop_wait_seconds: float = 5.0  # how long Stop waits for the cancelled run to end before it redraws


LIMITS = Limits()
INFILL_MARKER = re.compile(r"\[MASK\]|_{3,}")  # `[MASK]` or three or more underscores
BLANK = Knob("blank_tokens", "Tokens per blank", 1, LIMITS.blank_tokens, 4, 1, generate=False)
# Written for the demo model (it writes fortunes); any model can complete them.
PROMPT_EXAMPLES = ["You will", "The best way to predict the future is", "A friend is"]
CHAT_EXAMPLES = ["What is 2 + 2?", "Write a haiku about the sea.", "Explain diffusion models in one sentence."]
INFILL_EXAMPLES = ["A [MASK] in time saves nine.", "You will ___ a tall, dark stranger [MASK]."]


class Settings:
    """One request's sampler settings: a checked value per control, read in the order of the controls."""

    __slots__ = ("_values",)

    def __init__(self, values: dict):
        object.__setattr__(self, "_values", MappingProxyType(dict(values)))

    def __getattr__(self, name):
        try:
            return self._values[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setattr__(self, name, value):
        raise AttributeError("Settings are read-only.")

    def __eq__(self, other):
        return isinstance(other, Settings) and dict(self._values) == dict(other._values)

    def __repr__(self):
        return f"Settings({dict(self._values)})"

    def values(self) -> list:
        """The values in the order of the controls (what the events take)."""
        return list(self._values.values())

    @classmethod
    def read(cls, *values, controls=CONTROLS) -> "Settings":
        """Check one value per control, in order; a ValueError names the first bad one."""
        if len(values) != len(controls):
            raise ValueError(f"Expected {len(controls)} sampler values ({', '.join(c.label for c in controls)}), "
                             f"got {len(values)}.")
        return cls({control.name: control.read(value) for control, value in zip(controls, values)})

    @classmethod
    def defaults(cls, generation_config=None, controls=CONTROLS) -> "Settings":
        """The model's own settings (its `generation_config`) when they fit the controls and leave half the room
        for the prompt; else the controls' defaults. Seed and pace are always the Space's."""
        fallback = {c.name: c.default for c in controls}
        try:
            saved = {c.name: getattr(generation_config, c.name, None) for c in controls if c.generate}
            saved["steps"] = saved["steps"] or saved["max_new_tokens"]
            saved["block_length"] = saved["block_length"] or saved["max_new_tokens"]
            values = fallback | {name: value for name, value in saved.items() if value is not None}
            settings = cls.read(*values.values(), controls=controls)
            if settings.max_new_tokens > controls["max_new_tokens"].maximum // 2:
                raise ValueError("leaves too little room for the prompt")
            generation_config.merged(**settings.generate_kwargs())  # a combination generate() accepts
            return settings
        except (ValueError, TypeError, AttributeError):
            return cls.read(*fallback.values(), controls=controls)

    def generate_kwargs(self, **overrides) -> dict:
        """The controls `model.generate` takes, with `overrides` (infill sets its own length, steps and block).

        Threshold 0 means "follow the schedule": the control decides parallel decoding, not a saved
        `parallel_decoding`. The canvas has a fixed length (no variable-length blocks)."""
        kwargs = {name: value for name, value in self._values.items() if CONTROLS[name].generate}
        kwargs |= overrides
        if 0 < kwargs["max_new_tokens"] < kwargs["steps"]:
            raise ValueError(f"Steps ({kwargs['steps']}) is more than Length ({kwargs['max_new_tokens']}): every step "
                             f"should reveal at least one token, so use at most {kwargs['max_new_tokens']} steps.")
        threshold = kwargs.pop("threshold")
        return kwargs | dict(threshold=threshold or None, parallel_decoding=bool(threshold), variable_length=False)
