"""Does `torch.compile` of the sampler's forward pay on a CPU at the demo model's size?

    python bench/compile_cpu.py            # the demo model, its saved schedule, 3 runs each

`generate()` calls the model once per step; here the model is compiled in place (`model.compile(fullgraph=True)`,
inductor) so every one of those calls runs the compiled forward. Printed: seconds per generation in eager mode, the
first compiled generation (compilation included: one graph per block, whose logits slice differs) and the next ones,
the tokens of both (they must agree), and after how many generations compiling breaks even.
"""

import argparse
import sys
import time

import torch

from modeling_illada.demo import load_demo


def timed_generations(model, ids, runs: int, **knobs):
    seconds, out = [], None
    for _ in range(runs):
        start = time.perf_counter()
        out = model.generate(ids, **knobs)
        seconds.append(time.perf_counter() - start)
    return seconds, out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: a shared CPU oversubscribed by more)")
    parser.add_argument("--prompt", default="A fool")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    model, tokenizer = load_demo()
    ids = tokenizer(args.prompt, return_tensors="pt").input_ids
    knobs = dict(temperature=0.0, eos_early_stop=False)  # greedy, every block: the same work in both modes
    with torch.no_grad():
        eager, eager_out = timed_generations(model, ids, args.runs, **knobs)
        model.compile(fullgraph=True)
        compiled, compiled_out = timed_generations(model, ids, args.runs, **knobs)
    steady_eager = min(eager)
    steady_compiled = min(compiled[1:]) if len(compiled) > 1 else compiled[0]
    config = model.generation_config
    print(f"demo model ({sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters), {config.max_new_tokens} "
          f"tokens, blocks of {config.block_length}, {config.steps} steps, torch {torch.__version__}, "
          f"{args.threads} threads")
    print(f"eager: {' '.join(f'{s:.2f}' for s in eager)} s per generation")
    print(f"compiled: first {compiled[0]:.1f} s (compilation included), then "
          f"{' '.join(f'{s:.2f}' for s in compiled[1:])} s")
    print(f"same tokens: {torch.equal(eager_out, compiled_out)}")
    gain = steady_eager - steady_compiled
    if gain <= 0:
        print(f"compiled steady state is not faster ({steady_compiled:.2f} vs {steady_eager:.2f} s): it never pays")
    else:
        print(f"{steady_eager / steady_compiled:.2f}x faster once compiled; breaks even after "
              f"{(compiled[0] - steady_compiled) / gain:.0f} generations")
    return 0


if __name__ == "__main__":
    sys.exit(main())
