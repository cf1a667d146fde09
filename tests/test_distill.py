"""Certainty-forcing self-distillation (modeling_illada/distill.py): the semi-autoregressive masking, the loss
against hand computations, the teacher's trajectories, a short run that makes the model more confident, and the
command line."""

import json
import math

import pytest
import torch

from helpers import MASK, tiny_model
from illada_cli import main
from modeling_illada.distill import (
    CertaintyForcingCollator,
    ReplayCollator,
    ReplayDataset,
    certainty_forcing_loss,
    distill,
    generate_trajectories,
    read_trajectories,
)
from modeling_illada.collators import PretrainCollator
from modeling_illada.training import train
from test_training import FAST, sentences


def trajectory(prompt_length: int, total: int, offset: int = 10) -> dict:
    return {"input_ids": list(range(offset, offset + total)), "prompt_length": prompt_length}


def test_collator_masks_part_of_one_block_and_all_of_the_future():
    features = [trajectory(2, 2 + 12), trajectory(3, 3 + 8, offset=30), trajectory(1, 1 + 12, offset=50)]
    collator = CertaintyForcingCollator(MASK, block_length=4, seed=0)
    for seed in range(20):  # many draws: every row, every block
        collator.seed = seed
        batch = collator(features)
        ids, labels = batch["input_ids"], batch["labels"]  # (3, 14)
        assert ids.shape == labels.shape == (3, 14)
        for row, f in enumerate(features):
            x0, start = f["input_ids"], f["prompt_length"]
            labelled = (labels[row] != -100).nonzero().flatten().tolist()
            assert labelled, "every row has something to learn"
            block = (labelled[0] - start) // 4
            lo, hi = start + 4 * block, start + 4 * block + 4
            assert all(lo <= i < hi for i in labelled)  # one block only
            assert [labels[row, i].item() for i in labelled] == [x0[i] for i in labelled]  # the teacher's tokens
            assert ids[row, :lo].tolist() == x0[:lo]  # prompt and earlier blocks clean
            assert (ids[row, hi:] == MASK).all()  # the future (and the right padding) masked
            block_ids = ids[row, lo:hi].tolist()
            assert all(block_ids[i - lo] == MASK for i in labelled)
            assert all(t == x0[lo + j] for j, t in enumerate(block_ids) if lo + j not in labelled)
        weights = batch["loss_weights"]
        assert weights.sum().item() == pytest.approx(1.0) and (weights[labels == -100] == 0).all()


def test_collator_noise_depends_on_seed_and_batch_only():
    features = [trajectory(2, 34), trajectory(4, 36, offset=40)]
    a = CertaintyForcingCollator(MASK, block_length=8, seed=3)(features)
    b = CertaintyForcingCollator(MASK, block_length=8, seed=3)(features)
    c = CertaintyForcingCollator(MASK, block_length=8, seed=4)(features)
    assert torch.equal(a["input_ids"], b["input_ids"]) and torch.equal(a["labels"], b["labels"])
    assert not torch.equal(a["labels"], c["labels"])


def test_collator_refuses_bad_settings():
    with pytest.raises(ValueError, match="block_length"):
        CertaintyForcingCollator(MASK, block_length=0)
    with pytest.raises(ValueError, match="time_sampling.*allowed"):
        CertaintyForcingCollator(MASK, time_sampling="sobol")


def test_loss_equals_hand_computation():
    # two labelled positions: one predicted right (argmax = label), one wrong
    logits = torch.tensor([[[2.0, 0.0, 0.0], [0.0, 1.0, 3.0], [5.0, 5.0, 5.0]]])  # (1, 3, 3)
    labels = torch.tensor([[0, 1, -100]])
    weights = torch.tensor([[0.5, 0.5, 0.0]])
    loss, ce, certainty = certainty_forcing_loss(logits, labels, weights, certainty_weight=2.0)
    z0 = math.exp(2) + 2
    p0 = [math.exp(2) / z0, 1 / z0, 1 / z0]
    z1 = 1 + math.e + math.exp(3)
    expected_ce = 0.5 * -math.log(p0[0]) + 0.5 * -math.log(math.e / z1)
    entropy0 = -sum(p * math.log(p) for p in p0)  # only the correct position counts
    assert ce.item() == pytest.approx(expected_ce, rel=1e-5)
    assert certainty.item() == pytest.approx(entropy0, rel=1e-5)
    assert loss.item() == pytest.approx(expected_ce + 2.0 * entropy0, rel=1e-5)


