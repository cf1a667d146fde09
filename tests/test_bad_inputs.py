"""Bad input and edge cases across the public surface: each gets a clear error naming the parameter (and the allowed
values), or, where the input is legitimate, the right result. Table-driven where the cases share a shape."""

import pytest
import torch

from helpers import MASK, FakeDenoiser, tiny_config, tiny_model
from modeling_illada.likelihood import (SCORERS, confidence_log_likelihood, elbo, monte_carlo_log_likelihood,
                                        text_log_likelihood)


# --- likelihood: what fits each alone is scored, whatever shares its batch ------------------------------------------

@pytest.fixture
def short_context():
    return tiny_model(max_position_embeddings=32)


def test_elbo_of_a_text_longer_than_the_context_is_scored_in_windows(short_context):
    text = torch.randint(4, 64, (80,), generator=torch.Generator().manual_seed(0)).tolist()
    score = elbo(short_context, [text], mc_num=4, seed=0)
    assert score.shape == (1,) and torch.isfinite(score).all() and score.item() < 0


def one_generator_per_pair(model, prompts, answers):
    generators = [torch.Generator().manual_seed(len(p) * 100 + len(a)) for p, a in zip(prompts, answers)]
    return monte_carlo_log_likelihood(model, prompts, answers, mc_num=4, generator=generators)


@pytest.mark.parametrize("scorer", [confidence_log_likelihood, SCORERS["left_to_right"], one_generator_per_pair])
def test_pairs_that_fit_alone_but_not_together_are_scored_as_alone(short_context, scorer):
    g = torch.Generator().manual_seed(1)
    long_prompt, short_answer = torch.randint(4, 64, (20,), generator=g).tolist(), [5, 6]
    short_prompt, long_answer = [7, 8], torch.randint(4, 64, (20,), generator=g).tolist()
    together = scorer(short_context, [long_prompt, short_prompt], [short_answer, long_answer])
    alone = torch.cat([scorer(short_context, [long_prompt], [short_answer]),
                       scorer(short_context, [short_prompt], [long_answer])])
    torch.testing.assert_close(together, alone)


@pytest.mark.parametrize("prompts,answers,message", [
    ([1, 2], [4, MASK, 5], r"answers\[0\]` holds the mask token"),
    ([1, MASK], [4, 5], r"prompts\[0\]` holds the mask token"),
    ([1, 2], torch.tensor([4.0, 5.0]), "integer token ids"),
    ([1, 2], [[4, 5], "six"], r"answers\[1\]"),
    ([1, 2], [4, True], "integer token ids"),
    ([1, 2], [4, 99], "outside the vocabulary"),
    ([1, 2], [4, -1], "outside the vocabulary"),
])
def test_likelihood_refuses_what_it_would_score_wrongly(prompts, answers, message):
    model = tiny_model()
    for scorer in SCORERS.values():
        with pytest.raises(ValueError, match=message):
            scorer(model, prompts, answers)


@pytest.mark.parametrize("texts, message", [
    ([[5, 99]], r"`texts\[0\]` holds ids outside the vocabulary \[0, 64\)"),
    ([[5, 6], [7, MASK, 8]], r"`texts\[1\]` holds the mask token \(id 3\) at position 1"),
    ([[5], []], r"`texts\[1\]` is empty"),
])
def test_whole_text_scores_name_the_bad_text(texts, message):
    model = tiny_model(max_position_embeddings=8)  # long texts are windowed: an error must still name the text
    for scorer, options in (("mc", dict(mc_num=4)), ("left_to_right", {})):
        with pytest.raises(ValueError, match=message):
            text_log_likelihood(model, [t * 5 if len(t) > 1 else t for t in texts], scorer=scorer, **options)


@pytest.mark.parametrize("scale", [float("nan"), float("inf"), -0.5, True])
def test_cfg_scale_must_be_a_finite_non_negative_number(scale):
    for scorer in SCORERS.values():
        with pytest.raises(ValueError, match="cfg_scale"):
            scorer(tiny_model(), [1, 2], [4, 5], cfg_scale=scale)


# --- the training command line: one-line errors naming the option, nothing raw --------------------------------------

