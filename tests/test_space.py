"""The Gradio Space (`space/`): event functions called directly, clients of the app running on 127.0.0.1 (gradio_client,
the REST API, raw sockets, a load of concurrent clients), and runs in headless Debian chromium driven by Playwright
(skipped when chromium is absent).

Everything runs on a tiny model + word-level tokenizer saved to folders (`save_models`); the one test
of the embedded demo model is marked slow and skipped when the demo model is not there.
"""

import html
import importlib.util
import json
import re
import shutil
import sys
import threading
import time
import types
from dataclasses import replace
from pathlib import Path

import pytest
import torch

import space_helpers
from helpers import SPECIAL_TOKENS, tiny_model, word_tokenizer

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "artifacts"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
_spec = importlib.util.spec_from_file_location("illada_space_app", ROOT / "space" / "app.py")
space = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(space)  # puts space/ on sys.path: its sibling modules import as `settings`, `engine`, ...
import engine as space_engine  # noqa: E402
import render as space_render  # noqa: E402
import settings as space_settings  # noqa: E402

LIMITS, CONTROLS = space_settings.LIMITS, space_settings.CONTROLS
TEST_SETTINGS = dict(max_new_tokens=32, steps=16, block_length=16, remasking="low_confidence", temperature=0.0,
                     threshold=0.0, cfg_scale=0.0, seed=0, pace_ms=0)
# The load test's bounds: every well-behaved client served within GOOD_SECONDS, and the server (this process, which
# also runs the clients) grows by at most MEMORY_MB, while one client never reads a run that would take SLOW_SECONDS.
GOOD_SECONDS, MEMORY_MB, SLOW_SECONDS = 20.0, 150.0, 30.0


WORDS = ("the cat dog bird sat ran flew on under a mat tree roof and then it was very small big happy red blue . , ! ? "
         "<b> </b> <script> & \" one two three sun moon star sky sea home road went saw slept sang old new green good "
         "day night cold warm up down in user assistant :").split()
VOCAB_SIZE = len(SPECIAL_TOKENS) + len(WORDS)  # 64
CHAT_TEMPLATE = ("{% for m in messages %}{{ m['role'] }} : {{ m['content'] }} </s> {% endfor %}"
                 "{% if add_generation_prompt %}assistant : {% endif %}")


def space_tokenizer(chat: bool):
    """The tiny model's tokenizer over WORDS, with CHAT_TEMPLATE when `chat`."""
    return word_tokenizer(WORDS, chat_template=CHAT_TEMPLATE if chat else None, padding_side="right")


def save_models(root: Path) -> Path:
    """Three saved tiny models (same weights) under `root`: `plain` completes text, `templated` has a chat template
    (and no chat training), `trained` has both (its `illada_train.json` lists chat data, as `illada train --sft`
    writes it)."""
    model = tiny_model(vocab_size=VOCAB_SIZE, initializer_range=0.6)  # peaky logits: varied tokens
    with torch.no_grad():  # EOS logit 0 (below the best of 63 peaky logits): no early stop, runs take every step
        model.get_input_embeddings().weight[model.config.eos_token_id] = 0
    for name in ("plain", "templated", "trained"):
        model.save_pretrained(root / name)
        space_tokenizer(chat=name != "plain").save_pretrained(root / name)
    (root / "trained" / "illada_train.json").write_text(json.dumps({"recipe": "TrainRecipe", "sft": ["chats.jsonl"]}))
    return root


def knobs(**overrides):
    """Event inputs in the order the Space wires them (the order of `CONTROLS`)."""
    values = TEST_SETTINGS | overrides
    return [values[control.name] for control in CONTROLS]


def masks_left(canvas: str) -> int:
    return int(re.search(r'data-masks="(\d+)"', canvas).group(1))


CHIP = re.compile(r'<span class="(tok[^"]*)"(?: style="[^"]*")? title="([^"]*)">(.*?)</span>')
GIVEN = re.compile(r'<span class="given-text">(.*?)</span>')


def workers() -> int:
    return sum(t.name == "illada-generate" for t in threading.enumerate())


def wait_for_no_worker(seconds: float) -> bool:
    deadline = time.time() + seconds
    while workers() and time.time() < deadline:
        time.sleep(0.02)
    return not workers()


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    return save_models(tmp_path_factory.mktemp("space-models"))


@pytest.fixture(scope="module")
def app(folders):
    return space.App(space.Engine.load(str(folders / "plain"), device="cpu"))


@pytest.fixture(scope="module")
def chat_app(folders):
    return space.App(space.Engine.load(str(folders / "templated"), device="cpu"))


def slowed(model, seconds: float):
    """The model with every forward taking at least `seconds` (for runs that must outlast a bound)."""
    forward = model.forward

    def slow_forward(*args, **kwargs):
        time.sleep(seconds)
        return forward(*args, **kwargs)

    model.forward = slow_forward
    return model


# ---------------------------------------------------------------------------------------------------- direct calls


def test_generate_streams_every_step_then_the_final_state(app):
    prompt = "the cat sat on"
    frames = list(app.generate(prompt, *knobs()))
    ids = app.engine.encode_prompt(prompt)
    reference = app.engine.model.generate(ids, max_new_tokens=32, steps=16, block_length=16,
                                          return_dict_in_generate=True)
    passes = reference.num_forward_passes
    assert len(frames) == passes + 2  # the all-mask canvas, one frame per forward pass, the final state
    counts = [masks_left(frame[0]) for frame in frames]
    assert counts[0] == 32 and counts[-1] == 0
    assert all(a > b for a, b in zip(counts[:passes + 1], counts[1:passes + 1]))  # each step reveals something
    assert all('class="illada-canvas running"' in frame[0] for frame in frames[:-1])
    canvas, trace, scrubber, text, figures = frames[-1]
    assert text == app.engine.tokenizer.decode(reference.sequences[0, ids.shape[1]:], skip_special_tokens=True)
    assert trace.frame().tokens == tuple(reference.sequences[0, ids.shape[1]:].tolist())
    assert trace.steps == passes and trace.outcome == "done"
    assert f'<span class="value">{passes}</span><span class="name">forward passes</span>' in figures
    assert f"{reference.tokens_per_forward:.2f}" in figures and "tokens / s" in figures
    assert scrubber.interactive is True and scrubber.maximum == passes
    # intermediate frames leave the text box alone (gr.skip()), the final one fills it
    assert all(frame[3] == {"__type__": "update"} for frame in frames[:-1])


