"""Which saved sampler should a model ship? Its answers to open prompts under a few knob sets, side by side.

    python bench/compare_samplers.py                                        # the demo's saved sampler, uncached vs cached
    python bench/compare_samplers.py --set none cache=none --set delayed cache=dual cache_refresh=16

Each `--set NAME KNOB=VALUE ...` overrides the model's saved generation config (values read as JSON, else as
text). Every set answers the same chat prompts (`PROMPTS`, none of them in `bench_demo.py`'s evaluation, so a choice
made here is not tuned on the figures reported there), and each answer is judged by the AR base as in
`bench_demo.py`: judge perplexity, rep-4, useful tokens, their rate and tokens per forward, per prompt and pooled
(perplexity of the mean NLL). One run, one machine: compare the rows, not the absolute times.
"""

import argparse
import json
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_demo import chat, diffusion_generate, judge_nll, models, rep_n  # noqa: E402

PROMPTS = ("Give me three tips for learning a new language.", "Describe a rainy day in a small town.",
           "What should I pack for a beach holiday?", "Explain what a library is to a child.",
           "Write a short poem about the moon.", "How do plants grow?")
DEFAULT_SETS = (("no cache", {"cache": "none"}), ("dual, refresh/16", {"cache": "dual", "cache_refresh": 16}))


def parse_set(words: list[str]) -> tuple[str, dict]:
    """`[name, "knob=value", ...]` -> `(name, knobs)`; values are JSON where they parse, else strings."""
    name, knobs = words[0], {}
    for word in words[1:]:
        if "=" not in word:
            raise SystemExit(f"--set {name}: expected KNOB=VALUE, got {word!r}")
        key, value = word.split("=", 1)
        try:
            knobs[key] = json.loads(value)
        except json.JSONDecodeError:
            knobs[key] = value
    return name, knobs


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--set", dest="sets", nargs="+", action="append", metavar="NAME KNOB=VALUE",
                        help="a named knob set (repeatable); default: no cache, and dual cache refreshed every 16 blocks")
    parser.add_argument("--tokens", type=int, default=128, help="new tokens per answer")
    parser.add_argument("--quick", action="store_true", help="tiny random models: a smoke run of the same code")
    args = parser.parse_args(argv)
    sets = [parse_set(words) for words in args.sets] if args.sets else list(DEFAULT_SETS)

    model, tokenizer, base, end_ids, described = models(args.quick)
    prompts = PROMPTS[:2] if args.quick else PROMPTS
    print(f"{described}; {len(prompts)} prompts, {args.tokens} new tokens", flush=True)
    pooled = {name: [] for name, _ in sets}  # name -> [(judge NLL, rep-4, tokens, seconds, forwards)]
    for text in prompts:
        prompt = chat(tokenizer, text) if not args.quick else tokenizer(text).input_ids
        for name, knobs in sets:
            out, seconds, forwards, per_forward = diffusion_generate(model, prompt, args.tokens, knobs, end_ids)
            nll = judge_nll(base, prompt, out)  # NaN for an empty answer
            pooled[name].append((nll, rep_n(out), len(out), seconds, forwards))
            print(f"  {name:18s} {text[:34]:34s} judge ppl {math.exp(nll):6.2f}  rep-4 {rep_n(out):.3f}  "
                  f"{len(out):4d} tokens  {len(out) / seconds:5.2f} tok/s  {per_forward:.2f} tokens/forward", flush=True)
    for name, rows in pooled.items():
        judged = [r[0] for r in rows if not math.isnan(r[0])]
        ppl = math.exp(sum(judged) / len(judged)) if judged else float("nan")
        print(f"{name:18s} judge ppl {ppl:6.2f}  rep-4 {sum(r[1] for r in rows) / len(rows):.3f}  "
              f"{sum(r[2] for r in rows):5d} tokens  {sum(r[2] for r in rows) / sum(r[3] for r in rows):5.2f} tok/s  "
              f"{sum(r[2] for r in rows) / max(sum(r[4] for r in rows), 1):.2f} useful tokens/forward", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
