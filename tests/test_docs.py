"""Every flag a command's --help lists is documented under that command in docs/commands.md,
and every command with a parser has a section there."""
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMMANDS = ["launch.train", "launch.data", "launch.digits", "launch.gui", "launch.export", "launch.predict",
            "benchmarks.scaling",
            "benchmarks.mpi_scaling", "benchmarks.profile", "benchmarks.ablation", "benchmarks.data_path",
            "benchmarks.steady_state"]


def section(command: str) -> str:
    text = open(os.path.join(ROOT, "docs", "commands.md")).read()
    parts = re.split(r"^## ", text, flags=re.M)
    return next(p for p in parts if p.startswith(f"`python -m {command}`"))


@pytest.mark.parametrize("command", COMMANDS)
def test_every_flag_is_documented(command):
    out = subprocess.run([sys.executable, "-m", command, "--help"], cwd=ROOT, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    usage = out.stdout.split("\n\n")[0]                          # the usage block lists every flag
    flags = set(re.findall(r"\[(--[a-z0-9][a-z0-9-]*)", usage)) | set(re.findall(r"\| (--[a-z0-9-]+)", usage))
    assert flags, usage
    documented = section(command)
    missing = sorted(f for f in flags - {"--help"} if f"`{f}" not in documented)
    assert not missing, f"docs/commands.md does not document {missing} of python -m {command}"


def is_command(path: str) -> bool:
    """A module run with ``python -m`` that parses arguments (not a helper that only builds flags)."""
    text = open(path).read()
    return "argparse" in text and 'if __name__ == "__main__"' in text


def test_commands_page_covers_every_command_with_a_parser():
    found = {f"{d}.{f[:-3]}" for d in ("launch", "benchmarks") for f in os.listdir(os.path.join(ROOT, d))
             if f.endswith(".py") and is_command(os.path.join(ROOT, d, f))}
    assert found <= set(COMMANDS), f"commands without documentation: {sorted(found - set(COMMANDS))}"


def test_readme_links_the_commands_page():
    assert "docs/commands.md" in open(os.path.join(ROOT, "README.md")).read()
