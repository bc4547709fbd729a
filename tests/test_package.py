"""The package as a user installs it: a wheel built from this tree, installed into a fresh venv.

Offline: the wheel is built without build isolation (the running environment's setuptools) and
installed with ``--no-deps``; the fresh venv sees this environment's packages (torch, Lightning ...)
through a ``.pth`` line, but ``lightning_normwatch`` itself only from the wheel.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest

import lightning_normwatch

ROOT = Path(__file__).resolve().parents[1]


def run(*args: str | Path, cwd: Path) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    proc = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{args}: {proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout.strip()


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(the venv's bin directory, the wheel)."""
    tmp = tmp_path_factory.mktemp("package")
    source = tmp / "source"  # a copy: the build's build/ and *.egg-info stay out of the repository
    skip = shutil.ignore_patterns("__pycache__")
    shutil.copytree(ROOT / "lightning_normwatch", source / "lightning_normwatch", ignore=skip)
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, source / name)
    wheels = tmp / "wheels"
    run(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", wheels, source, cwd=tmp)
    (wheel,) = wheels.glob("lightning_normwatch-*.whl")
    env_dir = tmp / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    bin_dir = env_dir / ("Scripts" if os.name == "nt" else "bin")
    site = Path(run(bin_dir / "python", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])", cwd=tmp))
    (site / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")  # torch, Lightning, ... from here
    run(sys.executable, "-m", "pip", "--python", bin_dir / "python", "install", "-q", "--no-deps", wheel, cwd=tmp)
    return bin_dir, wheel


def test_wheel_holds_license_and_py_typed(installed: tuple[Path, Path]) -> None:
    _, wheel = installed
    names = zipfile.ZipFile(wheel).namelist()
    assert "lightning_normwatch/py.typed" in names
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    assert "lightning_normwatch/adapters/loop.py" in names
    metadata = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("METADATA"))).decode()
    assert "License-Expression: Apache-2.0" in metadata and "Classifier: Typing :: Typed" in metadata


def test_wheel_ships_the_tensorboard_plugin(installed: tuple[Path, Path]) -> None:
    """The NormWatch tab: its static files (every one the plugin serves) and the entry point TensorBoard looks up."""
    from lightning_normwatch.view.tensorboard_plugin.plugin import STATIC_FILES

    _, wheel = installed
    archive = zipfile.ZipFile(wheel)
    names = archive.namelist()
    static = ROOT / "lightning_normwatch/view/tensorboard_plugin/static"
    assert {p.name for p in static.iterdir()} == set(STATIC_FILES)
    for name in STATIC_FILES:
        assert f"lightning_normwatch/view/tensorboard_plugin/static/{name}" in names, name
    entry_points = archive.read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "[tensorboard_plugins]" in entry_points
    assert "normwatch = lightning_normwatch.view.tensorboard_plugin.plugin:NormWatchPlugin" in entry_points


def test_normwatch_version_from_the_installed_wheel(installed: tuple[Path, Path], tmp_path: Path) -> None:
    bin_dir, _ = installed
    assert run(bin_dir / "normwatch", "--version", cwd=tmp_path) == f"normwatch {lightning_normwatch.__version__}"
    assert run(bin_dir / "python", "-m", "lightning_normwatch", "--version", cwd=tmp_path).endswith(
        lightning_normwatch.__version__
    )


@pytest.mark.slow  # a fresh interpreter imports torch and both Lightning packages: 5-20 s
def test_public_imports_from_the_installed_wheel(installed: tuple[Path, Path], tmp_path: Path) -> None:
    bin_dir, _ = installed
    code = (
        "import lightning_normwatch as m, pathlib; from lightning_normwatch import NormWatch, LoopWatch; "
        "from lightning_normwatch.lightning import NormWatch as L; print(m.__file__)"
    )
    location = Path(run(bin_dir / "python", "-c", code, cwd=tmp_path))
    assert location.is_relative_to(bin_dir.parent) and (location.parent / "py.typed").exists()


@pytest.mark.slow  # 200 training steps in a fresh interpreter: 15-40 s
def test_the_readme_install_snippet_runs_and_warns(tmp_path: Path) -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("\n## Quick start\n", 1)[1].split("\n## ", 1)[0]
    snippet = section.split("```python\n", 1)[1].split("```", 1)[0]
    (tmp_path / "snippet.py").write_text(snippet)
    env = os.environ | {"PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "snippet.py"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "NormWatch [feature_scale] input (batch):" in proc.stderr + proc.stdout  # what its comment promises
    assert list((tmp_path / "logs").rglob("events.out.tfevents.*"))
