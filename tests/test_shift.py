"""Shifted logits (`shift_logits`, Dream and `illada adapt`): output j predicts column j + 1, wherever logits meet
tokens. The weightless `FakeDenoiser` predicts `10 + p` from the output at position p, so a shifted model must put
`10 + j - 1` at column j, and an unshifted one `10 + j`."""

import pytest
import torch
import torch.nn.functional as F

from helpers import EOS, MASK, FakeDenoiser, tiny_model
from modeling_illada.caching import CACHES
from modeling_illada.diffusion import align_predictions, prediction_rows
from modeling_illada.likelihood import confidence_log_likelihood, elbo, monte_carlo_log_likelihood
from modeling_illada.collators import CausalCollator, PretrainCollator, SFTCollator
from test_loading import logits, run_without_package

TARGETS = torch.arange(10, 50)  # output at position p predicts token 10 + p


def fake(shift: bool, strength: float = 8.0):
    return FakeDenoiser(TARGETS, torch.full((40,), strength), shift_logits=shift)


def test_prediction_rows_and_alignment_by_hand():
    assert prediction_rows(3, 6, 0) == slice(3, 6) and prediction_rows(3, 6, 1) == slice(2, 5)
    assert prediction_rows(0, 3, 1).tolist() == [0, 0, 1]  # column 0 reads its own output (Dream's convention)
    logits = torch.arange(4.0)[None, :, None]  # (1, 4, 1): output p holds p
    assert align_predictions(logits, 1)[0, :, 0].tolist() == [0.0, 0.0, 1.0, 2.0]
    assert align_predictions(logits, 0) is logits


@pytest.mark.parametrize("cache", sorted(CACHES))
@pytest.mark.parametrize("shift", [False, True])
def test_generate_reads_the_output_that_predicts_each_column(cache, shift):
    prompt = torch.tensor([[20, 21, 22]])
    out = fake(shift).generate(prompt, max_new_tokens=8, steps=8, block_length=4, cache=cache, eos_early_stop=False)
    assert out[0, 3:].tolist() == [10 + j - shift for j in range(3, 11)]


@pytest.mark.parametrize("shift", [False, True])
def test_parallel_decoding_suffix_window_and_padding_follow_the_shift(shift):
    prompt = torch.tensor([[1, 20, 21], [22, 23, 24]])
    mask = torch.tensor([[0, 1, 1], [1, 1, 1]])
    out = fake(shift).generate(prompt, attention_mask=mask, max_new_tokens=8, block_length=4, cache="dual",
                               parallel_decoding=True, suffix_window=2, eos_early_stop=False)
    # padded row: positions count real tokens, so its column j sits at position j - 1
    assert out[1, 3:].tolist() == [10 + j - shift for j in range(3, 11)]
    assert out[0, 3:].tolist() == [10 + j - 1 - shift for j in range(3, 11)]


def test_a_shifted_model_needs_a_token_before_what_it_predicts():
    model = fake(True)
    with pytest.raises(ValueError, match="shift_logits"):
        model.generate(torch.tensor([[MASK, 20, 21]]), max_new_tokens=0)  # a hole at the first token
    with pytest.raises(ValueError, match="shift_logits"):
        model.generate(torch.tensor([[20, 21]]), attention_mask=torch.tensor([[0, 0]]), max_new_tokens=4)
    with pytest.raises(ValueError, match="prompt"):
        confidence_log_likelihood(model, [], [20, 21])


def test_loss_scores_column_j_with_output_j_minus_1():
    torch.manual_seed(0)
    model = tiny_model(shift_logits=True).train()
    ids = torch.randint(4, 64, (2, 6))
    labels = torch.full_like(ids, -100)
    labels[:, 2:4] = ids[:, 2:4]
    raw = model(ids).logits
    expected = F.cross_entropy(raw[:, 1:3].reshape(-1, 64), ids[:, 2:4].reshape(-1))
    torch.testing.assert_close(model(ids, labels=labels).loss, expected)
    labels[:, 0] = ids[:, 0]
    with pytest.raises(ValueError, match="column 0"):
        model(ids, labels=labels)


def test_collators_never_mask_position_0_of_a_shifted_model():
    x = [{"input_ids": list(range(10, 26))} for _ in range(8)]
    batch = PretrainCollator(MASK, eps=0.999, seed=0, shift_logits=True)(x)  # p >= 0.999: everything else masked
    assert not bool((batch["input_ids"][:, 0] == MASK).any()) and bool((batch["input_ids"][:, 1:] == MASK).all())
    assert bool((batch["labels"][:, 0] == -100).all())
    # 1/p over batch x (length - 1): the weights of the 8 x 15 masked tokens sum to mean(1/p) ~ 1 (not 15/16)
    assert abs(batch["loss_weights"].sum().item() - 1.0) < 2e-3
    rows = [{"input_ids": [10, 11, 12, EOS], "prompt_length": 0}] * 4
    sft = SFTCollator(MASK, eps=0.999, seed=0, shift_logits=True, eos_token_id=EOS)(rows)
    assert not bool((sft["input_ids"][:, 0] == MASK).any())
    causal = CausalCollator(shift_logits=True)([{"input_ids": [10, 11, 12]}])
    assert causal["labels"].tolist() == [[-100, 11, 12]]  # the tokens themselves, in canvas columns
    assert CausalCollator()([{"input_ids": [10, 11, 12]}])["labels"].tolist() == [[11, 12, -100]]


@pytest.mark.parametrize("shift", [False, True])
def test_likelihood_scores_each_answer_token_from_the_output_that_predicts_it(shift):
    model = fake(shift, strength=30.0)
    prompt = [20, 21, 22]
    right = [10 + j - shift for j in (3, 4, 5)]  # what the model predicts at columns 3..5
    wrong = [10 + j - (1 - shift) for j in (3, 4, 5)]
    for score in (confidence_log_likelihood, lambda m, p, a: monte_carlo_log_likelihood(m, p, a, mc_num=8, seed=0)):
        good, bad = score(model, prompt, [right, wrong]).tolist()
        assert good > -1e-3 and bad < -10


def test_elbo_of_a_shifted_model_conditions_on_the_first_token():
    model = fake(True, strength=30.0)
    text = [50, 10, 11, 12]  # columns 1..3 are predicted from positions 0..2: 10, 11, 12
    assert elbo(model, [text], mc_num=8, seed=0).item() > -1e-3
    with pytest.raises(ValueError, match="add_bos_token"):
        elbo(model, [[50]], mc_num=8)


def test_shift_survives_save_and_a_fresh_process_without_the_package(tmp_path):
    model = tiny_model(shift_logits=True, tie_word_embeddings=False, attention_bias=True, attention_output_bias=False)
    folder = tmp_path / "saved"
    model.save_pretrained(folder)
    ids = torch.randint(4, 64, (2, 7))
    got = run_without_package(folder, ids, logits(model, ids), tmp_path)
    assert got["diff"] == 0.0 and got["shift"]
    assert got["tokens"] == model.generate(ids[:1, :4], max_new_tokens=4, steps=4).tolist()
    assert got["dream"] == model.diffusion_generate(ids[:1, :4], max_new_tokens=4, steps=4, alg="entropy").tolist()
