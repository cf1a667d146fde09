"""Hub-native save/load: both official layouts, remote code without the package, strict keys, dtypes."""

import json
import os
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModel, AutoModelForMaskedLM

from helpers import run_fresh, tiny_model, word_tokenizer
from modeling_illada import IlladaForMaskedDiffusion, LladaForMaskedDiffusion
from reference_llada import llada_forward

REPO = Path(__file__).resolve().parent.parent

# A script run in a fresh interpreter where `import modeling_illada` is impossible (`run_fresh`): only the saved
# folder's code can make the model. It prints max |logits - expected| and the class/module names it got.
REMOTE_SCRIPT = textwrap.dedent(
    """
    import sys, json
    import torch
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModel, AutoModelForMaskedLM
    folder, expected_file = sys.argv[1], sys.argv[2]
    expected = load_file(expected_file)
    config = AutoConfig.from_pretrained(folder, trust_remote_code=True)
    model = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
    masked_lm = AutoModelForMaskedLM.from_pretrained(folder, trust_remote_code=True)
    with torch.no_grad():
        out = model(expected["ids"]).logits
    gen = model.generate(expected["ids"][:1, :4], max_new_tokens=4, steps=4)
    dream = model.diffusion_generate(expected["ids"][:1, :4], max_new_tokens=4, steps=4, alg="entropy")
    print(json.dumps({
        "tokens": gen.tolist(), "dream": dream.tolist(), "shift": bool(getattr(config, "shift_logits", False)),
        "diff": (out - expected["logits"]).abs().max().item(),
        "module": type(model).__module__, "cls": type(model).__name__, "config": type(config).__name__,
        "mlm": type(masked_lm).__name__, "gen_config": type(model.generation_config).__name__,
        "generated": gen.shape[1], "can_generate": model.can_generate(),
    }))
    """
)


def run_without_package(folder, ids, expected_logits, tmp_path):
    expected = tmp_path / "expected.safetensors"
    save_file({"ids": ids.contiguous(), "logits": expected_logits.contiguous()}, str(expected))
    return run_fresh(REMOTE_SCRIPT, folder, expected, cwd=tmp_path)


def logits(model, ids):
    with torch.no_grad():
        return model(ids).logits


def test_save_writes_hub_native_folder(tmp_path, model):
    model.save_pretrained(tmp_path)
    files = set(os.listdir(tmp_path))
    assert {"config.json", "generation_config.json", "model.safetensors", "configuration_illada.py",
            "modeling_illada.py", "generation_illada.py"} <= files
    assert not any(f.endswith((".bin", ".pt", ".pth")) for f in files)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["auto_map"] == {
        "AutoConfig": "configuration_illada.IlladaConfig",
        "AutoModel": "modeling_illada.IlladaForMaskedDiffusion",
        "AutoModelForMaskedLM": "modeling_illada.IlladaForMaskedDiffusion",
    }
    generation = json.loads((tmp_path / "generation_config.json").read_text())
    assert generation["mask_token_id"] == model.config.mask_token_id
    # Hub files import nothing but torch, transformers and each other
    for name in files:
        if name.endswith(".py"):
            for line in (tmp_path / name).read_text().splitlines():
                if line.startswith(("import ", "from ")) and not line.startswith("from ."):
                    assert line.split()[1].split(".")[0] in {"torch", "transformers", "math", "copy", "dataclasses", "json", "os", "pathlib", "difflib", "inspect"}, line


def test_reload_in_process_is_identical(tmp_path, model):
    ids = torch.randint(4, 64, (2, 7))
    model.save_pretrained(tmp_path)
    again = AutoModel.from_pretrained(tmp_path)
    assert type(again) is IlladaForMaskedDiffusion
    torch.testing.assert_close(logits(again, ids), logits(model, ids), rtol=0, atol=0)
    assert type(AutoModelForMaskedLM.from_pretrained(tmp_path)) is IlladaForMaskedDiffusion


