"""Training: the forward process and loss against hand computations, SFT masking, the Trainer driver (loss goes
down, Hub-native checkpoints, resume), the tokenizer, and clear errors for bad input."""

import json
import math
import random
import textwrap

import pytest
import torch
from transformers import AutoTokenizer, PreTrainedTokenizerFast, TrainerCallback

from helpers import TINY_SIZES, run_fresh, tiny_model
from modeling_illada import IlladaForMaskedDiffusion
from illada_cli import main
from modeling_illada.collators import (
    EPS, CausalCollator, mask_probability, PretrainCollator, SFTCollator, stratified_times,
)
from modeling_illada.corpus import (
    encode_conversation, pack_documents, pad_documents, read_conversations, read_documents, split_documents, train_tokenizer,
)
from modeling_illada.training import train

# Run in a fresh interpreter where `import modeling_illada` is impossible (`run_fresh`): only the checkpoint's code
# and files can make the model and tokenizer. Prints max |logits - expected|, the model's module and a generated length.
REMOTE_SCRIPT = textwrap.dedent(
    """
    import sys, json
    import torch
    from transformers import AutoModel, AutoTokenizer
    folder, expected = sys.argv[1], torch.tensor(json.loads(sys.argv[2]))
    tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=True)
    model = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
    ids = torch.tensor([tokenizer("the cat sees the dog.").input_ids + [tokenizer.mask_token_id] * 2])
    with torch.no_grad():
        diff = (model(ids).logits - expected).abs().max().item()
    out = model.generate(ids[:, :4], max_new_tokens=8, steps=8, block_length=8)
    print(json.dumps({"diff": diff, "module": type(model).__module__, "generated": out.shape[1] - 4}))
    """
)

TINY = dict(TINY_SIZES, max_position_embeddings=64, rope_theta=10000.0)  # the tiny model's sizes, a shorter context
FAST = dict(config=TINY, train_tokenizer_vocab=300, seq_length=32, batch_size=8, warmup_steps=0, logging_steps=1,
            disable_tqdm=True, random_length_prob=0.0)


def sentences(n: int = 300, seed: int = 0) -> list[str]:
    """A tiny regular language: 'the <noun> <verb> the <noun>.' (learnable in a few dozen steps)."""
    rng = random.Random(seed)
    nouns, verbs = ["cat", "dog", "bird", "fish", "cow"], ["sees", "likes", "chases", "feeds"]
    return [f"the {rng.choice(nouns)} {rng.choice(verbs)} the {rng.choice(nouns)}." for _ in range(n)]


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("\n%\n".join(sentences()) + "\n")
    return path


def hand_ce(logits, targets):
    return -torch.log_softmax(logits.double(), -1).gather(-1, targets[..., None])[..., 0]


def test_pretrain_loss_equals_hand_computation():
    model = tiny_model()
    x0 = torch.randint(4, 64, (4, 12))
    collator = PretrainCollator(mask_token_id=3, generator=torch.Generator().manual_seed(7))
    batch = collator([{"input_ids": row.tolist()} for row in x0])

    # Replay the same draws by hand: one t per row (stratified), then one uniform per token.
    g = torch.Generator().manual_seed(7)
    p = mask_probability(stratified_times(4, g))
    masked = torch.rand(x0.shape, generator=g) < p[:, None]
    assert masked.any() and (~masked).any()
    assert torch.equal(batch["input_ids"], torch.where(masked, 3, x0))
    assert torch.equal(batch["labels"], torch.where(masked, x0, -100))

    logits = model(batch["input_ids"]).logits
    ce = hand_ce(logits, x0)  # (B, L)
    expected = sum(ce[b, i] / p[b] for b in range(4) for i in range(12) if masked[b, i]) / (4 * 12)
    got = model(**batch).loss
    assert got.item() == pytest.approx(expected.item(), rel=1e-5)


def test_uniform_weighting_is_the_mean_masked_cross_entropy():
    model = tiny_model()
    x0 = torch.randint(4, 64, (3, 10))
    batch = PretrainCollator(mask_token_id=3, loss_weighting="uniform", generator=torch.Generator().manual_seed(5))(
        [{"input_ids": row.tolist()} for row in x0]
    )
    masked = batch["labels"] != -100
    expected = hand_ce(model(batch["input_ids"]).logits, x0)[masked].mean()
    assert model(**batch).loss.item() == pytest.approx(expected.item(), rel=1e-5)
    with pytest.raises(ValueError, match="loss_weighting"):
        PretrainCollator(mask_token_id=3, loss_weighting="1/t")


