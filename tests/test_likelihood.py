"""Likelihood scoring: LLaDA's Monte Carlo bound, iLLaDA's confidence scorer and the left-to-right chain rule
(`modeling_illada/likelihood.py`).

Exactness is checked on a denoiser whose predictions ignore the context (`FakeDenoiser.random`: fixed random logits
per position, counted over real tokens): there the true log-likelihood is the sum of per-position log-probs, the
confidence scorer must return it exactly and the Monte Carlo estimate must be unbiased around it. Batching and CFG
are checked on a real tiny model against straightforward one-pair-at-a-time computations.
"""

import pytest
import torch
import torch.nn.functional as F

from helpers import FakeDenoiser, tiny_model
from modeling_illada import likelihood
from modeling_illada.likelihood import (
    confidence_log_likelihood,
    elbo,
    left_to_right_log_likelihood,
    log_likelihood,
    monte_carlo_log_likelihood,
    stratified_masks,
    text_log_likelihood,
)


def exact(model, prompt, answer) -> float:
    """The true log p(answer | prompt) under a context-free `FakeDenoiser`: sum over answer positions of
    log softmax(table[position])[token]."""
    log_probs = model.table.detach().log_softmax(-1)
    return sum(float(log_probs[len(prompt) + j, token]) for j, token in enumerate(answer))


PAIRS = ([[5, 6, 7], [8], [9, 10, 11, 12, 13]], [[20, 21, 22, 23], [24], [26, 27, 28]])  # a one-token answer among them


@pytest.mark.parametrize("scorer", [confidence_log_likelihood, left_to_right_log_likelihood])
def test_one_token_per_forward_scorers_are_exact_for_a_context_free_denoiser(scorer):
    model = FakeDenoiser.random()
    prompts, answers = PAIRS
    got = scorer(model, prompts, answers)
    want = torch.tensor([exact(model, p, a) for p, a in zip(prompts, answers)], dtype=torch.float64)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    # BOS shifts the answer by one position; the appended EOS is never scored
    got = scorer(model, prompts, answers, add_bos_token=True, padd_eos=True)
    want = torch.tensor([exact(model, [0] + p, a) for p, a in zip(prompts, answers)], dtype=torch.float64)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


def test_monte_carlo_weighting_is_exact_when_every_answer_token_costs_the_same():
    # One token repeated at positions whose logits are identical: every sample is (L / l) * l * CE = L * CE,
    # whatever it masks, so a wrong weight (e.g. 1 / l, or dividing by the mini-batch twice) shows at any mc_num.
    model = FakeDenoiser.random()
    with torch.no_grad():
        model.table[:] = model.table[0]
    answer = [30] * 6
    got = monte_carlo_log_likelihood(model, [5, 6], answer, mc_num=8, mc_batch_size=4, seed=0)
    torch.testing.assert_close(got, torch.tensor([exact(model, [5, 6], answer)], dtype=torch.float64), rtol=0, atol=1e-5)


def test_monte_carlo_is_unbiased_for_a_context_free_denoiser():
    model = FakeDenoiser.random()
    prompts, answers = PAIRS
    want = torch.tensor([exact(model, p, a) for p, a in zip(prompts, answers)], dtype=torch.float64)
    runs = torch.stack([monte_carlo_log_likelihood(model, prompts, answers, mc_num=64, seed=s) for s in range(24)])
    mean, stderr = runs.mean(0), runs.std(0) / runs.shape[0] ** 0.5
    assert (stderr[[0, 2]] > 0).all()  # random masks really vary the estimate of multi-token answers...
    assert ((mean - want).abs() <= 4 * stderr + 1e-6).all(), (mean, want, stderr)  # ...around the true value
    assert runs[:, 1].eq(runs[0, 1]).all()  # the one-token answer (index 1) is exact in every run


def test_monte_carlo_spread_shrinks_as_mc_num_grows():
    model = tiny_model()
    prompt, answer, runs = [5, 6, 7, 8], [9, 10, 11, 12, 13, 14, 15, 16], 16

    def estimates(mc_num, mc_batch_size):  # `runs` independent estimates, as one batch with a generator per copy
        generators = [torch.Generator().manual_seed(s) for s in range(runs)]
        return monte_carlo_log_likelihood(model, [prompt] * runs, [answer] * runs, mc_num=mc_num,
                                          mc_batch_size=mc_batch_size, generator=generators)

    small, large = estimates(4, 4), estimates(64, 16)
    # 16x the samples: the standard deviation should fall about 4x; require at least 2x
    assert large.std() < small.std() / 2, (small.std(), large.std())
    assert abs(large.mean() - small.mean()) < 4 * small.std() / runs**0.5  # same expectation


