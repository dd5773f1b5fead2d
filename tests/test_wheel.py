"""The wheel works without the repository: build it, install it into a fresh venv, run a shipped
config by name from an empty folder, with none of the optional extras importable.

Offline by construction: ``pip wheel --no-build-isolation --no-index`` builds with this venv's
setuptools, and the wheel is installed with ``--no-deps --no-index``. The fresh venv reuses this
venv's torch, numpy, pydantic, ... through one ``.pth`` file naming this venv's site-packages (a
plain path line: the directory is appended to ``sys.path`` but its own ``.pth`` files — among
them the editable install of the repository — are not run, so ``fedopt`` can only come from the
wheel; the test checks that). A second ``.pth`` blocks ``ray``, ``grpc``, ``matplotlib`` and
``tensorboard`` in the fresh venv, so the run proves the core needs none of the extras and that
asking for one names the extra to install.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
MAPPED = ("server", "client", "protocols", "simulations")
BLOCKER = '''\
import sys
class _BlockExtras:
    """the optional extras are "not installed" in this venv"""
    names = ("ray", "grpc", "matplotlib", "tensorboard")
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in self.names:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None
sys.meta_path.insert(0, _BlockExtras())
'''


def _run(cmd, cwd, env=None, check=True):
    res = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True,
                         text=True, timeout=600)
    if check and res.returncode != 0:
        raise AssertionError(f"{cmd} failed ({res.returncode}):\n{res.stdout}\n{res.stderr}")
    return res


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel built from a copy of the working tree (the build writes build/ and
    *.egg-info next to the sources: never into the shared checkout)."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(
        ".git", ".venv", "runs", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache",
        "tests", "docs"))
    _run([sys.executable, "-m", "pip", "wheel", ".", "--no-deps", "--no-build-isolation",
          "--no-index", "--disable-pip-version-check", "-q", "-w", tmp / "dist"], cwd=src)
    (whl,) = (tmp / "dist").glob("fedopt-*.whl")
    return whl


def test_wheel_holds_only_fedopt_with_its_data(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    assert tops == {"fedopt", next(t for t in tops if t.endswith(".dist-info"))}, tops
    for top in MAPPED:            # installed under fedopt, not as colliding top-level packages
        assert f"fedopt/{top}/__init__.py" in names
    assert "fedopt/py.typed" in names
    assert "fedopt/simulations/configs/quickstart.yaml" in names
    assert any(n.startswith("fedopt/data/assets/") and n.endswith(".npz") for n in names)
    dist = next(t for t in tops if t.endswith(".dist-info"))
    entry = zipfile.ZipFile(wheel).read(f"{dist}/entry_points.txt").decode()
    assert "fedopt.simulations.cli:main" in entry and "fedopt.server.ray_config:ENTRY" in entry


def test_wheel_runs_a_shipped_config_by_name_from_an_empty_folder(wheel, tmp_path):
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", venv], cwd=tmp_path)
    py = venv / "bin" / "python"
    site = Path(_run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                     cwd=tmp_path).stdout.strip())
    (site / "_fedopt_test_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    (site / "_fedopt_block_extras.py").write_text(BLOCKER)
    (site / "_fedopt_block_extras.pth").write_text("import _fedopt_block_extras\n")
    _run([sys.executable, "-m", "pip", "--python", py, "install", "--no-deps", "--no-index",
          "--disable-pip-version-check", "-q", wheel], cwd=tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "RAY_ADDRESS")}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"

    where = _run([py, "-c", "import importlib.util as u, json, fedopt; print(json.dumps("
                  "[fedopt.__file__] + [u.find_spec(n) is None for n in "
                  f"{list(MAPPED)!r}]))"], cwd=empty, env=env)
    fedopt_file, *absent = json.loads(where.stdout)
    assert Path(fedopt_file).is_relative_to(site)      # the wheel's copy, not the repository
    assert all(absent), "a top-level server/client/protocols/simulations is importable"

    res = _run(["fedopt", "run", "quickstart", "--out", "run", "--no-progress",
                "--set", "algorithm.rounds=3"], cwd=empty, env=env)
    assert "run directory: run" in res.stdout
    summary = json.loads((empty / "run" / "summary.json").read_text())
    assert summary["rounds"] == 3 and summary["num_clients"] == 100
    config = json.loads((empty / "run" / "config.json").read_text())
    assert config["algorithm"]["name"] == "fedavg"
    assert sorted(p.name for p in empty.iterdir()) == ["run"]   # nothing else written here

    res = _run(["fedopt", "configs", "copy", "digits_fedadam"], cwd=empty, env=env)
    assert (empty / "digits_fedadam.yaml").read_text().startswith("# FedAdam")

    # an extra that is needed and missing: one error line naming what to install
    res = _run(["fedopt", "run", "quickstart", "--out", "ray-run", "--no-progress",
                "--set", "executor.name=ray", "--set", "algorithm.rounds=1"],
               cwd=empty, env=env, check=False)
    assert res.returncode == 2, res.stderr
    assert res.stderr.strip().splitlines()[-1].startswith("error: ")
    assert "pip install 'fedopt[ray]'" in res.stderr and "Traceback" not in res.stderr
    res = _run(["fedopt", "plot", "run"], cwd=empty, env=env, check=False)
    assert res.returncode == 2 and "pip install 'fedopt[plot]'" in res.stderr, res.stderr
    res = _run(["fedopt", "run", "quickstart", "--out", "tb-run", "--no-progress",
                "--set", "tensorboard=true", "--set", "algorithm.rounds=1"],
               cwd=empty, env=env, check=False)
    assert res.returncode == 2 and "pip install 'fedopt[tensorboard]'" in res.stderr, res.stderr
    (tmp_path / "tokens").write_text("a-client-token-of-some-length-0123456789\n")
    res = _run(["fedopt", "run", "quickstart", "--out", "grpc-run", "--no-progress",
                "--set", "executor.name=grpc", "--set", f"executor.tokens={tmp_path / 'tokens'}",
                "--set", "algorithm.rounds=1"], cwd=empty, env=env, check=False)
    assert res.returncode == 2 and "pip install 'fedopt[grpc]'" in res.stderr, res.stderr
    assert "Traceback" not in res.stderr

    # installed from a wheel, the package is already laid out for Ray's py_modules
    res = _run([py, "-c", "import fedopt; from pathlib import Path; "
                "from fedopt.server.ray_runtime import package_dir; "
                "print(package_dir() == Path(fedopt.__file__).resolve().parent)"],
               cwd=empty, env=env)
    assert res.stdout.strip() == "True"
