"""Data parallel on an existing engine: `illada train` and `illada adapt` under `accelerate launch`, two CPU processes
joined over gloo, against one process at the same global batch (marked slow: each launch starts two interpreters)."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from test_training import TINY, sentences
from tiny_bases import corpus_texts, save_causal_lm

from modeling_illada.adapt import adapt
from modeling_illada.corpus import train_tokenizer
from modeling_illada.training import train

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_two_processes(tmp_path, command: list[str]):
    """`accelerate launch` of the `illada` CLI on two processes. Without CUDA, `--multi_gpu` starts torchrun's
    processes and the Trainer (told to use the CPU) joins them over gloo."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"),
           "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--main_process_port", str(free_port()), "--mixed_precision", "no",
              "--dynamo_backend", "no", "-m", "illada_cli"]
    result = subprocess.run(launch + command + ["--threads", "1"], cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-4000:]
    return result


def step_losses(log_history) -> list[float]:
    return [entry["loss"] for entry in log_history if "loss" in entry]


@pytest.mark.slow
def test_train_data_parallel_matches_one_process_at_the_same_global_batch(tmp_path):
    """The autoregressive objective has no masking noise: two processes of batch 4 follow one process of batch 8
    step for step (same data order, gradients averaged, losses averaged for the log)."""
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n%\n".join(sentences()) + "\n")
    tokenizer = train_tokenizer(sentences(), 300)
    tokenizer.save_pretrained(tmp_path / "tokenizer")
    run = dict(data=[str(corpus)], doc_separator="%", tokenizer=str(tmp_path / "tokenizer"), config=TINY,
               seq_length=32, max_steps=6, warmup_steps=0, logging_steps=1, random_length_prob=0.0,
               objective="autoregressive", learning_rate=3e-3, save_steps=6, eval_steps=100)
    one = train(tmp_path / "one", batch_size=8, disable_tqdm=True, **run)

    flags = ["--data", str(corpus), "--doc-separator", "%", "--tokenizer", str(tmp_path / "tokenizer"),
             "--config", json.dumps(TINY), "--seq-length", "32", "--max-steps", "6", "--warmup-steps", "0",
             "--logging-steps", "1", "--random-length-prob", "0", "--objective", "autoregressive", "--lr", "3e-3",
             "--save-steps", "6", "--eval-steps", "100", "--batch-size", "4", "--output", str(tmp_path / "two")]
    launch_two_processes(tmp_path, ["train", *flags])
    state = json.loads((tmp_path / "two" / "checkpoint-6" / "trainer_state.json").read_text())
    two = step_losses(state["log_history"])
    assert len(two) == 6 and two[-1] < two[0]
    assert two == pytest.approx(step_losses(one.state.log_history), rel=1e-4)
    record = json.loads((tmp_path / "two" / "illada_train.json").read_text())  # one process wrote the folder
    assert record["global_step"] == 6 and (tmp_path / "two" / "model.safetensors").is_file()


@pytest.mark.slow
def test_adapt_runs_data_parallel(tmp_path):
    """`illada adapt` (the diffusion objective) on two processes of batch 4 against one of batch 8: each process
    masks its own half, so the first loss agrees within the noise of the estimate, not exactly."""
    save_causal_lm(tmp_path / "base")
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n%\n".join(corpus_texts(60)) + "\n")
    run = dict(base=str(tmp_path / "base"), data=[str(corpus)], doc_separator="%", seq_length=32, max_steps=4,
               warmup_steps=0, logging_steps=1, learning_rate=3e-3, save_steps=4, eval_steps=100,
               loss_weighting="uniform", eval_fraction=0.1)
    one = adapt(tmp_path / "one", batch_size=8, disable_tqdm=True, **run)

    flags = ["--base", str(tmp_path / "base"), "--data", str(corpus), "--doc-separator", "%", "--seq-length", "32",
             "--max-steps", "4", "--warmup-steps", "0", "--logging-steps", "1", "--lr", "3e-3", "--save-steps", "4",
             "--eval-steps", "100", "--loss-weighting", "uniform", "--eval-fraction", "0.1", "--batch-size", "4",
             "--output", str(tmp_path / "two")]
    launch_two_processes(tmp_path, ["adapt", *flags])
    state = json.loads((tmp_path / "two" / "checkpoint-4" / "trainer_state.json").read_text())
    two, single = step_losses(state["log_history"]), step_losses(one.state.log_history)
    assert len(two) == len(single) == 4
    assert two[0] == pytest.approx(single[0], rel=0.05)
    assert json.loads((tmp_path / "two" / "illada_train.json").read_text())["global_step"] == 4
