"""The `illada` console script: its top level imports nothing heavy, and each subcommand builds its own flags."""

import subprocess
import sys

import pytest

import illada_cli
from modeling_illada.caching import CACHES

HELP_SCRIPT = """
import sys
import illada_cli
try:
    illada_cli.main(["--help"])
except SystemExit:
    pass
print(sorted(m for m in ("torch", "transformers", "modeling_illada") if m in sys.modules))
"""


def test_top_level_help_lists_every_command_and_imports_neither_torch_nor_transformers():
    result = subprocess.run([sys.executable, "-c", HELP_SCRIPT], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    *help_lines, imported = result.stdout.strip().splitlines()
    assert imported == "[]"  # torch alone takes seconds to import; `illada --help` answers at once
    text = "\n".join(help_lines)
    for name, command in illada_cli.COMMANDS.items():
        assert name in text and command.help.split()[0] in text


def test_a_subcommand_builds_its_flags_from_its_recipe(capsys):
    with pytest.raises(SystemExit) as exit:
        illada_cli.main(["distill", "--help"])
    assert exit.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: illada distill")
    assert "--output" in out and "--resume" in out  # the run options follow the recipe's fields
    assert "--teacher-cache {" + ",".join(sorted(CACHES)) + "}" in out  # choices come from the policy registry


def test_eval_hands_every_argument_through_untouched():
    parser = illada_cli.command_parser("eval")
    args = parser.parse_args(["--model", "illada", "--tasks", "x", "--help"])
    assert args.lm_eval_args == ["--model", "illada", "--tasks", "x", "--help"]


def test_an_unknown_command_is_refused_with_the_list_of_commands(capsys):
    with pytest.raises(SystemExit) as exit:
        illada_cli.main(["sample"])
    assert exit.value.code == 2
    err = capsys.readouterr().err
    assert "sample" in err and all(name in err for name in illada_cli.COMMANDS)
