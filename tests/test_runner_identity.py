"""A run's identity (paper, profile, run directory, recipe digest) is the runner's: ``--param`` cannot set it, every
stage checks it against ``<run_dir>/identity.json``, and only done-markers of this identity's fingerprint publish."""
from __future__ import annotations

import json

import pytest

from histokit import run_identity, runner
from histokit.cli import main
from histokit.run_identity import IdentityError, check_stage_identity
from histokit.runner import RunnerError, finished_stages, run_parameters, stage_is_current

from runner_helpers import fake_stages, run  # noqa: F401  (fixture)

pytestmark = pytest.mark.bad_input


@pytest.mark.parametrize("pair", ["paper=chen2022", "profile=full", "run_dir=/tmp/elsewhere", "seed=3",
                                  "checkpoints={}"])
def test_param_cannot_set_the_runners_own_parameters(fake_stages, tmp_path, capsys, monkeypatch, pair):
    called = []
    monkeypatch.setattr(runner, "reproduce", lambda *a, **k: called.append(k))
    code = main(["reproduce", "esvit", "--fresh-kernels", "--param", pair])
    err = capsys.readouterr().err
    name = pair.split("=")[0]
    assert code == 2 and not called
    assert err.count("\n") == 1 and f"--param {name}=" in err and "refused" in err
    assert runner.RUNNER_PARAMS[name] in err  # and says which flag sets it


def test_reproduce_refuses_identity_parameters_in_extra(fake_stages, tmp_path):
    for name, value in [("paper", "chen2022"), ("run_dir", str(tmp_path / "elsewhere")), ("profile", "full")]:
        with pytest.raises(RunnerError, match=rf"parameter '{name}' cannot be given as an extra parameter"):
            run(tmp_path, extra={name: value})
    assert not (tmp_path / "run").exists() and not (tmp_path / "elsewhere").exists()
    assert not (tmp_path / "results").exists()


def test_a_stage_handed_another_run_dir_than_its_marker_is_refused(fake_stages, tmp_path):
    run_dir = tmp_path / "run"
    params = run_parameters("esvit", "smoke", None, tmp_path / "elsewhere")
    with pytest.raises(RunnerError, match="run_dir is fixed by the runner"):
        runner.run_stage("01_data", params, run_dir)
    assert not (tmp_path / "elsewhere").exists() and not (run_dir / "stages").exists()


def test_the_runner_writes_the_identity_and_refuses_another_papers_run_dir(fake_stages, tmp_path):
    run(tmp_path)
    identity = json.loads((tmp_path / "run" / "identity.json").read_text())
    assert (identity["paper"], identity["profile"], identity["label"]) == ("esvit", "smoke", "smoke")
    assert len(identity["recipe"]) == 64
    published = json.loads((tmp_path / "results" / "esvit" / "smoke" / "run.json").read_text())
    assert published["recipe"] == identity["recipe"]
    with pytest.raises(RunnerError, match=r"holds a run of esvit / smoke .*identity\.json.*own --run-dir"):
        runner.reproduce("chen2022", "smoke", run_dir=str(tmp_path / "run"), device="cpu", fresh_kernels=True)


def test_a_done_marker_of_another_recipe_is_not_published(fake_stages, tmp_path, monkeypatch, capsys):
    run(tmp_path)
    params = run_parameters("esvit", "smoke", str(tmp_path / "data"), tmp_path / "run", "cpu")
    assert finished_stages(tmp_path / "run", params)[1] == []
    (tmp_path / "results").rename(tmp_path / "results_first")

    real = run_identity.recipe_digest
    monkeypatch.setattr(run_identity, "recipe_digest", lambda recipe: "edited-" + real(recipe)[:8])
    assert not any(stage_is_current(s, params, tmp_path / "run") for s in runner.STAGES)
    run(tmp_path, only=["07"])  # only the last stage re-runs under the edited recipe: the others are stale
    out = capsys.readouterr().out
    assert "the recipe changed since the last run here" in out
    assert "not published: 01_data, 02_pretrain" in out
    assert not (tmp_path / "results").exists()


