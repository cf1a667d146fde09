"""The illada Space: watch a masked diffusion language model unmask its answer, step by step.

Run `python space/app.py` for the embedded demo model (offline, CPU), or point it at any local folder or Hub id with
`--model` / `ILLADA_MODEL` (e.g. `GSAI-ML/iLLaDA-8B-Instruct`). This file is the layout and the command line; beside
it, `settings.py` declares the controls and limits, `engine.py` runs `model.generate()` in a worker thread,
`events.py` holds what each control runs, `render.py` draws the canvas and `server.py` guards the server.

How it differs from LLaDA's official demo (which re-implements the sampler, finishes the whole run, then replays the
stored states): every frame the browser shows is a step `generate()` has just taken, and after a run (or a Stop)
a slider scrubs through them. Chat, completion and infill are tabs; the Space opens on chat only for a model with a
chat template that was trained on chats (`engine.chat_evidence`), and `--mode` overrides that. The model-running
events share one queue slot.
"""

import argparse
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:  # imported from elsewhere (the tests): the sibling modules sit beside this file
    sys.path.insert(0, str(HERE))

import gradio as gr  # noqa: E402

from engine import Engine, default_model  # noqa: E402
from events import Events  # noqa: E402
from render import empty_canvas, render_figures, render_header  # noqa: E402
from server import launch as _launch, unread_frames  # noqa: E402
from settings import BLANK, CHAT_EXAMPLES, INFILL_EXAMPLES, LIMITS, PROMPT_EXAMPLES, Choice, Settings  # noqa: E402


class App(Events):
    """The Space: its events (`events.Events`) and the Blocks layout that wires them."""

    # -- layout
    def build(self) -> gr.Blocks:
        engine, stops = self.engine, []
        with gr.Blocks(title="illada · watch a diffusion LM unmask") as demo:
            gr.HTML(render_header(engine, self.mode))
            trace = gr.State(None)
            with gr.Row(equal_height=False):
                with gr.Column(scale=5, min_width=340):
                    with gr.Tabs(selected=self.mode):
                        if engine.has_chat_template:
                            with gr.Tab("Chat", id="chat"):
                                chatbot = gr.Chatbot(show_label=False, height=320, elem_id="chatbot",
                                                     render_markdown=False, buttons=["copy"])
                                message = gr.Textbox(label="Message", placeholder="Ask something…", lines=1,
                                                     max_lines=6, max_length=self.limits.prompt_chars,
                                                     elem_id="message")
                                send, stops = _buttons("Send", "send", stops)
                                gr.Examples(CHAT_EXAMPLES, [message], label="Try")
                        with gr.Tab("Complete", id="completion"):
                            prompt = gr.Textbox(label="Prompt", placeholder=PROMPT_EXAMPLES[0], lines=4,
                                                max_length=self.limits.prompt_chars, elem_id="prompt")
                            run, stops = _buttons("Generate", "generate", stops)
                            gr.Examples(PROMPT_EXAMPLES, [prompt], label="Try")
                        with gr.Tab("Infill", id="infill"):
                            unused = " and ".join(self.controls[n].label for n in ("max_new_tokens", "block_length"))
                            gr.Markdown(f"Mark blanks with `[MASK]` or `___`; each becomes *{BLANK.label}* masks "
                                        f"that are filled in place, as one block ({unused} do not apply).")
                            infill_text = gr.Textbox(label="Text with blanks", lines=4, elem_id="infill-text",
                                                     value=INFILL_EXAMPLES[0], max_length=self.limits.prompt_chars)
                            blank = gr.Slider(BLANK.minimum, BLANK.maximum, value=BLANK.default, step=BLANK.step,
                                              label=BLANK.label, elem_id="blank-tokens")
                            fill, stops = _buttons("Fill the blanks", "fill", stops)
                            gr.Examples(INFILL_EXAMPLES, [infill_text], label="Try")
                    with gr.Accordion("Sampler", open=True, elem_id="sampler"):
                        knobs = _controls(self.controls, Settings.defaults(engine.model.generation_config,
                                                                           self.controls))
                with gr.Column(scale=7, min_width=420, elem_id="output-column"):
                    canvas = gr.HTML(empty_canvas(), elem_id="canvas", min_height=220)
                    with gr.Group(elem_id="scrub-group"), gr.Row(equal_height=False, elem_classes="scrub-row"):
                        scrubber = gr.Slider(0, 1, value=0, step=1, label="Step", interactive=False,
                                             elem_id="scrubber", scale=6, info="after a run, drag to scrub")
                        play = gr.Button("▶ Replay", size="sm", scale=0, min_width=90, elem_id="replay")
                    text = gr.Textbox(label="Text", lines=3, interactive=False, elem_id="final-text", buttons=["copy"])
                    figures = gr.HTML(render_figures(None), elem_id="figures")
            streams = [canvas, trace, scrubber, text, figures]
            common = dict(concurrency_limit=1, concurrency_id="model", show_progress="hidden", preprocess=False)
            wiring = [(run, prompt, self.generate, [prompt, *knobs], streams, "generate")]
            if engine.has_chat_template:
                wiring.append((send, message, self.chat, [message, chatbot, *knobs], [chatbot, message, *streams],
                               "chat"))
            events = []
            for button, box, fn, inputs, outputs, name in wiring:
                event = _wired(demo, fn)
                events += [button.click(event, inputs, outputs, api_name=name, **common),
                           box.submit(event, inputs, outputs, api_name=f"{name}_submit",
                                      api_visibility="undocumented", **common)]
            events.append(fill.click(_wired(demo, self.infill), [infill_text, blank, *knobs], streams,
                                     api_name="infill", **common))
            stopped = [canvas, scrubber, text, figures] + ([chatbot, message] if engine.has_chat_template else [])
            for stop in stops:  # first cancel the run (the page runs a click's listeners in order), then redraw
                stop.click(None, None, None, cancels=events)
                stop.click(self.stopped, [trace], stopped, api_visibility="private", concurrency_limit=4,
                           concurrency_id="stop", show_progress="hidden")
            scrubber.input(self.scrub, [trace, scrubber], canvas, api_name="scrub", show_progress="hidden",
                           concurrency_limit=8, trigger_mode="always_last")
            play.click(self.replay, [trace], [canvas, scrubber], api_name="replay", show_progress="hidden",
                       concurrency_limit=4)
        demo.queue(max_size=self.limits.queue_size)
        return demo


