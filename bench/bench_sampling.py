"""Fast sampling benchmark: plain LLaDA sampling vs each acceleration vs all combined, and an autoregressive twin.

    python bench/bench_sampling.py           # the full table, CPU, about 20 minutes on one thread
    python bench/bench_sampling.py --quick   # a smoke run of the same code: tiny lengths, tiny random models

One table, every ratio from the same run. Models:

* `demo`: the shipped demo model (`modeling_illada.demo`), where confidences and EOS are real. Every mode runs to
  the end on every prompt. Its context is raised to fit prompt + 512 if it was trained shorter (RoPE has no
  learned positions; text past the trained length is extrapolation, and it shows in the ELBO, not in the costs).
* `demo-fast`: the same model after certainty-forcing self-distillation (`illada distill`,
  `modeling_illada/demo_model_fast`), run the same way: the model the fast modes are meant for.
* `rand-100M`: a randomly initialised iLLaDA of about 100M parameters, where forward cost dominates. A random model
  commits one token per step and never EOS, so its step sequence is known in advance; to fit the CPU budget, its
  diffusion rows time the first `--sampled-steps` steps of the first and of the last block and extrapolate:
  block time = first step (the refresh, for caches) + (block_length - 1) x mean of the next steps; run time =
  blocks x mean(first block, last block) (exact for plain and dual, whose blocks all cost the same; linear in the
  block index for prefix). Forward and position counts are computed the same way. Agreement and ELBO are not
  reported for it (random text).
* `AR twin`: `transformers.LlamaForCausalLM` with the same dimensions (random weights: speed does not depend on
  them), `generate(do_sample=False, min_new_tokens=max_new_tokens)` with its default KV cache, producing exactly
  the generation length.

Modes (table `MODES`): `plain` is LLaDA's published computation (LM head over the whole canvas, one token per step,
no early stop); exact modes must reproduce its tokens; approximate ones are scored against it. `Fast-dLLM` is its
published combination (dual cache + threshold 0.9) with the exact EOS stop; `all combined` adds a suffix window of
32 masked positions (DPad / Streaming-dLLM).

Columns: fwd/tok and pos/tok = forward passes and query positions per useful token (useful = generated tokens up
to and including the first EOS; all of them when there is none); tok/fwd = tokens committed by denoising per
forward; tok/s = useful tokens per second (for the AR twin: its tokens per second); speedup = tok/s over plain's;
match = share of prompts whose useful text equals plain's; agree = share of positions (over the longer useful span)
equal to plain's; ELBO/tok = LLaDA's Monte Carlo bound on log p(useful text | prompt) per token, scored by the
(undistilled) demo model for both demo sections with 32 masked samples at fixed seeds (independent of the
sampler's randomness), higher = the model finds the text likelier; rep-4 = share of an output's 4-grams that
repeat an earlier one (greedy decoding of a small model loops; the ELBO does not penalise loops, rep-4 shows them).
"""

import argparse
import os
import platform
import time
from dataclasses import dataclass, field

import torch

import modeling_illada  # noqa: F401  (registers the Auto classes)
from modeling_illada import IlladaConfig, IlladaForMaskedDiffusion
from modeling_illada.caching import CACHES, NoCache
from modeling_illada.likelihood import monte_carlo_log_likelihood


class FullLogits(NoCache):
    """LLaDA's reference computation: the LM head over every position of the canvas, then the block is taken."""

    name = "full"

    def logits(self, x, attention_mask, position_ids, block_start, block_end, step):
        return self._forward(x, attention_mask, position_ids, 0)[:, block_start:block_end]


CACHES[FullLogits.name] = FullLogits  # benchmark-only policy: the baseline, not offered by the package


@dataclass(frozen=True)
class Mode:
    name: str
    kind: str  # "plain", "exact" (must equal plain's tokens) or "approx"
    knobs: dict = field(default_factory=dict)


