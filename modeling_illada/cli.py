"""The `illada` console script (library-only). Subcommands are plain functions in one table.

    illada presets                         list the model presets with their upstream sources
    illada generate --model DIR "prompt"   diffusion generation from a local folder or Hub id
    illada eval --model illada ...         lm-eval's own CLI with the `illada` model registered
    illada train --data TEXT --output DIR  pretrain (or --sft chats.jsonl) with transformers.Trainer
    illada distill --model DIR --data TEXT --output DIR
                                           certainty-forcing self-distillation for parallel decoding
"""

import argparse
import sys


def cmd_presets(args) -> int:
    from .presets import list_presets, read_preset

    for name in list_presets():
        preset = read_preset(name)
        print(f"{name:22s} {preset.get('hub_id') or '-':32s} {preset['_source']}")
    return 0


def cmd_generate(args) -> int:
    import torch
    from transformers import AutoModel, AutoTokenizer

    from . import IlladaGenerationConfig  # noqa: F401  (registers the Auto classes)

    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModel.from_pretrained(args.model, dtype=getattr(torch, args.dtype)).eval()
    if args.chat and tokenizer.chat_template:
        ids = tokenizer.apply_chat_template(
            [{"role": "user", "content": args.prompt}], add_generation_prompt=True, return_tensors="pt", return_dict=True
        )["input_ids"]
    else:
        ids = tokenizer(args.prompt, return_tensors="pt").input_ids
    if args.seed is not None:
        torch.manual_seed(args.seed)
    knobs = {k: v for k, v in dict(max_new_tokens=args.max_new_tokens, steps=args.steps, block_length=args.block_length,
                                   temperature=args.temperature, remasking=args.remasking, threshold=args.threshold,
                                   cfg_scale=args.cfg_scale).items() if v is not None}
    out = model.generate(ids, return_dict_in_generate=True, **knobs)
    print(tokenizer.decode(out.sequences[0, ids.shape[1]:], skip_special_tokens=True))
    print(f"[{out.num_forward_passes} forward passes, {out.tokens_per_forward:.2f} tokens/forward]", file=sys.stderr)
    return 0


def cmd_train(args) -> int:
    import json

    import torch

    from .training import train

    if args.threads:
        torch.set_num_threads(args.threads)
    config = args.config
    if config is not None:
        config = json.loads(config if config.lstrip().startswith("{") else open(config).read())
    try:
        trainer = train(
            args.output, data=args.data or (), sft=args.sft or (), eval_data=args.eval_data or (),
            eval_fraction=args.eval_fraction, doc_separator=args.doc_separator, packing=args.packing, model=args.model,
            tokenizer=args.tokenizer, train_tokenizer_vocab=args.train_tokenizer, preset=args.preset, config=config,
            seq_length=args.seq_length, batch_size=args.batch_size, gradient_accumulation_steps=args.grad_accum,
            max_steps=args.max_steps, learning_rate=args.lr, warmup_steps=args.warmup_steps,
            lr_scheduler=args.lr_scheduler, weight_decay=args.weight_decay, time_sampling=args.time_sampling,
            loss_weighting=args.loss_weighting, objective=args.objective,
            random_length_prob=args.random_length_prob, eval_steps=args.eval_steps, save_steps=args.save_steps,
            logging_steps=args.logging_steps, seed=args.seed, overwrite=args.overwrite,
            resume=args.resume if args.resume != "last" else True,
        )
    except ValueError as error:
        print(f"illada train: error: {error}", file=sys.stderr)
        return 2
    print(f"saved to {args.output} after {trainer.state.global_step} steps", file=sys.stderr)
    return 0