def test_canvas_colours_by_step_marks_new_tokens_and_the_current_block(app):
    frames = list(app.generate("the dog", *knobs(max_new_tokens=16, steps=8, block_length=8)))
    trace = frames[-1][1]
    middle = trace.frame(5)  # after the 5th step: second block, 2 tokens per step
    chips = CHIP.findall(frames[5][0])
    assert sum("new" in classes.split() for classes, _, _ in chips) == len(middle.new) == 2
    block_chips = [c for c in re.findall(r'<span class="(tok[^"]*)"', frames[5][0].split('class="chips"')[1])
                   if "blk" in c.split()]
    assert len(block_chips) == 8  # the current block is marked, and only it
    steps_shown = {int(re.match(r"step (\d+)", title).group(1)) for _, title, _ in chips if title.startswith("step")}
    assert steps_shown == set(range(1, 6))
    # every revealed token: hue from its step, shade from its probability
    final = trace.frame()
    colour = space_render.step_colour
    expected = [colour((at - 1) / (trace.planned_steps - 1), score)[0]
                for at, score in zip(final.revealed_at, final.score)]
    assert re.findall(r'style="background:(#[0-9a-f]{6});', frames[-1][0]) == expected
    assert len({colour(fraction, 1.0) for fraction in (0, 0.25, 0.5, 0.75, 1)}) == 5

    def brightness(hex_colour):
        return sum(int(hex_colour[i:i + 2], 16) for i in (1, 3, 5))

    assert brightness(colour(0.5, 0.1)[0]) > brightness(colour(0.5, 0.5)[0]) > brightness(colour(0.5, 0.9)[0])


def test_markup_from_the_user_and_the_model_is_escaped(app, chat_app):
    text = "<script> alert <b> [MASK] </b> & \" ___ ."
    final = list(app.infill(text, 2, *knobs()))[-1][0]
    chips, given = CHIP.findall(final), GIVEN.findall(final)
    assert chips and given and not re.search(r"<(script|b)\b", final)
    for inner in [inner for _, _, inner in chips] + given:
        assert "<" not in inner and ">" not in inner
    shown = " ".join(html.unescape(inner) for inner in given)
    assert all(word in shown.split() for word in ("<script>", "<b>", "</b>", "&", '"'))  # markup arrives as text
    # the chat box is given escaped text, and history coming back is not escaped twice
    history = [{"role": "user", "content": "&lt;b&gt;hi"}, {"role": "assistant", "content": "ok"}]
    first = next(chat_app.chat("<b>bold</b> <script>", history, *knobs()))
    assert first[0][0]["content"] == "&lt;b&gt;hi"
    assert first[0][2]["content"] == "&lt;b&gt;bold&lt;/b&gt; &lt;script&gt;"


def test_given_text_is_drawn_as_text_not_as_token_chips(app):
    text = "the [MASK] sat on ___ mat ."
    frames = list(app.infill(text, 2, *knobs(steps=4)))
    for canvas in (frames[0][0], frames[-1][0]):
        assert [html.unescape(g) for g in GIVEN.findall(canvas)] == ["the", "sat on", "mat ."]
        assert len(CHIP.findall(canvas)) == 4  # a chip per blank position, none for the given words


def test_chat_turn_uses_the_chat_template_and_ends_with_the_answer(chat_app):
    frames = list(chat_app.chat("the cat", [], *knobs(max_new_tokens=16, steps=8, block_length=8)))
    chatbot, box, canvas, trace, scrubber, text, figures = frames[-1]
    assert box == "" and masks_left(canvas) == 0
    assert [m["role"] for m in chatbot] == ["user", "assistant"]
    assert chatbot[-1]["content"] == html.escape(text)
    ids = chat_app.engine.encode_chat([{"role": "user", "content": "the cat"}])
    assert trace.start == ids.shape[1]
    tokenizer = chat_app.engine.tokenizer
    rendered = tokenizer.apply_chat_template([{"role": "user", "content": "the cat"}], add_generation_prompt=True,
                                             tokenize=False)
    assert rendered.endswith("assistant : ") and ids[0].tolist() == tokenizer(rendered)["input_ids"]


def test_when_generate_refuses_mid_stream_the_chat_is_restored(chat_app, monkeypatch):
    def refuse(*args, **kwargs):
        raise ValueError("`cfg_scale` refused by the model")

    monkeypatch.setattr(chat_app.engine.model, "generate", refuse)
    history = [{"role": "user", "content": "the cat"}, {"role": "assistant", "content": "<b> ok"}]
    frames = list(chat_app.chat("the dog", history, *knobs()))
    chatbot, box, canvas = frames[-1][:3]
    assert "CFG scale refused" in canvas and 'class="illada-canvas notice"' in canvas
    assert chatbot == [{"role": m["role"], "content": html.escape(m["content"])} for m in history]
    assert box == "the dog"  # the message is given back, to retry


