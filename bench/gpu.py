"""GPU benchmark: an 8B-preset iLLaDA with random bfloat16 weights against an autoregressive Llama twin of its size.

    python bench/gpu.py                  # on a CUDA device: one table, within about 8 minutes on one H100/H200 class GPU
    python bench/gpu.py --size 1b        # a ~1B variant of the same preset, where time or memory is short
    python bench/gpu.py --dry-run        # the same code on the CPU at tiny sizes: checks the script, measures nothing

Rows, each at generation lengths 256 and 512 and batch 1 and 8 (random prompts of `--prompt-length` tokens):

* `plain`, `Fast-dLLM`, `all combined`: `bench_demo.MODES` (plain = LLaDA's sampler as this package runs it exactly:
  a full forward per step, one token per step, no early stop; Fast-dLLM = dual cache + threshold 0.9 + EOS stop; all
  combined adds a 32-position suffix window), block length 32, greedy;
* `AR twin`: `transformers.LlamaForCausalLM` of the same dimensions, `generate(do_sample=False,
  min_new_tokens=max_new_tokens, cache_implementation="static")`.

Random weights never pass the 0.9 threshold and never write EOS, so every diffusion row commits one token per step:
the table measures the cost of a step (a full forward, or a cached block), not a trained model's parallelism.
tok/s = batch x length / seconds (CUDA-synchronised wall clock, after a warm-up run of each model); peak = the most
GPU memory allocated during the row. Rows that would start after `--budget` seconds are printed as not run.

The models are built with `presets.build_model` / `presets.check_memory`, which refuse before allocating when the
weights do not fit the device. On a machine without CUDA the script stops with a message unless `--dry-run`.
"""

import argparse
import os
import platform
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_demo  # noqa: E402  (the modes, stated once there)

from modeling_illada.presets import GIB, build_model, check_memory  # noqa: E402

MODE_IDS = ("plain", "fast_dllm", "combined")
# ~1B variant of the 8B preset (same vocabulary and layout, narrower and shallower): about 1.04B parameters
SIZES = {
    "8b": {},
    "1b": dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=16, num_attention_heads=16,
               num_key_value_heads=4),
}


