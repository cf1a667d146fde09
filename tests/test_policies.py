"""Sampling policies on hand-made inputs: schedules, remasking scores, reveal choice, guidance."""

import pytest
import torch

from modeling_illada.guidance import ClassifierFreeGuidance, guidance_for, NoGuidance
from modeling_illada.remasking import REMASKING, choose_reveals
from modeling_illada.schedules import SCHEDULES


def test_linear_schedule_is_llada_even_split():
    counts = SCHEDULES["linear"](torch.tensor([10, 3, 0]), 4)
    assert counts.tolist() == [[3, 3, 2, 2], [1, 1, 1, 0], [0, 0, 0, 0]]


@pytest.mark.parametrize("name", sorted(SCHEDULES))
@pytest.mark.parametrize("masks,steps", [(7, 7), (32, 8), (5, 16), (100, 3)])
def test_schedules_reveal_exactly_the_masks(name, masks, steps):
    counts = SCHEDULES[name](torch.tensor([masks]), steps)
    assert counts.shape == (1, steps) and int(counts.sum()) == masks and bool((counts >= 0).all())


def test_cosine_schedule_reveals_few_first_many_last():
    counts = SCHEDULES["cosine"](torch.tensor([64]), 8)[0]
    assert counts[0] < counts[-1]


def hand_logits():
    # 2 positions, vocab 3. Position 0: peaked on token 1; position 1: flat-ish on token 2.
    return torch.log(torch.tensor([[[0.05, 0.9, 0.05], [0.3, 0.3, 0.4]]]))


def test_low_confidence_scores_are_probabilities_of_the_candidate():
    scores = REMASKING["low_confidence"](hand_logits(), torch.tensor([[1, 2]]))
    torch.testing.assert_close(scores, torch.tensor([[0.9, 0.4]]))


def test_margin_and_entropy_prefer_the_peaked_position():
    x0 = torch.tensor([[1, 2]])
    margin = REMASKING["margin"](hand_logits(), x0)
    torch.testing.assert_close(margin, torch.tensor([[0.85, 0.1]]))
    entropy = REMASKING["entropy"](hand_logits(), x0)
    assert entropy[0, 0] > entropy[0, 1]  # negative entropy: peaked is higher
    expected = (torch.tensor([0.05, 0.9, 0.05]) * torch.tensor([0.05, 0.9, 0.05]).log()).sum()
    torch.testing.assert_close(entropy[0, 0], expected)


def test_random_scores_follow_the_generator():
    x0 = torch.zeros(2, 5, dtype=torch.long)
    a = REMASKING["random"](None, x0, torch.Generator().manual_seed(1))
    b = REMASKING["random"](None, x0, torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and a.shape == (2, 5)


def test_choose_reveals_takes_the_k_best_eligible():
    confidence = torch.tensor([[0.9, 0.1, 0.8, 0.7], [0.2, 0.3, 0.4, 0.5]])
    eligible = torch.tensor([[False, True, True, True], [True, True, True, True]])
    reveal = choose_reveals(confidence, eligible, torch.tensor([2, 1]))
    assert reveal.tolist() == [[False, False, True, True], [False, False, False, True]]


def test_threshold_reveals_everything_above_and_at_least_one():
    confidence = torch.tensor([[0.95, 0.2, 0.97, 0.5], [0.1, 0.3, 0.2, 0.05]])
    eligible = torch.ones(2, 4, dtype=torch.bool)
    reveal = choose_reveals(confidence, eligible, torch.tensor([1, 1]), threshold=0.9)
    assert reveal.tolist() == [[True, False, True, False], [False, True, False, False]]


def test_cfg_masks_the_prompt_and_combines_with_s_plus_one():
    x = torch.tensor([[7, 8, 3, 3]])
    prompt = torch.tensor([[True, True, False, False]])
    cfg = guidance_for(2.0, 3, prompt)
    assert isinstance(cfg, ClassifierFreeGuidance) and isinstance(guidance_for(0.0, 3, prompt), NoGuidance)
    batch, mask = cfg.batch(x, torch.ones_like(x))
    assert batch.tolist() == [[7, 8, 3, 3], [3, 3, 3, 3]] and mask.shape == (2, 4)
    cond, uncond = torch.full((1, 4, 2), 1.0), torch.full((1, 4, 2), 0.5)
    torch.testing.assert_close(cfg.combine(torch.cat([cond, uncond])), uncond + 3.0 * (cond - uncond))
