"""The sampling benchmark's own bookkeeping (bench/bench_sampling.py): its rows must compare like with like. Figures
are printed by the script, never asserted here."""

import importlib.util
from pathlib import Path

import pytest
import torch

from conftest import tiny_model
from modeling_illada import IlladaGenerationConfig
from modeling_illada.caching import CACHES

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def bench():
    """The benchmark module; the baseline policy it registers in `CACHES` is removed afterwards."""
    before = dict(CACHES)
    spec = importlib.util.spec_from_file_location("bench_sampling", ROOT / "bench" / "bench_sampling.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    yield module
    CACHES.clear()
    CACHES.update(before)


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