def test_stratified_times_cover_the_unit_interval():
    t = stratified_times(8, torch.Generator().manual_seed(0)).sort().values
    assert torch.all((t >= torch.arange(8) / 8) & (t < (torch.arange(8) + 1) / 8))
    assert mask_probability(torch.tensor([0.0, 1.0])).tolist() == pytest.approx([EPS, 1.0])


def test_seeded_noise_depends_on_the_seed_and_the_batch():
    rows = [{"input_ids": list(range(4, 36))} for _ in range(4)]
    other = [{"input_ids": list(range(5, 37))} for _ in range(4)]
    noise = lambda seed, batch: PretrainCollator(mask_token_id=3, seed=seed)(batch)["input_ids"]  # noqa: E731
    assert torch.equal(noise(0, rows), noise(0, rows))
    assert not torch.equal(noise(0, rows), noise(1, rows))  # torch keeps 32 bits of a seed: both must fit in them
    assert not torch.equal(noise(0, rows) == 3, noise(0, other) == 3)


def test_sft_prompt_never_masked_and_loss_normalised_by_answer_length():
    model = tiny_model()
    features = [{"input_ids": list(range(10, 20)), "prompt_length": 4}, {"input_ids": list(range(30, 36)), "prompt_length": 5}]
    collator = SFTCollator(mask_token_id=3, eos_token_id=2, generator=torch.Generator().manual_seed(1))
    seen_answer_masks = 0
    for _ in range(200):
        batch = collator(features)
        ids, labels = batch["input_ids"], batch["labels"]
        assert ids.shape == (2, 10)
        assert torch.equal(ids[0, :4], torch.arange(10, 14)) and torch.equal(ids[1, :5], torch.arange(30, 35))
        assert (labels[0, :4] == -100).all() and (labels[1, :5] == -100).all()
        seen_answer_masks += int((labels[1, 6:] == 2).sum())  # EOS padding is part of the answer and trained
    assert seen_answer_masks > 0

    collator = SFTCollator(mask_token_id=3, eos_token_id=2, generator=torch.Generator().manual_seed(3))
    batch = collator(features)
    g = torch.Generator().manual_seed(3)
    p = mask_probability(stratified_times(2, g))
    masked = (torch.rand((2, 10), generator=g) < p[:, None]) & (torch.arange(10)[None] >= torch.tensor([[4], [5]]))
    x0 = torch.tensor([list(range(10, 20)), list(range(30, 36)) + [2] * 4])
    assert torch.equal(batch["labels"], torch.where(masked, x0, -100))
    ce = hand_ce(model(batch["input_ids"]).logits, x0)
    answer_length = [6, 5]
    expected = sum(ce[b, i] / p[b] / answer_length[b] for b in range(2) for i in range(10) if masked[b, i]) / 2
    assert model(**batch).loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_autoregressive_objective_is_next_token_cross_entropy_under_a_causal_mask():
    model = tiny_model()
    x = torch.randint(4, 64, (2, 9))
    batch = CausalCollator()([{"input_ids": row.tolist()} for row in x])
    assert batch["attention_mask"].shape == (2, 1, 9, 9) and not batch["attention_mask"][0, 0, 0, 1]
    expected = hand_ce(model(x, attention_mask=batch["attention_mask"]).logits[:, :-1], x[:, 1:]).mean()
    assert model(**batch).loss.item() == pytest.approx(expected.item(), rel=1e-5)
    # causal: changing the last token changes no earlier prediction
    changed = x.clone()
    changed[:, -1] = (x[:, -1] + 1 - 4) % 60 + 4
    before, after = (model(ids, attention_mask=batch["attention_mask"]).logits[:, :-1] for ids in (x, changed))
    torch.testing.assert_close(before, after)
    with pytest.raises(ValueError, match="objective"):
        train("unused", sft=["chats.jsonl"], objective="autoregressive")


def test_gradients_flow_to_every_parameter():
    model = tiny_model().train()
    batch = PretrainCollator(mask_token_id=3, generator=torch.Generator().manual_seed(0))(
        [{"input_ids": torch.randint(4, 64, (16,)).tolist()} for _ in range(4)]
    )
    model(**batch).loss.backward()
    for name, param in model.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), name
        assert param.grad.abs().sum() > 0, name


