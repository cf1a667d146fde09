"""Bad input and edge cases across the public surface: each gets a clear error naming the parameter (and the allowed
values), or, where the input is legitimate, the right result. Table-driven where the cases share a shape."""

import pytest
import torch

from conftest import tiny_model
from modeling_illada.likelihood import confidence_log_likelihood, elbo, monte_carlo_log_likelihood

MASK = 3


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


@pytest.mark.parametrize("scorer", [confidence_log_likelihood, one_generator_per_pair])
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
    for scorer in (confidence_log_likelihood, monte_carlo_log_likelihood):
        with pytest.raises(ValueError, match=message):
            scorer(model, prompts, answers)


@pytest.mark.parametrize("scale", [float("nan"), float("inf"), -0.5, True])
def test_cfg_scale_must_be_a_finite_non_negative_number(scale):
    with pytest.raises(ValueError, match="cfg_scale"):
        confidence_log_likelihood(tiny_model(), [1, 2], [4, 5], cfg_scale=scale)


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
    from modeling_illada.cli import main

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
    from modeling_illada.cli import main

    target = tmp_path / "a-file"
    target.write_text("mine")
    assert main(["train", "--data", str(corpus), "--output", str(target), "--train-tokenizer", "300"]) == 2
    assert "is a file" in capsys.readouterr().err and target.read_text() == "mine"


def test_non_utf8_text_warns_and_jsonl_names_file_and_line(tmp_path):
    from modeling_illada.training import read_conversations, read_documents

    text = tmp_path / "latin1.txt"
    text.write_bytes("caf\xe9 au lait\n".encode("latin-1"))
    with pytest.warns(UserWarning, match="latin1.txt: 1 bytes are not UTF-8"):
        assert read_documents([text]) == ["caf\ufffd au lait"]
    chats = tmp_path / "chats.jsonl"
    chats.write_bytes(b'{"messages": []}\n' + '{"x": "caf\xe9"}\n'.encode("latin-1"))
    with pytest.raises(ValueError, match="chats.jsonl:2: not UTF-8"):
        read_conversations([chats])