def test_a_long_chat_drops_its_oldest_turns_and_says_so(chat_app):
    engine, context = chat_app.engine, chat_app.engine.context
    turn = [{"role": "user", "content": "the cat sat on a mat " * 3}, {"role": "assistant", "content": "a dog ran"}]
    history = turn * 6  # 6 turns of about 25 tokens: more than the context leaves beside 64 new tokens
    frames = list(chat_app.chat("the bird", history, *knobs(max_new_tokens=64, steps=8, block_length=64)))
    chatbot, _, canvas, trace = frames[-1][:4]
    kept = history + [{"role": "user", "content": "the bird"}]
    dropped = next(k for k in range(0, len(kept), 2) if len(engine.encode_chat(kept[k:])[0]) + 64 <= context)
    assert dropped > 0 and trace.start == len(engine.encode_chat(kept[dropped:])[0])
    assert f"The oldest {dropped} messages are left out" in canvas and masks_left(canvas) == 0
    assert len(chatbot) == len(kept) + 1  # the page still shows the whole conversation
    message = "cat " * (context - 40)  # alone too long for 64 new tokens
    refused = list(chat_app.chat(message, [], *knobs(max_new_tokens=64, steps=8, block_length=64)))
    assert len(refused) == 1 and "more than the model&#x27;s context" in refused[0][2] and "`" not in refused[0][2]


def test_a_prompt_that_does_not_fit_is_refused_in_words(app):
    context = app.engine.context
    canvas = next(app.generate("a " * (context - 8), *knobs()))[0]
    assert f"with Length 32 that is {context - 8 + 32}" in html.unescape(canvas)
    assert "`" not in canvas and "Shorten the prompt or lower Length" in canvas
    notice = space_render.render_notice("see `max_position_embeddings` and `steps`", app.controls)
    assert "<code>max_position_embeddings</code>" in notice and "Steps" in notice and "`" not in notice


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(max_new_tokens=10_000), "Length must lie between 8 and {max_new_tokens}"),
        (dict(steps=0), "Steps must lie between 1 and {steps}"),
        (dict(temperature=float("nan")), "Temperature must lie between"),
        (dict(seed=2**40), "Seed must lie between"),
        (dict(steps=7.5), "Steps must be a whole number"),
        (dict(remasking="<img src=x onerror=alert(1)>"), "Remasking must be one of"),
        (dict(max_new_tokens=64, block_length=24), "Block length (24) must divide Length (64)"),
        (dict(max_new_tokens=64, steps=3, block_length=32), "must be a multiple of the number of blocks"),
        (dict(max_new_tokens=16, steps=32, block_length=16), "Steps (32) is more than Length (16)"),
    ],
)
def test_bad_settings_give_a_clear_message_and_run_nothing(app, overrides, message):
    frames = list(app.generate("the cat", *knobs(**overrides)))
    assert len(frames) == 1
    canvas = frames[0][0]
    bounds = {c.name: f"{c.maximum:g}" for c in app.controls if hasattr(c, "maximum")}
    assert 'class="illada-canvas notice"' in canvas and html.escape(message.format(**bounds)) in canvas
    assert "<img" not in canvas
    assert all(output == {"__type__": "update"} for output in frames[0][1:])  # trace, slider, text untouched