def test_counts_are_stratified_over_the_mini_batch():
    masks = stratified_masks(length=8, rounds=5, mc_batch_size=8, generator=torch.Generator().manual_seed(0))
    assert masks.shape == (5, 8, 8)
    for counts in masks.sum(-1):  # with mc_batch_size == L every count 1..L occurs once per mini-batch
        assert sorted(counts.tolist()) == list(range(1, 9))
    masks = stratified_masks(length=8, rounds=50, mc_batch_size=4, generator=torch.Generator().manual_seed(1))
    counts = masks.sum(-1)  # (R, 4): evenly spaced by L / b = 2, wrapped into 1..8
    assert counts.min() >= 1 and counts.max() <= 8
    assert ((counts.roll(-1, dims=1) - counts) % 8 == 2).all()
    # positions are a uniform random choice: each position is masked about half the time over many samples
    assert (masks.float().mean((0, 1)) - 0.5625).abs().max() < 0.12


def test_results_reproduce_with_a_seed():
    model = tiny_model()
    prompts, answers = PAIRS
    first = monte_carlo_log_likelihood(model, prompts, answers, mc_num=8, seed=3)
    torch.testing.assert_close(monte_carlo_log_likelihood(model, prompts, answers, mc_num=8, seed=3), first, rtol=0, atol=0)
    generator = torch.Generator().manual_seed(3)
    torch.testing.assert_close(monte_carlo_log_likelihood(model, prompts, answers, mc_num=8, generator=generator),
                               first, rtol=0, atol=0)
    assert not torch.equal(monte_carlo_log_likelihood(model, prompts, answers, mc_num=8, seed=4), first)
    torch.manual_seed(0)  # without a seed the global RNG is used, so torch.manual_seed reproduces too
    unseeded = monte_carlo_log_likelihood(model, prompts, answers, mc_num=8)
    torch.manual_seed(0)
    torch.testing.assert_close(monte_carlo_log_likelihood(model, prompts, answers, mc_num=8), unseeded, rtol=0, atol=0)


def test_padded_batch_equals_pairs_scored_alone():
    model = tiny_model()
    prompts, answers = PAIRS
    seeds = [11, 12, 13]
    options = dict(cfg_scale=0.5, add_bos_token=True, padd_eos=True)
    together = monte_carlo_log_likelihood(
        model, prompts, answers, mc_num=8, mc_batch_size=4, generator=[torch.Generator().manual_seed(s) for s in seeds],
        **options,
    )
    alone = torch.cat([monte_carlo_log_likelihood(model, p, a, mc_num=8, mc_batch_size=4, seed=s, **options)
                       for p, a, s in zip(prompts, answers, seeds)])
    torch.testing.assert_close(together, alone, rtol=0, atol=1e-5)
    together = confidence_log_likelihood(model, prompts, answers, **options)
    alone = torch.cat([confidence_log_likelihood(model, p, a, **options) for p, a in zip(prompts, answers)])
    torch.testing.assert_close(together, alone, rtol=0, atol=1e-5)


def test_one_token_answer_is_exact_in_one_forward():
    model = FakeDenoiser.random()
    got = monte_carlo_log_likelihood(model, [5, 6, 7], [40], mc_num=128)
    assert len(model.calls) == 1
    assert got.item() == pytest.approx(exact(model, [5, 6, 7], [40]), abs=1e-5)
    # on a real model: the log-prob of the token under one forward with the answer position masked
    real = tiny_model()
    with torch.no_grad():
        logits = real(torch.tensor([[5, 6, 7, real.config.mask_token_id]])).logits[0, -1].float()
    want = logits.log_softmax(-1)[40].item()
    assert monte_carlo_log_likelihood(real, [5, 6, 7], [40], mc_num=128, seed=0).item() == pytest.approx(want, abs=1e-5)
    assert monte_carlo_log_likelihood(real, [5, 6, 7], [40], mc_num=128, seed=1).item() == pytest.approx(want, abs=1e-5)