@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("\n%\n".join(f"the cat sat on mat number {i} ." for i in range(40)) + "\n")
    return path


@pytest.mark.parametrize("flags,message", [
    (["--config", "{not json"], "inline `config` is not valid JSON"),
    (["--config", "missing.json"], "neither a JSON object nor a file"),
    (["--max-steps", "-1"], "`max_steps` must be a positive integer"),
    (["--batch-size", "0"], "`batch_size` must be a positive integer"),
    (["--resume", "nowhere"], "'nowhere' is not a checkpoint folder"),
    (["--loss-weighting", "nope"], "invalid choice"),
])
def test_train_command_line_errors_name_the_option(tmp_path, corpus, capsys, flags, message):
    from illada_cli import main

    argv = ["train", "--data", str(corpus), "--doc-separator", "%", "--output", str(tmp_path / "out"),
            "--train-tokenizer", "300", "--seq-length", "16", *flags]
    try:
        code = main(argv)
    except SystemExit as exit:  # argparse's own errors (choices) exit 2 with a usage line
        code = exit.code
    assert code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_output_that_is_a_file_is_refused(tmp_path, corpus, capsys):
    from illada_cli import main

    target = tmp_path / "a-file"
    target.write_text("mine")
    assert main(["train", "--data", str(corpus), "--output", str(target), "--train-tokenizer", "300"]) == 2
    assert "is a file" in capsys.readouterr().err and target.read_text() == "mine"


def test_non_utf8_text_warns_and_jsonl_names_file_and_line(tmp_path):
    from modeling_illada.corpus import read_conversations, read_documents

    text = tmp_path / "latin1.txt"
    text.write_bytes("caf\xe9 au lait\n".encode("latin-1"))
    with pytest.warns(UserWarning, match="latin1.txt: 1 bytes are not UTF-8"):
        assert read_documents([text]) == ["caf\ufffd au lait"]
    chats = tmp_path / "chats.jsonl"
    chats.write_bytes(b'{"messages": []}\n' + '{"x": "caf\xe9"}\n'.encode("latin-1"))
    with pytest.raises(ValueError, match="chats.jsonl:2: not UTF-8"):
        read_conversations([chats])


# --- generation: every knob checked by name, the model's ids and masks checked against the model --------------------

from modeling_illada import IlladaGenerationConfig  # noqa: E402

BAD_KNOBS = [
    (dict(temperature=float("inf")), "temperature"), (dict(temperature=float("nan")), "temperature"),
    (dict(temperature="0.5"), "temperature"), (dict(cfg_scale=float("nan")), "cfg_scale"),
    (dict(cfg_scale=float("inf")), "cfg_scale"), (dict(top_p=float("nan")), "top_p"), (dict(top_k=0), "top_k"),
    (dict(threshold=0.0), "threshold"), (dict(threshold=float("nan")), "threshold"),
    (dict(repetition_penalty=0.0), "repetition_penalty"), (dict(repetition_penalty=float("inf")), "repetition_penalty"),
    (dict(output_history="no"), "output_history"), (dict(eos_early_stop=1), "eos_early_stop"),
    (dict(variable_length="yes"), "variable_length"), (dict(stop_strings=[""]), "stop_strings"),
    (dict(stop_strings=[3]), "stop_strings"), (dict(eos_token_id=-1), "eos_token_id"),
    (dict(eot_token_id=-2), "eot_token_id"), (dict(max_new_tokens=-1), "max_new_tokens"),
    (dict(steps=2.5), "steps"), (dict(block_length=True), "block_length"), (dict(suffix_window=-1), "suffix_window"),
    (dict(cache="full"), "cache"), (dict(remasking=None), "remasking"), (dict(mask_token_id=-3), "mask_token_id"),
]


@pytest.mark.parametrize("knobs,name", BAD_KNOBS, ids=[str(k) for k, _ in BAD_KNOBS])
def test_every_generation_knob_is_checked_by_name(knobs, name):
    with pytest.raises(ValueError, match=f"`{name}`"):
        IlladaGenerationConfig(**knobs)
    with pytest.raises(ValueError, match=f"`{name}`"):
        tiny_model().generate(torch.tensor([[5, 6, 7]]), **{"max_new_tokens": 4, **knobs})


