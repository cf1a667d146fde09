"""Figures of the embedded demo model against its autoregressive base, and the fast-sampling table, in one run.

    python bench/bench_demo.py --lengths 256    # quality + sampling at 256 on the demo (56 minutes on 2 CPU cores)
    python bench/bench_demo.py --sections sampling --lengths 512 --modes dual fast_dllm combined
    python bench/bench_demo.py --quick          # a smoke run of the same code on tiny random models
    python bench/bench_demo.py --sections quality --json runs/bench.json

The demo is SmolLM2-135M-Instruct adapted to masked diffusion (`modeling_illada.demo.load_demo()`); the baseline is
the same base as shipped, causal, decoded by transformers' `generate` with its KV cache (`demo.load_base()`), and
it is also the judge. Every prompt goes through the chat template, as the Space sends it.

Sections:

* `quality` (`heldout`: its first part only): (1) held-out ELBO per token of the diffusion model (LLaDA's Monte
  Carlo bound, a lower bound on log p) and its exact NLL per token under left-to-right decoding (one token per step,
  the rest masked: the distribution of its blocks-of-1 sampler at temperature 1) against the base's exact NLL per
  token, on the same held-out texts (the demo's held-out chat answers given their
  prompts, from `bench/data/demo-chats.jsonl`, the chats of its last training stage, and held-out fortunes, each on its
  own; then the held-out fortunes as training saw them, EOS-joined and cut into 256-token windows); (2) open
  prompts answered greedily by both, each answer judged by the base: NLL per token (generative perplexity = exp of
  it; lower = the base finds it likelier), rep-4 (share of repeated 4-grams) and distinct-2 (share of distinct
  bigrams), and tokens/s; (3) keyword accuracy on the simple factual questions of
  `bench/data/questions.jsonl` (held out from training). The diffusion model decodes with its saved generation config.
* `sampling` (`--student DIR` adds a distilled model's rows): plain vs each acceleration vs all combined vs the AR
  base, at 256 and 512 new tokens, batch 1: forward passes and tokens per forward, useful tokens/s (up to the first
  end token), speedup over plain, agreement with plain (share of positions equal), judge NLL of the output and rep-4.
  `plain` is LLaDA's sampler as this package runs it exactly: a full forward per step, one token per step, every block
  to the end.

Ratios come from one run on one machine; wall-clock varies about +-30 % on a shared CPU, counts are exact. `--plot`
writes tokens/s against judge perplexity (matplotlib), `--replot` redraws it from a `--json` report; the report is
written after each section. The machine line names the CPU's vector extension and times the one matrix product
whose kernels differ most on the CPUs measured, the LM head for one row: `F.linear` against `weight @ x.T` with the
row fed twice, and says which one `IlladaLinear` kept after timing both. The table's second AR row runs the base
with `IlladaLinear`, to tell how much of the diffusion-against-AR ratio is the kernel.
"""

import argparse
import contextlib
import json
import math
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import modeling_illada  # noqa: E402,F401  (registers the Auto classes)
from modeling_illada.demo import DEMO_DIR  # noqa: E402

QUESTIONS = ROOT / "bench" / "data" / "questions.jsonl"
OPEN_PROMPTS = (
    "Describe your ideal weekend.", "Why do people keep pets?", "Write a short note thanking a teacher.",
    "What makes a good breakfast?", "Explain why the sky looks blue.", "Give me advice for a long flight.",
    "Tell me about the city of Paris.", "How can I be more productive at work?",
)
SAMPLING_PROMPTS = ("Write a short story about a dragon who learns to read.",
                    "Explain how a bicycle works, step by step.")


@dataclass(frozen=True)
class Mode:
    """A row of the sampling table: its id, its label, whether it must equal plain's tokens, its generate knobs."""

    id: str
    label: str
    exact: bool
    knobs: dict = field(default_factory=dict)


def saved_sampler() -> dict:
    """The block, cache, window and stop knobs of the demo's saved generation config: what its `one_blocks` row
    runs."""
    saved = json.loads((DEMO_DIR / "generation_config.json").read_text())
    return {knob: saved[knob] for knob in ("block_length", "cache", "cache_refresh", "suffix_window", "eos_early_stop")}