def synchronize(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def peak_gib(device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / GIB if torch.device(device).type == "cuda" else None


def reset_peak(device):
    if torch.device(device).type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def twin_config(config):
    """The `LlamaConfig` of a causal Llama with the diffusion model's dimensions."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=config.vocab_size, hidden_size=config.hidden_size, intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_hidden_layers, num_attention_heads=config.num_attention_heads,
        num_key_value_heads=config.num_key_value_heads, max_position_embeddings=config.max_position_embeddings,
        rope_theta=getattr(config, "rope_theta", 10000.0), tie_word_embeddings=config.tie_word_embeddings,
        bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id, pad_token_id=config.pad_token_id,
    )


def build_twin(config, dtype, device):
    from transformers import AutoModelForCausalLM

    causal = twin_config(config)
    check_memory(causal, dtype, device, what="The autoregressive twin")
    torch.manual_seed(0)
    with torch.device(device):
        twin = AutoModelForCausalLM.from_config(causal, dtype=dtype)
    return twin.eval()


def run_diffusion(model, prompts, length, block, mode_id):
    knobs = {**bench_demo.BASE_KNOBS, **bench_demo.MODE[mode_id].knobs, "block_length": block}
    out = model.generate(prompts, max_new_tokens=length, steps=length, return_dict_in_generate=True, **knobs)
    return out.num_forward_passes


def run_twin(twin, prompts, length):
    out = twin.generate(prompts, attention_mask=torch.ones_like(prompts), max_new_tokens=length,
                        min_new_tokens=length, do_sample=False, cache_implementation="static",
                        pad_token_id=twin.config.pad_token_id)
    assert out.shape[1] == prompts.shape[1] + length
    return length


def timed(device, run, *args):
    reset_peak(device)
    synchronize(device)
    start = time.perf_counter()
    forwards = run(*args)
    synchronize(device)
    return time.perf_counter() - start, forwards, peak_gib(device)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="illada-8b-base")
    parser.add_argument("--size", choices=sorted(SIZES), default="8b")
    parser.add_argument("--lengths", type=int, nargs="+", default=[256, 512])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--block-length", type=int, default=32)
    parser.add_argument("--prompt-length", type=int, default=32)
    parser.add_argument("--budget", type=float, default=420.0, help="seconds after which no new row starts")
    parser.add_argument("--dry-run", action="store_true", help="tiny sizes on the CPU: checks the script")
    args = parser.parse_args(argv)

    if args.dry_run:
        device, dtype, preset, overrides = "cpu", torch.bfloat16, "tiny-random", {}
        args.lengths, args.batches, args.block_length, args.prompt_length = [16, 32], [1, 2], 8, 4
    elif not torch.cuda.is_available():
        print("bench/gpu.py measures on a CUDA device and this machine has none. `python bench/gpu.py --dry-run` "
              "checks the script on tiny sizes on the CPU.", file=sys.stderr)
        return 2
    else:
        device, dtype, preset, overrides = "cuda", torch.bfloat16, args.preset, SIZES[args.size]
    started = time.perf_counter()

    try:
        model, _ = build_model(preset, dtype=dtype, device=device, **overrides)
        twin = build_twin(model.config, dtype, device)
    except ValueError as error:  # does not fit: said before allocating
        print(f"bench/gpu.py: {error}", file=sys.stderr)
        return 2
    params = sum(p.numel() for p in model.parameters())
    name = f"{preset}{'' if args.dry_run or args.size == '8b' else ' (' + args.size + ' variant)'}"
    machine = torch.cuda.get_device_name(device) if device == "cuda" else platform.processor() or platform.machine()
    print(f"# {name}: {params / 1e9:.2f}B parameters, random {str(dtype).removeprefix('torch.')} weights, on {machine}; "
          f"torch {torch.__version__}; block {args.block_length}, prompt {args.prompt_length} tokens")

    generator = torch.Generator().manual_seed(0)
    vocab = model.config.vocab_size
    with torch.no_grad():  # warm-up: kernels, allocator, static cache set-up
        warm = torch.randint(4, vocab, (1, args.prompt_length), generator=generator).to(device)
        run_diffusion(model, warm, args.block_length, args.block_length, "fast_dllm")
        run_twin(twin, warm, 8)

    rows = []
    for length in args.lengths:
        for batch in args.batches:
            prompts = torch.randint(4, vocab, (batch, args.prompt_length), generator=generator).to(device)
            plain_seconds = None
            for mode in (*MODE_IDS, "ar"):
                label = "AR twin" if mode == "ar" else bench_demo.MODE[mode].label
                if time.perf_counter() - started > args.budget:
                    rows.append((length, batch, label, None, None, None, None, None))
                    continue
                with torch.no_grad():
                    if mode == "ar":
                        seconds, forwards, peak = timed(device, run_twin, twin, prompts, length)
                    else:
                        seconds, forwards, peak = timed(device, run_diffusion, model, prompts, length,
                                                        args.block_length, mode)
                plain_seconds = seconds if mode == "plain" else plain_seconds
                speedup = plain_seconds / seconds if plain_seconds else None
                rows.append((length, batch, label, seconds, batch * length / seconds, forwards, speedup, peak))

    print("| length | batch | mode | seconds | tok/s | forwards | speedup vs plain | peak GiB |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for length, batch, mode, seconds, rate, forwards, speedup, peak in rows:
        if seconds is None:
            print(f"| {length} | {batch} | {mode} | not run (budget) | | | | |")
            continue
        print(f"| {length} | {batch} | {mode} | {seconds:.2f} | {rate:.1f} | {forwards} | "
              f"{speedup:.2f}x | {'-' if peak is None else f'{peak:.1f}'} |")
    print(f"# total {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