def cmd_distill(args) -> int:
    import torch

    from .distill import distill

    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        trainer = distill(
            args.output, args.model, data=args.data or (), trajectories=args.trajectories,
            doc_separator=args.doc_separator, num_prompts=args.num_prompts, prompt_tokens=tuple(args.prompt_tokens),
            max_new_tokens=args.max_new_tokens, block_length=args.block_length, teacher_cache=args.teacher_cache,
            certainty_weight=args.certainty_weight, text_weight=args.text_weight, seq_length=args.seq_length,
            batch_size=args.batch_size, max_steps=args.max_steps,
            learning_rate=args.lr, warmup_steps=args.warmup_steps, eval_steps=args.eval_steps,
            save_steps=args.save_steps, logging_steps=args.logging_steps, seed=args.seed, threshold=args.threshold,
            overwrite=args.overwrite, resume=args.resume if args.resume != "last" else True,
            log=lambda line: print(line, file=sys.stderr),
        )
    except ValueError as error:
        print(f"illada distill: error: {error}", file=sys.stderr)
        return 2
    print(f"saved to {args.output} after {trainer.state.global_step} steps", file=sys.stderr)
    return 0


def cmd_eval(args) -> int:
    # lm-eval 0.4.13 finds third-party models only once their module is imported (no entry points): import it,
    # then hand every argument, unchanged, to lm-eval's own command line.
    from .lm_eval_model import main as lm_eval_main

    return lm_eval_main(args.lm_eval_args)