def test_publishing_checks_each_marker_fingerprint(fake_stages, tmp_path):
    run(tmp_path)
    params = run_parameters("esvit", "smoke", str(tmp_path / "data"), tmp_path / "run", "cpu")
    marker = tmp_path / "run" / "stages" / "04_index.done.json"
    data = json.loads(marker.read_text())
    marker.write_text(json.dumps({**data, "fingerprint": "0" * 64}))  # present, but not of these inputs
    markers, stale = finished_stages(tmp_path / "run", params)
    assert stale == ["04_index"] and len(markers) == 6


def _identity(tmp_path, paper="esvit", recipe="r1"):
    return {"paper": paper, "profile": "smoke", "label": "smoke", "run_dir": str(tmp_path / "run"), "recipe": recipe}


def test_open_stage_refuses_another_papers_run_directory(tmp_path):
    from histokit.stages import open_stage

    open_stage("esvit", "smoke", run_dir=str(tmp_path / "run"), device="cpu")
    with pytest.raises(IdentityError, match=r"paper='chen2022' \(the run directory's: 'esvit'\)"):
        open_stage("chen2022", "smoke", run_dir=str(tmp_path / "run"), device="cpu")
    assert json.loads((tmp_path / "run" / "identity.json").read_text())["paper"] == "esvit"


def test_under_the_runner_a_stage_needs_the_runners_identity(tmp_path):
    with pytest.raises(IdentityError, match="not the run directory histokit reproduce prepared"):
        check_stage_identity(tmp_path / "run", _identity(tmp_path), under_runner=True)
    assert not (tmp_path / "run").exists()  # the stage stopped before writing anything
    check_stage_identity(tmp_path / "run", _identity(tmp_path), under_runner=False)  # by hand: written once
    with pytest.raises(IdentityError, match=r"recipe='r2' \(the run directory's: 'r1'\)"):
        check_stage_identity(tmp_path / "run", _identity(tmp_path, recipe="r2"), under_runner=True)
    check_stage_identity(tmp_path / "run", _identity(tmp_path), under_runner=True)


@pytest.mark.parametrize("damage", ['{"paper": ', "[]", "{}"])
def test_a_damaged_identity_file_is_named(tmp_path, damage):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "identity.json").write_text(damage)
    with pytest.raises(IdentityError, match=r"identity\.json is damaged"):
        check_stage_identity(tmp_path / "run", _identity(tmp_path), under_runner=False)
    with pytest.raises(RunnerError, match=r"identity\.json is damaged") as err:
        runner.establish_identity(tmp_path / "run", _identity(tmp_path))
    assert "\n" not in str(err.value)
    assert (tmp_path / "run" / "identity.json").read_text() == damage  # not overwritten


def test_the_resolved_recipe_is_published_beside_the_tables_and_is_the_one_the_digest_names(fake_stages, tmp_path):
    """Config next to its output: ``recipe.json`` is the recipe the run ran (its digest is run.json's), with
    repository paths written relative, so a reader sees every model, dataset, schedule and table spec used."""
    import hashlib

    from histokit.papers import get_recipe

    run(tmp_path)
    target = tmp_path / "results" / "esvit" / "smoke"
    document = json.loads((target / "recipe.json").read_text())
    digest = hashlib.sha256(json.dumps(document, sort_keys=True, default=repr).encode()).hexdigest()
    assert digest == json.loads((target / "run.json").read_text())["recipe"]
    assert document == run_identity.recipe_document(get_recipe("esvit", "smoke"))
    assert document["paper"] == "esvit" and {t["name"] for t in document["pretrain"]} >= {"esvit_pretrain"}
    from pathlib import Path

    assert str(Path(__file__).resolve().parents[1]) not in json.dumps(document)  # no absolute repository path
