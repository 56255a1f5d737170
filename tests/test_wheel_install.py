"""histokit as a package (issue 20, item 1): the wheel built from this checkout, installed in a new virtual
environment outside the repository, has its manifests, notebooks and bundled tiles, keeps runs/ and results/ in the
user's work directory, and reproduces esvit's smoke tables there.

The new environment gets histokit from the wheel only; its dependencies are this environment's (the pinned stack,
reached through a .pth file, so the test needs no network and no second multi-GB PyTorch install). With
HISTOKIT_WHEEL_TEST_DEPS=install the wheel is installed with its dependencies from the package index instead."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

import histokit

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("histokit", "pyproject.toml", "setup.py", "MANIFEST.in", "README.md", "LICENSE", "data_manifests",
           "notebooks")
pytestmark = pytest.mark.wheel


def _uv() -> str:
    uv = Path(sys.prefix) / "bin" / "uv"
    found = str(uv) if uv.exists() else shutil.which("uv")
    if not found:
        pytest.skip("uv is not installed")
    return found


def _clean_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HISTOKIT_", "PYTHONPATH", "VIRTUAL_ENV"))}
    return {**env, **extra}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel, built from a copy of the sources (the shared checkout gets no build/ folder)."""
    src = tmp_path_factory.mktemp("src")
    for name in SOURCES:
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=shutil.ignore_patterns("__pycache__", ".ipynb_checkpoints",
                                                                           "*.egg-info", "_shipped"))
        else:
            shutil.copy2(path, src / name)
    out = tmp_path_factory.mktemp("dist")
    subprocess.run([_uv(), "build", "--wheel", "--no-build-isolation", "-o", str(out), str(src)], check=True,
                   capture_output=True, text=True, env=_clean_env())
    (built,) = out.glob("histokit-*.whl")
    return built


@pytest.fixture(scope="module")
def venv(wheel, tmp_path_factory) -> Path:
    env_dir = tmp_path_factory.mktemp("venv") / "env"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env_dir)], check=True)
    python = env_dir / "bin" / "python"
    if os.environ.get("HISTOKIT_WHEEL_TEST_DEPS") == "install":
        subprocess.run([_uv(), "pip", "install", "--python", str(python), f"{wheel}[dev]"], check=True)
    else:
        purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                 check=True, capture_output=True, text=True).stdout.strip()
        # this environment's dependencies; the .pth files in it (the editable histokit) are not processed
        Path(purelib, "histokit_test_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
        subprocess.run([_uv(), "pip", "install", "--python", str(python), "--no-deps", str(wheel)], check=True,
                       capture_output=True, text=True, env=_clean_env())
    return env_dir


def _run(venv: Path, *args: str, cwd: Path, timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run([str(venv / "bin" / "histokit"), *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=_clean_env(HOME=os.environ.get("HOME", str(cwd))))


def test_the_wheel_ships_manifests_notebooks_tiles_and_py_typed(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for manifest in (ROOT / "data_manifests").glob("*.yaml"):
        assert f"histokit/_shipped/data_manifests/{manifest.name}" in names
    for notebook in (ROOT / "notebooks").glob("*.ipynb"):
        assert f"histokit/_shipped/notebooks/{notebook.name}" in names
    assert "histokit/py.typed" in names
    tiles = [n for n in names if n.startswith("histokit/assets/kather2016_tiny/") and n.endswith(".png")]
    assert len(tiles) == 100
    assert any(n.startswith("histokit/papers/paper_tables/") for n in names)
    assert f"histokit-{histokit.__version__}.dist-info/METADATA" in names


def test_installed_histokit_works_outside_the_clone(venv, tmp_path):
    where = subprocess.run([str(venv / "bin" / "python"), "-c",
                            "import histokit, histokit.paths as p; print(p.IN_CLONE, histokit.__file__)"],
                           cwd=tmp_path, capture_output=True, text=True, check=True, env=_clean_env()).stdout.split()
    assert where[0] == "False" and Path(where[1]).is_relative_to(venv)  # the wheel's copy, not this checkout
    assert _run(venv, "--version", cwd=tmp_path).stdout.strip() == f"histokit {histokit.__version__}"
    listing = _run(venv, "data", "list", cwd=tmp_path)
    assert listing.returncode == 0, listing.stderr
    rows = {line.split()[0]: line.split()[1] for line in listing.stdout.splitlines() if line.strip()}
    assert set(rows) == {p.stem for p in (ROOT / "data_manifests").glob("*.yaml")}
    assert rows["bach"] == "open" and rows["kather2016_tiny"] == "bundled"
    work = tmp_path / "study"
    init = _run(venv, "init", str(work), cwd=tmp_path)
    assert init.returncode == 0, init.stderr
    assert sorted(p.name for p in (work / "notebooks").glob("*.ipynb")) == sorted(
        p.name for p in (ROOT / "notebooks").glob("*.ipynb"))
    assert (work / ".histokit-workdir").is_file()
    # from the work directory or any folder under it (JupyterLab's kernels start in notebooks/)
    for cwd in (work, work / "notebooks"):
        out = subprocess.run([str(venv / "bin" / "python"), "-c",
                              "import histokit.paths as p; print(p.RESULTS_DIR, p.RUNS_DIR)"],
                             cwd=cwd, capture_output=True, text=True, check=True, env=_clean_env()).stdout.split()
        assert out == [str(work / "results"), str(work / "runs")]
    # --check finds the bundled data and the notebooks (hub weights it may list: offline here, smoke falls back)
    check = _run(venv, "reproduce", "esvit", "--check", cwd=work)
    text = check.stdout + check.stderr
    assert "esvit / smoke" in text and "not found" not in text and "kather2016_tiny" not in text, text


def test_installed_histokit_reproduces_esvit_in_the_work_directory(venv, tmp_path):
    work = tmp_path / "study"
    assert _run(venv, "init", str(work), cwd=tmp_path).returncode == 0
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    # --workdir from another directory: the same place as running inside it
    run = _run(venv, "--workdir", str(work), "reproduce", "esvit", "--quiet", cwd=elsewhere, timeout=1800)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    tables = work / "results" / "esvit" / "smoke"
    for name in ("table1.md", "table1.csv", "table2.md", "run.json"):
        assert (tables / name).is_file(), name
    assert (work / "runs" / "esvit" / "smoke").is_dir()
    assert not list(elsewhere.iterdir())
    site = Path(subprocess.run([str(venv / "bin" / "python"), "-c", "import histokit; print(histokit.__file__)"],
                               cwd=elsewhere, capture_output=True, text=True, check=True,
                               env=_clean_env()).stdout.strip()).parent
    assert site.is_relative_to(venv)
    assert not (site / "results").exists() and not (site / "runs").exists()
    assert not (site.parent / "results").exists() and not (site.parent / "runs").exists()