def add_run_options(parser: argparse.ArgumentParser, eval_steps: int) -> None:
    """The Trainer-run options `train` and `distill` share."""
    parser.add_argument("--eval-steps", type=int, default=eval_steps, dest="eval_steps")
    parser.add_argument("--save-steps", type=int, default=200, dest="save_steps")
    parser.add_argument("--logging-steps", type=int, default=20, dest="logging_steps")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, help="torch CPU threads")
    parser.add_argument("--overwrite", action="store_true", help="write into a non-empty output folder")
    parser.add_argument("--resume", nargs="?", const="last", help="continue from the last checkpoint (or the given one)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="illada", description="Masked diffusion language models on transformers.")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("presets", help="list model presets").set_defaults(func=cmd_presets)
    gen = sub.add_parser("generate", help="generate text with a diffusion LM")
    gen.add_argument("prompt")
    gen.add_argument("--model", required=True, help="local folder or Hub id")
    gen.add_argument("--max-new-tokens", type=int, dest="max_new_tokens")
    gen.add_argument("--steps", type=int)
    gen.add_argument("--block-length", type=int, dest="block_length")
    gen.add_argument("--temperature", type=float)
    gen.add_argument("--remasking")
    gen.add_argument("--threshold", type=float)
    gen.add_argument("--cfg-scale", type=float, dest="cfg_scale")
    gen.add_argument("--seed", type=int)
    gen.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    gen.add_argument("--chat", action="store_true", help="wrap the prompt in the tokenizer's chat template")
    gen.set_defaults(func=cmd_generate)
    # prefix_chars="\0": no option is ours, so `--model illada --tasks ...` all reach lm-eval untouched
    ev = sub.add_parser("eval", help="lm-eval's CLI with the illada model (pass lm-eval's own arguments)",
                        add_help=False, prefix_chars="\0")
    ev.add_argument("lm_eval_args", nargs=argparse.REMAINDER)
    ev.set_defaults(func=cmd_eval)
    tr = sub.add_parser("train", help="train a masked diffusion LM with transformers.Trainer")
    source = tr.add_mutually_exclusive_group(required=True)
    source.add_argument("--data", nargs="+", help="text files or folders (pretraining; documents packed with EOS)")
    source.add_argument("--sft", nargs="+", help='JSONL chats, one {"messages": [...]} per line (SFT)')
    tr.add_argument("--output", required=True, help="output folder (refused if non-empty without --overwrite/--resume)")
    tr.add_argument("--eval-data", nargs="+", dest="eval_data", help="held-out files (default: a split of the data)")
    tr.add_argument("--eval-fraction", type=float, default=0.02, dest="eval_fraction")
    tr.add_argument("--doc-separator", dest="doc_separator", help='line that separates documents in a file, e.g. "%%"')
    tr.add_argument("--no-packing", action="store_false", dest="packing",
                    help="plain text: one document per sequence, padded with EOS to --seq-length (the model learns to stop)")
    tok = tr.add_mutually_exclusive_group()
    tok.add_argument("--tokenizer", help="tokenizer folder or Hub id")
    tok.add_argument("--train-tokenizer", type=int, dest="train_tokenizer", metavar="VOCAB",
                     help="train a byte-level BPE tokenizer of VOCAB tokens on the training data")
    arch = tr.add_mutually_exclusive_group()
    arch.add_argument("--model", help="start from this model folder or Hub id (fine-tuning)")
    arch.add_argument("--preset", help="a new model from a preset (see `illada presets`)")
    tr.add_argument("--config", help="IlladaConfig fields for a new model: a JSON file or an inline JSON object")
    tr.add_argument("--seq-length", type=int, default=256, dest="seq_length")
    tr.add_argument("--batch-size", type=int, default=16, dest="batch_size")
    tr.add_argument("--grad-accum", type=int, default=1, dest="grad_accum")
    tr.add_argument("--max-steps", type=int, default=1000, dest="max_steps")
    tr.add_argument("--lr", type=float, default=1e-3)
    tr.add_argument("--warmup-steps", type=int, default=100, dest="warmup_steps")
    tr.add_argument("--lr-scheduler", default="cosine", dest="lr_scheduler")
    tr.add_argument("--weight-decay", type=float, default=0.1, dest="weight_decay")
    tr.add_argument("--time-sampling", default="stratified", choices=["stratified", "uniform"], dest="time_sampling")
    tr.add_argument("--objective", default="diffusion", choices=["diffusion", "autoregressive"],
                    help="diffusion (default), or autoregressive: the same model with a causal mask (a baseline, or "
                    "the first stage of AR-to-diffusion adaptation)")
    tr.add_argument("--loss-weighting", default="elbo", choices=["elbo", "uniform"], dest="loss_weighting",
                    help="elbo: LLaDA's 1/p-weighted loss (default); uniform: mean CE over masked tokens")
    tr.add_argument("--random-length-prob", type=float, default=0.01, dest="random_length_prob")
    add_run_options(tr, eval_steps=200)
    tr.set_defaults(func=cmd_train)
    di = sub.add_parser("distill", help="certainty-forcing self-distillation (more tokens per forward in parallel decoding)")
    di.add_argument("--model", required=True, help="the teacher (and starting student): a model folder or Hub id")
    di.add_argument("--output", required=True, help="output folder (refused if non-empty without --overwrite/--resume)")
    di.add_argument("--data", nargs="+", help="text files or folders the prompts are cut from")
    di.add_argument("--trajectories", help="JSONL of teacher outputs: read if it exists, else generated and written")
    di.add_argument("--doc-separator", dest="doc_separator", help='line that separates documents in a file, e.g. "%%"')
    di.add_argument("--num-prompts", type=int, default=1024, dest="num_prompts")
    di.add_argument("--prompt-tokens", type=int, nargs=2, default=[1, 4], dest="prompt_tokens", metavar=("MIN", "MAX"))
    di.add_argument("--max-new-tokens", type=int, default=224, dest="max_new_tokens")
    di.add_argument("--block-length", type=int, default=32, dest="block_length")
    di.add_argument("--teacher-cache", default="dual", choices=["none", "prefix", "dual"], dest="teacher_cache")
    di.add_argument("--certainty-weight", type=float, default=1.0, dest="certainty_weight")
    di.add_argument("--text-weight", type=float, default=1.0, dest="text_weight",
                    help="weight of the replayed corpus text under the plain diffusion loss (0: none)")
    di.add_argument("--seq-length", type=int, dest="seq_length",
                    help="length of the replayed text sequences (default: the model's context)")
    di.add_argument("--threshold", type=float, default=0.9, help="parallel-decoding threshold saved with the model")
    di.add_argument("--batch-size", type=int, default=8, dest="batch_size",
                    help="trajectories per batch (and as many text sequences with text replay)")
    di.add_argument("--max-steps", type=int, default=800, dest="max_steps")
    di.add_argument("--lr", type=float, default=5e-4)
    di.add_argument("--warmup-steps", type=int, default=20, dest="warmup_steps")
    add_run_options(di, eval_steps=100)
    di.set_defaults(func=cmd_distill)
    return parser


COMMANDS = {"presets": cmd_presets, "generate": cmd_generate, "train": cmd_train, "distill": cmd_distill,
            "eval": cmd_eval}


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
