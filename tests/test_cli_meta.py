"""The package's identity as a user sees it: ``histokit --version`` and ``histokit list``."""
import importlib.metadata
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

import histokit
from histokit.cli import main
from histokit.models.backbones import list_encoders

ROOT = Path(__file__).resolve().parents[1]


def test_version_is_one_value_everywhere(capsys):
    """``__version__`` is the one place the version is written; pyproject reads it, the metadata follows."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "version" in project["project"]["dynamic"] and "version" not in project["project"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "histokit.__version__"}
    assert importlib.metadata.version("histokit") == histokit.__version__
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"histokit {histokit.__version__}"


def test_version_from_the_installed_command():
    out = subprocess.run([sys.executable, "-m", "histokit.cli", "--version"], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == f"histokit {histokit.__version__}"


def _list_lines(capsys) -> dict:
    assert main(["list"]) == 0
    lines = {}
    for line in capsys.readouterr().out.splitlines():
        key, _, rest = line.partition(":")
        lines[key.strip()] = rest.strip()
    return lines


def test_list_keeps_test_variants_apart_from_the_papers_encoders(capsys):
    lines = _list_lines(capsys)
    encoders = lines["encoders"].replace("+ any timm model name", "").strip().split(", ")
    tests = lines["test"].split(" (")[0].split(", ")
    smoke = lines["smoke"].split(" (")[0].split(", ")
    assert not [e for e in encoders if e.endswith(("_test", "_smoke"))]
    assert {"cyphervit_small", "lgffem_base", "resnet50_trunc"} <= set(encoders)
    assert set(tests) == {e for e in list_encoders() if e.endswith("_test")} and "vit_test" in tests
    assert set(smoke) == {e for e in list_encoders() if e.endswith("_smoke")} and "vit_smoke" in smoke
    assert set(encoders) | set(tests) | set(smoke) == set(list_encoders())  # every encoder on exactly one line
    assert "internal" in lines["test"]


def test_workdir_and_init_in_process(tmp_path, monkeypatch, capsys):
    """--workdir moves runs/ and results/ (here, in the clone, too); `histokit init DIR` marks DIR and copies the
    stage notebooks, keeping a user's edited copy unless --force."""
    from histokit import paths

    monkeypatch.delenv("HISTOKIT_WORKDIR", raising=False)
    try:
        work = tmp_path / "study"
        assert main(["--workdir", str(work), "init", str(work)]) == 0
        assert paths.RESULTS_DIR == work.resolve() / "results" and paths.RUNS_DIR == work.resolve() / "runs"
        notebooks = sorted(p.name for p in (work / "notebooks").glob("*.ipynb"))
        assert notebooks == sorted(p.name for p in (ROOT / "notebooks").glob("*.ipynb")) and len(notebooks) == 7
        assert (work / paths.WORKDIR_MARKER).is_file()
        assert paths.find_workdir(work / "notebooks") == work.resolve()  # JupyterLab's kernels start in notebooks/
        edited = work / "notebooks" / notebooks[0]
        edited.write_text("{}")
        capsys.readouterr()
        assert main(["init", str(work)]) == 0 and edited.read_text() == "{}"
        assert "7 already there kept" in capsys.readouterr().out
        assert main(["init", str(work), "--force"]) == 0 and edited.read_text() != "{}"
    finally:
        import os

        os.environ.pop("HISTOKIT_WORKDIR", None)
        paths._resolve()
    assert paths.RESULTS_DIR == ROOT / "results"