MODES = [
    Mode("plain", "plain", dict(cache="full", eos_early_stop=False)),
    Mode("block logits", "exact", dict(cache="none", eos_early_stop=False)),
    Mode("EOS stop", "exact", dict(cache="full", eos_early_stop=True)),
    Mode("exact (all)", "exact", dict(cache="none", eos_early_stop=True)),
    Mode("prefix cache", "approx", dict(cache="prefix", eos_early_stop=False)),
    Mode("dual cache", "approx", dict(cache="dual", eos_early_stop=False)),
    Mode("suffix window 32", "approx", dict(cache="none", suffix_window=32, eos_early_stop=False)),
    Mode("parallel 0.9", "approx", dict(cache="none", parallel_decoding=True, threshold=0.9, eos_early_stop=False)),
    Mode("Fast-dLLM", "approx", dict(cache="dual", parallel_decoding=True, threshold=0.9, eos_early_stop=True)),
    Mode("all combined", "approx", dict(cache="dual", parallel_decoding=True, threshold=0.9, eos_early_stop=True,
                                        suffix_window=32)),
]
# On a random model EOS never comes and no confidence passes 0.9: those rows would repeat plain's costs.
RANDOM_MODEL_MODES = ("plain", "block logits", "prefix cache", "dual cache", "suffix window 32", "all combined")

# Every row decodes greedily and one token per step unless its mode says otherwise, whatever the model's saved
# generation config says (the demo samples at 0.7; the distilled demo saves parallel decoding and the dual cache), so
# that exact modes can be compared token for token.
GREEDY = dict(temperature=0.0, top_k=None, top_p=None, cfg_scale=0.0, remasking="low_confidence", schedule="linear",
              parallel_decoding=False, threshold=None)


def knobs(mode: "Mode") -> dict:
    return {**GREEDY, **mode.knobs}

DEMO_PROMPTS = ["A fool", "You will", "The best way to", "Love is", "Never trust", "Life is"]


@dataclass
class Row:
    model: str
    length: int
    mode: str
    kind: str
    seconds: float
    forwards: float
    positions: float
    committed: float  # tokens revealed by denoising
    useful: int
    outputs: list | None = None  # useful token lists, one per prompt
    elbo: float | None = None


class Counter:
    """Forward pre-hook: model calls and query positions fed (what the policies count, seen from outside)."""

    def __init__(self, model):
        self.calls = self.positions = 0
        model.register_forward_pre_hook(self, with_kwargs=True)

    def __call__(self, module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        self.calls += 1
        self.positions += ids.numel()

    def read(self):
        return self.calls, self.positions


def useful_tokens(generated: list[int], end_ids: set[int]) -> list[int]:
    """Generated tokens up to and including the first end token."""
    for i, token in enumerate(generated):
        if token in end_ids:
            return generated[: i + 1]
    return generated


# ----------------------------------------------------------------------------------------------- models


def random_config(quick: bool) -> IlladaConfig:
    dims = dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=4) if quick else \
        dict(vocab_size=16384, hidden_size=768, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=12,
             num_key_value_heads=12)
    return IlladaConfig(max_position_embeddings=2048, mask_token_id=3, bos_token_id=0, pad_token_id=1,
                        eos_token_id=2, tie_word_embeddings=True, **dims)


def load_demo(path: str | None = None, fast: bool = False):
    """(model, tokenizer) of the shipped demo model, its distilled variant with `fast` (or the model folder `path`),
    or None with the reason."""
    if path is None:
        try:
            from modeling_illada.demo import demo_model_path
            path = demo_model_path(fast)
        except (ImportError, FileNotFoundError) as error:
            return None, str(error)
    if not os.path.isfile(os.path.join(path, "model.safetensors")):
        return None, f"no model.safetensors in {path} yet"
    from transformers import AutoModel, AutoTokenizer

    return (AutoModel.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)), None


def twin_config(config: IlladaConfig):
    """The `LlamaConfig` of a causal Llama with the diffusion model's dimensions."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=config.vocab_size, hidden_size=config.hidden_size, intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_hidden_layers, num_attention_heads=config.num_attention_heads,
        num_key_value_heads=config.num_key_value_heads, max_position_embeddings=config.max_position_embeddings,
        rope_theta=getattr(config, "rope_theta", 10000.0), tie_word_embeddings=config.tie_word_embeddings,
        bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id, pad_token_id=config.pad_token_id,
    )


def autoregressive_twin(config: IlladaConfig):
    """A causal Llama with the diffusion model's dimensions (random weights)."""
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(twin_config(config)).eval()


