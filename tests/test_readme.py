"""The README's examples, run as a reader would: in order, copied verbatim.

A reader who follows the quick start must not hit an error the README does not mention, so
every code block that the README presents as runnable is executed here, from a scratch working
directory that holds the repository's ``simulations/`` folder (the README's relative paths).
"""
from __future__ import annotations

import contextlib
import io
import json
import re
import shlex
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()


def _blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", README, flags=re.S)


@pytest.fixture
def reader_dir(tmp_path, monkeypatch):
    """A fresh working directory where the README's relative paths resolve."""
    (tmp_path / "simulations").symlink_to(REPO / "simulations")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_quickstart_yaml_block_is_the_shipped_config():
    block = next(b for b in _blocks("yaml") if b.startswith("# simulations/configs/quickstart.yaml"))
    shipped = yaml.safe_load((REPO / "simulations/configs/quickstart.yaml").read_text())
    assert yaml.safe_load(block) == shipped


def test_readme_links_stay_inside_the_repository():
    for target in re.findall(r"\]\(([^)#]+)\)", README):
        if target.startswith(("http://", "https://")):
            continue
        assert (REPO / target).exists(), f"README links to {target}, which is not in the repository"
    assert "../shared" not in README, "the README must not point users outside the repository"


@pytest.mark.slow
def test_python_blocks_run_verbatim(reader_dir):
    blocks = _blocks("python")
    assert len(blocks) >= 2
    for block in blocks:
        namespace: dict = {"__name__": "__readme__"}
        exec(compile(block, "README.md", "exec"), namespace)
    # the notebook example writes its own run folder, not the CLI example's
    assert (reader_dir / "runs/q-python/metrics.jsonl").is_file()
    assert not (reader_dir / "runs/q").exists()


def _cli_lines() -> list[list[str]]:
    """The ``fedopt`` commands of the "Running simulations" block, in order."""
    block = next(b for b in _blocks("bash") if ".venv/bin/fedopt run simulations/configs/quickstart.yaml --out runs/q " in b)
    lines = []
    for line in block.splitlines():
        line = line.split("#", 1)[0].strip()
        if line.startswith(".venv/bin/fedopt"):
            lines.append(shlex.split(line)[1:])
    return lines


@pytest.mark.slow
def test_cli_block_runs_in_order(reader_dir):
    from fedopt.simulations.cli import main

    lines = _cli_lines()
    assert [a[0] for a in lines] == ["run", "run", "plot", "show", "validate", "--help"]
    for args in lines:
        args = [a.replace("CONFIG.yaml", "simulations/configs/quickstart.yaml") for a in args]
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            try:
                code = main(args + (["--no-progress"] if args[0] == "run" else []))
            except SystemExit as e:   # --help
                code = e.code
        assert code == 0, f"fedopt {' '.join(args)} failed: {err.getvalue()}"
    # the first command asked for 100 rounds; resuming with the README's command (which omits
    # the override) must neither shrink the recorded run nor lose rounds
    config = json.loads((reader_dir / "runs/q/config.json").read_text())
    assert config["algorithm"]["rounds"] == 100
    rows = (reader_dir / "runs/q/metrics.jsonl").read_text().splitlines()
    rounds = [json.loads(r)["round"] for r in rows]
    assert rounds == list(range(1, 101))
    assert list((reader_dir / "runs/q/plots").glob("*.png"))


def test_layout_names_every_top_level_module():
    """The Layout block lists what is really there: every file it names exists, and every
    top-level module or subpackage of the five package folders is named (as ``name.py``,
    ``name/`` or by a pattern such as ``grpc_*.py``)."""
    import fnmatch

    block = README.split("## Layout", 1)[1].split("```", 2)[1]
    patterns = set(re.findall(r"[\w*]+\.py", block))
    dirs = set(re.findall(r"(\w+)/", block))
    missing = []
    for folder in ("fedopt", "server", "client", "protocols", "simulations"):
        for entry in sorted((REPO / folder).iterdir()):
            name = entry.name
            if name.startswith(("_", ".")) or name == "py.typed":
                continue
            if entry.is_dir():
                if not any(entry.rglob("*.py")) and name != "configs":
                    continue
                if name not in dirs:
                    missing.append(f"{folder}/{name}/")
            elif entry.suffix == ".py":
                if not any(fnmatch.fnmatch(name, pat) for pat in patterns):
                    missing.append(f"{folder}/{name}")
    assert not missing, f"README's Layout does not mention {missing}"
    for pat in patterns - {"*.py"}:
        if "*" not in pat:
            hits = [q for folder in ("fedopt", "server", "client", "protocols", "simulations")
                    for q in (REPO / folder).rglob(pat)]
            assert hits, f"README's Layout names {pat}, which is not in the repository"