@pytest.mark.parametrize("inputs,message", [
    (torch.tensor([[5.0, 6.0]]), "integer token ids"), (torch.tensor([[True, False]]), "integer token ids"),
    ([[5, 6]], "a tensor of token ids"), (torch.tensor([[5, 64]]), "outside the vocabulary"),
    (torch.tensor([[-1, 5]]), "outside the vocabulary"), (torch.zeros(1, 2, 3, dtype=torch.long), "shape"),
])
def test_bad_prompts_are_named(inputs, message):
    with pytest.raises(ValueError, match=message):
        tiny_model().generate(inputs, max_new_tokens=4)


@pytest.mark.parametrize("mask", [[[1, 0.9, 1]], [[1, 2, 1]], [[1, -1, 1]]])
def test_attention_masks_other_than_0_and_1_are_refused(mask):
    with pytest.raises(ValueError, match="`attention_mask` must hold 0"):
        tiny_model().generate(torch.tensor([[5, 6, 7]]), attention_mask=torch.tensor(mask), max_new_tokens=4)


def test_end_ids_beyond_the_vocabulary_are_refused():
    with pytest.raises(ValueError, match=r"eos_token_id / eot_token_id.*\[99\].*vocab_size=64"):
        tiny_model().generate(torch.tensor([[5, 6]]), max_new_tokens=4, eos_token_id=99)


def test_errors_name_the_knob_as_passed_and_where_it_came_from():
    model = tiny_model()
    with pytest.raises(ValueError, match=r"`gen_length` \(`max_new_tokens`\)"):
        model.generate(torch.tensor([[5, 6]]), gen_length=10, block_length=4)
    model.generation_config = IlladaGenerationConfig(max_new_tokens=200, mask_token_id=MASK)  # context 128
    with pytest.raises(ValueError, match="`max_new_tokens` = 200 comes from the model's saved generation config"):
        model.generate(torch.tensor([[5, 6]]))


def test_a_saved_suffix_window_is_not_applied_to_infilling_and_a_passed_one_is_refused():
    # a saved window says how the model continues a prompt; holes need the text after them visible
    model = tiny_model()
    holes = torch.tensor([[5, MASK, 6, MASK, 7, 8]])
    plain = model.generate(holes, max_new_tokens=0)
    model.generation_config = IlladaGenerationConfig(suffix_window=1, variable_length=True, mask_token_id=MASK)
    assert torch.equal(model.generate(holes, max_new_tokens=0), plain)
    with pytest.raises(ValueError, match="`suffix_window` hides the canvas after the block"):
        model.generate(holes, max_new_tokens=0, suffix_window=1)
    with pytest.raises(ValueError, match="`var` \\(`variable_length`\\) generation appends blocks"):
        model.generate(holes, max_new_tokens=0, var=True)
    continued = model.generate(holes[:, :2] * 0 + 5, max_new_tokens=4, variable_length=False)  # no holes: applied
    assert continued.shape == (1, 6)


