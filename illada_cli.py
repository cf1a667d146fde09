"""The `illada` console script (library-only). Subcommands are rows of one table, `COMMANDS`.

A top-level module, not part of `modeling_illada`: importing that package registers the model types with
transformers' Auto classes, which imports torch and transformers (seconds). Here `illada --help` imports neither, and
a subcommand's own flags are built only once it is named (`illada train --help` reads the recipe and its policy
registries).

"""

import argparse
import sys
from dataclasses import dataclass
from typing import Callable


def cmd_presets(args) -> int:
    from modeling_illada.presets import list_presets, read_preset

    for name in list_presets():
        preset = read_preset(name)
        print(f"{name:22s} {preset.get('hub_id') or '-':32s} {preset['_source']}")
    return 0


def cmd_generate(args) -> int:
    import torch
    from transformers import AutoModel, AutoTokenizer

    import modeling_illada  # noqa: F401  (registers the model types with the Auto classes)

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

    from modeling_illada.recipes import recipe_from_args

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
    from modeling_illada.recipes import TrainRecipe
    from modeling_illada.training import train

    return _run("train", train, TrainRecipe, args)


def cmd_adapt(args) -> int:
    from modeling_illada.adapt import adapt
    from modeling_illada.recipes import AdaptRecipe

    return _run("adapt", adapt, AdaptRecipe, args)


def cmd_distill(args) -> int:
    from modeling_illada.distill import distill
    from modeling_illada.recipes import DistillRecipe

    return _run("distill", distill, DistillRecipe, args)


def cmd_eval(args) -> int:
    # lm-eval 0.4.13 finds third-party models only once their module is imported (no entry points): import it,
    # then hand every argument, unchanged, to lm-eval's own command line.
    from modeling_illada.lm_eval_model import main as lm_eval_main

    return lm_eval_main(args.lm_eval_args)


def add_run_options(parser: argparse.ArgumentParser) -> None:
    """The options that steer a run without changing what it learns (not recipe fields)."""
    parser.add_argument("--output", required=True, help="output folder (refused if non-empty without --overwrite/--resume)")
    parser.add_argument("--threads", type=int, help="torch CPU threads")
    parser.add_argument("--overwrite", action="store_true", help="write into a non-empty output folder")
    parser.add_argument("--resume", nargs="?", const="last", help="continue from the last checkpoint (or the given one)")


def add_generate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("prompt")
    parser.add_argument("--model", required=True, help="local folder or Hub id")
    parser.add_argument("--max-new-tokens", type=int, dest="max_new_tokens")
    parser.add_argument("--steps", type=int)
    parser.add_argument("--block-length", type=int, dest="block_length")
    parser.add_argument("--temperature", type=float)
    parser.add_argument("--remasking")
    parser.add_argument("--threshold", type=float)
    parser.add_argument("--cfg-scale", type=float, dest="cfg_scale")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--chat", action="store_true", help="wrap the prompt in the tokenizer's chat template")


def add_eval_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("lm_eval_args", nargs=argparse.REMAINDER)


def recipe_arguments(recipe_name: str):
    """The flags of a run: one per field of the recipe class `recipe_name`, then the run options."""

    def add(parser: argparse.ArgumentParser) -> None:
        from modeling_illada import recipes

        recipe_class = getattr(recipes, recipe_name)
        parser.description = (recipe_class.__doc__ or "").strip()
        recipes.add_recipe_arguments(parser, recipe_class)
        add_run_options(parser)

    return add


@dataclass(frozen=True)
class Command:
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]
    passthrough: bool = False  # every argument goes, unchanged, to another program's own command line


COMMANDS = {
    "presets": Command("list model presets", lambda parser: None, cmd_presets),
    "generate": Command("generate text with a diffusion LM", add_generate_arguments, cmd_generate),
    "eval": Command("lm-eval's CLI with the illada model (pass lm-eval's own arguments)", add_eval_arguments, cmd_eval,
                    passthrough=True),
    "train": Command("train a masked diffusion LM with transformers.Trainer", recipe_arguments("TrainRecipe"),
                     cmd_train),
    "adapt": Command("turn an autoregressive causal LM (folder, Hub id or GGUF) into a masked diffusion LM",
                     recipe_arguments("AdaptRecipe"), cmd_adapt),
    "distill": Command("certainty-forcing self-distillation (more tokens per forward in parallel decoding)",
                       recipe_arguments("DistillRecipe"), cmd_distill),
}


def command_parser(name: str) -> argparse.ArgumentParser:
    """The full parser of one subcommand (this is where its imports happen)."""
    command = COMMANDS[name]
    # prefix_chars="\0": no option is ours, so `eval --model illada --tasks ...` all reach lm-eval untouched
    extra = dict(add_help=False, prefix_chars="\0") if command.passthrough else {}
    parser = argparse.ArgumentParser(prog=f"illada {name}", description=command.help, **extra)
    command.add_arguments(parser)
    return parser


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser: the subcommands by name and help; what follows a name is that subcommand's to parse."""
    parser = argparse.ArgumentParser(prog="illada", description="Masked diffusion language models on transformers.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, command in COMMANDS.items():
        stub = sub.add_parser(name, help=command.help, add_help=False, prefix_chars="\0")
        stub.add_argument("rest", nargs=argparse.REMAINDER)
    return parser


def main(argv=None) -> int:
    top = build_parser().parse_args(argv)
    args = command_parser(top.command).parse_args(top.rest)
    return COMMANDS[top.command].run(args)


if __name__ == "__main__":
    sys.exit(main())