@torch.no_grad()
def guided_logits(model, x, prompt_length: int, cfg_scale: float) -> torch.Tensor:
    """Float logits of canvas `x`, with LLaDA's CFG (the prompt masked in the unconditional pass) when `cfg_scale`."""
    logits = model(x).logits.float()
    if cfg_scale:
        uncond = x.clone()
        uncond[0, :prompt_length] = model.config.mask_token_id
        u = model(uncond).logits.float()
        logits = u + (cfg_scale + 1) * (logits - u)
    return logits


def reference_confidence(model, prompt, answer, cfg_scale=0.0):
    """iLLaDA's confidence scorer written out for one pair, the way the upstream harness loops."""
    mask_id = model.config.mask_token_id
    seq = torch.tensor([prompt + answer])
    x = seq.clone()
    x[0, len(prompt):] = mask_id
    total = 0.0
    for _ in answer:
        logits = guided_logits(model, x, len(prompt), cfg_scale)
        masked = (x[0] == mask_id).nonzero().squeeze(-1)
        ce = F.cross_entropy(logits[0, masked], seq[0, masked], reduction="none")
        best = int(ce.argmin())
        total += float(ce[best])
        x[0, masked[best]] = seq[0, masked[best]]
    return -total


@pytest.mark.parametrize("cfg_scale", [0.0, 1.5])
def test_confidence_scorer_matches_the_reference_loop(cfg_scale):
    model = tiny_model()
    prompts, answers = PAIRS
    got = confidence_log_likelihood(model, prompts, answers, cfg_scale=cfg_scale)
    want = torch.tensor([reference_confidence(model, p, a, cfg_scale) for p, a in zip(prompts, answers)],
                        dtype=torch.float64)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-4)


def test_confidence_scorer_takes_one_forward_per_answer_token():
    model = FakeDenoiser.random()
    confidence_log_likelihood(model, [5, 6], [7, 8, 9, 10])
    assert len(model.calls) == 4
    model.calls.clear()
    confidence_log_likelihood(model, *PAIRS)  # a batch takes as many forwards as its longest answer
    assert len(model.calls) == 4


def reference_left_to_right(model, prompt, answer, cfg_scale=0.0):
    """The chain rule of left-to-right decoding written out for one pair: token k is scored with the prompt and
    answer[:k] given and the rest masked, read from output k (output k - 1 for a shifted model)."""
    mask_id, shift = model.config.mask_token_id, int(model.config.shift_logits)
    total = 0.0
    for k, token in enumerate(answer):
        x = torch.tensor([prompt + answer[:k] + [mask_id] * (len(answer) - k)])
        logits = guided_logits(model, x, len(prompt), cfg_scale)
        total += float(logits[0, len(prompt) + k - shift].log_softmax(-1)[token])
    return total


@pytest.mark.parametrize("shift_logits, cfg_scale", [(False, 0.0), (True, 0.0), (False, 1.5)])
def test_left_to_right_scorer_is_the_chain_rule_of_reading_order(shift_logits, cfg_scale):
    model = tiny_model(shift_logits=shift_logits)
    prompts, answers = PAIRS
    got = left_to_right_log_likelihood(model, prompts, answers, cfg_scale=cfg_scale)
    want = torch.tensor([reference_left_to_right(model, p, a, cfg_scale) for p, a in zip(prompts, answers)],
                        dtype=torch.float64)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-4)
    # a different order, so a different score on a model whose predictions depend on the context (one-token
    # answers aside, where every order is the same)
    other = confidence_log_likelihood(model, prompts, answers, cfg_scale=cfg_scale)
    assert got[1] == pytest.approx(float(other[1]), abs=1e-5)
    assert not torch.allclose(got[[0, 2]], other[[0, 2]], atol=1e-4)


def test_left_to_right_scores_are_a_distribution_over_answers():
    # Every two-token answer of a vocabulary whose mask token the head never predicts: the probabilities sum to 1
    # (the Monte Carlo bound sums to less, the confidence score to more).
    model = tiny_model()
    mask_id, vocab = model.config.mask_token_id, model.config.vocab_size

    def never_the_mask(module, args, output):
        output.logits[..., mask_id] = -torch.inf

    model.register_forward_hook(never_the_mask)
    answers = [[a, b] for a in range(vocab) for b in range(vocab) if mask_id not in (a, b)]
    total = left_to_right_log_likelihood(model, [5, 6], answers).exp().sum().item()
    assert total == pytest.approx(1.0, abs=1e-6)
    assert confidence_log_likelihood(model, [5, 6], answers).exp().sum().item() > 1.0 + 1e-3