def test_a_broken_generation_config_json_is_an_error_naming_the_file(tmp_path):
    from transformers import AutoModel

    model = tiny_model()
    model.save_pretrained(tmp_path)
    (tmp_path / "generation_config.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"generation_config\.json is not valid JSON"):
        AutoModel.from_pretrained(tmp_path)
    (tmp_path / "generation_config.json").write_text('{"temperature": -1, "mask_token_id": 3}')
    with pytest.raises(ValueError, match=r"generation_config\.json: `temperature` must be"):
        AutoModel.from_pretrained(tmp_path)


# --- the repetition penalty (a logits-shaping policy) --------------------------------------------------------------

def test_repetition_penalty_by_hand():
    from modeling_illada.shaping import RepetitionPenalty, ShapingContext

    config = IlladaGenerationConfig(repetition_penalty=2.0)
    x = torch.tensor([[10, 11, 12, MASK, MASK]])  # prompt [10, 11], token 12 already generated
    logits = torch.zeros(1, 2, 16)
    logits[..., 12], logits[..., 11], logits[..., 13] = 4.0, 4.0, -1.0
    out = RepetitionPenalty()(logits, ShapingContext(x, x[:, 3:] == MASK, 3, 2, 3, (2,), MASK, config))
    assert out[0, 0, 12] == 2.0 and out[0, 0, 11] == 4.0 and out[0, 0, 13] == -1.0  # 12 halved; prompt's 11 not
    logits[..., 12] = -3.0
    out = RepetitionPenalty()(logits, ShapingContext(x, x[:, 3:] == MASK, 3, 2, 3, (2,), MASK, config))
    assert out[0, 0, 12] == -6.0  # a negative logit is multiplied


def test_repetition_penalty_breaks_a_loop_in_generate():
    table = torch.zeros(tiny_config().max_position_embeddings, 64)
    table[:, 20], table[:, 21], table[:, 22] = 3.0, 2.5, 2.0  # every position prefers 20, then 21, then 22
    model = FakeDenoiser(table=table)  # greedy decoding loops on 20
    knobs = dict(max_new_tokens=4, steps=4, eos_early_stop=False)
    assert model.generate(torch.tensor([[5, 6]]), **knobs)[0, 2:].tolist() == [20, 20, 20, 20]
    penalised = model.generate(torch.tensor([[5, 6]]), repetition_penalty=100.0, **knobs)[0, 2:].tolist()
    assert sorted(penalised) == [20, 20, 21, 22]  # 20, then the best unused token, until all are used once


# --- the model: its config and its forward ------------------------------------------------------------------------

@pytest.mark.parametrize("fields,name", [
    (dict(rope_theta=0.0), "rope_theta"), (dict(rope_theta=-1.0), "rope_theta"),
    (dict(rope_theta=float("nan")), "rope_theta"), (dict(rms_norm_eps=-1e-6), "rms_norm_eps"),
    (dict(attention_dropout=1.5), "attention_dropout"), (dict(hidden_act="swishy"), "hidden_act"),
    (dict(bos_token_id=64), "bos_token_id"), (dict(eos_token_id=[2, 70]), "eos_token_id"),
    (dict(pad_token_id=-1), "pad_token_id"), (dict(vocab_size=0), "vocab_size"),
])
def test_config_values_are_checked_by_name(fields, name):
    with pytest.raises(ValueError, match=f"`{name}`"):
        tiny_config(**fields)


def test_a_misspelt_config_field_warns_with_the_closest_name():
    from transformers.testing_utils import CaptureLogger

    from modeling_illada import configuration_illada

    with CaptureLogger(configuration_illada.logger) as captured:
        config = tiny_config(rms_norm_epsilon=1e-5)
    assert "did you mean `rms_norm_eps`" in captured.out and config.rms_norm_eps == 1e-6


@pytest.mark.parametrize("ids,message", [
    (torch.tensor([[5.0, 6.0]]), "integer token ids"), (torch.tensor([[5, 64]]), "outside the vocabulary"),
    (torch.tensor([[-2, 5]]), "outside the vocabulary"), ([[5, 6]], "2-D tensor"),
])
def test_the_forward_names_bad_input_ids(ids, message):
    with pytest.raises(ValueError, match=message):
        tiny_model()(ids)


def test_the_forward_refuses_a_non_binary_padding_mask():
    with pytest.raises(ValueError, match="0 \\(padding\\) and 1"):
        tiny_model()(torch.tensor([[5, 6, 7]]), attention_mask=torch.tensor([[1, 2, 1]]))


def test_loading_names_an_empty_folder_and_damaged_weights(tmp_path):
    from safetensors.torch import load_file, save_file

    from modeling_illada import IlladaForMaskedDiffusion

    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="without config.json"):
        IlladaForMaskedDiffusion.from_pretrained(tmp_path / "empty")
    tiny_model().save_pretrained(tmp_path / "nan")
    weights = load_file(tmp_path / "nan" / "model.safetensors")
    weights["model.norm.weight"][0] = float("nan")
    save_file(weights, tmp_path / "nan" / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"NaN or infinite weights in \['model.norm.weight'\]"):
        IlladaForMaskedDiffusion.from_pretrained(tmp_path / "nan")
    assert IlladaForMaskedDiffusion.from_pretrained(tmp_path / "nan", strict=False) is not None
