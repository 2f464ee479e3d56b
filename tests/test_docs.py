"""Every flag a command's --help lists is documented under that command in docs/commands.md,
and every command with a parser has a section there."""
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMMANDS = ["dpnn.cli.train", "dpnn.cli.data", "dpnn.cli.digits", "dpnn.cli.gui", "dpnn.cli.export",
            "dpnn.cli.predict", "benchmarks.scaling",
            "benchmarks.mpi_scaling", "benchmarks.profile", "benchmarks.ablation", "benchmarks.data_path",
            "benchmarks.steady_state", "benchmarks.one_worker", "benchmarks.image_size", "benchmarks.deterministic",
            "benchmarks.exact_sums", "benchmarks.bn_micro_shards"]


def heading(command: str) -> str:
    """Its heading in docs/commands.md: `dpnn train` for dpnn.cli.train, else `python -m MODULE`."""
    return f"`dpnn {command.rsplit('.', 1)[1]}`" if command.startswith("dpnn.cli.") else f"`python -m {command}`"


def section(command: str) -> str:
    text = open(os.path.join(ROOT, "docs", "commands.md")).read()
    parts = re.split(r"^## ", text, flags=re.M)
    return next(p for p in parts if p.startswith(heading(command)))


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
    assert not missing, f"docs/commands.md does not document {missing} of {heading(command)}"


def is_command(path: str) -> bool:
    """A module run with ``python -m`` that parses arguments (not a helper that only builds flags)."""
    text = open(path).read()
    return "argparse" in text and 'if __name__ == "__main__"' in text


def test_commands_page_covers_every_command_with_a_parser():
    found = {f"{d.replace('/', '.')}.{f[:-3]}" for d in ("dpnn/cli", "benchmarks")
             for f in os.listdir(os.path.join(ROOT, d)) if f.endswith(".py") and is_command(os.path.join(ROOT, d, f))}
    found.discard("dpnn.cli.main")              # the dispatcher: dpnn --help, tested in test_cli
    assert found <= set(COMMANDS), f"commands without documentation: {sorted(found - set(COMMANDS))}"


def test_readme_links_the_commands_page():
    assert "docs/commands.md" in open(os.path.join(ROOT, "README.md")).read()


# -- every python block of README.md and docs/*.md runs as written (with small data) -------------------
DOC_FILES = ["README.md"] + sorted(os.path.join("docs", f) for f in os.listdir(os.path.join(ROOT, "docs"))
                                   if f.endswith(".md"))
# Runs before a block (and in its worker processes, which import it): the data sets shrink to a
# few hundred samples (fashion-mnist becomes synthetic where it is not installed) and fit
# trains one epoch; the block itself is run unchanged.
PRELUDE = '''
import dpnn, dpnn.datasets as _ds
from dpnn.datasets import available_datasets as _available
_load, _fit = _ds.load_dataset, dpnn.Model.fit
def _small(name, *args, **kwargs):
    if name not in [n for n, ok, _ in _available() if ok] and name in _ds.LOADERS:
        name = "synthetic"
    train, test, info = _load(name, *args, **kwargs)
    return train.subset(384), test.subset(128), info
def _one_epoch(self, *args, **kwargs):
    kwargs["epochs"] = min(kwargs.get("epochs", 1), 1 + kwargs.get("initial_epoch", 0))
    return _fit(self, *args, **kwargs)
_ds.load_dataset, dpnn.Model.fit = _small, _one_epoch
'''
NEEDS = {"onnxruntime": "onnxruntime", "get_communicator(\"mpi\")": "mpi4py"}   # text in a block -> module


def python_blocks() -> list:
    found = []
    for name in DOC_FILES:
        text = open(os.path.join(ROOT, name)).read()
        for m in re.finditer(r"^```python\n(.*?)^```", text, flags=re.M | re.S):
            line = text[:m.start()].count("\n") + 1
            found.append(pytest.param(m.group(1), id=f"{name}:{line}"))
    return found