def test_classifier_free_guidance_changes_the_score_as_the_formula_says():
    model = tiny_model()
    prompt, answer, scale = [5, 6, 7], [41], 0.7
    mask_id = model.config.mask_token_id
    with torch.no_grad():
        cond = model(torch.tensor([prompt + [mask_id]])).logits[0, -1].float()
        uncond = model(torch.tensor([[mask_id] * 3 + [mask_id]])).logits[0, -1].float()
    want = (uncond + (scale + 1) * (cond - uncond)).log_softmax(-1)[41].item()
    got = monte_carlo_log_likelihood(model, prompt, answer, mc_num=4, cfg_scale=scale).item()
    assert got == pytest.approx(want, abs=1e-5)
    assert got != pytest.approx(cond.log_softmax(-1)[41].item(), abs=1e-3)


def test_whole_text_elbo_is_the_empty_prompt_bound_and_windows_long_texts():
    model = tiny_model()
    text = list(range(5, 25))
    assert elbo(model, [text], mc_num=8, seed=0).item() == pytest.approx(
        monte_carlo_log_likelihood(model, [], text, mc_num=8, seed=0).item(), abs=1e-6)
    assert elbo(model, [text], mc_num=8, seed=0, add_bos_token=True).item() == pytest.approx(
        monte_carlo_log_likelihood(model, [0], text, mc_num=8, seed=0).item(), abs=1e-6)
    # beyond the context: windows, each exact here (a repeated token at identical positions, as above)
    flat = FakeDenoiser.random(max_position_embeddings=16)
    with torch.no_grad():
        flat.table[:] = flat.table[0]
    long_text = [30] * 40
    want = 40 * flat.table.detach().log_softmax(-1)[0, 30].item()
    assert elbo(flat, [long_text], mc_num=4, seed=0).item() == pytest.approx(want, abs=1e-4)
    # windows of 16 tokens cannot share a padded batch of 16 with their contexts: each batch fits the context
    assert len(flat.calls) == 2
    with pytest.raises(ValueError, match="exceeds the context"):
        monte_carlo_log_likelihood(flat, [], long_text, mc_num=4)


def test_whole_text_left_to_right_is_the_pair_score_and_windows_long_texts():
    text = list(range(5, 25))
    model = tiny_model()
    assert text_log_likelihood(model, [text], scorer="left_to_right").item() == pytest.approx(
        left_to_right_log_likelihood(model, [], text).item(), abs=1e-6)
    shifted = tiny_model(shift_logits=True)  # the first token conditions, the rest is scored
    assert text_log_likelihood(shifted, [text], scorer="left_to_right").item() == pytest.approx(
        left_to_right_log_likelihood(shifted, text[:1], text[1:]).item(), abs=1e-6)
    # beyond the context: windows, exact on a context-free denoiser whose positions all predict alike
    flat = FakeDenoiser.random(max_position_embeddings=16)
    with torch.no_grad():
        flat.table[:] = flat.table[0]
    want = 40 * flat.table.detach().log_softmax(-1)[0, 30].item()
    assert text_log_likelihood(flat, [[30] * 40], scorer="left_to_right").item() == pytest.approx(want, abs=1e-4)
    # the ELBO is the same function's "mc"
    torch.testing.assert_close(text_log_likelihood(model, [text, text[:7]], mc_num=8, seed=3),
                               elbo(model, [text, text[:7]], mc_num=8, seed=3), rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"Unknown `scorer` 'confidence' for whole texts; allowed: \['mc', 'left_to_right'\]"):
        text_log_likelihood(model, [text], scorer="confidence")
    with pytest.raises(ValueError, match=r"'left_to_right' scorer does not take \['mc_num'\]"):
        text_log_likelihood(model, [text], scorer="left_to_right", mc_num=8)