def test_every_user_controlled_size_is_bounded(app, chat_app):
    too_long = "the " * (LIMITS.prompt_chars // 4 + 1)
    assert "limit is" in next(app.generate(too_long, *knobs()))[0]
    assert "limit is" in next(app.generate("a " * (LIMITS.prompt_tokens + 1), *knobs()))[0]  # under the chars limit
    assert "Type some text" in next(app.generate("   ", *knobs()))[0]
    assert "Type some text" in next(app.generate(None, *knobs()))[0]
    assert "Tokens per blank must lie between 1 and" in next(app.infill("a [MASK]", 1000, *knobs()))[0]
    many = " ".join(["[MASK]"] * (LIMITS.infill_masks // LIMITS.blank_tokens + 1))
    assert "the limit is" in next(app.infill(many, LIMITS.blank_tokens, *knobs()))[0]
    assert "Mark at least one blank" in next(app.infill("no blanks here", 4, *knobs()))[0]
    huge = [{"role": "user", "content": "cat " * (LIMITS.prompt_chars // 4 + 1)}]
    assert "A message in the chat is" in next(chat_app.chat("hi", huge, *knobs()))[2]
    # only the last `history_messages` are read: an older oversized message is never looked at
    old = huge + [{"role": "user", "content": "the cat"}] * LIMITS.history_messages
    assert next(chat_app.chat("hi", old, *knobs()))[0][0]["content"] == "the cat"
    assert "must be a list" in next(chat_app.chat("hi", "<b>", *knobs()))[2]
    paced = knobs(max_new_tokens=64, steps=64, block_length=64, pace_ms=500)  # 32 s of pauses
    short = space.App(app.engine, limits=replace(LIMITS, run_seconds=10))
    assert "Pace (ms) x Steps is 32 s of pauses; a run may take at most 10 s" in next(short.generate("a", *paced))[0]


def test_sliders_and_server_follow_the_model_context():
    for context in (256, 64):
        model = tiny_model(vocab_size=VOCAB_SIZE, max_position_embeddings=context)
        engine = space.Engine(model=model, tokenizer=space_tokenizer(chat=False), name="tiny")
        events = space.App(engine)
        length = events.controls["max_new_tokens"]
        room = context - engine.min_prompt_tokens()  # the shortest prompt plus Length must fit
        assert length.maximum <= room < length.maximum + length.step
        assert length.maximum < CONTROLS["max_new_tokens"].maximum
        assert events.controls["steps"].maximum == events.controls["block_length"].maximum == length.maximum
        demo = events.build()
        sliders = {b.elem_id: b for b in demo.blocks.values()
                   if getattr(b, "elem_id", None) in ("max-new-tokens", "steps")}
        assert sliders["max-new-tokens"].maximum == sliders["steps"].maximum == length.maximum
        top = dict(max_new_tokens=length.maximum, steps=8, block_length=length.maximum)
        assert events._read(knobs(**top)).max_new_tokens == length.maximum  # the longest offered value runs
        frames = list(events.generate("the", *knobs(**top)))
        assert masks_left(frames[-1][0]) == 0
        refused = next(events.generate("the", *knobs(**(top | dict(max_new_tokens=length.maximum + 8)))))[0]
        assert f"Length must lie between 8 and {length.maximum}" in refused


def test_infill_fills_the_blanks_in_place(app):
    text = "the [MASK] sat on ___ mat ."
    frames = list(app.infill(text, 3, *knobs(steps=4)))
    engine = app.engine
    ids, masks = engine.encode_infill(text, 3)
    assert masks == 6 and int((ids == engine.mask_token_id).sum()) == 6
    reference = engine.model.generate(ids, max_new_tokens=0, steps=4)
    trace, final_text = frames[-1][1], frames[-1][3]
    assert masks_left(frames[0][0]) == 6 and masks_left(frames[-1][0]) == 0
    assert len(frames) == 4 + 2
    assert trace.frame().tokens == tuple(reference[0].tolist())
    kept = ids[0] != engine.mask_token_id
    assert torch.equal(reference[0][kept], ids[0][kept])  # the given words stay where they were
    assert final_text == engine.tokenizer.decode(reference[0], skip_special_tokens=True)
    assert final_text.split()[0] == "the" and final_text.split()[-2:] == ["mat", "."]


def test_early_stop_shows_the_eos_filled_tail(app):
    model = tiny_model(vocab_size=VOCAB_SIZE, initializer_range=0.6)
    eos, forward = model.config.eos_token_id, model.forward

    def forward_preferring_eos(*args, **kwargs):
        output = forward(*args, **kwargs)
        output.logits[..., eos] += 100.0
        return output

    model.forward = forward_preferring_eos
    engine = space.Engine(model=model, tokenizer=app.engine.tokenizer, name="eos")
    frames = list(space.App(engine).generate("the cat", *knobs(max_new_tokens=16, steps=8, block_length=8)))
    assert len(frames) == 1 + 4 + 1  # the first block ends in EOS, so the second block never runs
    final, trace, _, text, _ = frames[-1]
    assert masks_left(frames[-2][0]) == 8 and masks_left(final) == 0 and text == ""
    titles = [title for _, title, _ in CHIP.findall(final)]
    assert sum(t.startswith("step") for t in titles) == 8 and sum(t.startswith("filled") for t in titles) == 8


def test_model_generation_config_sets_the_defaults_but_not_the_canvas(app, monkeypatch):
    config = app.engine.model.generation_config
    for name, value in dict(max_new_tokens=48, steps=24, block_length=16, remasking="margin",
                            variable_length=True).items():
        monkeypatch.setattr(config, name, value)
    defaults = space.Settings.defaults(config, CONTROLS.for_model(128, 1))
    shown = (defaults.max_new_tokens, defaults.steps, defaults.block_length, defaults.remasking)
    assert shown == (48, 24, 16, "margin")
    small = CONTROLS.for_model(64, 1)  # 48 new tokens would leave too little room for the prompt
    assert space.Settings.defaults(config, small).max_new_tokens == small["max_new_tokens"].default
    # a request's own knobs win, and the canvas keeps its length (no variable-length blocks, infill is one block)
    assert masks_left(list(app.generate("the cat", *knobs(max_new_tokens=32, steps=8, block_length=32)))[-1][0]) == 0
    frames = list(app.infill("the [MASK] sat on the ___ mat .", 3, *knobs(steps=6)))
    assert masks_left(frames[-1][0]) == 0 and frames[-1][1].blocks == 1
    # a model saved for parallel decoding: the Threshold control still decides
    monkeypatch.setattr(config, "parallel_decoding", True)
    monkeypatch.setattr(config, "threshold", 0.01)
    scheduled = list(app.generate("the cat", *knobs(max_new_tokens=32, steps=8, block_length=32, threshold=0.0)))
    assert scheduled[-1][1].steps == 8 and masks_left(scheduled[-1][0]) == 0
    parallel = list(app.generate("the cat", *knobs(max_new_tokens=32, steps=8, block_length=32, threshold=0.01)))
    assert parallel[-1][1].steps < 8 and masks_left(parallel[-1][0]) == 0


def test_infill_follows_the_threshold_control_like_the_other_tabs(app, monkeypatch):
    config = app.engine.model.generation_config  # saved for parallel decoding
    monkeypatch.setattr(config, "parallel_decoding", True)
    monkeypatch.setattr(config, "threshold", 0.01)
    text = "the [MASK] sat on ___ mat ."  # 8 masks
    scheduled = list(app.infill(text, 4, *knobs(steps=4, threshold=0.0)))[-1]
    assert scheduled[1].steps == 4 and masks_left(scheduled[0]) == 0  # Threshold 0: the schedule, 2 per step
    parallel = list(app.infill(text, 4, *knobs(steps=4, threshold=0.01)))[-1]
    assert masks_left(parallel[0]) == 0 and parallel[1].steps < 4  # Threshold 0.01: many a step


def test_slider_scrubs_and_replay_plays_every_kept_step(app):
    frames = list(app.generate("the cat", *knobs(max_new_tokens=16, steps=8, block_length=8)))
    trace, final = frames[-1][1], frames[-1][0]
    scrubbed = [app.scrub(trace, step) for step in range(trace.steps + 1)]
    assert [masks_left(c) for c in scrubbed] == [masks_left(f[0]) for f in frames[:-1]] == list(range(16, -1, -2))
    assert CHIP.findall(scrubbed[-1]) == CHIP.findall(final)
    assert [CHIP.findall(s) for s in scrubbed[1:-1]] == [CHIP.findall(f[0]) for f in frames[1:-2]]  # same chips
    assert masks_left(app.scrub(trace, 10_000)) == 0  # out-of-range steps are clamped
    replayed = list(app.replay(trace))
    assert [masks_left(c) for c, _ in replayed] == [masks_left(c) for c in scrubbed]
    assert app.scrub(None, 3) == app.scrub(trace, "nan") == app.scrub(trace, "x") == {"__type__": "update"}


def test_closing_the_stream_stops_the_worker(app):
    stream = app.generate("the cat", *knobs(max_new_tokens=64, steps=64, block_length=64, pace_ms=20))
    for _ in range(3):
        next(stream)
    stream.close()  # what Gradio does when the browser leaves or Stop is pressed
    assert wait_for_no_worker(5)


def test_stop_shows_the_stopped_run_and_puts_the_chat_back(chat_app):
    history = [{"role": "user", "content": "the cat"}, {"role": "assistant", "content": "a dog"},
               {"role": "assistant", "content": "… denoising, step 3", "metadata": {"status": "pending"}}]
    stream = chat_app.chat("the bird", history, *knobs(max_new_tokens=64, steps=64, block_length=64, pace_ms=20))
    frames = [next(stream) for _ in range(5)]
    chatbot, trace = frames[-1][0], frames[-1][3]
    assert chatbot[-1]["metadata"] == {"status": "pending"} and "denoising" in chatbot[-1]["content"]
    sent = [{"role": "user", "content": "the cat"}, {"role": "assistant", "content": "a dog"},
            {"role": "user", "content": "the bird"}]  # the pending bubble of the history never reaches the model
    assert trace.start == len(chat_app.engine.encode_chat(sent)[0])
    stream.close()  # Stop cancels the event
    canvas, scrubber, text, figures, chatbot, box = chat_app.stopped(trace)
    assert 'class="illada-canvas stopped"' in canvas and "stopped at step 4" in canvas
    assert 0 < masks_left(canvas) < 64 and "stopped" in figures
    assert scrubber.interactive is True and scrubber.maximum == trace.steps == 4
    assert text and text == chat_app.engine.tokenizer.decode(
        [t for t in trace.frame().tokens if t != trace.mask_token_id], skip_special_tokens=True)
    assert chatbot == [{"role": m["role"], "content": m["content"]} for m in sent[:2]] and box == "the bird"
    assert masks_left(chat_app.scrub(trace, 2)) == 64 - 2  # the partial run scrubs
    assert chat_app.stopped(trace) == (({"__type__": "update"},) * 6)  # redrawn once: a later Stop leaves it be
    done = list(chat_app.generate("the cat", *knobs()))[-1][1]
    assert chat_app.stopped(done) == (({"__type__": "update"},) * 6)  # a finished run is left as it is
    assert wait_for_no_worker(5)


def test_a_run_ends_at_its_deadline(folders):
    engine = space.Engine.load(str(folders / "plain"), device="cpu")
    slowed(engine.model, 0.05)  # 64 steps: 3 s or more
    events = space.App(engine, limits=replace(LIMITS, run_seconds=0.5))
    began = time.monotonic()
    frames = list(events.generate("the cat", *knobs(max_new_tokens=64, steps=64, block_length=64)))
    canvas, trace, scrubber, text, figures = frames[-1]
    assert time.monotonic() - began < 2.0 and trace.outcome == "time" and 0 < trace.steps < 64
    assert f"stopped at step {trace.steps} (time limit)" in canvas and "A run may take at most 0.5 s" in canvas
    assert masks_left(canvas) > 0 and scrubber.interactive is True and "forward passes" in figures


def test_a_client_that_reads_nothing_ends_its_run(app):
    events = space.App(app.engine, limits=replace(LIMITS, unread_frames=4, stall_seconds=0.3))
    sent = []  # frames the client has been sent (and, this client, never reads)
    began = time.monotonic()
    for frame in events.generate("the cat", *knobs(max_new_tokens=64, steps=64, block_length=64, pace_ms=100),
                                 unread=lambda: len(sent)):
        sent.append(frame)
    trace = sent[-1][1]
    assert trace.outcome == "client" and trace.steps < 10 and time.monotonic() - began < 3.0  # not the 6.4 s run
    assert "(client not reading)" in sent[-1][0] and "The client read nothing for 0.3 s" in sent[-1][0]
    reading = list(events.generate("the cat", *knobs(max_new_tokens=16, steps=16, block_length=16, pace_ms=10),
                                   unread=lambda: 0))  # a client that keeps up runs to the end
    assert reading[-1][1].outcome == "done"


def test_the_mode_follows_what_the_model_was_trained_on(folders, tmp_path):
    evidence = space_engine.chat_evidence
    assert evidence(str(folders / "plain")) is None and evidence(str(folders / "templated")) is None
    assert "trained on chats" in evidence(str(folders / "trained"))
    shutil.copytree(folders / "templated", tmp_path / "tiny-Instruct")
    assert "name" in evidence(str(tmp_path / "tiny-Instruct"))
    shutil.copytree(folders / "templated", tmp_path / "carded")
    (tmp_path / "carded" / "README.md").write_text("---\ntags: [illada, chat]\n---\n# a chat model\n")
    assert "tag chat" in evidence(str(tmp_path / "carded"))
    for name, mode, tabs in (("plain", "completion", ["completion", "infill"]),
                             ("templated", "completion", ["chat", "completion", "infill"]),
                             ("trained", "chat", ["chat", "completion", "infill"])):
        events = space.App(space.Engine.load(str(folders / name), device="cpu"))
        demo = events.build()
        tabs_block = next(b for b in demo.blocks.values() if type(b).__name__ == "Tabs")
        assert events.mode == mode and tabs_block.selected == mode, name
        assert [b.id for b in demo.blocks.values() if type(b).__name__ == "Tab"] == tabs, name
    with pytest.raises(ValueError, match="mode must be"):
        space.App(space.Engine.load(str(folders / "plain"), device="cpu"), mode="chat")


def test_the_sampler_controls_are_wired_in_their_declared_order(chat_app):
    demo = chat_app.build()
    labels = [c.label for c in CONTROLS]
    wired = {fn.api_name: [getattr(b, "label", None) for b in fn.inputs] for fn in demo.fns.values()
             if fn.concurrency_id == "model"}
    assert {name: inputs[-len(labels):] for name, inputs in wired.items()} == {name: labels for name in wired}
    assert chat_app._read(knobs()).values() == knobs()  # read back in the same order


def test_model_events_share_one_queue_slot_and_the_queue_is_bounded(app, chat_app):
    for events in (app, chat_app):
        demo = events.build()
        running = {fn.api_name: fn.concurrency_limit for fn in demo.fns.values() if fn.concurrency_id == "model"}
        names = ["generate"] + (["chat"] if events is chat_app else [])
        assert running == {**{n: 1 for n in names}, **{f"{n}_submit": 1 for n in names}, "infill": 1}
        assert demo._queue.max_size == LIMITS.queue_size


def test_missing_demo_model_gives_a_clear_message(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "modeling_illada.demo", None)  # the module is not there
    with pytest.raises(SystemExit, match="--model"):
        space.default_model()
    fake = types.ModuleType("modeling_illada.demo")
    fake.demo_model_path = lambda: tmp_path  # the module is there, no weights
    monkeypatch.setitem(sys.modules, "modeling_illada.demo", fake)
    with pytest.raises(SystemExit, match="demo model is missing"):
        space.default_model()


@pytest.mark.slow
def test_default_demo_model_smoke():
    try:
        path = space.default_model()
    except SystemExit as missing:
        pytest.skip(f"the embedded demo model is absent: {missing}")
    demo_app = space.App(space.Engine.load(path, device="cpu"))
    settings = knobs(max_new_tokens=16, steps=8, block_length=8)
    frames = (list(demo_app.generate("Hello", *settings)) if demo_app.mode == "completion" else
              [f[2:] for f in demo_app.chat("Hello", [], *settings)])
    assert len(frames) > 3 and masks_left(frames[-1][0]) == 0
    given = " in time saves nine."  # a real sub-word tokenizer: the given text still reads whole
    canvas = next(demo_app.infill(f"A [MASK]{given}", 4, *settings))[0]
    assert given.strip() in "".join(html.unescape(g) for g in GIVEN.findall(canvas))


def test_space_card_and_requirements_match_the_environment():
    import importlib.metadata

    import gradio
    from packaging.requirements import Requirement
    from packaging.version import Version
    import transformers
    from huggingface_hub import SpaceCard

    import modeling_illada

    card = SpaceCard.load(ROOT / "space" / "README.md").data
    assert card.sdk == "gradio" and card.sdk_version == gradio.__version__
    assert card.python_version == "3.11"  # a string: unquoted, YAML would read 3.10 as 3.1
    assert (ROOT / "space" / card.app_file).is_file() and card.models and len(card.short_description) <= 60
    requirements = (ROOT / "space" / "requirements.txt").read_text().splitlines()
    # the Space pins one transformers release, inside the range the package declares (and this suite tests)
    pinned = [Version(line.split("==")[1]) for line in requirements if line.startswith("transformers==")]
    declared = next(Requirement(r) for r in importlib.metadata.requires("illada") if r.startswith("transformers"))
    assert len(pinned) == 1 and pinned[0] in declared.specifier, (pinned, declared)
    assert Version(transformers.__version__) in declared.specifier
    assert f"./illada-{modeling_illada.__version__}-py3-none-any.whl" in requirements
    assert not any(line.startswith("gradio") for line in requirements)  # the SDK provides it
    # the limits the card states are the ones the Space enforces
    text = (ROOT / "space" / "README.md").read_text()
    stated = re.search(r"queue of (\d+); a run takes at most (\d+) s, a client that reads nothing of its stream\s+"
                       r"for (\d+) s loses its run, and a request body over (\d+) MiB", text)
    assert stated and tuple(map(float, stated.groups())) == (
        LIMITS.queue_size, LIMITS.run_seconds, LIMITS.stall_seconds, LIMITS.request_bytes / 2**20)


# ---------------------------------------------------------------------------------------------- a running server

SERVER_LIMITS = replace(LIMITS, unread_frames=8, stall_seconds=1.0)  # a client that reads nothing is found in ~2 s


@pytest.fixture(scope="module")
def server(folders):
    """The Space on the tiny model with a chat template (so /generate, /chat and /infill), on 127.0.0.1."""
    events = space.App(space.Engine.load(str(folders / "templated"), device="cpu"), limits=SERVER_LIMITS)
    demo = events.build()
    _, url, _ = space.launch(demo, SERVER_LIMITS, server_name="127.0.0.1", prevent_thread_lock=True, quiet=True)
    yield url.rstrip("/")
    demo.close()


def test_gradio_client_receives_intermediate_states_then_the_final_one(server):
    from gradio_client import Client

    client = Client(server, verbose=False)
    endpoints = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    assert {"/generate", "/chat", "/infill", "/scrub", "/replay"} <= set(endpoints)
    job = client.submit("the cat sat", *knobs(max_new_tokens=32, steps=16, block_length=16, pace_ms=10),
                        api_name="/generate")
    updates = list(job)
    canvases = [update[0] for update in updates]
    counts = [masks_left(canvas) for canvas in canvases]
    assert len([c for c in counts if 0 < c < 32]) >= 3  # several intermediate states arrived
    assert counts == sorted(counts, reverse=True) and counts[-1] == 0
    assert "illada-canvas done" in canvases[-1] and updates[-1][2]  # final state, with its text
    # Stop (a cancelled job) ends generate() in the worker thread too
    job = client.submit("the cat", *knobs(max_new_tokens=64, steps=64, block_length=64, pace_ms=50),
                        api_name="/generate")
    deadline = time.time() + 20
    while len(job.outputs()) < 3 and time.time() < deadline:
        time.sleep(0.02)
    assert workers()
    job.cancel()
    assert wait_for_no_worker(5)


def test_a_client_that_leaves_its_stream_ends_its_run(server):
    slow = ["the cat", *knobs(max_new_tokens=64, steps=64, block_length=64, pace_ms=100)]  # 6.4 s unless stopped
    event_id, _ = space_helpers.submit(server, "generate", slow, time.monotonic() + 10)
    events = space_helpers.read_stream(server, "generate", event_id, timeout=20, keep=3)  # then hangs up
    assert len(events) == 3 and workers()
    assert wait_for_no_worker(3)


def test_request_bodies_over_the_limit_are_refused_before_parsing(server):
    import httpx

    total = 10 * SERVER_LIMITS.request_bytes  # the 300,000-message history of the issue is 18.6 MB
    for declare_length in (True, False):
        status, sent = space_helpers.oversized(server, "chat", total, declare_length)
        assert status == 413 and sent < total / 2, (declare_length, status, sent)
    # the largest request a page can send (the kept history at its limits, every character escaped to 6) passes
    worst = html.escape('"' * LIMITS.prompt_chars)
    history = [{"role": role, "content": [{"type": "text", "text": worst}]}
               for role in ("user", "assistant") * (LIMITS.history_messages // 2 + 1)]
    body = {"data": ["the cat", history, *knobs()]}
    assert len(httpx.Request("POST", server, json=body).content) < SERVER_LIMITS.request_bytes
    response = httpx.post(f"{server}/gradio_api/call/chat", json=body, timeout=30)
    assert response.status_code == 200, response.text
    events = space_helpers.read_stream(server, "chat", response.json()["event_id"], timeout=30)
    assert events[-1][0] == "complete" and "The oldest" in events[-1][1]  # it runs, on the turns that fit


@pytest.mark.slow
def test_under_load_every_good_client_is_served_and_memory_stays_bounded(server):
    """20 concurrent clients, one client that never reads a long run, two that send an oversized history."""
    good = ["the cat", *knobs(max_new_tokens=16, steps=8, block_length=16)]
    slow = ["the dog", *knobs(max_new_tokens=64, steps=64, block_length=64,
                              pace_ms=int(SLOW_SECONDS / 64 * 1000) // 10 * 10)]
    figures = space_helpers.load(server, good, slow=slow, history_bytes=20 * 1024 * 1024, clients=20,
                                 timeout=GOOD_SECONDS + 10)
    assert figures["served"] == 20 and not figures["failures"], figures["failures"]
    assert figures["slow_end"][0] == "complete" and "(client not reading)" in figures["slow_end"][1]
    assert figures["worst"] < GOOD_SECONDS, figures  # the slow run alone would take SLOW_SECONDS
    assert [status for status, _ in figures["oversize"]] == [413, 413]
    assert figures["memory_peak"] - figures["memory_before"] < MEMORY_MB, figures
    assert wait_for_no_worker(10)


@pytest.fixture
def page():
    """A page (1400 x 1000) of headless Debian chromium driven by Playwright, closed after the test (which is skipped
    when chromium or Playwright is absent); screenshots go to ARTIFACTS."""
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip("Debian's chromium is not installed (apt-get install -y chromium); .ci/run installs it")
    playwright = pytest.importorskip("playwright.sync_api")
    ARTIFACTS.mkdir(exist_ok=True)
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_FLAGS)
        try:
            yield browser.new_page(viewport={"width": 1400, "height": 1000})
        finally:
            browser.close()


def _set(page, elem_id: str, value):
    box = page.locator(f"#{elem_id} input[type=number]")
    box.fill(str(value))
    box.press("Enter")


BOX = "sel => [...document.querySelectorAll(sel)].map(e => { const r = e.getBoundingClientRect(); " \
      "return [r.left, r.top, r.right, r.bottom]; })"


def _overlap(a, b) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


@pytest.mark.slow
def test_browser_sees_the_canvas_unmask_step_by_step(server, page):
    page.goto(server, wait_until="domcontentloaded")
    page.locator("#prompt textarea").fill("the cat <b> sat on")
    _set(page, "pace-ms", 80)
    # record the mask count of every canvas the page renders
    page.wait_for_selector("#canvas .illada-canvas")
    page.evaluate("""() => {
        window.__masks = [];
        const canvas = document.querySelector('#canvas');
        new MutationObserver(() => {
            const node = canvas.querySelector('.illada-canvas[data-masks]');
            if (node && window.__masks.at(-1) !== node.dataset.masks) window.__masks.push(node.dataset.masks);
        }).observe(canvas, {childList: true, subtree: true});
    }""")
    page.get_by_role("button", name="Generate", exact=True).click()
    page.wait_for_function("""() => {
        const node = document.querySelector('#canvas .illada-canvas.running');
        return node && +node.dataset.masks > 0 && +node.dataset.masks <= 40;
    }""", timeout=30_000)
    page.screenshot(path=str(ARTIFACTS / "space-running.png"), full_page=True)
    page.wait_for_selector("#canvas .illada-canvas.done", timeout=60_000)
    seen = [int(m) for m in page.evaluate("window.__masks")]
    assert seen[-1] == 0 and len([m for m in seen if m > 0]) >= 3, seen
    assert seen == sorted(seen, reverse=True), seen
    assert page.locator("#canvas .chips .tok.mask").count() == 0
    assert page.locator("#canvas .chips .tok:not(.mask)").count() > 0
    page.wait_for_function("document.querySelector('#final-text textarea').value.length > 0")
    page.screenshot(path=str(ARTIFACTS / "space.png"), full_page=True)


@pytest.mark.slow
def test_browser_stop_chat_history_and_layout(server, page):
    """Stop leaves the page stopped and scrubbable with the chat as it was; nothing overlaps; given text is text."""
    page.goto(server, wait_until="domcontentloaded")
    page.get_by_role("tab", name="Chat").click()
    _set(page, "pace-ms", 0)
    for turn in ("the cat sat on the mat " * 6, "the dog ran"):  # a long message, then a short one
        page.locator("#message textarea").fill(turn)
        page.get_by_role("button", name="Send", exact=True).click()
        page.wait_for_function("() => !document.querySelector('#message textarea').value && "
                               "document.querySelector('#canvas .illada-canvas.done')", timeout=30_000)
    rows = page.locator("#chatbot .message-row").count()
    _set(page, "pace-ms", 150)
    page.locator("#message textarea").fill("the bird")
    page.get_by_role("button", name="Send", exact=True).click()
    page.wait_for_function("() => { const n = document.querySelector('#canvas .illada-canvas.running'); "
                           "return n && +n.dataset.step >= 2; }", timeout=30_000)
    assert page.locator("#chatbot").inner_text().count("denoising") == 1
    page.locator("#stop-send").click()
    page.wait_for_selector("#canvas .illada-canvas.stopped", timeout=15_000)
    page.wait_for_function(f"() => document.querySelectorAll('#chatbot .message-row').length == {rows}")
    assert "denoising" not in page.locator("#chatbot").inner_text()
    assert page.locator("#message textarea").input_value() == "the bird"  # to send again
    assert page.locator("#final-text textarea").input_value()  # the partial text
    assert page.locator("#scrubber input[type=range]").is_enabled()
    page.screenshot(path=str(ARTIFACTS / "space-stopped.png"), full_page=True)
    # layout: the chat's label and toolbar cover no message, scrolled or not (the scrolling area starts
    # below them), and Replay sits in its column and in the scrubber's panel
    chatbot, area = page.evaluate(BOX, "#chatbot")[0], page.evaluate(BOX, "#chatbot .bubble-wrap")[0]
    tools = page.evaluate(BOX, "#chatbot .top-panel button") + page.evaluate(BOX, "#chatbot label")
    assert tools and not any(_overlap(t, area) for t in tools), (tools, area)
    for scroll in (0, 10_000):
        page.evaluate(f"() => document.querySelector('#chatbot .bubble-wrap').scrollTop = {scroll}")
        messages = [m for m in page.evaluate(BOX, "#chatbot .message") if m[3] > chatbot[1] and
                    m[1] < chatbot[3]]  # the visible ones
        assert messages and not any(_overlap(t, m) for t in tools for m in messages), (tools, messages)
    assert not any(_overlap(a, b) for i, a in enumerate(tools) for b in tools[i + 1:])
    for width in (1400, 900):
        page.set_viewport_size({"width": width, "height": 1000})
        page.wait_for_timeout(300)
        replay, group = page.evaluate(BOX, "#replay")[0], page.evaluate(BOX, "#scrub-group")[0]
        column, slider = page.evaluate(BOX, "#output-column")[0], page.evaluate(BOX, "#scrubber")[0]
        inside = all(group[i] <= replay[i] + 0.5 for i in (0, 1)) and all(replay[i] <= group[i] + 0.5 for i in (2, 3))
        assert inside and replay[2] <= column[2] + 0.5 and not _overlap(replay, slider), (width, replay, group)
    # infill: the given text is drawn as text, the blanks as chips
    page.get_by_role("tab", name="Infill").click()
    page.locator("#infill-text textarea").fill("the [MASK] sat on ___ mat .")
    page.get_by_role("button", name="Fill the blanks", exact=True).click()
    page.wait_for_selector("#canvas .illada-canvas.done", timeout=30_000)
    given = page.locator("#canvas .given-text").all_inner_texts()
    assert [g.strip() for g in given] == ["the", "sat on", "mat ."], given
    page.screenshot(path=str(ARTIFACTS / "space-infill.png"), full_page=True)


@pytest.mark.slow
def test_browser_on_the_embedded_demo_answers_in_chat_and_takes_the_readme_screenshot(page):
    """The Space as `python space/app.py` opens it: the embedded demo (SmolLM2-135M-Instruct adapted), in chat mode,
    answering a question with its saved generation config. Writes artifacts/space-demo.png (README's picture)."""
    try:
        path = space_engine.default_model()
    except SystemExit as missing:
        pytest.skip(f"the embedded demo is not available: {missing}")
    events = space.App(space.Engine.load(path, device="cpu"))
    assert events.engine.chat  # a chat template, and trained on chats
    demo = events.build()
    _, url, _ = space.launch(demo, LIMITS, server_name="127.0.0.1", prevent_thread_lock=True, quiet=True)
    try:
        page.goto(url, wait_until="domcontentloaded")
        page.locator("#message textarea").fill("What is the capital of France?")
        page.get_by_role("button", name="Send", exact=True).click()
        page.wait_for_selector("#canvas .illada-canvas.done", timeout=120_000)
        page.wait_for_function("document.querySelector('#final-text textarea').value.length > 0")
        answer = page.locator("#final-text textarea").input_value()
        assert sum(ch.isalpha() for ch in answer) >= 5 and page.locator("#canvas .chips .tok.mask").count() == 0
        page.locator("#scrubber input[type=range]").wait_for()
        page.screenshot(path=str(ARTIFACTS / "space-demo.png"), full_page=True)
    finally:
        demo.close()


def test_the_text_ends_at_the_first_end_token_the_model_wrote(app):
    """A block can hold text after an EOS the model committed (it is revealed last, by confidence): the Text box and
    the chat reply end at it; a given end token (infilling a text that holds one) does not cut."""
    engine, mask = app.engine, app.engine.mask_token_id
    eos = next(iter(engine.end_ids()))
    word = next(t for t in range(engine.model.config.vocab_size) if t not in engine.end_ids() and t != mask
                and not engine.special(t))
    trace = space_render.Trace.begin([mask] * 4, 0, mask, 4, True, 1, None)
    trace.tokens, trace.revealed_at, trace.spans = [word, eos, word, word], [1] * 4, [(0, 0, 4)]  # one step
    cut = app._words(trace)
    assert cut == engine.tokenizer.decode([word], skip_special_tokens=True) and cut
    given = space_render.Trace.begin([word, eos, mask, mask], 0, mask, 2, True, 1, None)
    given.tokens, given.revealed_at, given.spans = [word, eos, word, word], [0, 0, 1, 1], [(0, 0, 4)]
    assert app._words(given) == engine.tokenizer.decode([word, word, word], skip_special_tokens=True)