def test_tokenizer_registers_mask_and_chat_template(tmp_path):
    tokenizer = train_tokenizer(sentences(), vocab_size=300)
    assert tokenizer.convert_ids_to_tokens([0, 1, 2, 3]) == ["<|bos|>", "<|pad|>", "<|eos|>", "<|mask|>"]
    assert tokenizer.mask_token_id == 3 and len(tokenizer) <= 300
    text = "the cat\tsees the dog.\n"
    assert tokenizer.decode(tokenizer(text).input_ids) == text
    tokenizer.save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    assert reloaded.mask_token == "<|mask|>" and reloaded.chat_template
    chat = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "the cat."}]
    encoded = encode_conversation(reloaded, chat, 64)
    prompt = reloaded.decode(encoded["input_ids"][: encoded["prompt_length"]])
    assert prompt.endswith("<|start|>assistant<|end|>\n") and "hi" in prompt
    assert encoded["input_ids"][-1] == reloaded.eos_token_id


def test_packing_puts_eos_between_documents():
    tokenizer = train_tokenizer(sentences(), vocab_size=300)
    docs = ["the cat sees the dog.", "the cow feeds the fish."]
    packed = pack_documents(docs * 4, tokenizer, 8)
    stream = sum((tokenizer(d, add_special_tokens=False).input_ids + [2] for d in docs * 4), [])
    assert [f["input_ids"] for f in packed] == [stream[i : i + 8] for i in range(0, len(stream) - 7, 8)]


def test_unpacked_documents_are_padded_with_trained_eos():
    tokenizer = train_tokenizer(sentences(), vocab_size=300)
    docs = ["the cat sees the dog.", "the cow feeds the fish and the dog sees the cat and the cow."]
    ids = [tokenizer(d, add_special_tokens=False).input_ids for d in docs]
    assert len(ids[0]) + 1 < 12 < len(ids[1])
    rows = pad_documents(docs, tokenizer, 12)
    assert rows[0]["input_ids"] == ids[0] + [2] * (12 - len(ids[0])) and rows[0]["answer_length"] == len(ids[0]) + 1
    assert rows[1]["input_ids"] == ids[1][:12] and rows[1]["answer_length"] == 12  # cut: no EOS, it did not end
    assert all(r["prompt_length"] == 0 for r in rows)
    # diffusion: every position, padding included, can be masked (LLaDA's SFT with an empty prompt)
    batch = SFTCollator(mask_token_id=3, eos_token_id=2, generator=torch.Generator().manual_seed(0))(rows * 50)
    assert ((batch["labels"] == 2) & (torch.arange(12) > len(ids[0]))).any()
    assert (batch["labels"] != -100).any(dim=0).all()
    # autoregressive: labels run up to and including the first EOS, never into the padding
    model = tiny_model()
    rows = [{"input_ids": [9, 8, 7, 2, 2, 2], "prompt_length": 0, "answer_length": 4},
            {"input_ids": [5, 6, 7, 8, 9, 2], "prompt_length": 0, "answer_length": 6}]
    batch = CausalCollator()(rows)
    assert batch["labels"].tolist() == [[8, 7, 2, -100, -100, -100], [6, 7, 8, 9, 2, -100]]
    x = torch.tensor([r["input_ids"] for r in rows])
    ce = hand_ce(model(x, attention_mask=batch["attention_mask"]).logits, batch["labels"].clamp(min=0))
    expected = ce[batch["labels"] != -100].mean()
    assert model(**batch).loss.item() == pytest.approx(expected.item(), rel=1e-5)


def fixed_noise_loss(model, sequences) -> float:
    batch = PretrainCollator(mask_token_id=model.config.mask_token_id, generator=torch.Generator().manual_seed(0))(sequences)
    with torch.no_grad():
        return model.eval()(**batch).loss.item()


def test_short_training_run_lowers_the_loss(tmp_path, corpus):
    trainer = train(tmp_path / "run", data=[corpus], doc_separator="%", max_steps=40, learning_rate=3e-3,
                    save_steps=1000, eval_steps=20, **FAST)
    heldout = trainer.eval_dataset[:8] * 4
    torch.manual_seed(0)
    untrained = IlladaForMaskedDiffusion(trainer.model.config)  # train() seeds the init the same way
    before, after = fixed_noise_loss(untrained, heldout), fixed_noise_loss(trainer.model, heldout)
    assert after < 0.6 * before, (before, after)
    recipe = json.loads((tmp_path / "run" / "illada_train.json").read_text())
    assert recipe["global_step"] == 40 and recipe["eval_loss"] < before
    assert any("eval_loss" in entry for entry in trainer.state.log_history)


