"""A run cannot lie about its inputs: fingerprints hold repo-relative paths and checkpoint digests, a re-run stage
invalidates every later one, unknown or missing checkpoints are refused before any stage, and ``--check`` lists
everything missing at once."""
import json

import pytest

from histokit import paths, runner
from notebook_helpers import write_stage_notebook
from histokit.cli import main
from histokit.papers import get_recipe
from histokit.preflight import PreflightError, checkpoint_names, find_missing, validate_checkpoints
from histokit.runner import STAGES, portable, run_stage, stage_inputs, stage_is_current


def _notebook(path, body="x = 1"):
    write_stage_notebook(path, body, "run_dir = ''\nvalue = 1\ncheckpoints = {}")


@pytest.fixture
def seven_notebooks(tmp_path, monkeypatch):
    folder = tmp_path / "notebooks"
    folder.mkdir()
    monkeypatch.setattr(paths, "NOTEBOOK_DIR", folder)
    for stage in STAGES:
        _notebook(folder / f"{stage}.ipynb")
    return folder


def test_fingerprint_paths_are_repo_relative():
    inside = str(paths.REPO_DIR / "runs" / "esvit" / "smoke")
    assert portable({"run_dir": inside, "data_root": "/elsewhere/data", "n": 3}) == \
        {"run_dir": "runs/esvit/smoke", "data_root": "/elsewhere/data", "n": 3}


def test_checkpoint_content_is_part_of_the_inputs(tmp_path):
    weights = tmp_path / "w.pth"
    weights.write_bytes(b"first")
    first = stage_inputs({"checkpoints": {"esvit_swin_tiny": str(weights)}})
    weights.write_bytes(b"second")
    second = stage_inputs({"checkpoints": {"esvit_swin_tiny": str(weights)}})
    assert first["checkpoints"]["esvit_swin_tiny"]["sha256"] != second["checkpoints"]["esvit_swin_tiny"]["sha256"]


@pytest.mark.fault
def test_rerunning_a_stage_invalidates_every_later_stage(seven_notebooks, tmp_path):
    run_dir = tmp_path / "run"
    params = {"run_dir": str(run_dir), "value": 1}
    for stage in STAGES:
        assert run_stage(stage, params, run_dir).status == "ran"
    assert all(stage_is_current(s, params, run_dir) for s in STAGES)
    assert run_stage("04_index", params, run_dir, force=True).status == "ran"
    for later in STAGES[4:]:
        assert not stage_is_current(later, params, run_dir), later
        assert not (run_dir / "stages" / f"{later}.done.json").exists()
    assert all(stage_is_current(s, params, run_dir) for s in STAGES[:4])
    # the next full run re-runs exactly the invalidated stages
    statuses = {s: run_stage(s, params, run_dir).status for s in STAGES}
    assert [s for s, st in statuses.items() if st == "ran"] == list(STAGES[4:])


@pytest.mark.fault
def test_a_changed_checkpoint_file_reruns_the_stage(seven_notebooks, tmp_path):
    run_dir = tmp_path / "run"
    weights = tmp_path / "w.pth"
    weights.write_bytes(b"one")
    params = {"run_dir": str(run_dir), "checkpoints": {"esvit_swin_tiny": str(weights)}}
    assert run_stage("02_pretrain", params, run_dir).status == "ran"
    assert run_stage("02_pretrain", params, run_dir).status == "skipped"
    weights.write_bytes(b"two")
    assert run_stage("02_pretrain", params, run_dir).status == "ran"


def test_every_recipe_checkpoint_is_accepted_by_validation(tmp_path):
    for paper in ("esvit", "chen2022"):
        recipe = get_recipe(paper, "full")
        names = checkpoint_names(recipe)
        assert names, paper
        for name in names:
            f = tmp_path / f"{name}.pth"
            f.write_bytes(b"x")
            validate_checkpoints({name: str(f)}, [recipe])


@pytest.mark.bad_input
def test_unknown_checkpoint_name_and_missing_file_are_refused(tmp_path):
    recipe = get_recipe("esvit", "full")
    f = tmp_path / "w.pth"
    f.write_bytes(b"x")
    with pytest.raises(PreflightError, match="(?s)unknown checkpoint name 'mymodel'.*accept"):
        validate_checkpoints({"mymodel": str(f)}, [recipe])
    name = sorted(checkpoint_names(recipe))[0]
    with pytest.raises(PreflightError, match="does not exist"):
        validate_checkpoints({name: str(tmp_path / "nonexistent.pth")}, [recipe])