# ----------------------------------------------------------------------------------------------- runs


def run_full(model, counter, prompts, n, block, mode: Mode, end_ids) -> Row:
    """Every prompt generated to the end, one at a time (batch 1)."""
    seconds, calls0, pos0 = 0.0, *counter.read()
    committed, outputs = 0.0, []
    for prompt in prompts:
        start = time.perf_counter()
        out = model.generate(prompt, max_new_tokens=n, steps=n, block_length=block, return_dict_in_generate=True,
                             **knobs(mode))
        seconds += time.perf_counter() - start
        committed += out.tokens_per_forward * out.num_forward_passes
        outputs.append(useful_tokens(out.sequences[0, prompt.shape[1]:].tolist(), end_ids))
    calls, positions = counter.read()
    return Row("", n, mode.name, mode.kind, seconds, calls - calls0, positions - pos0, committed,
               sum(len(o) for o in outputs), outputs)


def _time_block(model, counter, canvas_prompt, n, block, knobs, sampled_steps):
    """Time the first `sampled_steps` steps of the first block of `generate(canvas_prompt, n)`: per-step seconds,
    positions and reveals."""
    marks, positions, reveals = [], [], []

    def on_step(state):
        marks.append(time.perf_counter())
        positions.append(counter.read()[1])
        reveals.append(int(state.revealed.sum()))
        return len(marks) >= sampled_steps  # True stops generate

    start, pos0 = time.perf_counter(), counter.read()[1]
    model.generate(canvas_prompt, max_new_tokens=n, steps=n, block_length=block, on_step=on_step, **knobs)
    times = [b - a for a, b in zip([start] + marks, marks)]
    fed = [b - a for a, b in zip([pos0] + positions, positions)]
    if any(r != 1 for r in reveals):
        raise RuntimeError(f"expected one token per step from a random model, got reveals {reveals}")
    rest = len(times) - 1
    seconds = times[0] + (block - 1) * sum(times[1:]) / max(rest, 1)
    fed_block = fed[0] + (block - 1) * sum(fed[1:]) / max(rest, 1)
    return seconds, fed_block


def run_sampled(model, counter, prompt, n, block, mode: Mode, sampled_steps) -> Row:
    """Random model: time the first and the last block (first steps only) and extrapolate (see the docstring)."""
    generator = torch.Generator().manual_seed(1)
    filled = torch.randint(4, model.config.vocab_size, (1, n - block), generator=generator)
    first = _time_block(model, counter, prompt, n, block, knobs(mode), sampled_steps)
    last = _time_block(model, counter, torch.cat([prompt, filled], 1), block, block, knobs(mode), sampled_steps)
    blocks = n // block
    seconds = blocks * (first[0] + last[0]) / 2
    positions = blocks * (first[1] + last[1]) / 2
    return Row("", n, mode.name, mode.kind, seconds, float(n), positions, float(n), n)


def run_autoregressive(twin, prompts, n) -> Row:
    seconds = 0.0
    for prompt in prompts:
        start = time.perf_counter()
        out = twin.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=n, min_new_tokens=n,
                            do_sample=False, pad_token_id=twin.config.pad_token_id)
        seconds += time.perf_counter() - start
        assert out.shape[1] == prompt.shape[1] + n
    total = n * len(prompts)
    positions = sum(p.shape[1] + n - 1 for p in prompts)  # prefill, then one position per new token
    return Row("", n, "AR twin (KV cache)", "ar", seconds, float(total), float(positions), float(total), total)


def repetition(outputs, n: int = 4) -> float:
    """Share of each output's n-grams that repeat an earlier n-gram of the same output, averaged over outputs
    (0 = no n-gram twice; degenerate loops approach 1). The ELBO alone rewards such loops: a model finds its own
    repetitions likely."""
    shares = []
    for out in outputs:
        grams = [tuple(out[i : i + n]) for i in range(len(out) - n + 1)]
        if grams:
            shares.append(1 - len(set(grams)) / len(grams))
    return sum(shares) / max(len(shares), 1)