def test_certainty_is_zero_when_nothing_is_right_and_its_gradient_sharpens():
    logits = torch.tensor([[[0.0, 2.0], [1.0, 0.5]]], requires_grad=True)
    labels = torch.tensor([[0, -100]])
    _, _, certainty = certainty_forcing_loss(logits, labels, torch.tensor([[1.0, 0.0]]))
    assert certainty.item() == 0.0
    labels = torch.tensor([[1, 0]])  # both right now
    _, _, certainty = certainty_forcing_loss(logits, labels, torch.tensor([[0.5, 0.5]]), certainty_weight=0.0)
    certainty.backward()
    sharper = logits.detach() - 0.5 * logits.grad
    _, _, after = certainty_forcing_loss(sharper, labels, torch.tensor([[0.5, 0.5]]))
    assert after < certainty


def test_replay_batches_stack_trajectories_over_weighted_text():
    trajectories = [trajectory(2, 14), trajectory(3, 11, offset=30)]
    text = [{"input_ids": list(range(40, 56))} for _ in range(3)]
    pairs = ReplayDataset(trajectories, text)
    assert len(pairs) == 3 and pairs[2]["trajectory"] is trajectories[0] and pairs[2]["text"] is text[2]
    cf = CertaintyForcingCollator(MASK, block_length=4, seed=1)
    tx = PretrainCollator(MASK, seed=1)
    batch = ReplayCollator(cf, tx, text_weight=0.5)([pairs[0], pairs[1]])
    assert batch["input_ids"].shape == batch["labels"].shape == batch["loss_weights"].shape == (4, 16)
    assert batch["certainty_rows"].tolist() == [True, True, False, False]
    alone = cf(trajectories)  # (2, 14): right-padded with masks to the text's 16 columns
    assert torch.equal(batch["input_ids"][:2, :14], alone["input_ids"]) and (batch["input_ids"][:2, 14:] == MASK).all()
    assert (batch["labels"][:2, 14:] == -100).all() and torch.equal(batch["labels"][:2, :14], alone["labels"])
    text_alone = tx([pairs[0]["text"], pairs[1]["text"]])
    torch.testing.assert_close(batch["loss_weights"][2:], 0.5 * text_alone["loss_weights"])
    assert torch.equal(batch["labels"][2:], text_alone["labels"])


def test_certainty_applies_only_to_the_marked_rows():
    logits = torch.tensor([[[3.0, 0.0]], [[0.0, 2.0]]])  # (2, 1, 2): both rows predicted right
    labels, weights = torch.tensor([[0], [1]]), torch.tensor([[0.5], [0.5]])
    _, _, both = certainty_forcing_loss(logits, labels, weights)
    _, _, first = certainty_forcing_loss(logits, labels, weights, certainty_rows=torch.tensor([True, False]))
    p = torch.tensor([3.0, 0.0]).softmax(-1)
    assert first.item() == pytest.approx(-(p * p.log()).sum().item(), rel=1e-5)
    assert both.item() != pytest.approx(first.item())


def test_trajectories_are_the_models_greedy_outputs_in_prompt_order():
    model = tiny_model()
    prompts = [[5, 6], [7, 8, 9], [10, 11], [12, 13, 14]]
    records = generate_trajectories(model, prompts, max_new_tokens=8, block_length=4, batch_size=2, cache="none")
    for prompt, record in zip(prompts, records):
        alone = model.generate(torch.tensor([prompt]), max_new_tokens=8, steps=8, block_length=4, temperature=0.0,
                               remasking="low_confidence", eos_early_stop=False)
        assert record == {"input_ids": alone[0].tolist(), "prompt_length": len(prompt)}
    with pytest.raises(ValueError, match="cache.*allowed"):
        generate_trajectories(model, prompts, 8, 4, cache="paged")
    with pytest.raises(ValueError, match="max_new_tokens.*block_length"):
        generate_trajectories(model, prompts, 6, 4)


@pytest.fixture
def teacher(tmp_path, corpus_path):
    train(tmp_path / "teacher", data=[corpus_path], doc_separator="%", max_steps=30, learning_rate=3e-3,
          save_steps=1000, eval_steps=1000, **FAST)
    return tmp_path / "teacher"


