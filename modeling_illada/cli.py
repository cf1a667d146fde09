"""The `illada` console script (library-only). Subcommands are plain functions in one table.

    illada presets                         list the model presets with their upstream sources
    illada generate --model DIR "prompt"   diffusion generation from a local folder or Hub id
    illada eval --model illada ...         lm-eval's own CLI with the `illada` model registered
    illada train --data TEXT --output DIR  pretrain (or --sft chats.jsonl) with transformers.Trainer
    illada adapt --base AR_MODEL --data TEXT --output DIR
                                           an autoregressive LM (folder, Hub id, GGUF) -> masked diffusion LM
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


def _run(name: str, run, recipe_class, args) -> int:
    """Build the recipe from the parsed flags and run it; a `ValueError` is a one-line error, exit status 2."""
    import torch

    from .recipes import recipe_from_args

    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        recipe = recipe_from_args(recipe_class, args)
        trainer = run(args.output, recipe, overwrite=args.overwrite, resume=True if args.resume == "last" else args.resume,
                      log=lambda line: print(line, file=sys.stderr))
    except (ValueError, ImportError, FileNotFoundError) as error:
        print(f"illada {name}: error: {error}", file=sys.stderr)
        return 2
    print(f"saved to {args.output} after {trainer.state.global_step} steps", file=sys.stderr)
    return 0


def cmd_train(args) -> int:
    from .recipes import TrainRecipe
    from .training import train

    return _run("train", train, TrainRecipe, args)


def cmd_adapt(args) -> int:
    from .adapt import adapt
    from .recipes import AdaptRecipe

    return _run("adapt", adapt, AdaptRecipe, args)


def cmd_distill(args) -> int:
    from .distill import distill
    from .recipes import DistillRecipe

    return _run("distill", distill, DistillRecipe, args)


def cmd_eval(args) -> int:
    # lm-eval 0.4.13 finds third-party models only once their module is imported (no entry points): import it,
    # then hand every argument, unchanged, to lm-eval's own command line.
    from .lm_eval_model import main as lm_eval_main

    return lm_eval_main(args.lm_eval_args)


def add_run_options(parser: argparse.ArgumentParser) -> None:
    """The options that steer a run without changing what it learns (not recipe fields)."""
    parser.add_argument("--output", required=True, help="output folder (refused if non-empty without --overwrite/--resume)")
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
    from .recipes import AdaptRecipe, DistillRecipe, TrainRecipe, add_recipe_arguments

    runs = (
        ("train", cmd_train, TrainRecipe, "train a masked diffusion LM with transformers.Trainer"),
        ("adapt", cmd_adapt, AdaptRecipe, "turn an autoregressive causal LM (folder, Hub id or GGUF) into a masked "
                                          "diffusion LM"),
        ("distill", cmd_distill, DistillRecipe, "certainty-forcing self-distillation (more tokens per forward in "
                                                "parallel decoding)"),
    )
    for name, command, recipe_class, help in runs:
        run = sub.add_parser(name, help=help, description=(recipe_class.__doc__ or "").strip())
        add_recipe_arguments(run, recipe_class)
        add_run_options(run)
        run.set_defaults(func=command)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