@pytest.mark.bad_input
def test_cli_refuses_bad_checkpoint_before_any_stage(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(paths, "RUNS_DIR", tmp_path / "runs")
    name = sorted(checkpoint_names(get_recipe("chen2022", "smoke")))[0]
    code = main(["reproduce", "chen2022", "--checkpoint", f"{name}=/nonexistent.pth", "--only", "03", "--force"])
    assert code == 1
    assert "does not exist" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()  # nothing ran
    # esvit's smoke profile trains smaller variants that official Swin-T weights do not fit: the name is refused
    weights = tmp_path / "w.pth"
    weights.write_bytes(b"x")
    code = main(["reproduce", "esvit", "--checkpoint", f"esvit_swin_tiny={weights}", "--only", "03", "--force"])
    assert code == 1 and "esvit_swin_tiny" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()
    code = main(["reproduce", "esvit", "--checkpoint", f"mymodel={tmp_path}"])
    assert code == 1 and "mymodel" in capsys.readouterr().err


def test_check_lists_every_missing_dataset_at_once(tmp_path, capsys):
    recipe = get_recipe("cyphervit", "full")
    missing = find_missing(recipe, str(tmp_path), {}, rehearse=True)
    names = {m.name for m in missing if m.what == "dataset"}
    expected = {d.dataset for d in recipe.datasets} | {d.test_dataset for d in recipe.datasets if d.test_dataset}
    assert names == expected
    code = main(["reproduce", "all", "--profile", "full", "--rehearse", "--check", "--data-root", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 1
    for paper in ("esvit", "chen2022", "cyphervit", "lgffem"):
        assert f"{paper} / full:" in out
    assert "vgh_nki" in out and "kimia_path24c" in out and "bracs" in out


@pytest.mark.bad_input
def test_rehearse_needs_the_full_profile(capsys):
    assert main(["reproduce", "esvit", "--rehearse"]) == 2
    assert "--profile full" in capsys.readouterr().err


def test_published_parameters_are_portable_in_committed_results():
    """A fresh clone's first make reproduce compares its parameters with these: they hold no absolute path into
    a checkout, so nothing committed is moved aside as 'other parameters'."""
    for run_json in paths.RESULTS_DIR.glob("*/*/run.json"):
        params = json.loads(run_json.read_text())["parameters"]
        assert not str(params.get("run_dir", "")).startswith("/"), run_json
        assert portable(params) == params, run_json


@pytest.mark.fault
def test_other_nodes_join_only_the_torchrun_stages_and_write_no_markers(seven_notebooks, tmp_path):
    from histokit.runner import DISTRIBUTED_STAGES, follow_node

    run_dir = tmp_path / "run"
    params = {"run_dir": str(run_dir), "value": 1}
    with pytest.raises(runner.RunnerError, match="did not finish 01_data"):
        follow_node("esvit", "full", params, run_dir, list(STAGES), 1, wait_s=0.05, poll_s=0.01)
    run_stage("01_data", params, run_dir)  # node 0
    records = follow_node("esvit", "full", params, run_dir, list(STAGES), 1, poll_s=0.01)
    assert [r.stage for r in records] == list(DISTRIBUTED_STAGES)
    assert sorted(p.name for p in (run_dir / "stages").iterdir()) == ["01_data.done.json"]
    assert sorted(p.name for p in (run_dir / "notebooks" / "node1").iterdir()) == \
        [f"{s}.ipynb" for s in DISTRIBUTED_STAGES]


def test_a_fresh_clones_make_reproduce_supersedes_nothing(tmp_path, monkeypatch):
    """``make reproduce`` = ``histokit reproduce all`` with the defaults: the parameters it publishes with equal the
    committed ones, so publishing replaces each committed smoke result in place instead of moving it aside."""
    from histokit.runner import publish_results, run_parameters

    clone = tmp_path / "clone"
    monkeypatch.setattr(paths, "REPO_DIR", clone)  # a checkout somewhere else entirely
    committed = sorted(paths.RESULTS_DIR.glob("*/smoke/run.json"))
    assert committed
    for run_json in committed:
        paper = run_json.parent.parent.name
        fresh = run_parameters(paper, "smoke", None, clone / "runs" / paper / "smoke")
        assert stage_inputs(fresh) == json.loads(run_json.read_text())["parameters"], paper
    # and publishing over a copy of one committed result moves nothing aside
    target = tmp_path / "results" / "esvit" / "smoke"
    target.parent.mkdir(parents=True)
    import shutil

    shutil.copytree(paths.RESULTS_DIR / "esvit" / "smoke", target)
    run_dir = clone / "runs" / "esvit" / "smoke"
    (run_dir / "results").mkdir(parents=True)
    (run_dir / "results" / "table1.md").write_text("new")
    params = stage_inputs(run_parameters("esvit", "smoke", None, run_dir))
    publish_results(run_dir, target, {"parameters": params})
    assert not (run_dir / "superseded").exists()
    assert (target / "table1.md").read_text() == "new"
