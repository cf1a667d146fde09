"""The benchmarks' own bookkeeping (bench/bench_sampling.py, bench/gpu.py): rows must compare like with like, and the
GPU benchmark must run end to end (on the CPU with `--dry-run`). Figures are printed by the scripts, never asserted
here."""

import importlib.util
from pathlib import Path

import pytest
import torch

from conftest import tiny_model
from modeling_illada import IlladaGenerationConfig
from modeling_illada.caching import CACHES

ROOT = Path(__file__).resolve().parent.parent


def load_script(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def restore_caches():
    """The baseline policy the sampling benchmark registers in `CACHES` is removed afterwards."""
    before = dict(CACHES)
    yield
    CACHES.clear()
    CACHES.update(before)


@pytest.fixture
def bench(restore_caches):
    return load_script("bench_sampling")


@pytest.mark.parametrize("saved", [dict(temperature=0.9), dict(temperature=0.0, parallel_decoding=True, threshold=0.05,
                                                                  cache="dual")])
def test_exact_modes_reproduce_plain_whatever_the_saved_config(bench, saved):
    model = tiny_model().eval()
    # a saved config that samples (as the demo model's does) or decodes in parallel with a cache (as the distilled
    # demo's does): the benchmark's plain and exact rows must still decode greedily, one token per step, uncached
    model.generation_config = IlladaGenerationConfig(max_new_tokens=16, steps=16, block_length=8,
                                                     mask_token_id=model.config.mask_token_id, **saved)
    counter = bench.Counter(model)
    prompts = [torch.randint(4, 64, (1, 3), generator=torch.Generator().manual_seed(i)) for i in range(2)]
    modes = {mode.name: mode for mode in bench.MODES}
    rows = {name: bench.run_full(model, counter, prompts, 16, 8, modes[name], {model.config.eos_token_id})
            for name in ("plain", "block logits", "exact (all)")}
    for name in ("block logits", "exact (all)"):
        assert rows[name].outputs == rows["plain"].outputs, name
        assert bench.agreement(rows[name].outputs, rows["plain"].outputs)[0] == 1.0
    assert rows["plain"].forwards == 2 * 16 and rows["plain"].positions == 2 * 16 * 19


def test_repetition_counts_repeated_four_grams(bench):
    assert bench.repetition([[1, 2, 3, 4, 1, 2, 3, 4]]) == pytest.approx(1 / 5)  # 5 four-grams, one seen before
    assert bench.repetition([[1, 2, 3, 4, 5], [7, 7, 7, 7, 7, 7]]) == pytest.approx((0 + 2 / 3) / 2)
    assert bench.repetition([[1, 2]]) == 0.0  # too short to have a 4-gram


def test_gpu_benchmark_runs_end_to_end_as_a_dry_run_and_refuses_a_cpu(restore_caches, capsys, monkeypatch):
    gpu = load_script("gpu")
    assert gpu.main(["--dry-run"]) == 0
    table = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ") and "---" not in line]
    assert len(table) == 1 + 2 * 2 * 4  # header; lengths x batches x (plain, Fast-dLLM, all combined, AR twin)
    assert {line.split(" | ")[2] for line in table[1:]} == {"plain", "Fast-dLLM", "all combined", "AR twin"}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu.main([]) == 2
    assert "--dry-run" in capsys.readouterr().err