def elbo_per_token(judge, prompts, outputs, seed=0) -> float:
    """Mean per-token ELBO of `outputs` given `prompts`, scored by `judge`."""
    scores = []
    for i, (prompt, answer) in enumerate(zip(prompts, outputs)):
        if answer:
            bound = monte_carlo_log_likelihood(judge, [prompt[0].tolist()], [answer], mc_num=32, seed=seed + i)
            scores.append(float(bound[0]) / len(answer))
    return sum(scores) / max(len(scores), 1)


# ----------------------------------------------------------------------------------------------- table


def agreement(outputs, reference) -> tuple[float, float]:
    """(exact-match rate, token agreement) of useful outputs against plain's."""
    matches, agree = [], []
    for out, ref in zip(outputs, reference):
        matches.append(out == ref)
        span = max(len(out), len(ref))
        same = sum(a == b for a, b in zip(out, ref))
        agree.append(same / span if span else 1.0)
    return sum(matches) / len(matches), sum(agree) / len(agree)


def format_table(rows: list[Row]) -> str:
    header = (f"{'model':<10} {'len':>4}  {'mode':<19} {'fwd/tok':>8} {'pos/tok':>8} {'tok/fwd':>7} {'tok/s':>8} "
              f"{'speedup':>8} {'match':>6} {'agree':>6} {'ELBO/tok':>9} {'rep-4':>6}")
    lines = [header, "-" * len(header)]
    plain = {(r.model, r.length): r for r in rows if r.kind == "plain"}
    for r in rows:
        base = plain.get((r.model, r.length))
        rate = r.useful / r.seconds if r.seconds else float("nan")
        speedup = rate / (base.useful / base.seconds) if base else float("nan")
        match = agree = "-"
        if base is not None and r.outputs is not None and base.outputs is not None and r.kind != "plain":
            m, a = agreement(r.outputs, base.outputs)
            match, agree = f"{m:.2f}", f"{a:.2f}"
        elbo = f"{r.elbo:.3f}" if r.elbo is not None else "-"
        rep = f"{repetition(r.outputs):.2f}" if r.outputs is not None else "-"
        lines.append(
            f"{r.model:<10} {r.length:>4}  {r.mode:<19} {r.forwards / r.useful:>8.3f} {r.positions / r.useful:>8.1f} "
            f"{r.committed / max(r.forwards, 1):>7.2f} {rate:>8.1f} {speedup:>7.2f}x {match:>6} {agree:>6} {elbo:>9} {rep:>6}"
        )
        if r is rows[-1] or rows[rows.index(r) + 1].length != r.length or rows[rows.index(r) + 1].model != r.model:
            lines.append("")
    return "\n".join(lines)


def targets(rows: list[Row], model: str) -> list[str]:
    """The issue's targets, checked on `model`'s rows."""
    get = {(r.model, r.length, r.mode): r for r in rows}

    def rate(r):
        return r.useful / r.seconds

    lines = []
    plain, exact = get.get((model, 256, "plain")), get.get((model, 256, "exact (all)"))
    if plain and exact:
        ratio = (plain.forwards / plain.useful) / (exact.forwards / exact.useful)
        lines.append(f"exact modes >= 1.5x fewer forwards per useful token at 256 ({model}): {ratio:.2f}x "
                     f"-> {'MET' if ratio >= 1.5 else 'NOT MET'}")
    for n, goal in ((256, 8), (512, 20)):
        plain, combined = get.get((model, n, "plain")), get.get((model, n, "all combined"))
        if plain and combined:
            speedup = rate(combined) / rate(plain)
            lines.append(f"all combined >= {goal}x faster than plain at {n} ({model}): {speedup:.1f}x "
                         f"-> {'MET' if speedup >= goal else 'NOT MET'}")
    for n in (256, 512):
        combined = get.get((model, n, "all combined"))
        if combined:
            tpf = combined.committed / combined.forwards
            lines.append(f"all combined >= 3 tokens per forward at {n} ({model}): {tpf:.2f} "
                         f"-> {'MET' if tpf >= 3 else 'NOT MET'}")
    combined, ar = get.get((model, 256, "all combined")), get.get((model, 256, "AR twin (KV cache)"))
    if combined and ar:
        lines.append(f"diffusion tok/s >= AR twin at 256 ({model}): {rate(combined):.1f} vs {rate(ar):.1f} "
                     f"-> {'MET' if rate(combined) >= rate(ar) else 'NOT MET'}")
    return lines


