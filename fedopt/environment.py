"""What is recorded about the machine next to a result: versions, host, git commit, time.

:func:`environment_info` returns the Python, platform, fedopt/torch/numpy/ray/grpcio versions
(``None`` when not installed), the CUDA version and device, the git commit of the fedopt
checkout (read from ``.git``, no subprocess), the host name and the UTC time. It is fast (ray is
looked up in the package metadata, never imported) and never raises.
"""
from __future__ import annotations

import datetime as _dt
import os
import platform
import socket
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

PathLike = str | os.PathLike


def _package_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def git_commit(start: PathLike) -> str | None:
    """HEAD commit of the git checkout holding ``start``, read from ``.git`` (no subprocess)."""
    try:
        here = Path(start).resolve()
        for d in (here, *here.parents):
            git = d / ".git"
            if git.is_file():  # worktree / submodule: "gitdir: <path>"
                text = git.read_text().strip()
                if not text.startswith("gitdir:"):
                    return None
                git = (d / text.split(":", 1)[1].strip()).resolve()
            if git.is_dir():
                break
        else:
            return None
        head = (git / "HEAD").read_text().strip()
        if not head.startswith("ref:"):
            return head or None  # detached HEAD
        ref = head.split(":", 1)[1].strip()
        common = git
        if (git / "commondir").is_file():
            common = (git / (git / "commondir").read_text().strip()).resolve()
        for base in (git, common):
            if (base / ref).is_file():
                return (base / ref).read_text().strip() or None
        packed = common / "packed-refs"
        if packed.is_file():
            for line in packed.read_text().splitlines():
                parts = line.split()
                if len(parts) == 2 and parts[1] == ref:
                    return parts[0]
    except OSError:
        return None
    return None  # branch without commits yet


def environment_info() -> dict[str, Any]:
    """Versions and host facts worth recording next to a result (fast, never raises)."""
    info: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "executable": sys.executable,
        "fedopt": _package_version("fedopt"),
        "torch": None,
        "numpy": None,
        "ray": _package_version("ray"),  # metadata only: importing ray takes seconds
        "grpcio": _package_version("grpcio"),
        "cuda": None,
        "cuda_device": None,
        "git_commit": git_commit(Path(__file__).parent),
        "hostname": socket.gethostname(),
        "time": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    try:
        import numpy

        info["numpy"] = numpy.__version__
    except ImportError:
        pass
    try:
        import torch

        info["torch"] = torch.__version__
        info["cuda"] = torch.version.cuda
        if torch.cuda.is_available():
            info["cuda_device"] = torch.cuda.get_device_name(0)
    except Exception:  # a broken CUDA setup must not stop a run from being recorded
        pass
    return info