def test_fresh_process_without_package_loads_with_remote_code(tmp_path, model):
    ids = torch.randint(4, 64, (2, 7))
    folder = tmp_path / "saved"
    model.save_pretrained(folder)
    got = run_without_package(folder, ids, logits(model, ids), tmp_path)
    assert got["diff"] == 0.0
    assert got["module"].startswith("transformers_modules")
    assert (got["cls"], got["config"], got["mlm"]) == ("IlladaForMaskedDiffusion", "IlladaConfig", "IlladaForMaskedDiffusion")
    assert got["gen_config"] == "IlladaGenerationConfig" and got["can_generate"] and got["generated"] == 8


def test_folder_saved_after_installed_package_load_still_carries_code(tmp_path, model):
    plain = tmp_path / "plain"
    model.save_pretrained(plain)
    for code in plain.glob("*.py"):
        code.unlink()  # a folder in the official layout: config + weights only
    loaded = AutoModel.from_pretrained(plain)
    resaved = tmp_path / "resaved"
    loaded.save_pretrained(resaved)
    ids = torch.randint(4, 64, (1, 6))
    assert run_without_package(resaved, ids, logits(model, ids), tmp_path)["diff"] == 0.0


def olmo_checkpoint(model, folder: Path) -> dict:
    """Write `model` as an official LLaDA folder: OLMo-style config.json and keys, no code files."""
    c = model.config
    config = {
        "architectures": ["LLaDAModelLM"], "model_type": "llada", "block_type": "llama", "d_model": c.hidden_size,
        "n_layers": c.num_hidden_layers, "n_heads": c.num_attention_heads, "n_kv_heads": c.num_key_value_heads,
        "mlp_hidden_size": c.intermediate_size, "mlp_ratio": 4, "activation_type": "silu",
        "vocab_size": c.vocab_size, "embedding_size": c.vocab_size, "weight_tying": False,
        "max_sequence_length": c.max_position_embeddings, "rope": True, "rope_theta": c.rope_theta,
        "rope_full_precision": True, "alibi": False, "layer_norm_type": "rms", "rms_norm_eps": c.rms_norm_eps,
        "include_bias": False, "include_qkv_bias": False, "init_fn": "mitchell", "precision": "amp_bf16",
        "mask_token_id": c.mask_token_id, "eos_token_id": c.eos_token_id, "pad_token_id": c.eos_token_id,
        "use_cache": False, "auto_map": {"AutoConfig": "configuration_llada.LLaDAConfig",
                                          "AutoModel": "modeling_llada.LLaDAModelLM"},
    }
    names = {"embed_tokens": "wte", "norm": "ln_f", "input_layernorm": "attn_norm",
             "post_attention_layernorm": "ff_norm", "self_attn.q_proj": "q_proj", "self_attn.k_proj": "k_proj",
             "self_attn.v_proj": "v_proj", "self_attn.o_proj": "attn_out", "mlp.gate_proj": "ff_proj",
             "mlp.up_proj": "up_proj", "mlp.down_proj": "ff_out"}
    state = {}
    for key, value in model.state_dict().items():
        if key == "lm_head.weight":
            state["model.transformer.ff_out.weight"] = value.clone()
            continue
        new = key.replace("model.layers.", "model.transformer.blocks.").replace("model.embed_tokens", "model.transformer.wte").replace("model.norm", "model.transformer.ln_f")
        for ours, theirs in names.items():
            new = new.replace(f".{ours}.", f".{theirs}.")
        state[new] = value.clone()
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config))
    save_file({k: v.contiguous() for k, v in state.items()}, str(folder / "model.safetensors"))
    return config, state