# ----------------------------------------------------------------------------------------------- main


def demo_section(args, lengths, block, notes, began, label="demo", judge=None) -> list[Row]:
    """A demo model (`label` "demo": the shipped one; "demo-fast": its distilled variant): every mode run to the end
    on every prompt, plus the AR twin. ELBOs are scored by `judge` (default: the model itself)."""
    fast = label == "demo-fast"
    path = args.fast_path if fast else args.demo_path
    loaded, why = load_demo(path, fast)
    if loaded is None:
        notes.append(f"{label}: not run ({why})")
        return []
    model, tokenizer = loaded
    judge = model if judge is None else judge
    eot = getattr(model.generation_config, "eot_token_id", None)
    end_ids = {int(model.config.eos_token_id)} | ({int(eot)} if eot is not None else set())
    # the text alone, as the Space sends it
    prompts = [torch.tensor([tokenizer(text, add_special_tokens=False)["input_ids"]]) for text in DEMO_PROMPTS]
    counts = args.prompts if len(args.prompts) == len(lengths) else [args.prompts[0]] * len(lengths)
    longest = max(p.shape[1] for p in prompts) + max(lengths)
    trained = model.config.max_position_embeddings
    if longest > trained:
        model.config.max_position_embeddings = longest
    if judge.config.max_position_embeddings < longest:  # the judge scores the same prompt + output
        judge.config.max_position_embeddings = longest
    params = sum(p.numel() for p in model.parameters()) / 1e6
    shipped = "the shipped demo model" + (" after certainty-forcing distillation" if fast else "")
    notes.append(f"{label}: {path or shipped}, {params:.1f}M parameters, "
                 f"{dict(zip(lengths, counts))} prompts per length, of {[p.shape[1] for p in prompts[: max(counts)]]} "
                 f"tokens, every mode run to the end"
                 + (f"; context raised from {trained} to {longest} (RoPE extrapolation)" if longest > trained else ""))
    counter = Counter(model)
    model.generate(prompts[0], max_new_tokens=block, steps=block, block_length=block)  # warm-up
    twin = None if "ar" in args.skip else autoregressive_twin(model.config)
    if twin is not None:
        twin.generate(prompts[0], attention_mask=torch.ones_like(prompts[0]), max_new_tokens=4, do_sample=False,
                      pad_token_id=model.config.pad_token_id)  # warm-up
    rows = []
    for n, count in zip(lengths, counts):
        for mode in MODES:
            row = run_full(model, counter, prompts[:count], n, block, mode, end_ids)
            row.model, row.elbo = label, elbo_per_token(judge, prompts[:count], row.outputs)
            rows.append(row)
        if twin is not None:
            rows.append(run_autoregressive(twin, prompts[:count], n))
            rows[-1].model = label
        print(f"[{time.perf_counter() - began:.0f}s] {label} length {n} done", flush=True)
        print(format_table([r for r in rows if r.length == n]), flush=True)  # kept if a later section fails
    return rows