# Every row decodes greedily, one token per step, no cache, whatever the model's saved config says, unless its mode
# says otherwise: rows differ only in what their knobs name.
BASE_KNOBS = dict(temperature=0.0, top_k=None, top_p=None, cfg_scale=0.0, remasking="low_confidence",
                  schedule="linear", parallel_decoding=False, threshold=None, cache="none", cache_refresh=1,
                  suffix_window=None, eos_early_stop=False, block_length=32)
SINGLE_MODES = (  # plain and each acceleration alone
    Mode("plain", "plain", True),
    Mode("eos_stop", "EOS stop", True, dict(eos_early_stop=True)),
    Mode("prefix", "prefix cache", False, dict(cache="prefix")),
    Mode("dual", "dual cache", False, dict(cache="dual")),
    Mode("parallel", "parallel 0.9", False, dict(parallel_decoding=True, threshold=0.9)),
    Mode("suffix", "suffix window 32", False, dict(suffix_window=32)),
    Mode("delayed", "dual, refresh/16", False, dict(cache="dual", cache_refresh=16)),
)
COMBINED = ("eos_stop", "dual", "parallel", "suffix", "delayed")  # every acceleration of SINGLE_MODES (prefix: dual)
MODES = SINGLE_MODES + (
    Mode("fast_dllm", "Fast-dLLM", False, dict(cache="dual", parallel_decoding=True, threshold=0.9,
                                                 eos_early_stop=True)),
    Mode("combined", "all combined", False,
         {k: v for mode in SINGLE_MODES if mode.id in COMBINED for k, v in mode.knobs.items()}),
    Mode("short_blocks", "blocks of 2, delayed", False, dict(block_length=2, cache="dual", cache_refresh=16,
                                                             parallel_decoding=True, threshold=0.9,
                                                             eos_early_stop=True)),
    Mode("one_blocks", "blocks of 1, delayed", False, saved_sampler()),
)
MODE = {mode.id: mode for mode in MODES}
STUDENT_MODES = ("fast_dllm", "combined")  # the rows a distilled student (`--student`) runs, beside the demo's


# --- measures ------------------------------------------------------------------------------------------------------

def rep_n(ids: list[int], n: int = 4) -> float:
    grams = [tuple(ids[i:i + n]) for i in range(len(ids) - n + 1)]
    return 1.0 - len(set(grams)) / len(grams) if grams else 0.0