def test_llada_layout_loads_with_reference_numerics(tmp_path):
    source = tiny_model(tie_word_embeddings=False, num_key_value_heads=4)
    config, state = olmo_checkpoint(source, tmp_path / "llada")
    assert any(k.startswith("model.transformer.blocks.0.attn_out") for k in state)
    model = AutoModel.from_pretrained(tmp_path / "llada")
    assert type(model) is LladaForMaskedDiffusion and model.config.model_type == "llada"
    ids = torch.randint(4, 64, (2, 9))
    expected = llada_forward(state, config, ids)
    torch.testing.assert_close(logits(model, ids), expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(logits(model, ids), logits(source, ids), atol=1e-5, rtol=1e-5)


def test_llada_loaded_model_saves_hub_native_and_reloads_without_package(tmp_path):
    source = tiny_model(tie_word_embeddings=False, num_key_value_heads=4)
    config, state = olmo_checkpoint(source, tmp_path / "llada")
    model = AutoModel.from_pretrained(tmp_path / "llada")
    model.save_pretrained(tmp_path / "resaved")
    saved = json.loads((tmp_path / "resaved" / "config.json").read_text())
    assert saved["model_type"] == "llada"
    assert saved["auto_map"]["AutoModel"] == "modeling_illada.LladaForMaskedDiffusion"
    assert saved["auto_map"]["AutoConfig"] == "configuration_illada.LladaConfig"
    ids = torch.randint(4, 64, (1, 6))
    assert run_without_package(tmp_path / "resaved", ids, llada_forward(state, config, ids), tmp_path)["diff"] < 1e-5
    again = AutoModel.from_pretrained(tmp_path / "resaved")
    torch.testing.assert_close(logits(again, ids), logits(model, ids), rtol=0, atol=0)


def test_llada_layout_with_gqa_and_bf16(tmp_path):
    source = tiny_model(tie_word_embeddings=False)  # 2 KV heads for 4 query heads
    config, state = olmo_checkpoint(source, tmp_path / "llada")
    model = AutoModel.from_pretrained(tmp_path / "llada", dtype=torch.bfloat16, device_map="cpu")
    assert model.dtype == torch.bfloat16
    ids = torch.randint(4, 64, (1, 8))
    assert (logits(model, ids).float() - llada_forward(state, config, ids)).abs().max() < 0.1


def test_illada_official_layout_loads_natively(tmp_path, model):
    """Official iLLaDA: Llama keys, tied head (no lm_head in the file), config without mask_token_id."""
    folder = tmp_path / "illada"
    folder.mkdir()
    c = model.config
    official = {"architectures": ["ILLaDAForCausalLM"], "model_type": "illada", "hidden_size": c.hidden_size,
                "intermediate_size": c.intermediate_size, "num_hidden_layers": c.num_hidden_layers,
                "num_attention_heads": c.num_attention_heads, "num_key_value_heads": c.num_key_value_heads,
                "max_position_embeddings": c.max_position_embeddings, "vocab_size": c.vocab_size,
                "rope_theta": c.rope_theta, "rope_scaling": None, "rms_norm_eps": c.rms_norm_eps,
                "tie_word_embeddings": True, "bos_token_id": 0, "pad_token_id": 1, "eos_token_id": 2,
                "auto_map": {"AutoConfig": "configuration_illada.ILLaDAConfig",
                             "AutoModel": "modeling_illada.ILLaDAForCausalLM",
                             "AutoModelForCausalLM": "modeling_illada.ILLaDAForCausalLM"}}
    (folder / "config.json").write_text(json.dumps(official))
    state = {k: v.contiguous() for k, v in model.state_dict().items() if k != "lm_head.weight"}
    save_file(state, str(folder / "model.safetensors"))
    loaded = AutoModel.from_pretrained(folder)
    assert loaded.config.mask_token_id == 5  # iLLaDA's mask id, absent from the published config
    ids = torch.randint(6, 64, (1, 6))
    torch.testing.assert_close(logits(loaded, ids), logits(model, ids), rtol=0, atol=0)
    loaded.save_pretrained(tmp_path / "resaved")
    assert "AutoModelForCausalLM" not in json.loads((tmp_path / "resaved" / "config.json").read_text())["auto_map"]


def test_unexpected_and_missing_keys_are_named(tmp_path, model):
    model.save_pretrained(tmp_path / "ok")
    state = load_file(str(tmp_path / "ok" / "model.safetensors"))
    state["model.layers.0.mystery.weight"] = torch.zeros(2)
    save_file(state, str(tmp_path / "ok" / "model.safetensors"))
    with pytest.raises(ValueError, match="mystery"):
        AutoModel.from_pretrained(tmp_path / "ok")
    del state["model.layers.0.mystery.weight"]
    del state["model.layers.1.mlp.up_proj.weight"]
    save_file(state, str(tmp_path / "ok" / "model.safetensors"))
    with pytest.raises(ValueError, match=r"model.layers.1.mlp.up_proj.weight.*strict=False"):
        AutoModel.from_pretrained(tmp_path / "ok")  # a backbone weight missing: an error, with the way out
    model, info = AutoModel.from_pretrained(tmp_path / "ok", strict=False, output_loading_info=True)
    assert set(info["missing_keys"]) == {"model.layers.1.mlp.up_proj.weight"}


def test_device_map_auto_places_an_8b_preset_layer_by_layer():
    """The placement `from_pretrained(device_map="auto")` computes, for iLLaDA-8B in bfloat16 on a 6 GiB device and
    the CPU (the meta device holds the weights: nothing is allocated): decoder layers are never split, the tied
    embedding and head share a device, and layers fill the device in order before spilling to the CPU."""
    from accelerate import infer_auto_device_map

    from modeling_illada import load_preset

    config, _ = load_preset("illada-8b-base")
    with torch.device("meta"):
        model = AutoModel.from_config(config, dtype=torch.bfloat16)
    placement = infer_auto_device_map(model, max_memory={0: "6GiB", "cpu": "60GiB"}, dtype=torch.bfloat16,
                                      no_split_module_classes=model._no_split_modules)
    layers = [placement[f"model.layers.{i}"] for i in range(config.num_hidden_layers)]  # whole layers only
    assert not any(name.startswith("model.layers.") and name.count(".") > 2 for name in placement)
    assert placement["model.embed_tokens"] == placement["lm_head"] == 0
    assert 0 < layers.count(0) < config.num_hidden_layers and layers == sorted(layers, key=lambda d: d == "cpu")


def test_device_map_auto_with_offload_gives_the_same_logits(tmp_path, model):
    model.save_pretrained(tmp_path / "saved")
    offloaded = AutoModel.from_pretrained(tmp_path / "saved", device_map="auto", max_memory={"cpu": "60KB"},
                                          offload_folder=tmp_path / "offload")
    assert "disk" in offloaded.hf_device_map.values()  # most of it does not fit the 60 KB allowed
    ids = torch.randint(4, 64, (2, 7))
    torch.testing.assert_close(logits(offloaded, ids), logits(model, ids), rtol=0, atol=0)


TOKENIZER_SCRIPT = textwrap.dedent(  # run by a user of transformers alone (`run_fresh`: no modeling_illada)
    """
    import sys
    from transformers import AutoTokenizer
    tokenizer = AutoTokenizer.from_pretrained(sys.argv[1], trust_remote_code=False)
    print(type(tokenizer).__name__, tokenizer.mask_token)
    """
)


def test_tokenizer_is_saved_beside_the_model_and_loads_without_a_remote_code_prompt(tmp_path, model, monkeypatch):
    """`save_pretrained` of the model writes no tokenizer (a second call does). The folder's config names our code
    (auto_map), which `AutoTokenizer` reads first: with the package imported nothing prompts; without it,
    `trust_remote_code=False` loads the tokenizer (it needs no code) instead of a 15 s "run custom code?" prompt."""
    from transformers import AutoTokenizer

    folder = tmp_path / "saved"
    model.save_pretrained(folder)
    assert not any(name.startswith(("tokenizer", "special_tokens")) for name in os.listdir(folder))
    word_tokenizer().save_pretrained(folder)
    monkeypatch.setattr("builtins.input", lambda *a: pytest.fail("prompted to run custom code"))
    assert AutoTokenizer.from_pretrained(folder).mask_token == "<mask>"
    stdout = run_fresh(TOKENIZER_SCRIPT, folder, cwd=tmp_path, timeout=120, parse=False)
    assert stdout.split()[-1] == "<mask>" and "Do you wish to run the custom code" not in stdout
