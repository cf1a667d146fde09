"""The `illada` lm-eval model (`modeling_illada/lm_eval_model.py`) on the tiny offline tasks in `tests/lm_eval_tasks/`.

Everything runs offline: a tiny model, a word-level tokenizer built here, local JSONL datasets. The tasks' data
paths are relative to the repository root, so the tests run from there.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

from helpers import EOS, MASK, FakeDenoiser, tiny_config, tiny_model, word_tokenizer  # noqa: E402

lm_eval = pytest.importorskip("lm_eval")
from lm_eval.api.instance import Instance  # noqa: E402
from lm_eval.tasks import TaskManager  # noqa: E402

import illada_cli as cli  # noqa: E402
from modeling_illada.likelihood import SCORERS, monte_carlo_log_likelihood, text_log_likelihood  # noqa: E402
from modeling_illada.lm_eval_model import IlladaEvalHarness  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
TASKS = REPO / "tests" / "lm_eval_tasks"
TASK_NAMES = ["illada_tiny_mc", "illada_tiny_gen", "illada_tiny_ppl"]
WORDS = ("the sky is grass snow blue green white red colour of question answer : ? . , one two three four five six "
         "seven eight nine ten count after comes a cat dog says meow woof sun yellow night dark day bright user "
         "assistant system").split()


def tiny_tokenizer():
    """The word-level tokenizer over WORDS, with an unknown token (id 4) and punctuation split off."""
    return word_tokenizer(WORDS, unk_token="<unk>", split_punctuation=True, padding_side="right")


@pytest.fixture(autouse=True)
def at_repo_root(monkeypatch):
    monkeypatch.chdir(REPO)


@pytest.fixture(scope="module")
def task_manager():
    return TaskManager(include_path=str(TASKS), include_defaults=False)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-illada")
    tiny_model().save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    return folder


def evaluate(model, task_manager, tasks=TASK_NAMES, **kwargs):
    return lm_eval.simple_evaluate(model=model, tasks=tasks, task_manager=task_manager, bootstrap_iters=0, **kwargs)


def test_shipped_tasks_run_end_to_end_and_record_the_settings(task_manager):
    lm = IlladaEvalHarness(pretrained=tiny_model(), tokenizer=tiny_tokenizer(), mc_num=8, cfg_scale=0.5, batch_size=4,
                           steps=4, block_length=2, seed=7)
    results = evaluate(lm, task_manager)
    assert set(results["results"]) == set(TASK_NAMES)
    assert 0 <= results["results"]["illada_tiny_mc"]["acc,none"] <= 1
    assert 0 <= results["results"]["illada_tiny_gen"]["exact_match,none"] <= 1
    assert results["results"]["illada_tiny_ppl"]["word_perplexity,none"] > 1
    assert len(results["samples"]["illada_tiny_mc"]) == 8 and len(results["samples"]["illada_tiny_gen"]) == 6
    recorded = results["config"]["illada"]
    assert (recorded["scorer"], recorded["mc_num"], recorded["mc_batch_size"], recorded["cfg_scale"], recorded["seed"]) == (
        "mc", 8, 8, 0.5, 7)
    assert recorded["rolling_scorer"] == "mc"
    assert (recorded["generation"]["steps"], recorded["generation"]["block_length"]) == (4, 2)
    assert recorded["generation"]["cfg_scale"] == 0.5 and recorded["mask_token_id"] == 3
    json.dumps(results["config"])  # lm-eval writes it as JSON


def test_scores_reproduce_with_a_seed_and_follow_the_settings():
    docs = [json.loads(line) for line in (TASKS / "tiny_mc.jsonl").read_text().splitlines()]
    requests = [Instance("loglikelihood", doc, (doc["question"], " " + choice), i)
                for i, doc in enumerate(docs) for choice in doc["choices"]]
    model, tokenizer = tiny_model(), tiny_tokenizer()

    def scores(**settings):
        lm = IlladaEvalHarness(pretrained=model, tokenizer=tokenizer, **settings)
        return [score for score, _ in lm.loglikelihood(requests)]

    first = scores(mc_num=8, seed=1, batch_size=24)
    assert scores(mc_num=8, seed=1, batch_size=24) == first
    # seeded per request: another batching draws the same masks (values equal up to float rounding of the padding)
    assert scores(mc_num=8, seed=1, batch_size=5) == pytest.approx(first, rel=1e-5)
    other_seed = scores(mc_num=8, seed=2, batch_size=24)
    # exactly the 8 two-word choices change; one-word continuations are exact in one forward whatever the seed
    assert sum(a != b for a, b in zip(other_seed, first)) == 8
    assert scores(scorer="confidence", batch_size=24) == scores(scorer="confidence", seed=2, batch_size=24)


@pytest.mark.parametrize("scorer", ["confidence", "left_to_right"])
def test_loglikelihood_is_the_library_scorer_on_the_same_tokens(scorer):
    model, tokenizer = tiny_model(), tiny_tokenizer()
    lm = IlladaEvalHarness(pretrained=model, tokenizer=tokenizer, scorer=scorer, add_bos_token=True, padd_eos=True)
    requests = [Instance("loglikelihood", {}, ("the sky is", " blue"), 0),
                Instance("loglikelihood", {}, ("the sky is", " green white"), 1),
                Instance("loglikelihood", {}, ("", "snow"), 2)]
    got = [score for score, _ in lm.loglikelihood(requests)]
    ids = lambda text: tokenizer(text, add_special_tokens=False).input_ids  # noqa: E731
    want = SCORERS[scorer](model, [ids("the sky is"), ids("the sky is"), []],
                           [ids("blue"), ids("green white"), ids("snow")], add_bos_token=True, padd_eos=True)
    assert got == pytest.approx(want.tolist(), abs=1e-6)
    lm = IlladaEvalHarness(pretrained=model, tokenizer=tokenizer, mc_num=4, seed=3)
    one_token = lm.loglikelihood([requests[0]])[0][0]  # one token: exact whatever the seed
    assert one_token == pytest.approx(monte_carlo_log_likelihood(model, ids("the sky is"), ids("blue"), mc_num=4).item())


def test_rolling_scorer_left_to_right_is_the_library_text_score():
    model, tokenizer = tiny_model(shift_logits=True), tiny_tokenizer()
    requests = [Instance("loglikelihood_rolling", {}, ("the sky is blue",), 0)]
    lm = IlladaEvalHarness(pretrained=model, tokenizer=tokenizer, rolling_scorer="left_to_right")
    ids = [lm.prefix_token_id] + tokenizer("the sky is blue", add_special_tokens=False).input_ids
    want = text_log_likelihood(model, [ids], scorer="left_to_right").item()
    assert lm.loglikelihood_rolling(requests) == [pytest.approx(want, abs=1e-6)]
    default = IlladaEvalHarness(pretrained=model, tokenizer=tokenizer, mc_num=8).loglikelihood_rolling(requests)
    assert default != [pytest.approx(want, abs=1e-3)]  # the ELBO, a lower bound, is another figure


def test_check_greedy_compares_the_greedy_fill_with_the_continuation():
    model, tokenizer = tiny_model(), tiny_tokenizer()
    lm = IlladaEvalHarness(pretrained=model, tokenizer=tokenizer, check_greedy=True, scorer="confidence")
    context = tokenizer("count : one two", add_special_tokens=False).input_ids
    canvas = torch.tensor([context + [MASK, MASK]])
    greedy = model.generate(canvas, max_new_tokens=0, steps=2, block_length=2)[0, -2:].tolist()
    other = [t for t in range(5, 40) if t not in greedy][:2]

    def request(answer):
        return Instance("loglikelihood", {}, ("count : one two", " " + tokenizer.decode(answer)), 0)

    assert lm.loglikelihood([request(greedy)])[0][1] is True
    assert lm.loglikelihood([request(other)])[0][1] is False


def scripted(tokenizer, prompt: str, continuation: str) -> FakeDenoiser:
    """Predicts the tokens of `prompt continuation` (then EOS) at their positions whatever the input, so its
    generations are known."""
    ids = tokenizer(prompt + " " + continuation, add_special_tokens=False).input_ids
    return FakeDenoiser(ids + [EOS] * (tiny_config().max_position_embeddings - len(ids)), 20.0)


def test_generate_until_stops_and_cuts_at_the_stop_sequence():
    tokenizer = tiny_tokenizer()
    model = scripted(tokenizer, "count : one two three", "four five six . seven eight")
    calls = []
    generate = model.generate
    model.generate = lambda *args, **kwargs: calls.append(kwargs) or generate(*args, **kwargs)
    lm = IlladaEvalHarness(pretrained=model, tokenizer=tokenizer, variable_length=True, block_length=2, steps=4)
    request = Instance("generate_until", {}, ("count : one two three", {"until": ["."], "max_gen_toks": 7}), 0)
    assert lm.generate_until([request]) == ["four five six "]
    config = calls[0]["generation_config"]
    assert (config.variable_length, config.block_length, config.steps, config.max_new_tokens) == (True, 2, 4, 8)
    assert calls[0]["stop_strings"] == [".", "</s>"] and calls[0]["tokenizer"] is tokenizer
    # an EOS ends the text even when no stop string appears
    model = scripted(tokenizer, "count : one two three", "four five </s> six")
    lm = IlladaEvalHarness(pretrained=model, tokenizer=tokenizer)
    request = Instance("generate_until", {}, ("count : one two three", {"until": ["ten"], "max_gen_toks": 6}), 0)
    assert lm.generate_until([request]) == ["four five"]


def test_chat_template_is_applied_and_a_refused_system_role_is_merged(task_manager):
    tokenizer = tiny_tokenizer()
    tokenizer.chat_template = (
        "{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
        "{% for m in messages %}{{ m['role'] }} : {{ m['content'] }} . {% endfor %}"
        "{% if add_generation_prompt %}assistant :{% endif %}"
    )
    lm = IlladaEvalHarness(pretrained=tiny_model(), tokenizer=tokenizer)
    history = [{"role": "system", "content": "count"}, {"role": "user", "content": "one two"}]
    assert lm.apply_chat_template(history) == "user : count\n\none two . assistant :"
    # no generation prompt: the last message is continued (transformers cuts the template after its content)
    assert lm.apply_chat_template(history[1:], add_generation_prompt=False) == "user : one two"
    assert lm.chat_template(True) == tokenizer.chat_template
    # through lm-eval's hooks: the task prompt becomes a templated chat with the system text merged in
    results = evaluate(lm, task_manager, tasks=["illada_tiny_gen"], limit=1, apply_chat_template=True,
                       system_instruction="count")
    (context, _), = results["samples"]["illada_tiny_gen"][0]["arguments"]
    assert context == "user : count\n\ncount : one two three . assistant :"


def test_string_model_name_loads_a_folder_and_records_model_args(model_dir, task_manager):
    results = lm_eval.simple_evaluate(
        model="illada", model_args=f"pretrained={model_dir},llh=confidence,padd_eos=True,add_bos_token=True",
        tasks=["illada_tiny_mc"], task_manager=task_manager, bootstrap_iters=0, limit=3,
    )
    assert results["config"]["model_args"].endswith("llh=confidence,padd_eos=True,add_bos_token=True")
    recorded = results["config"]["illada"]
    assert (recorded["scorer"], recorded["padd_eos"], recorded["add_bos_token"]) == ("confidence", True, True)


def test_illada_eval_hands_argv_to_lm_evals_cli(model_dir, tmp_path, monkeypatch):
    # lm-eval's CLI indexes its thousands of built-in tasks first; the subprocess test below does that for real
    import lm_eval.tasks

    class LocalTasksOnly(TaskManager):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **{**kwargs, "include_defaults": False})

    monkeypatch.setattr(lm_eval.tasks, "TaskManager", LocalTasksOnly)
    code = cli.main(["eval", "--model", "illada", "--model_args", f"pretrained={model_dir},mc_num=4",
                     "--tasks", "illada_tiny_mc", "--include_path", str(TASKS), "--limit", "2",
                     "--output_path", str(tmp_path / "out")])
    assert code == 0
    (written,) = (tmp_path / "out").rglob("results_*.json")
    saved = json.loads(written.read_text())
    assert saved["config"]["illada"]["mc_num"] == 4 and "acc,none" in saved["results"]["illada_tiny_mc"]


@pytest.mark.slow
def test_python_dash_m_runs_lm_evals_own_cli(model_dir, tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "modeling_illada.lm_eval_model", "--model", "illada", "--model_args",
         f"pretrained={model_dir},scorer=confidence", "--tasks", "illada_tiny_mc,illada_tiny_gen",
         "--include_path", str(TASKS), "--limit", "2", "--output_path", str(tmp_path / "out")],
        cwd=REPO, capture_output=True, text=True, timeout=600,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (written,) = (tmp_path / "out").rglob("results_*.json")
    saved = json.loads(written.read_text())
    assert saved["config"]["illada"]["scorer"] == "confidence"
    assert set(saved["results"]) == {"illada_tiny_mc", "illada_tiny_gen"}


@pytest.mark.parametrize(
    "settings, match",
    [
        (dict(scorer="likelihood"), r"Unknown `scorer` 'likelihood'; allowed: \['confidence', 'left_to_right', 'mc'\]"),
        (dict(rolling_scorer="confidence"), r"Unknown `rolling_scorer` 'confidence'; allowed: \['mc', 'left_to_right'\]"),
        (dict(mc_num=100, mc_batch_size=32), r"`mc_num` \(100\) must be a multiple of `mc_batch_size` \(32\)"),
        (dict(num_beams=4), r"Unknown `illada` model arguments \['num_beams'\]"),
        (dict(output_history=True), r"Unknown `illada` model arguments \['output_history'\]"),
        (dict(remasking="best"), "Unknown `remasking` 'best'"),
        (dict(cfg=-1), "`cfg_scale` must be a number >= 0"),
        (dict(batch_size=0), "`batch_size` must be a positive integer"),
    ],
)
def test_bad_model_arguments_are_refused_by_name(settings, match):
    with pytest.raises(ValueError, match=match):
        IlladaEvalHarness(pretrained=tiny_model(), tokenizer=tiny_tokenizer(), **settings)