def random_section(args, lengths, block, notes, began) -> list[Row]:
    """The random ~100M model: costs only, diffusion rows extrapolated from sampled blocks, plus the AR twin."""
    config = random_config(args.quick)
    torch.manual_seed(0)
    model = IlladaForMaskedDiffusion(config).eval()
    params = sum(p.numel() for p in model.parameters()) / 1e6
    name = f"rand-{params:.0f}M" if params >= 1 else "rand-tiny"
    generator = torch.Generator().manual_seed(0)
    prompt = torch.randint(4, config.vocab_size, (1, args.random_prompt_length), generator=generator)
    notes.append(f"{name}: {params:.1f}M parameters, 1 prompt of {prompt.shape[1]} tokens, diffusion rows "
                 f"extrapolated from the first {args.sampled_steps} steps of the first and last block")
    counter = Counter(model)
    model.generate(prompt, max_new_tokens=block, steps=block, block_length=block)  # warm-up
    twin = None if "ar" in args.skip else autoregressive_twin(config)
    if twin is not None:
        twin.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=4, do_sample=False,
                      pad_token_id=config.pad_token_id)  # warm-up
    rows = []
    for n in lengths:
        for mode in MODES:
            if mode.name in RANDOM_MODEL_MODES:
                rows.append(run_sampled(model, counter, prompt, n, block, mode, args.sampled_steps))
                rows[-1].model = name
        if twin is not None:
            rows.append(run_autoregressive(twin, [prompt], n))
            rows[-1].model = name
        print(f"[{time.perf_counter() - began:.0f}s] {name} length {n} done", flush=True)
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: lengths 32/64, tiny random models")
    parser.add_argument("--lengths", type=int, nargs="+", default=None, help="generation lengths (default 128 256 512)")
    parser.add_argument("--block-length", type=int, default=32)
    parser.add_argument("--demo-path", default=None, help="a model folder to use instead of the shipped demo")
    parser.add_argument("--fast-path", default=None,
                        help="a model folder to use instead of the shipped distilled demo (demo-fast)")
    parser.add_argument("--prompts", type=int, nargs="+", default=[2, 2, 1],
                        help="demo prompts (batch 1 each) per length, one value for all lengths or one per length")
    parser.add_argument("--random-prompt-length", type=int, default=16)
    parser.add_argument("--sampled-steps", type=int, default=4, help="steps timed per sampled block (random model)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1 by default: on a shared machine 2 threads can run 10x slower)")
    parser.add_argument("--skip", nargs="*", default=[], choices=["demo", "demo-fast", "random", "ar"],
                        help="sections to skip")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    lengths = args.lengths or ([32, 64] if args.quick else [128, 256, 512])
    block = 16 if args.quick else args.block_length
    began = time.perf_counter()
    notes = [
        f"torch {torch.__version__}, {args.threads} threads, {platform.processor() or platform.machine()}, batch 1, "
        f"greedy, low-confidence remasking, block {block}, steps = length (one token per step) unless "
        f"parallel decoding (threshold 0.9); lengths {lengths}",
    ]
    rows: list[Row] = []
    if "demo" not in args.skip:
        rows += demo_section(args, lengths, block, notes, began)
    else:
        notes.append("demo: skipped")
    if "demo-fast" not in args.skip:
        loaded, _ = load_demo(args.demo_path)  # the distilled model's outputs are scored by the model it came from
        rows += demo_section(args, lengths, block, notes, began, label="demo-fast", judge=loaded[0] if loaded else None)
    else:
        notes.append("demo-fast: skipped")
    if "random" not in args.skip:
        rows += random_section(args, lengths, block, notes, began)

    print()
    print("Fast sampling benchmark (bench/bench_sampling.py)")
    for note in notes:
        print(f"  {note}")
    print()
    print(format_table(rows))
    headers = {
        "demo": "Targets (issue 6), on the demo model (real confidences and EOS):",
        "demo-fast": "The same targets on the distilled demo model (ELBO scored by the demo model):",
        "random": "The same checks on the random model (informational: it commits one token per step and never EOS, "
                  "so parallel decoding and early stop have nothing to act on):",
    }
    order = {"demo": 0, "demo-fast": 1}
    for model_name in sorted({r.model for r in rows}, key=lambda m: order.get(m, 2)):
        print(headers.get(model_name, headers["random"]))
        for line in targets(rows, model_name):
            print(f"  {line}")
    print(f"\ntotal wall time {time.perf_counter() - began:.0f}s")


if __name__ == "__main__":
    main()