def distinct_n(ids: list[int], n: int = 2) -> float:
    grams = [tuple(ids[i:i + n]) for i in range(len(ids) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def useful(ids: list[int], end_ids: set[int]) -> list[int]:
    """Generated tokens before the first end token (the end token itself is not text)."""
    for i, token in enumerate(ids):
        if token in end_ids:
            return ids[:i]
    return ids


@torch.no_grad()
def judge_nll(judge, prompt: list[int], answer: list[int]) -> float:
    """Mean NLL per token of `answer` given `prompt` under the causal `judge`."""
    if not answer:
        return float("nan")
    ids = torch.tensor([prompt + answer])
    logits = judge(ids).logits[0, len(prompt) - 1:-1].float()
    return torch.nn.functional.cross_entropy(logits, torch.tensor(answer)).item()


@torch.no_grad()
def ar_generate(base, prompt: list[int], n: int, end_ids: set[int]) -> tuple[list[int], float]:
    ids = torch.tensor([prompt])
    start = time.perf_counter()
    out = base.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, do_sample=False,
                        eos_token_id=sorted(end_ids), pad_token_id=sorted(end_ids)[0])
    seconds = time.perf_counter() - start
    return useful(out[0, len(prompt):].tolist(), end_ids), seconds


def diffusion_generate(model, prompt: list[int], n: int, knobs: dict, end_ids: set[int]):
    """`(useful tokens, seconds, forwards, tokens per forward)` of one `generate` call."""
    ids = torch.tensor([prompt])
    start = time.perf_counter()
    out = model.generate(ids, max_new_tokens=n, return_dict_in_generate=True, **knobs)
    seconds = time.perf_counter() - start
    return useful(out.sequences[0, len(prompt):].tolist(), end_ids), seconds, out.num_forward_passes, \
        out.tokens_per_forward


def keyword_hit(text: str, keywords: list[str]) -> bool:
    import re

    return any(re.search(rf"(?<![A-Za-z0-9]){re.escape(k)}(?![A-Za-z0-9])", text, re.IGNORECASE) for k in keywords)


def agreement(a: list[int], b: list[int]) -> float:
    span = max(len(a), len(b))
    return sum(x == y for x, y in zip(a, b)) / span if span else 1.0


def lm_head_rows(model, repeats: int = 20) -> dict:
    """Seconds of the LM head's product for one row by each of `IlladaLinear`'s two kernels (see its docstring),
    and the one it keeps on this machine: `{"one_row_f_linear": s, "one_row_transposed": s, "ratio": f / transposed,
    "kept": "F.linear" | "weight @ x.T"}`."""
    from modeling_illada.modeling_illada import IlladaLinear

    head = model.get_output_embeddings()
    weight = head.weight.detach()
    one = torch.randn(1, weight.shape[1])  # (rows, hidden)

    def timed(step) -> float:
        step()
        start = time.perf_counter()
        for _ in range(repeats):
            step()
        return (time.perf_counter() - start) / repeats

    with torch.no_grad():
        f_linear = timed(lambda: torch.nn.functional.linear(one, weight))
        transposed = timed(lambda: IlladaLinear.transposed(weight, one))
        head(one[None])  # decides the kernel for this shape, if no step has yet
    kept = IlladaLinear.kernels.get((weight.shape[0], weight.shape[1], 1), not IlladaLinear.autotune)
    return {"one_row_f_linear": f_linear, "one_row_transposed": transposed, "ratio": f_linear / transposed,
            "kept": "weight @ x.T" if kept else "F.linear"}


# --- models --------------------------------------------------------------------------------------------------------

def models(quick: bool):
    """`(diffusion model, its tokenizer, AR base, end ids, description)`."""
    if quick:
        sys.path.insert(0, str(ROOT / "tests"))
        from tiny_bases import tiny_causal_lm

        from modeling_illada.adapt import build_diffusion_model

        base, tokenizer = tiny_causal_lm()
        model = build_diffusion_model(base, tokenizer, mask_token_id=3, is_new=False).eval()
        tokenizer.mask_token = tokenizer.convert_ids_to_tokens(3)
        return model, tokenizer, base, {tokenizer.eos_token_id}, "tiny random Llama and its adaptation"
    from modeling_illada.demo import load_base, load_demo

    model, tokenizer = load_demo()
    base, _ = load_base()
    generation = model.generation_config
    end_ids = {int(model.config.eos_token_id)} | ({int(generation.eot_token_id)} if generation.eot_token_id else set())
    params = sum(p.numel() for p in model.parameters()) / 1e6
    return model, tokenizer, base, end_ids, f"the demo ({params:.1f}M parameters) and SmolLM2-135M-Instruct"


def chat(tokenizer, text: str) -> list[int]:
    return tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                         tokenize=True, return_dict=True)["input_ids"]


# --- sections ------------------------------------------------------------------------------------------------------

def heldout_texts(tokenizer, quick: bool):
    """`[(group, prompt ids, text ids)]`: the demo run's held-out chats (answer given prompt; group "chat answers")
    and held-out fortunes (group "fortunes")."""
    from modeling_illada.corpus import split_documents

    if quick:
        from tiny_bases import corpus_texts

        return [("tiny corpus", [tokenizer.bos_token_id], tokenizer(t).input_ids) for t in corpus_texts(4)]
    texts = []
    chats_path = ROOT / "bench" / "data" / "demo-chats.jsonl"  # the chats the demo's last training stage used
    if chats_path.is_file():
        from modeling_illada.corpus import read_conversations

        _, heldout = split_documents(read_conversations([chats_path]), 0.02)
        for messages in heldout:
            prompt = chat(tokenizer, messages[0]["content"])
            texts.append(("chat answers", prompt,
                          tokenizer(messages[1]["content"], add_special_tokens=False).input_ids))
    from modeling_illada.demo import demo_corpus

    _, fortunes = split_documents(demo_corpus(), 0.02)
    for text in fortunes[:40]:
        ids = tokenizer(text, add_special_tokens=False).input_ids
        if len(ids) >= 2:
            texts.append(("fortunes", ids[:1], ids[1:]))
    return texts