def _wired(demo, fn):
    """`fn` as a Gradio event that also learns how far its client has read (`server.unread_frames`)."""
    def event(request: gr.Request, *values):
        yield from fn(*values, unread=unread_frames(demo, request))

    event.__name__ = event.__qualname__ = fn.__name__
    event.__doc__ = fn.__doc__
    return event


def _buttons(label: str, elem_id: str, stops: list):
    with gr.Row():
        run = gr.Button(label, variant="primary", elem_id=elem_id, scale=3)
        stop = gr.Button("Stop", variant="secondary", elem_id=f"stop-{elem_id}", scale=1)
    return run, stops + [stop]


def _controls(controls, defaults: Settings) -> list:
    """A component per control, in the order of the controls: a radio on its own row, sliders two per row."""
    components, row, filled = [], None, 2
    for control, value in zip(controls, defaults.values()):
        if isinstance(control, Choice) or filled == 2:
            row, filled = gr.Row(), 0
        with row:
            components.append(_component(control, value))
        filled = 2 if isinstance(control, Choice) else filled + 1
    return components


def _component(control, value):
    elem_id = control.name.replace("_", "-")
    if isinstance(control, Choice):
        return gr.Radio(list(control.options), value=value, label=control.label, info=control.info, elem_id=elem_id)
    if control.widget == "number":
        return gr.Number(value, label=control.label, info=control.info, precision=0, minimum=control.minimum,
                         maximum=control.maximum, elem_id=elem_id)
    return gr.Slider(control.minimum, control.maximum, value=value, step=control.step, label=control.label,
                     info=control.info, elem_id=elem_id)


def launch(demo: gr.Blocks, limits=LIMITS, **kwargs):
    """Launch with the Space's look and guards (`server.launch`)."""
    return _launch(demo, limits, css_paths=[HERE / "style.css"], **kwargs)


def main(argv=None):
    parser = argparse.ArgumentParser(description="The illada Space: watch a diffusion LM unmask.")
    parser.add_argument("--model", default=os.environ.get("ILLADA_MODEL"),
                        help="local folder or Hub id (default: $ILLADA_MODEL, else the embedded demo model)")
    parser.add_argument("--mode", choices=["chat", "completion"], default=None,
                        help="the tab it opens on (default: chat for a model trained on chats, see engine.py)")
    parser.add_argument("--device", default=os.environ.get("ILLADA_DEVICE"),
                        help="cpu, cuda, ... (default: $ILLADA_DEVICE, else cuda when available)")
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    parser.add_argument("--host", default=None, help="default: Gradio's (127.0.0.1, or $GRADIO_SERVER_NAME)")
    parser.add_argument("--port", type=int, default=None, help="default: Gradio's (7860, or $GRADIO_SERVER_PORT)")
    args = parser.parse_args(argv)
    engine = Engine.load(args.model or default_model(), device=args.device, dtype=args.dtype)
    launch(App(engine, mode=args.mode).build(), server_name=args.host, server_port=args.port)


if __name__ == "__main__":
    main()