def test_checkpoint_is_hub_native_and_reloads_without_the_package(tmp_path, corpus):
    out = tmp_path / "run"
    trainer = train(out, data=[corpus], doc_separator="%", max_steps=2, save_steps=2, eval_steps=100, **FAST)
    checkpoint = out / "checkpoint-2"
    for folder in (out, checkpoint):
        files = {p.name for p in folder.iterdir()}
        assert {"config.json", "model.safetensors", "modeling_illada.py", "generation_config.json",
                "tokenizer.json", "tokenizer_config.json"} <= files, files
        assert json.loads((folder / "config.json").read_text())["auto_map"]["AutoModel"] == "modeling_illada.IlladaForMaskedDiffusion"
    assert not (out / "training_args.bin").exists()
    generation = json.loads((out / "generation_config.json").read_text())
    assert generation["mask_token_id"] == 3 and generation["eot_token_id"] == 6
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    assert tokenizer.mask_token_id == trainer.model.config.mask_token_id == 3
    ids = torch.tensor([tokenizer("the cat sees the dog.").input_ids + [3, 3]])
    with torch.no_grad():
        expected = trainer.model.eval()(ids).logits
    got = run_fresh(REMOTE_SCRIPT, checkpoint, json.dumps(expected.tolist()), cwd=tmp_path)
    assert got["diff"] < 1e-5 and got["module"].startswith("transformers_modules") and got["generated"] == 8


class StopAt(TrainerCallback):
    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            control.should_training_stop = True


class Snapshot(TrainerCallback):
    """The weights when training (re)starts, after the Trainer has loaded a checkpoint."""

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.weights = {k: v.clone() for k, v in model.state_dict().items()}


def test_resume_continues_where_it_stopped(tmp_path, corpus):
    from safetensors.torch import load_file

    common = dict(data=[corpus], doc_separator="%", eval_fraction=0.0, max_steps=6, save_steps=3, **FAST)
    straight = train(tmp_path / "straight", **common)
    train(tmp_path / "resumed", callbacks=[StopAt(3)], **common)  # interrupted after the step-3 checkpoint
    with pytest.raises(ValueError, match="not empty"):
        train(tmp_path / "resumed", **common)
    snapshot = Snapshot()
    resumed = train(tmp_path / "resumed", resume=True, callbacks=[snapshot], **common)

    saved = load_file(tmp_path / "resumed" / "checkpoint-3" / "model.safetensors")
    for name, value in saved.items():
        torch.testing.assert_close(snapshot.weights[name], value, msg=name)  # restarted from the checkpoint
    assert resumed.state.global_step == 6
    logged = lambda trainer: [(e["step"], e["learning_rate"]) for e in trainer.state.log_history if "loss" in e]  # noqa: E731
    assert logged(resumed) == logged(straight)  # steps 1-3 kept, 4-6 trained once, the LR schedule continued
    # same batches, same masking noise (derived from each batch, not from the RNG's history): same losses and weights
    losses = lambda trainer: [e["loss"] for e in trainer.state.log_history if "loss" in e]  # noqa: E731
    assert losses(resumed) == pytest.approx(losses(straight), rel=1e-5)
    reference = load_file(tmp_path / "straight" / "model.safetensors")
    recipe = json.loads((tmp_path / "resumed" / "illada_train.json").read_text())
    assert recipe["resumed_from"].endswith("checkpoint-3") and recipe["global_step"] == 6
    final = load_file(tmp_path / "resumed" / "model.safetensors")
    assert any(not torch.equal(final[k], saved[k]) for k in saved)
    for name, value in reference.items():
        torch.testing.assert_close(final[name], value, msg=name)


def test_sft_run_through_the_cli(tmp_path, capsys):
    chats = tmp_path / "chats.jsonl"
    lines = [{"messages": [{"role": "user", "content": f"name an animal {i}"}, {"role": "assistant", "content": s}]}
             for i, s in enumerate(sentences(40))]
    chats.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    code = main(["train", "--sft", str(chats), "--output", str(tmp_path / "sft"), "--train-tokenizer", "300",
                 "--config", json.dumps(TINY), "--seq-length", "48", "--batch-size", "4", "--max-steps", "2",
                 "--save-steps", "2", "--warmup-steps", "0"])
    assert code == 0
    recipe = json.loads((tmp_path / "sft" / "illada_train.json").read_text())
    assert recipe["recipe"] == "TrainRecipe" and recipe["sft"] == [str(chats)] and recipe["global_step"] == 2