def packed_fortunes(tokenizer, quick: bool, windows: int = 8, length: int = 256) -> list[list[int]]:
    """The first `windows` windows of the held-out fortunes laid out as `illada adapt` packs its training text
    (each fortune followed by EOS, the stream cut every `length` tokens): the ELBO of text in the layout it was
    trained on, beside the one-fortune-per-canvas figure (a short canvas with no EOS after it never occurs there)."""
    from modeling_illada.corpus import pack_documents, split_documents

    if quick:
        from tiny_bases import corpus_texts

        texts, windows, length = corpus_texts(8), 2, 16
    else:
        from modeling_illada.demo import demo_corpus

        texts = split_documents(demo_corpus(), 0.02)[1]
    return [row["input_ids"] for row in pack_documents(texts, tokenizer, length)[:windows]]


def nats(model, base, prompt: list[int], text: list[int], mc_num: int, seed: int,
         left_to_right: bool = False) -> tuple[float, float, float | None]:
    """`(diffusion ELBO bound, AR NLL, diffusion left-to-right NLL or None)` of `text` given `prompt`, in nats summed
    over the text's tokens. The left-to-right NLL is exact for the sampler that reveals one token per step in reading
    order (`scorer="left_to_right"`); it costs a forward per token."""
    return (-model.log_likelihood(prompt, text, mc_num=mc_num, seed=seed).item(),
            judge_nll(base, prompt, text) * len(text),
            -model.log_likelihood(prompt, text, scorer="left_to_right").item() if left_to_right else None)


def heldout(model, tokenizer, base, args, report):
    """(1) held-out ELBO (and left-to-right NLL) vs AR NLL, pooled and per group (the chat answers are the base's own
    samples: it is favoured), then the fortunes packed as trained."""
    totals = {}  # group -> [ELBO nats, AR nats, left-to-right nats, tokens, texts]
    for i, (group, prompt, text) in enumerate(heldout_texts(tokenizer, args.quick)):
        figures = nats(model, base, prompt, text, args.mc_num, i, left_to_right=True)
        for key in (group, "all"):
            total = totals.setdefault(key, [0.0, 0.0, 0.0, 0, 0])
            for j, value in enumerate(figures + (len(text), 1)):
                total[j] += value
    report["heldout"] = {}
    for key, (elbo, nll, ordered, tokens, count) in sorted(totals.items(), key=lambda item: item[0] != "all"):
        figures = {"texts": count, "tokens": tokens, "diffusion_elbo_nll": elbo / tokens, "ar_nll": nll / tokens,
                   "ratio": elbo / nll, "diffusion_left_to_right_nll": ordered / tokens,
                   "left_to_right_ratio": ordered / nll}
        if key == "all":
            report["heldout"].update(figures)
        else:
            report["heldout"].setdefault("groups", {})[key] = figures
        print(f"held-out {key} ({count} texts, {tokens} tokens): diffusion ELBO bound {elbo / tokens:.3f} nats/token, "
              f"AR NLL {nll / tokens:.3f}: ratio {elbo / nll:.3f}" + (" (target <= 1.15)" if key == "all" else "")
              + f"; diffusion left-to-right NLL {ordered / tokens:.3f}: ratio {ordered / nll:.3f}", flush=True)
    # ... and the fortunes in the training layout (the first token of a window conditions, the rest is scored; no
    # left-to-right figure: a forward per token over a 256-token window is too slow here)
    elbo = nll = tokens = 0
    for i, ids in enumerate(packed_fortunes(tokenizer, args.quick)):
        window_elbo, window_nll, _ = nats(model, base, ids[:1], ids[1:], args.mc_num, i)
        elbo, nll, tokens = elbo + window_elbo, nll + window_nll, tokens + len(ids) - 1
    report["heldout"]["packed_fortunes"] = {"windows": i + 1, "tokens": tokens, "diffusion_elbo_nll": elbo / tokens,
                                            "ar_nll": nll / tokens, "ratio": elbo / nll}
    print(f"held-out fortunes packed as trained ({i + 1} windows, {tokens} tokens): diffusion ELBO bound "
          f"{elbo / tokens:.3f} nats/token, AR NLL {nll / tokens:.3f}: ratio {elbo / nll:.3f}", flush=True)



