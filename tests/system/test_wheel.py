"""The built wheel: one top-level name, `qjobd`, installable beside python-daemon.

python-daemon owns the top-level import name `daemon`; a wheel that installed our
`daemon/` folder under that name would break it (or be broken by it). The wheel is built
from this checkout, installed without its dependencies into a fresh virtual environment
that sees the test environment's packages (python-daemon among them) only as plain
paths, and used from a directory outside the checkout.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _run(*cmd: str | Path, cwd: Path, env: dict[str, str] | None = None
         ) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, f"{cmd} failed:\n{result.stdout}\n{result.stderr}"
    return result


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    # from a copy: an in-tree build leaves build/, whose stale files a later build would ship
    source = out / "source"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "*.egg-info", "__pycache__", ".*_cache", "bench"))
    _run(sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
         "--wheel-dir", out, source, cwd=out)
    (built,) = out.glob("qjobd-*.whl")
    return built


@pytest.fixture(scope="module")
def fresh_venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    venv = tmp_path_factory.mktemp("venv") / "fresh"
    _run(sys.executable, "-m", "venv", venv, cwd=venv.parent)
    _run(venv / "bin" / "python", "-m", "pip", "install", "--quiet", "--no-deps", "--no-index",
         wheel, cwd=venv.parent)
    # the dependencies (and python-daemon) from the test environment, as a plain path: a
    # path in a .pth file is not a site directory, so the editable install's finder that
    # lives there is not loaded and only the wheel provides `qjobd`
    site = Path(_run(venv / "bin" / "python", "-c",
                     "import sysconfig; print(sysconfig.get_paths()['purelib'])",
                     cwd=venv.parent).stdout.strip())
    (site / "test-environment.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return venv


def test_the_wheel_installs_no_top_level_name_but_qjobd(wheel: Path):
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        (top_level,) = [n for n in names if n.endswith(".dist-info/top_level.txt")]
        declared = zf.read(top_level).decode().split()
    tops = {name.split("/")[0] for name in names}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"qjobd"}
    assert declared == ["qjobd"]
    for module in ("qjobd/daemon/process/main.py", "qjobd/daemon/client/ctl.py",
                   "qjobd/backends/ionq.py", "qjobd/store/store.py", "qjobd/errors.py"):
        assert module in names, f"{module} is missing from the wheel"


def test_the_wheel_sits_beside_python_daemon(fresh_venv: Path, tmp_path: Path):
    probe = (
        "import daemon, daemon.daemon, qjobd, qjobd.daemon, qjobd.backends, qjobd.store\n"
        "import qjobd.daemon.process.main, qjobd.daemon.client.ctl\n"
        "print(daemon.__file__); print(qjobd.__file__); print(qjobd.__version__)\n"
        "print(daemon.DaemonContext.__name__)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    lines = _run(fresh_venv / "bin" / "python", "-c", probe, cwd=tmp_path,
                 env=env).stdout.split()
    python_daemon, ours, version, context = lines
    assert python_daemon.endswith("site-packages/daemon/__init__.py"), python_daemon
    assert ours.startswith(str(fresh_venv)), f"qjobd came from {ours}, not the wheel"
    assert version[0].isdigit() and context == "DaemonContext"


@pytest.mark.parametrize("program", ["qjobd", "qjobctl"])
def test_the_wheels_programs_start(fresh_venv: Path, tmp_path: Path, program: str):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = _run(fresh_venv / "bin" / program, "--help", cwd=tmp_path, env=env).stdout
    assert out.startswith(f"usage: {program}")
