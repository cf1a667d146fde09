"""The `illada` console script (library-only). Subcommands are plain functions in one table.

    illada presets                         list the model presets with their upstream sources
    illada generate --model DIR "prompt"   diffusion generation from a local folder or Hub id
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
    return parser


COMMANDS = {"presets": cmd_presets, "generate": cmd_generate}


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