def answers(model, tokenizer, base, end_ids, args, report):
    """(2) open prompts answered greedily by both, judged by the base; (3) the factual questions."""
    prompts = OPEN_PROMPTS[: 2 if args.quick else len(OPEN_PROMPTS)]
    rows = {"diffusion": [], "ar": []}
    for text in prompts:
        prompt = chat(tokenizer, text)
        out, seconds, _, _ = diffusion_generate(model, prompt, args.answer_tokens, {}, end_ids)
        rows["diffusion"].append((prompt, out, seconds, tokenizer.decode(out)))
        out, seconds = ar_generate(base, prompt, args.answer_tokens, end_ids)
        rows["ar"].append((prompt, out, seconds, tokenizer.decode(out)))
    report["open"] = {}
    for name, items in rows.items():
        nll = [judge_nll(base, p, o) for p, o, _, _ in items if o]
        mean = sum(nll) / max(len(nll), 1)
        figures = {"judge_nll": mean, "judge_ppl": math.exp(mean), "rep4": sum(rep_n(o) for _, o, _, _ in items) / len(items),
                   "distinct2": sum(distinct_n(o) for _, o, _, _ in items) / len(items),
                   "tokens_per_second": sum(len(o) for _, o, _, _ in items) / sum(s for _, _, s, _ in items),
                   "samples": [t for _, _, _, t in items[:3]]}
        report["open"][name] = figures
        print(f"open prompts, {name:9s}: judge NLL {mean:.3f} (ppl {math.exp(mean):.2f}), rep-4 {figures['rep4']:.3f}, "
              f"distinct-2 {figures['distinct2']:.3f}, {figures['tokens_per_second']:.1f} tok/s", flush=True)
    ratio = report["open"]["diffusion"]["judge_ppl"] / report["open"]["ar"]["judge_ppl"]
    print(f"  judge perplexity ratio {ratio:.2f} (target <= 2); rep-4 {report['open']['diffusion']['rep4']:.3f} "
          "(target <= 0.2)", flush=True)

    # (3) factual questions
    questions = [json.loads(line) for line in QUESTIONS.read_text().splitlines() if line.strip()]
    questions = questions[:3] if args.quick else questions
    hits = {"diffusion": 0, "ar": 0}
    misses = []
    for q in questions:
        prompt = chat(tokenizer, q["question"])
        out = diffusion_generate(model, prompt, args.question_tokens, {}, end_ids)[0]
        ar_out = ar_generate(base, prompt, args.question_tokens, end_ids)[0]
        d_hit, a_hit = keyword_hit(tokenizer.decode(out), q["keywords"]), keyword_hit(tokenizer.decode(ar_out),
                                                                                        q["keywords"])
        hits["diffusion"] += d_hit
        hits["ar"] += a_hit
        if not d_hit:
            misses.append((q["question"], tokenizer.decode(out)[:120]))
    report["questions"] = {"count": len(questions), **hits, "diffusion_misses": misses[:8]}
    share = hits["diffusion"] / max(hits["ar"], 1)
    print(f"questions ({len(questions)}): diffusion {hits['diffusion']}, AR {hits['ar']}: {share:.0%} of the AR "
          "model's (target >= 75%)", flush=True)


def sampling(model, tokenizer, base, end_ids, args, report, student=None):
    """The sampling table; with `student` (a distilled model) also its rows under `STUDENT_MODES`, beside the
    demo's, against the demo's plain row."""
    lengths = (32, 64) if args.quick else tuple(args.lengths)
    prompts = [chat(tokenizer, p) for p in SAMPLING_PROMPTS[: args.sampling_prompts]]
    rows = []
    for n in lengths:
        count = 1 if n >= 512 and not args.quick else len(prompts)
        plain_outputs = None
        runs = [(model, mode, mode.id, mode.label)
                for mode in MODES if mode.id == "plain" or mode.id in getattr(args, "modes", MODE)]
        runs += [(student, MODE[i], f"distilled_{i}", f"distilled: {MODE[i].label}")
                 for i in STUDENT_MODES if student is not None]
        for net, mode, row_id, label in runs:
            knobs = {**BASE_KNOBS, **mode.knobs, "steps": n}
            knobs["block_length"] = min(knobs["block_length"], n)
            outputs, seconds, forwards, committed = [], 0.0, 0, 0.0
            for prompt in prompts[:count]:
                out, s, f, tpf = diffusion_generate(net, prompt, n, knobs, end_ids)
                outputs.append((prompt, out))
                seconds += s
                forwards += f
                committed += tpf * f
            rows.append(row(row_id, label, n, outputs, seconds, forwards, committed, base, plain_outputs))
            if row_id == "plain":
                plain_outputs = [o for _, o in outputs]
            print(f"  {n:4d} {label:18s} {rows[-1]['tokens_per_second']:7.1f} tok/s", flush=True)
        for row_id, label, kernels in AR_ROWS:
            outputs, seconds = [], 0.0
            with kernels(base):
                for prompt in prompts[:count]:
                    out, s = ar_generate(base, prompt, n, end_ids)
                    outputs.append((prompt, out))
                    seconds += s
            rows.append(row(row_id, label, n, outputs, seconds, sum(len(o) for _, o in outputs),
                            sum(len(o) for _, o in outputs), base, plain_outputs))
            print(f"  {n:4d} {label:18s} {rows[-1]['tokens_per_second']:7.1f} tok/s", flush=True)
    plain = {r["length"]: r for r in rows if r["id"] == "plain"}
    for r in rows:
        r["speedup"] = r["tokens_per_second"] / plain[r["length"]]["tokens_per_second"]
    report["sampling"] = rows
    print(format_sampling(rows), flush=True)


