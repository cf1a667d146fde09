"""The Space's events: what each button, box and slider runs, over one `Engine`.

Each model-running event is a generator: one yield per denoising step (`Engine.denoise`), then the final state.
How it differs from a plain Gradio handler: nothing a request sends is trusted. The controls are read against
`settings.CONTROLS` bounded by the model, text against `settings.LIMITS`, the chat history is cut to its last
messages before anything reads it (so the events are wired with `preprocess=False`: they get the raw payload),
and a reply still being denoised never joins the history (Stop puts the conversation back as it was).
"""

import html
import time
from contextlib import closing

import gradio as gr

from engine import Engine, Finished
from render import Trace, render_canvas, render_figures, render_notice
from settings import BLANK, CONTROLS, LIMITS, Settings

PENDING = "pending"  # the `metadata.status` of the chat bubble shown while a reply is denoised


def _message_text(content) -> str:
    """Chat message content as Gradio 6 hands it back: a string, a {"type": "text", "text": ...} part, or a list
    of those (anything else is no text)."""
    parts = content if isinstance(content, (list, tuple)) else [content]
    return "".join(p if isinstance(p, str) else str(p.get("text", "")) if isinstance(p, dict) else "" for p in parts)


class Events:
    """The Space's event functions over one `Engine` (`app.App` adds the layout that wires them)."""

    def __init__(self, engine: Engine, limits=LIMITS, mode: str | None = None):
        self.engine, self.limits = engine, limits
        self.controls = CONTROLS.for_model(engine.context, engine.min_prompt_tokens())
        self.mode = mode or ("chat" if engine.chat else "completion")
        if self.mode not in ("chat", "completion") or (self.mode == "chat" and not engine.has_chat_template):
            raise ValueError(f"mode must be 'completion', or 'chat' for a tokenizer with a chat template; got "
                             f"{self.mode!r}.")

    # -- checks shared by the events
    def _text(self, text, what: str) -> str:
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"Type some text in the {what} box first.")
        if len(text) > self.limits.prompt_chars:
            raise ValueError(f"The {what} is {len(text)} characters; the limit is {self.limits.prompt_chars}.")
        return text

    def _read(self, values) -> Settings:
        settings = Settings.read(*values, controls=self.controls)
        paced = settings.pace_ms / 1000 * settings.steps
        if paced > self.limits.run_seconds:
            pace, steps = self.controls["pace_ms"].label, self.controls["steps"].label
            raise ValueError(f"{pace} x {steps} is {paced:g} s of pauses; a run may take at most "
                             f"{self.limits.run_seconds:g} s. Lower {pace} or {steps}.")
        return settings

    def _check(self, kwargs: dict, prompt: int, new_tokens: int, what: str):
        """Refuse what generate() would refuse, before any thread runs: the package validates the combination
        (e.g. block length must divide length), and the prompt plus the new tokens must fit the context."""
        self.engine.model.generation_config.merged(**kwargs)
        if prompt + new_tokens > self.engine.context:
            length = self.controls["max_new_tokens"].label
            raise ValueError(f"The {what} is {prompt} tokens; with {length} {new_tokens} that is {prompt + new_tokens}"
                             f", more than the model's context of {self.engine.context} tokens. Shorten the {what}"
                             f"{f' or lower {length}' if new_tokens else ''}.")

    def _history(self, raw) -> list[dict]:
        """The chat history as messages of plain text: only the last `history_messages` are looked at, bubbles of a
        reply still being denoised are dropped, and the Chatbot's escaping is undone."""
        if raw is None:
            return []
        if not isinstance(raw, list):
            raise ValueError("The chat history must be a list of messages.")
        messages = []
        for m in raw[-self.limits.history_messages:]:
            if not isinstance(m, dict) or m.get("role") not in ("user", "assistant"):
                continue
            if isinstance(m.get("metadata"), dict) and m["metadata"].get("status") == PENDING:
                continue
            text = html.unescape(_message_text(m.get("content")))
            if len(text) > self.limits.prompt_chars:
                raise ValueError(f"A message in the chat is {len(text)} characters; the limit is "
                                 f"{self.limits.prompt_chars}. Clear the chat.")
            messages.append({"role": m["role"], "content": text})
        return messages

    def _refusal(self, error, outputs: int):
        return (render_notice(error, self.controls),) + (gr.skip(),) * (outputs - 1)

    # -- the shared streaming loop
    def _stream(self, inputs, settings, kwargs, start, new_tokens, blocks, unread=None, notes=(), restore=None):
        """Yield (canvas, trace, scrubber, text, figures) per step, then the final state."""
        engine = self.engine
        trace = Trace.begin(inputs[0, start:].tolist() + [engine.mask_token_id] * new_tokens, start,
                            engine.mask_token_id, kwargs["steps"], not settings.threshold, blocks,
                            new_tokens // blocks if new_tokens and blocks > 1 else None)
        trace.notes, trace.restore, trace.live = list(notes), restore, True
        began = time.perf_counter()
        try:
            yield render_canvas(trace, engine, running=True), trace, _scrubber(trace, False), gr.skip(), \
                render_figures(trace, 0.0)
            with closing(engine.denoise(inputs, settings, kwargs, self.limits, unread)) as steps:
                for item in steps:
                    if isinstance(item, Finished):
                        trace.finish(item.output, item.seconds, item.cut or "done")
                        if item.cut:
                            trace.notes.append({"time": f"A run may take at most {self.limits.run_seconds:g} s.",
                                                "client": "The client read nothing for "
                                                f"{self.limits.stall_seconds:g} s."}[item.cut])
                        yield (render_canvas(trace, engine), trace, _scrubber(trace, True), self._words(trace),
                               render_figures(trace))
                        return
                    trace.add(item)
                    yield (render_canvas(trace, engine, running=True), trace, _scrubber(trace, False), gr.skip(),
                           render_figures(trace, time.perf_counter() - began))
        finally:
            trace.outcome = trace.outcome or "stopped"  # closed early: Stop, or the client left
            trace.elapsed, trace.live = time.perf_counter() - began, False

    def _words(self, trace: Trace) -> str:
        """The text of the canvas up to the first end token the model wrote (a block can hold text after it, which
        is not the answer; given text, as in infilling, is kept), masks and special tokens left out."""
        ends, tokens = self.engine.end_ids(), []
        for given, token in zip(trace.initial, trace.frame().tokens):
            if given == trace.mask_token_id and token in ends:
                break
            if token != trace.mask_token_id:
                tokens.append(token)
        return self.engine.tokenizer.decode(tokens, skip_special_tokens=True)

    def _run(self, inputs, settings, kwargs, start, new_tokens, blocks, unread):
        try:
            yield from self._stream(inputs, settings, kwargs, start, new_tokens, blocks, unread)
        except ValueError as error:  # raised by generate() itself
            yield self._refusal(error, 5)

    # -- events
    def generate(self, prompt, *values, unread=None):
        """Complete a prompt: outputs (canvas, trace, scrubber, text, figures)."""
        try:
            settings = self._read(values)
            kwargs = settings.generate_kwargs()
            inputs = self.engine.encode_prompt(self._text(prompt, "prompt"))
            self._check(kwargs, inputs.shape[1], settings.max_new_tokens, "prompt")
        except ValueError as error:
            yield self._refusal(error, 5)
            return
        blocks = settings.max_new_tokens // settings.block_length  # whole: the package checked it divides
        yield from self._run(inputs, settings, kwargs, inputs.shape[1], settings.max_new_tokens, blocks, unread)

    def chat(self, message, history, *values, unread=None):
        """One chat turn: outputs (chatbot, message box, canvas, trace, scrubber, text, figures). The oldest turns
        that no longer fit the context are left out of the prompt (and the canvas says so)."""
        try:
            if not self.engine.has_chat_template:
                raise ValueError("This model's tokenizer has no chat template: use the Complete tab.")
            messages = self._history(history)
            settings = self._read(values)
            kwargs = settings.generate_kwargs()
            message = self._text(message, "message")
            messages.append({"role": "user", "content": message})
            self._check(kwargs, 0, settings.max_new_tokens, "message")
            inputs, dropped = self.engine.fit_chat(messages, settings.max_new_tokens)
        except ValueError as error:
            yield (gr.skip(), gr.skip()) + self._refusal(error, 5)
            return
        notes = [f"The oldest {dropped} messages are left out of the prompt: with them it would not fit the "
                 f"model's context of {self.engine.context} tokens."] if dropped else []
        # The Chatbot renders HTML (sanitised, not escaped), so it is given escaped text; history is unescaped above.
        shown = [{"role": m["role"], "content": html.escape(m["content"])} for m in messages]
        restore = {"history": shown[:-1], "message": message}
        blocks = settings.max_new_tokens // settings.block_length
        try:
            for canvas, trace, scrubber, text, figures in self._stream(
                inputs, settings, kwargs, inputs.shape[1], settings.max_new_tokens, blocks, unread, notes, restore
            ):
                if trace.outcome not in (None, "done"):  # cut short: no partial reply joins the history
                    yield shown[:-1], message, canvas, trace, scrubber, text, figures
                    continue
                reply = ({"role": "assistant", "content": html.escape(text)} if isinstance(text, str) else
                         {"role": "assistant", "content": f"… denoising, step {trace.steps}",
                          "metadata": {"status": PENDING}})
                yield shown + [reply], "", canvas, trace, scrubber, text, figures
        except ValueError as error:  # raised by generate() itself: put the conversation back as it was
            yield (shown[:-1], message) + self._refusal(error, 5)

    def infill(self, text, blank_tokens, *values, unread=None):
        """Fill the marked blanks in place (`max_new_tokens=0`, one block): outputs as `generate`."""
        try:
            settings = self._read(values)
            inputs, masks = self.engine.encode_infill(self._text(text, "infill"), BLANK.read(blank_tokens),
                                                      self.limits)
            region = inputs.shape[1] - int((inputs[0] == self.engine.mask_token_id).nonzero()[0])  # first blank on
            kwargs = settings.generate_kwargs(max_new_tokens=0, steps=min(settings.steps, masks), block_length=region)
            self._check(kwargs, inputs.shape[1], 0, "text")
        except ValueError as error:
            yield self._refusal(error, 5)
            return
        yield from self._run(inputs, settings, kwargs, 0, 0, 1, unread)  # the whole text is the canvas

    def stopped(self, trace):
        """After Stop cancelled a run: wait for it to end, then show it stopped, scrubbable, and (chat) put the
        conversation back as it was before the turn. Outputs (canvas, scrubber, text, figures[, chatbot, box])."""
        chat = self.engine.has_chat_template
        skip = (gr.skip(),) * (6 if chat else 4)
        if not isinstance(trace, Trace):
            return skip
        deadline = time.monotonic() + self.limits.stop_wait_seconds
        while trace.live and time.monotonic() < deadline:
            time.sleep(0.02)
        if trace.live or trace.outcome != "stopped" or trace.restore == {}:  # it ended itself, or was redrawn
            return skip
        restore, trace.restore = trace.restore, {}  # a later Stop (of a run still queued) leaves this one be
        shown = (render_canvas(trace, self.engine), _scrubber(trace, True), self._words(trace),
                 render_figures(trace, trace.elapsed))
        if not chat:
            return shown
        return shown + ((restore["history"], restore["message"]) if restore else skip[:2])

    def scrub(self, trace, step):
        """Redraw the kept step `step` of the last run (the slider)."""
        if not isinstance(trace, Trace):  # no run yet
            return gr.skip()
        try:
            index = int(float(step))  # the slider's bounds are enforced by `Trace.frame`
        except (TypeError, ValueError, OverflowError):
            return gr.skip()
        return render_canvas(trace, self.engine, index)

    def replay(self, trace):
        """Play the kept steps again: outputs (canvas, scrubber)."""
        if not isinstance(trace, Trace):
            yield gr.skip(), gr.skip()
            return
        for index in range(trace.steps + 1):
            yield render_canvas(trace, self.engine, index), gr.Slider(value=index)
            time.sleep(min(0.08, 4.0 / max(trace.steps, 1)))


def _scrubber(trace: Trace, done: bool):
    steps = trace.steps
    if done:
        return gr.Slider(minimum=0, maximum=max(steps, 1), value=steps, interactive=True,
                         info=f"{steps} steps, kept: drag to scrub")
    return gr.Slider(minimum=0, maximum=max(trace.planned_steps, steps, 1), value=steps, interactive=False,
                     info="live: the step being shown")