def test_unpacked_pretraining_through_the_cli(tmp_path, corpus):
    code = main(["train", "--data", str(corpus), "--doc-separator", "%", "--no-packing", "--output", str(tmp_path / "pad"),
                 "--train-tokenizer", "300", "--config", json.dumps(TINY), "--seq-length", "32", "--batch-size", "4",
                 "--max-steps", "2", "--save-steps", "2", "--warmup-steps", "0"])
    assert code == 0
    recipe = json.loads((tmp_path / "pad" / "illada_train.json").read_text())
    assert recipe["packing"] is False and recipe["train_sequences"] == recipe["train_documents"]


# --- bad input ------------------------------------------------------------------------------------------------


def test_empty_corpus_is_refused(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n%\n")
    with pytest.raises(ValueError, match="corpus is empty"):
        read_documents([empty], separator="%")
    with pytest.raises(ValueError, match="corpus is empty"):
        train(tmp_path / "out", data=[empty], doc_separator="%", **FAST)


def test_jsonl_line_that_is_not_a_conversation(tmp_path):
    bad = tmp_path / "chats.jsonl"
    good = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
    for wrong in ({"text": "hello"}, [{"role": "user", "content": "only a question"}], "not json {"):
        bad.write_text(json.dumps(good) + "\n" + (wrong if isinstance(wrong, str) else json.dumps(wrong)) + "\n")
        with pytest.raises(ValueError, match=r"chats.jsonl:2: not"):
            read_conversations([bad])


def test_tokenizer_without_mask_token_is_refused(tmp_path, corpus):
    trained = train_tokenizer(sentences(), vocab_size=300)
    no_mask = PreTrainedTokenizerFast(tokenizer_object=trained.backend_tokenizer, eos_token="<|eos|>")
    fast = {k: v for k, v in FAST.items() if k != "train_tokenizer_vocab"}
    with pytest.raises(ValueError, match="no mask token"):
        train(tmp_path / "out", data=[corpus], tokenizer=no_mask, **fast)


def test_bfloat16_mixed_precision_trains_on_cpu(tmp_path, corpus):
    trainer = train(tmp_path / "run", data=[corpus], doc_separator="%", max_steps=3, save_steps=1000,
                    eval_steps=1000, precision="bfloat16", **FAST)
    assert trainer.args.bf16 and not trainer.args.fp16
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == 3 and all(math.isfinite(loss) for loss in losses)
    assert trainer.model.dtype == torch.float32  # mixed precision: the weights stay float32
    with pytest.raises(ValueError, match="precision"):
        train(tmp_path / "bad", data=[corpus], precision="int8", **FAST)


def test_preset_too_large_for_the_memory_is_refused_before_allocating(tmp_path, corpus, monkeypatch):
    from modeling_illada import presets

    monkeypatch.setattr(presets, "available_memory", lambda device: 4 * presets.GIB)
    fields = {**FAST, "config": None}
    with pytest.raises(ValueError, match=r"Preset 'illada-8b-base' needs 2\d\.\d GiB for its float32 weights.*4\.0 GiB"):
        train(tmp_path / "out", data=[corpus], preset="illada-8b-base", **fields)


def test_fine_tuning_refuses_a_new_architecture(tmp_path, corpus):
    with pytest.raises(ValueError, match="cannot be combined with `model`"):
        train(tmp_path / "out", data=[corpus], model="some/model", **FAST)


def test_sequence_length_beyond_context_is_refused(tmp_path, corpus):
    with pytest.raises(ValueError, match="exceeds the model's context"):
        train(tmp_path / "out", data=[corpus], **{**FAST, "seq_length": 128})


def test_non_empty_output_folder_is_refused_and_cli_says_so(tmp_path, corpus, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    code = main(["train", "--data", str(corpus), "--output", str(out), "--train-tokenizer", "300", "--max-steps", "1"])
    assert code == 2 and "not empty" in capsys.readouterr().err
    assert (out / "notes.txt").read_text() == "mine" and sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    with pytest.raises(ValueError, match="no checkpoint"):
        train(out, data=[corpus], resume=True, **FAST)


def test_split_is_deterministic_and_disjoint():
    docs = sentences(200)
    train_docs, heldout = split_documents(docs, 0.1)
    assert set(heldout) == set(split_documents(list(reversed(docs)), 0.1)[1])  # order-independent
    assert heldout and not set(heldout) & set(train_docs) and len(train_docs) + len(heldout) == len(docs)