@contextlib.contextmanager
def illada_kernels(base):
    """The base's `nn.Linear` layers as `IlladaLinear` while inside (same weights, the diffusion model's few-rows
    kernel), so that the AR row can also be read with the kernels equal."""
    from modeling_illada.modeling_illada import IlladaLinear

    linears = [m for m in base.modules() if type(m) is torch.nn.Linear]
    for module in linears:
        module.__class__ = IlladaLinear
    try:
        yield
    finally:
        for module in linears:
            module.__class__ = torch.nn.Linear


# The AR rows: the issue's baseline (transformers' `generate`, its layers as shipped), then the same with the
# diffusion model's matrix kernel (`IlladaLinear`), which tells how much of a diffusion-against-AR ratio is the kernel.
AR_ROWS = (("ar", "AR base (KV cache)", contextlib.nullcontext),
           ("ar_kernels", "AR base, our kernel", illada_kernels))


def row(mode_id, label, n, outputs, seconds, forwards, committed, judge, plain_outputs) -> dict:
    tokens = sum(len(o) for _, o in outputs)
    nll = [judge_nll(judge, p, o) for p, o in outputs if o]
    return {
        "id": mode_id, "label": label, "length": n, "prompts": len(outputs), "tokens": tokens, "seconds": seconds,
        "tokens_per_second": tokens / seconds if seconds else float("nan"),
        "forwards_per_token": forwards / max(tokens, 1), "tokens_per_forward": committed / max(forwards, 1),
        "agreement": (sum(agreement(o, ref) for (_, o), ref in zip(outputs, plain_outputs)) / len(outputs)
                      if plain_outputs is not None else None),
        "judge_nll": sum(nll) / len(nll) if nll else float("nan"),
        "rep4": sum(rep_n(o) for _, o in outputs) / len(outputs),
    }


def format_sampling(rows) -> str:
    header = (f"{'len':>4}  {'mode':<19} {'tok/s':>7} {'speedup':>8} {'tok/fwd':>7} {'fwd/tok':>7} {'agree':>6} "
              f"{'judge ppl':>9} {'rep-4':>6}")
    lines = [header, "-" * len(header)]
    for r in rows:
        agree = f"{r['agreement']:.2f}" if r["agreement"] is not None else "-"
        lines.append(f"{r['length']:>4}  {r['label']:<19} {r['tokens_per_second']:>7.1f} {r['speedup']:>7.2f}x "
                     f"{r['tokens_per_forward']:>7.2f} {r['forwards_per_token']:>7.2f} {agree:>6} "
                     f"{math.exp(r['judge_nll']):>9.2f} {r['rep4']:>6.2f}")
    return "\n".join(lines)


