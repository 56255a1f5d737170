"""Your encoders in the common benchmark (``histokit benchmark --encoder SPEC``).

The benchmark re-evaluates stored features; a user's encoder has none, so they are extracted first, by the same
code and in the same run directories as ``histokit evaluate`` (``runs/evaluate/<paper>/<profile>``: stage 04 with
the paper's images, image size and the encoder's own normalization; a second call, or one after ``histokit
evaluate`` with the same encoders, finds them current). Each data group (the images and labels underneath,
:func:`~histokit.crosspaper.collect.data_key`) gets one row per encoder: from the first paper whose run holds that
data, so an encoder is counted once per data however many papers use the same tiles.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

from .collect import Collection, FeatureEntry, data_key

USER_PAPER = "your encoder"


def add_user_entries(collection: Collection, encoders: Sequence[str], *, data_root: Optional[str] = None,
                     device: str = "auto", seed: int = 0, say=print) -> list[str]:
    """Extract ``encoders``' features on every data group of ``collection`` and append them as entries; returns the
    footnotes saying where each row's features come from."""
    from ..byo import extract_user_features, open_evaluation
    from ..models.encoder_spec import parse_encoder_spec
    from ..stages.common import slug
    from ..stages.index import check_feature_sidecar, feature_path

    covered: dict = {}                  # (data key, row name) -> paper whose extraction serves it
    notes = []
    names = [parse_encoder_spec(text).label for text in encoders]   # the row names, without building the models
    for paper in collection.papers_found:
        keys = [k for k, g in collection.groups.items() if any(e.paper == paper for e in g.entries)]
        if all((k, n) in covered for k in keys for n in names):
            continue  # an earlier paper's extraction already gives every row on this paper's data
        run = open_evaluation(paper, collection.profile, encoders, data_root=data_root, device=device, seed=seed,
                              paper_run=collection.runs_dir / paper / collection.profile, fresh_results=False,
                              say=say)
        extract_user_features(run, say=say)
        ctx = run.ctx
        for rank, (row, resolved) in enumerate(run.resolved):
            for spec in ctx.recipe.datasets:
                key = data_key(spec)
                group = collection.groups.get(key)
                path = feature_path(ctx, row.name, spec.key)
                if group is None or (key, row.name) in covered or not path.with_suffix(".json").is_file():
                    continue
                meta = check_feature_sidecar(ctx, row.name, spec.key)
                test_path = test_sha = None
                if spec.test_dataset:
                    test_meta = check_feature_sidecar(ctx, row.name, spec.key, test=True)
                    test_path, test_sha = feature_path(ctx, row.name, spec.key, test=True), test_meta["sha256"]
                group.entries.append(FeatureEntry(USER_PAPER, row.name, spec.key, spec, Path(path),
                                                  str(meta["sha256"]), str(meta.get("weights", "")), test_path,
                                                  test_sha, rank, bool(meta.get("l2_normalized", True))))
                covered[(key, row.name)] = paper
                notes.append(f"{key}: {USER_PAPER}: {row.name} — {resolved.describe()}; features extracted in the "
                             f"{paper} evaluation run (runs/evaluate/{paper}/{collection.profile}/features/"
                             f"{slug(row.name)}/), at {meta.get('image_size')} px.")
    missing = [k for k in collection.groups if not any(c[0] == k for c in covered)]
    if missing:
        notes.append(f"No row of your encoders on: {', '.join(missing)} (no frozen-feature evaluation of any paper "
                     "reads that data, so no evaluation run extracted it).")
    return notes
