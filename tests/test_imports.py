"""Imports point one way, and a special token id is resolved one way everywhere."""

import ast
from pathlib import Path

import pytest
from transformers import GenerationConfig

from modeling_illada.generation_config import end_token_ids, special_token_id, special_token_ids

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "modeling_illada"
SOURCES = sorted(PACKAGE.glob("*.py")) + sorted((ROOT / "space").glob("*.py")) + [ROOT / "illada_cli.py"]
SUBMODULES = {path.stem for path in PACKAGE.glob("*.py")} | {"configuration"}


def imports(path: Path):
    """(module, name) for every `from module import name` in the file, at any depth; module keeps its dots."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            module = "." * node.level + (node.module or "")
            for alias in node.names:
                yield module, alias.name


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_module_imports_another_modules_private_names(path):
    ours = [(m, n) for m, n in imports(path) if m.startswith(".") or m.startswith("modeling_illada")]
    assert [f"from {m} import {n}" for m, n in ours if n.startswith("_") and n != "__version__"] == []


@pytest.mark.parametrize("path", sorted(PACKAGE.glob("*.py")), ids=lambda p: p.name)
def test_no_module_takes_a_name_from_the_package_root(path):
    # Any submodule's import has already run the package root: `from . import X` may name a submodule, not a class
    # re-exported there for its registration side effect.
    taken = [n for m, n in imports(path) if m == "." and n not in SUBMODULES and n != "__version__"]
    assert taken == []


class _Holder:
    def __init__(self, **fields):
        self.__dict__.update(fields)


def _model(generation: dict, config: dict):
    model = _Holder(generation_config=GenerationConfig(), config=_Holder(**config))
    for key, value in generation.items():
        setattr(model.generation_config, key, value)
    return model


def test_a_special_id_comes_from_the_argument_then_the_generation_config_then_the_config():
    model = _model({"mask_token_id": 7}, {"mask_token_id": 5, "eos_token_id": [2, 9]})
    assert special_token_id(model, "mask_token_id", 11) == 11
    assert special_token_id(model, "mask_token_id") == 7
    model.generation_config.mask_token_id = None
    assert special_token_id(model, "mask_token_id") == 5
    assert special_token_ids(model, "eos_token_id") == [2, 9] and special_token_id(model, "eos_token_id") == 2
    assert special_token_id(model, "pad_token_id") is None and special_token_ids(model, "pad_token_id") == []


def test_the_end_ids_are_every_eos_then_the_eot():
    model = _model({"eos_token_id": [2, 4], "eot_token_id": 6}, {"eos_token_id": 1})
    assert end_token_ids(model) == [2, 4, 6]
    assert end_token_ids(model, eos_token_id=8) == [8, 6]
    model.generation_config.eos_token_id = None
    assert end_token_ids(model) == [1, 6]
