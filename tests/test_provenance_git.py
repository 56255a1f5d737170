"""run.json's ``git.dirty`` says whether the code differed from the commit; results a run publishes do not count."""
import subprocess

import pytest

from histokit import paths, provenance


def _git(repo, *args):
    subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True)


@pytest.fixture
def clone(tmp_path, monkeypatch):
    repo = tmp_path / "kit"
    (repo / "histokit").mkdir(parents=True)
    (repo / "results" / "esvit").mkdir(parents=True)
    (repo / "histokit" / "code.py").write_text("x = 1\n")
    (repo / "results" / "esvit" / "table1.csv").write_text("a\n1\n")
    _git(repo, "init", "-q")
    _git(repo, "add", ".")
    _git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init")
    monkeypatch.setattr(paths, "IN_CLONE", True)
    monkeypatch.setattr(paths, "REPO_DIR", repo)
    return repo


def test_a_republished_table_does_not_make_the_run_dirty(clone):
    assert provenance.git_commit()["dirty"] is False
    (clone / "results" / "esvit" / "table1.csv").write_text("a\n2\n")  # what an earlier paper's publication does
    assert provenance.git_commit()["dirty"] is False


def test_an_edited_module_makes_the_run_dirty(clone):
    (clone / "histokit" / "code.py").write_text("x = 2\n")
    got = provenance.git_commit()
    assert got["dirty"] is True and len(got["commit"]) == 40