@pytest.fixture
def corpus_path(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("\n%\n".join(sentences()) + "\n")
    return path


def confidence(model, records, block_length) -> float:
    """Mean top-1 probability at the labelled positions of a fixed batch."""
    batch = CertaintyForcingCollator(model.config.mask_token_id, block_length, seed=123)(records)
    with torch.no_grad():
        probs = model.eval()(batch["input_ids"]).logits.softmax(-1)
    return probs.max(-1).values[batch["labels"] != -100].mean().item()


def test_short_distillation_raises_confidence_and_saves_the_fast_sampler(tmp_path, teacher, corpus_path):
    from transformers import AutoModel

    traj = tmp_path / "traj.jsonl"
    trainer = distill(tmp_path / "student", teacher, data=[corpus_path], doc_separator="%", trajectories=traj,
                      num_prompts=24, prompt_tokens=(1, 2), max_new_tokens=16, block_length=8, batch_size=8,
                      max_steps=30, learning_rate=3e-3, logging_steps=5, eval_steps=1000, disable_tqdm=True,
                      log=lambda line: None)
    records = read_trajectories(traj)
    assert len(records) == 24 and all(len(r["input_ids"]) == r["prompt_length"] + 16 for r in records)
    before = AutoModel.from_pretrained(teacher)
    after = AutoModel.from_pretrained(tmp_path / "student")
    assert confidence(after, records, 8) > confidence(before, records, 8) + 0.05
    saved = after.generation_config
    assert saved.parallel_decoding and saved.threshold == 0.9 and saved.cache == "dual" and saved.temperature == 0.0
    recipe = json.loads((tmp_path / "student" / "illada_train.json").read_text())
    assert recipe["objective"] == "certainty_forcing" and recipe["global_step"] == 30
    logged = [entry for entry in trainer.state.log_history if "certainty" in entry]
    assert logged and all("cross_entropy" in entry for entry in logged)


def test_given_chat_answers_replace_the_teacher_pass(tmp_path, teacher, corpus_path):
    from transformers import AutoTokenizer

    from modeling_illada.corpus import encode_conversation, read_conversations, split_documents

    chats = tmp_path / "chats.jsonl"
    lines = [{"messages": [{"role": "user", "content": f"say {i}"}, {"role": "assistant", "content": s}]}
             for i, s in enumerate(sentences(30))]
    chats.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    said = []
    trainer = distill(tmp_path / "student", teacher, sft=[str(chats)], text_weight=0, heldout_fraction=0.2,
                      eval_fraction=0.1, block_length=8, batch_size=4, max_steps=2, logging_steps=1, eval_steps=1000,
                      disable_tqdm=True, log=said.append)
    # the targets: the training side of the split train() makes, each answer after its prompt in the chat template
    tokenizer = AutoTokenizer.from_pretrained(teacher)
    kept = split_documents(read_conversations([chats]), 0.2)[0]
    assert 0 < len(kept) < 30 and f"{len(kept)} chat answers as targets (from 1 file(s))" in said
    expected = [encode_conversation(tokenizer, m, 64) for m in kept]  # the teacher's context
    used = list(trainer.train_dataset) + list(trainer.eval_dataset)
    assert sorted(map(json.dumps, used)) == sorted(map(json.dumps, expected))
    assert json.loads((tmp_path / "student" / "illada_train.json").read_text())["sft"] == [str(chats)]
    with pytest.raises(ValueError, match="`sft`.*`trajectories`.*not both"):
        distill(tmp_path / "other", teacher, sft=[str(chats)], trajectories=str(tmp_path / "t.jsonl"))


def test_cli_reuses_trajectories_and_reports_bad_input(tmp_path, teacher, corpus_path, capsys):
    traj = tmp_path / "traj.jsonl"
    base = ["distill", "--model", str(teacher), "--trajectories", str(traj), "--num-prompts", "8",
            "--max-new-tokens", "8", "--block-length", "8", "--max-steps", "2", "--batch-size", "4"]
    assert main(base + ["--output", str(tmp_path / "a"), "--data", str(corpus_path), "--doc-separator", "%"]) == 0
    written = traj.read_text()
    assert len(written.splitlines()) == 8
    # a second run reads the file (no data needed without text replay) and leaves it as it was
    assert main(base + ["--output", str(tmp_path / "b"), "--text-weight", "0"]) == 0
    assert traj.read_text() == written and "read 8 trajectories" in capsys.readouterr().err
    # no data and no trajectory file: a clear error, exit status 2
    code = main(["distill", "--model", str(teacher), "--output", str(tmp_path / "c")])
    assert code == 2 and "`data`" in capsys.readouterr().err
    # a non-empty output folder is never overwritten silently
    code = main(base + ["--output", str(tmp_path / "a")])
    assert code == 2 and "not empty" in capsys.readouterr().err