def test_model_methods_are_the_functions():
    model = tiny_model()
    prompts, answers = PAIRS
    torch.testing.assert_close(model.log_likelihood(prompts, answers, mc_num=8, seed=0),
                               monte_carlo_log_likelihood(model, prompts, answers, mc_num=8, seed=0), rtol=0, atol=0)
    torch.testing.assert_close(model.log_likelihood(prompts, answers, scorer="confidence"),
                               confidence_log_likelihood(model, prompts, answers), rtol=0, atol=0)
    torch.testing.assert_close(model.log_likelihood(prompts, answers, scorer="left_to_right"),
                               left_to_right_log_likelihood(model, prompts, answers), rtol=0, atol=0)
    torch.testing.assert_close(model.elbo([[5, 6, 7]], mc_num=4, seed=0), elbo(model, [[5, 6, 7]], mc_num=4, seed=0))
    torch.testing.assert_close(model.text_log_likelihood([[5, 6, 7]], scorer="left_to_right"),
                               text_log_likelihood(model, [[5, 6, 7]], scorer="left_to_right"), rtol=0, atol=0)


def test_saved_folder_carries_the_likelihood_file(tmp_path):
    tiny_model().save_pretrained(tmp_path)
    assert (tmp_path / "likelihood.py").read_text() == open(likelihood.__file__).read()


def test_ids_come_from_the_model_configs():
    model = tiny_model(mask_token_id=4, bos_token_id=6, eos_token_id=7)
    # the scorer masks with id 4 and prepends BOS 6 / appends EOS 7, as a manual forward with those ids shows
    with torch.no_grad():
        logits = model(torch.tensor([[6, 10, 11, 4, 7]])).logits[0, 3].float()
    got = confidence_log_likelihood(model, [10, 11], [40], add_bos_token=True, padd_eos=True).item()
    assert got == pytest.approx(logits.log_softmax(-1)[40].item(), abs=1e-5)
    model.generation_config.mask_token_id = 8  # the generation config wins over the model config
    with torch.no_grad():
        logits = model(torch.tensor([[10, 11, 8]])).logits[0, 2].float()
    want = logits.log_softmax(-1)[40].item()
    assert confidence_log_likelihood(model, [10, 11], [40]).item() == pytest.approx(want, abs=1e-5)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda m: log_likelihood(m, [5], [[]]), r"`answers\[0\]` is empty"),
        (lambda m: log_likelihood(m, [5] * 120, [6] * 9), r"exceeds the context \(`max_length` = 128\)"),
        (lambda m: log_likelihood(m, [5] * 120, [6] * 7, scorer="confidence", padd_eos=True, add_bos_token=True),
         "exceeds the context"),
        (lambda m: log_likelihood(m, [5], [6], scorer="exact"),
         r"Unknown `scorer` 'exact'; allowed: \['confidence', 'left_to_right', 'mc'\]"),
        (lambda m: log_likelihood(m, [5], [6, 7], mc_num=100, mc_batch_size=32),
         r"`mc_num` \(100\) must be a multiple of `mc_batch_size` \(32\)"),
        (lambda m: log_likelihood(m, [5], [6, 7], mc_num=0), "`mc_num` must be a positive integer"),
        (lambda m: log_likelihood(m, [5], [6, 7], cfg_scale=-1.0), "`cfg_scale` must be a finite number >= 0"),
        (lambda m: log_likelihood(m, [5], [6], scorer="confidence", mc_num=8), r"does not take \['mc_num'\]"),
        (lambda m: log_likelihood(m, [5], [6, 7], seed=1, generator=torch.Generator()), "either `generator` or `seed`"),
        (lambda m: log_likelihood(m, [[5], [6]], [[6], [7], [8]]), "must pair up"),
        (lambda m: log_likelihood(m, [5], [64]), r"outside the vocabulary \[0, 64\)"),
        (lambda m: elbo(m, [[]]), r"`texts\[0\]` is empty"),
    ],
)
def test_bad_input_is_refused_by_name(call, match):
    with pytest.raises(ValueError, match=match):
        call(tiny_model())


def test_missing_special_ids_are_named():
    model = tiny_model(mask_token_id=None, eos_token_id=None)
    model.generation_config.mask_token_id = None
    model.generation_config.eos_token_id = None
    with pytest.raises(ValueError, match="needs `mask_token_id`"):
        log_likelihood(model, [5], [6])
    with pytest.raises(ValueError, match="`padd_eos=True` needs `eos_token_id`"):
        log_likelihood(model, [5], [6], mask_token_id=3, padd_eos=True)
