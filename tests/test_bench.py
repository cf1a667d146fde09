"""The benchmarks' own bookkeeping (bench/bench_demo.py, bench/gpu.py): rows must compare like with like, the measures
must count what they say, and the scripts must run end to end (on tiny models, `--quick` / `--dry-run`). Figures are
printed by the scripts, never asserted here."""

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from helpers import tiny_model
from modeling_illada import IlladaGenerationConfig

ROOT = Path(__file__).resolve().parent.parent


def load_script(name):
    sys.path.insert(0, str(ROOT / "bench"))
    spec = importlib.util.spec_from_file_location(name, ROOT / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def bench():
    return load_script("bench_demo")


@pytest.mark.parametrize("saved", [dict(temperature=0.9), dict(temperature=0.0, parallel_decoding=True, threshold=0.05,
                                                                  cache="dual")])
def test_exact_rows_reproduce_plain_whatever_the_saved_config(bench, saved):
    model = tiny_model().eval()
    # a saved config that samples, or decodes in parallel with a cache: the benchmark's exact rows must still decode
    # greedily, one token per step, uncached
    model.generation_config = IlladaGenerationConfig(max_new_tokens=16, steps=16, block_length=8,
                                                     mask_token_id=model.config.mask_token_id, **saved)
    prompt = torch.randint(4, 64, (3,), generator=torch.Generator().manual_seed(0)).tolist()
    outputs = {}
    for mode in bench.MODES:
        if mode.exact:
            knobs = {**bench.BASE_KNOBS, **mode.knobs, "steps": 16, "block_length": 8}
            outputs[mode.id], _, forwards, tpf = bench.diffusion_generate(model, prompt, 16, knobs, {2})
            if mode.id == "plain":
                assert forwards == 16 and tpf == 1.0
    assert len(outputs) >= 2 and all(o == outputs["plain"] for o in outputs.values())
    assert {m.id for m in bench.MODES} == set(bench.MODE) and len(bench.MODES) == len(bench.MODE)  # ids unique


def test_measures_by_hand(bench):
    assert bench.rep_n([1, 2, 3, 4, 1, 2, 3, 4]) == pytest.approx(1 / 5)  # 5 four-grams, one seen before
    assert bench.rep_n([1, 2]) == 0.0
    assert bench.distinct_n([1, 2, 1, 2]) == pytest.approx(2 / 3)  # bigrams (1,2) (2,1) (1,2)
    assert bench.useful([5, 6, 2, 7], {2}) == [5, 6] and bench.useful([5, 6], {2}) == [5, 6]
    assert bench.agreement([1, 2, 3], [1, 9, 3, 4]) == pytest.approx(2 / 4)
    assert bench.keyword_hit("The capital is Paris.", ["paris"]) and not bench.keyword_hit("Parisian", ["Paris"])


def test_the_demo_benchmark_runs_end_to_end_on_tiny_models(bench, tmp_path, capsys):
    assert bench.main(["--quick", "--json", str(tmp_path / "figures.json")]) == 0
    import json

    figures = json.loads((tmp_path / "figures.json").read_text())
    assert {"heldout", "open", "questions", "sampling"} <= set(figures)
    packed = figures["heldout"]["packed_fortunes"]  # two 16-token windows, the first token of each conditions
    assert (packed["windows"], packed["tokens"]) == (2, 30) and packed["diffusion_elbo_nll"] > 0
    labels = {row["label"] for row in figures["sampling"]}
    assert labels == {m.label for m in bench.MODES} | {label for _, label, _ in bench.AR_ROWS}
    assert "judge ppl" in capsys.readouterr().out
    # the exact left-to-right NLL beside the ELBO, per token
    pooled = figures["heldout"]
    assert pooled["diffusion_left_to_right_nll"] > 0
    assert pooled["left_to_right_ratio"] == pytest.approx(pooled["diffusion_left_to_right_nll"] / pooled["ar_nll"])


def test_the_heldout_section_alone_scores_every_text_by_both_orders(bench, tmp_path, monkeypatch):
    import json

    calls = []
    real = bench.nats
    monkeypatch.setattr(bench, "nats", lambda *a, **k: calls.append(k.get("left_to_right", False)) or real(*a, **k))
    assert bench.main(["--quick", "--sections", "heldout", "--json", str(tmp_path / "figures.json")]) == 0
    figures = json.loads((tmp_path / "figures.json").read_text())
    assert set(figures) == {"machine", "models", "lm_head", "heldout", "seconds"}  # no answers, no sampling
    texts, windows = figures["heldout"]["texts"], figures["heldout"]["packed_fortunes"]["windows"]
    assert calls == [True] * texts + [False] * windows


def test_a_run_stopped_after_a_section_keeps_its_figures_and_replot_needs_a_target(bench, tmp_path, monkeypatch):
    import json

    def broken(*args, **kwargs):
        raise RuntimeError("stopped in sampling")

    monkeypatch.setattr(bench, "sampling", broken)
    with pytest.raises(RuntimeError, match="stopped in sampling"):
        bench.main(["--quick", "--json", str(tmp_path / "figures.json")])
    assert "heldout" in json.loads((tmp_path / "figures.json").read_text())  # the quality section was saved
    with pytest.raises(SystemExit):
        bench.main(["--replot", str(tmp_path / "figures.json")])


def test_the_ar_rows_own_kernel_is_the_same_function_and_is_put_back(bench):
    from modeling_illada.modeling_illada import IlladaLinear

    base = bench.models(True)[2]
    ids = torch.tensor([[5, 9, 2, 7]])
    with torch.no_grad():
        expected = base(ids).logits
        with bench.illada_kernels(base):
            swapped = [m for m in base.modules() if isinstance(m, IlladaLinear)]
            assert swapped and all(type(m) is IlladaLinear for m in swapped)
            torch.testing.assert_close(base(ids[:, :1]).logits, expected[:, :1], rtol=1e-4, atol=1e-5)
    assert not any(isinstance(m, IlladaLinear) for m in base.modules())


def test_a_students_rows_sit_beside_the_demos(bench, tmp_path):
    import json

    model = bench.models(True)[0]
    model.save_pretrained(tmp_path / "student")  # the quick model itself as the "distilled" one: same tokens
    assert bench.main(["--quick", "--sections", "sampling", "--modes", "fast_dllm", "--student",
                       str(tmp_path / "student"), "--json", str(tmp_path / "figures.json")]) == 0
    figures = json.loads((tmp_path / "figures.json").read_text())
    rows = {(r["length"], r["id"]): r for r in figures["sampling"]}
    for n in (32, 64):
        ar_ids = {i for i, _, _ in bench.AR_ROWS}
        assert {i for length, i in rows if length == n} == {"plain", "fast_dllm"} | ar_ids | {
            f"distilled_{i}" for i in bench.STUDENT_MODES}
        # the student's Fast-dLLM row is the demo's, measured against the same plain row
        assert rows[n, "distilled_fast_dllm"]["agreement"] == rows[n, "fast_dllm"]["agreement"]
        assert rows[n, "distilled_fast_dllm"]["tokens"] == rows[n, "fast_dllm"]["tokens"]
    assert figures["student"] == str(tmp_path / "student")


def test_gpu_benchmark_runs_end_to_end_as_a_dry_run_and_refuses_a_cpu(capsys, monkeypatch):
    gpu = load_script("gpu")
    assert gpu.main(["--dry-run"]) == 0
    table = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ") and "---" not in line]
    assert len(table) == 1 + 2 * 2 * 4  # header; lengths x batches x (plain, Fast-dLLM, all combined, AR twin)
    assert {line.split(" | ")[2] for line in table[1:]} == {"plain", "Fast-dLLM", "all combined", "AR twin"}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu.main([]) == 2
    assert "--dry-run" in capsys.readouterr().err


def test_compare_samplers_runs_its_sets_side_by_side_on_tiny_models(capsys):
    compare = load_script("compare_samplers")
    assert compare.parse_set(["fast", "cache=dual", "threshold=0.5", "remasking=margin"]) == (
        "fast", {"cache": "dual", "threshold": 0.5, "remasking": "margin"})
    with pytest.raises(SystemExit, match="expected KNOB=VALUE"):
        compare.parse_set(["fast", "dual"])
    assert compare.main(["--quick", "--tokens", "8", "--set", "one", "block_length=1", "steps=8",
                         "--set", "parallel", "block_length=4", "steps=8", "threshold=1e-6"]) == 0
    lines = capsys.readouterr().out.splitlines()
    pooled = [line for line in lines if line.startswith(("one ", "parallel "))]
    assert len(pooled) == 2 and all("useful tokens/forward" in line for line in pooled)
    per_prompt = {}  # set -> tokens per forward of each prompt's run
    for line in lines:
        if line.startswith("  ") and line.endswith(" tokens/forward"):
            per_prompt.setdefault(line.split()[0], []).append(float(line.split()[-2]))
    assert per_prompt["one"] == [1.0, 1.0]
    assert per_prompt["parallel"] == [4.0, 4.0]  # a threshold every candidate passes: a whole block per forward