def plot(report, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = {}  # modes that land on the same point (same tokens and time, e.g. parallel decoding that reveals one
    for r in report["sampling"]:  # token per step, like plain) share one dot and one label
        if r["length"] == 256:
            key = (round(r["tokens_per_second"], 1), round(math.exp(r["judge_nll"]), 1))
            points.setdefault(key, []).append(r)
    fig, ax = plt.subplots(figsize=(7.2, 4.0), dpi=120)
    markers = "osD^vP*Xh"
    for i, rows in enumerate(sorted(points.values(), key=lambda rows: rows[0]["tokens_per_second"])):
        ax.scatter(rows[0]["tokens_per_second"], math.exp(rows[0]["judge_nll"]), marker=markers[i % len(markers)],
                   s=40, color="#c2255c" if rows[0]["id"].startswith("ar")
                   else plt.cm.viridis(i / max(len(points), 1)),
                   label=" = ".join(r["label"] for r in rows))
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)  # labels never overlap
    ax.set_xscale("log")
    ax.set_xlabel("useful tokens per second (batch 1, 256 new tokens, log scale)")
    ax.set_ylabel("judge perplexity (SmolLM2-135M-Instruct)")
    ax.set_title("Demo: speed against quality, one run")
    fig.tight_layout()
    fig.savefig(path)
    print(f"plot written to {path}", flush=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny random models: a smoke run of the same code")
    parser.add_argument("--sections", nargs="+", default=["quality", "sampling"],
                        choices=["quality", "heldout", "sampling"],
                        help="quality: held-out likelihoods, open prompts and questions; heldout: the first of those only")
    parser.add_argument("--lengths", nargs="+", type=int, default=[256, 512])
    parser.add_argument("--modes", nargs="+", default=[mode.id for mode in MODES], choices=[mode.id for mode in MODES],
                        help="sampling rows to run (plain always runs: the others are measured against it)")
    parser.add_argument("--sampling-prompts", type=int, default=2)
    parser.add_argument("--answer-tokens", type=int, default=128)
    parser.add_argument("--question-tokens", type=int, default=64)
    parser.add_argument("--mc-num", type=int, default=32, help="Monte Carlo samples per held-out text")
    parser.add_argument("--student", help="a distilled model folder (`illada distill`): its rows under "
                        f"{', '.join(STUDENT_MODES)} beside the demo's, in the sampling section")
    parser.add_argument("--threads", type=int)
    parser.add_argument("--json", help="write every figure here")
    parser.add_argument("--plot", help="write tokens/s against judge perplexity here (PNG; needs `.[bench]`)")
    parser.add_argument("--replot", metavar="JSON", help="only draw `--plot` from a report written by `--json`")
    args = parser.parse_args(argv)
    if args.replot and not args.plot:
        parser.error("--replot needs --plot (where to write the picture)")
    if args.plot:  # a missing plotting library is found before the run, not after it
        try:
            import matplotlib  # noqa: F401  (only its presence)
        except ImportError:
            parser.error('--plot needs matplotlib: pip install -e ".[bench]"')
    if args.replot:
        plot(json.loads(Path(args.replot).read_text()), args.plot)
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        args.answer_tokens, args.question_tokens, args.mc_num = 16, 16, 4
    began = time.perf_counter()
    model, tokenizer, base, end_ids, described = models(args.quick)
    report = {"machine": f"{platform.processor() or platform.machine()} "
                         f"({torch.backends.cpu.get_cpu_capability()}), {torch.get_num_threads()} threads, "
                         f"torch {torch.__version__}", "models": described, "lm_head": lm_head_rows(model)}
    head = report["lm_head"]
    print(f"{described}; {report['machine']}; LM head: 1 row via F.linear {head['one_row_f_linear'] * 1e3:.1f} ms, "
          f"as weight @ x.T (fed twice) {head['one_row_transposed'] * 1e3:.1f} ms; IlladaLinear keeps {head['kept']}",
          flush=True)

    def save():  # after each section, so that a run stopped later keeps what it measured
        if args.json:
            Path(args.json).write_text(json.dumps(report, indent=2) + "\n")

    if "quality" in args.sections or "heldout" in args.sections:
        heldout(model, tokenizer, base, args, report)
        save()
    if "quality" in args.sections:
        answers(model, tokenizer, base, end_ids, args, report)
        save()
    if "sampling" in args.sections:
        student = None
        if args.student:
            from transformers import AutoModel

            student = AutoModel.from_pretrained(args.student).eval()
            report["student"] = args.student
        sampling(model, tokenizer, base, end_ids, args, report, student)
    report["seconds"] = time.perf_counter() - began
    print(f"[{report['seconds']:.0f} s]", flush=True)
    save()
    if args.plot and "sampling" in report:
        plot(report, args.plot)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