@pytest.mark.slow
@pytest.mark.parametrize("code", python_blocks())
def test_every_python_block_runs_as_written(tmp_path, code):
    import importlib.util
    for needle, module in NEEDS.items():
        if needle in code and importlib.util.find_spec(module) is None:
            pytest.skip(f"the block needs {module}")
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    if "onnxruntime" in code:                       # its model.onnx comes from the shell command above it
        export = subprocess.run([sys.executable, "-m", "launch.train", "--dataset", "synthetic", "--limit", "256",
                                 "--epochs", "1", "--workers", "1", "--quiet", "--checkpoint-dir", "none"],
                                cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)
        assert export.returncode == 0, export.stderr
        export = subprocess.run([sys.executable, "-m", "launch.export", "--onnx", "weights.hdf5", "model.onnx"],
                                cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)
        if export.returncode != 0:
            pytest.skip(f"launch.export: {export.stderr.strip()[-200:]}")
    (tmp_path / "block.py").write_text(PRELUDE + "\n" + code)
    r = subprocess.run([sys.executable, "block.py"], cwd=tmp_path, capture_output=True, text=True,
                       timeout=600, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Warning" not in r.stderr or "block.py" in r.stderr, r.stderr     # warnings point at the block


# -- the front page and the site ----------------------------------------------------------------------
def test_readme_is_a_front_page():
    lines = open(os.path.join(ROOT, "README.md")).read().splitlines()
    assert len(lines) <= 250, f"README.md has {len(lines)} lines; move the detail to a docs/ page"
    quick = "\n".join(lines).split("## Quick start", 1)[1].split("```bash\n", 1)[1].split("```", 1)[0]
    assert [ln.split("#")[0].strip() for ln in quick.splitlines()] == ["make train", "make test"]


def test_every_page_linked_from_the_readme_exists():
    text = open(os.path.join(ROOT, "README.md")).read()
    links = re.findall(r"\]\((docs/[^)#]+)", text)
    assert links and all(os.path.exists(os.path.join(ROOT, p)) for p in links), links


def test_the_api_reference_covers_every_module():
    """Each module of the package is on one page of docs/api (a new module needs its line)."""
    import pkgutil
    modules = {m.name for m in pkgutil.walk_packages([os.path.join(ROOT, "dpnn")], "dpnn.")} - {"dpnn.__main__"}
    listed = set()
    for page in os.listdir(os.path.join(ROOT, "docs", "api")):
        listed |= set(re.findall(r"^::: ([\w.]+)", open(os.path.join(ROOT, "docs", "api", page)).read(), re.M))
    assert modules - listed == set(), f"modules missing from docs/api: {sorted(modules - listed)}"
    assert listed - modules == set(), f"docs/api names modules that do not exist: {sorted(listed - modules)}"


@pytest.mark.slow
def test_the_manual_builds_in_strict_mode(tmp_path):
    """make docs: a broken link, a page missing from the nav or an unresolved reference fails."""
    pytest.importorskip("mkdocstrings", reason="make docs needs the docs extra: pip install -e '.[docs]'")
    r = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet", "-d", str(tmp_path / "site")],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    model = (tmp_path / "site" / "api" / "model" / "index.html").read_text()
    assert "dpnn.model.Model" in model and "train_on_batch" in model     # rendered from the docstrings


# -- every shell command the docs show parses with its command's own parser ----------------------------
SHELL_COMMAND = r"(?:^|\s)(?:dpnn |python -m launch\.)(train|predict|export|data|gui|digits)(?:\s+(.*))?$"


def shell_commands() -> list:
    """``dpnn NAME ...`` lines (also after ``mpiexec ...`` or as ``python -m launch.NAME``) of
    the bash blocks in README.md and docs/."""
    found = []
    for name in DOC_FILES:
        text = open(os.path.join(ROOT, name)).read()
        for m in re.finditer(r"^```bash\n(.*?)^```", text, flags=re.M | re.S):
            block = m.group(1).replace("\\\n", " ")
            for ln in block.splitlines():
                ln = ln.split(" #")[0].strip().removeprefix("$ ")
                hit = re.search(SHELL_COMMAND, ln)
                if hit and not ln.startswith(("pip", "make")):
                    found.append(pytest.param(hit.group(1), hit.group(2) or "", id=f"{name}:{ln[:60]}"))
    return found


@pytest.mark.parametrize("command, args", shell_commands())
def test_every_shell_command_in_the_docs_parses(command, args):
    import importlib
    import shlex
    module = importlib.import_module(f"dpnn.cli.{command}")
    parse = module.build_parser().parse_args if hasattr(module, "build_parser") else module.parse_args
    try:
        parse(shlex.split(args))
    except SystemExit as e:
        pytest.fail(f"dpnn {command} {args}: the parser refused it (exit {e.code})")


def test_make_bench_writes_a_build_folder_unless_asked_to_publish():
    """The committed docs/benchmarks/ change only with PUBLISH=1 (make -n: the commands, not run)."""
    make = subprocess.run(["make", "-n", "bench", "VENV=/nonexistent"], cwd=ROOT, capture_output=True, text=True)
    if make.returncode != 0 and "No such file" in make.stderr:
        pytest.skip("make is not installed")
    commands = make.stdout.replace("\\\n", " ").splitlines()
    runs = [ln for ln in commands if "-m benchmarks." in ln]
    assert len(runs) == 7 and all("build/bench/" in ln and "docs/benchmarks" not in ln for ln in runs), runs
    assert not any(ln.startswith("cp ") for ln in commands)
    published = subprocess.run(["make", "-n", "bench", "VENV=/nonexistent", "PUBLISH=1"], cwd=ROOT,
                               capture_output=True, text=True).stdout.splitlines()
    assert "cp build/bench/* docs/benchmarks/" in published
