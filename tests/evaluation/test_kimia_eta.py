"""Kimia η_p / η_w / η_tot: the standard protocol and the ffnir notebook's variant on hand-computed toy sets (the
functions return fractions; the stage's records, what the tables show, are in percent)."""
import numpy as np
import pytest

from histokit.evaluation.kimia import eta_public_code, eta_standard


def col(*values):
    return np.array(values, dtype=np.float32)[:, None]


def test_standard_protocol_hand_computed():
    # Training patches: 0 (scan A), 10 and 20 (scan B). Each test patch takes the scan of its nearest training patch.
    train, train_scans = col(0, 10, 20), ["A", "B", "B"]
    test, test_scans = col(1, 9, 11, 19, 2), ["A", "A", "B", "B", "B"]
    # A: 1->0 (A) hit, 9->10 (B) miss => 1/2.   B: 11->10 hit, 19->20 hit, 2->0 (A) miss => 2/3.
    eta = eta_standard(train, train_scans, test, test_scans)
    assert eta["eta_p"] == pytest.approx(3 / 5)
    assert eta["eta_w"] == pytest.approx((1 / 2 + 2 / 3) / 2)
    assert eta["eta_tot"] == pytest.approx(0.6 * (1 / 2 + 2 / 3) / 2)


def test_standard_protocol_cosine_metric():
    train = np.array([[1, 0], [0, 1]], dtype=np.float32)
    test = np.array([[10, 1], [1, 3], [3, 1]], dtype=np.float32)  # by angle: scan 0, 1, 0
    eta = eta_standard(train, [0, 1], test, [0, 1, 1], metric="cosine")
    assert eta["eta_p"] == pytest.approx(2 / 3)
    assert eta["eta_w"] == pytest.approx(0.75)
    # Scaling the queries changes L2 distances but not angles.
    assert eta_standard(train, [0, 1], test * 10, [0, 1, 1], metric="cosine") == eta


# Test set for the notebook variant. Rows after grouping by scan: r0=0.0, r1=5.0 (s0); r2=1.0, r3=2.5, r4=10.0 (s1);
# r5=11.0 (s2).
PUBLIC_FEATS = col(0.0, 5.0, 1.0, 2.5, 10.0, 11.0)
PUBLIC_SCANS = [0, 0, 1, 1, 1, 2]


def test_public_code_variant_hand_computed():
    # s0: query r0, depth 2 -> {r0, r2}: 1 of s0's 2 patches.
    # s1: query r2, depth 5 -> {r2, r0, r3, r1, r4}: all 3 of s1 (depth grew past s1's own size).
    # s2: query r5, depth 6 (everything): 1 of 1.
    eta = eta_public_code(PUBLIC_FEATS, PUBLIC_SCANS)
    assert eta["eta_p"] == pytest.approx(5 / 6)
    assert eta["eta_w"] == pytest.approx((1 / 2 + 1 + 1) / 3)
    assert eta["eta_tot"] == pytest.approx(eta["eta_p"] * eta["eta_w"])


def test_public_code_variant_groups_scans_keeping_within_scan_order():
    perm = [5, 2, 0, 3, 1, 4]  # scans interleaved; within-scan order (r0 before r1, r2 < r3 < r4) preserved
    shuffled = eta_public_code(PUBLIC_FEATS[perm], np.array(PUBLIC_SCANS)[perm])
    assert shuffled == pytest.approx(eta_public_code(PUBLIC_FEATS, PUBLIC_SCANS))


def test_public_code_variant_first_patch_of_each_scan_is_the_query():
    scans = [0, 0, 1, 1, 1, 2]
    # s0's query 0.0: its nearest other patch is 1.0 (s0) -> 2 of 2; s1 (query 1.8, depth 5) 3 of 3; s2 1 of 1.
    assert eta_public_code(col(0.0, 1.0, 1.8, 6.0, 10.0, 11.0), scans)["eta_p"] == pytest.approx(1.0)
    # Same patches, 1.0 listed first: its nearest other patch is 1.8 (s1) -> s0 gets 1 of 2.
    assert eta_public_code(col(1.0, 0.0, 1.8, 6.0, 10.0, 11.0), scans)["eta_p"] == pytest.approx(5 / 6)


def test_public_code_variant_name_identity_reproduces_collisions():
    # The notebook intersects file *names*; an s1 patch named like an unretrieved s0 patch counts for s0.
    names = ["a", "b", "b", "c", "d", "e"]
    eta = eta_public_code(PUBLIC_FEATS, PUBLIC_SCANS, test_paths=names)
    # s0: retrieved names {a (r0), b (r2)} ∩ {a, b} = 2 -> full credit; s1: 3 of 3; s2: 1 of 1.
    assert eta["eta_p"] == pytest.approx(1.0)
    assert eta["eta_w"] == pytest.approx(1.0)


def test_standard_and_public_code_differ_on_the_same_features():
    # Standard with the test set as its own "training" set would always hit (self-match); the protocols differ.
    std = eta_standard(PUBLIC_FEATS, PUBLIC_SCANS, col(0.4, 4.0, 2.0), [0, 0, 1])
    # 0.4->0.0 (s0) hit; 4.0->5.0 (s0) hit; 2.0->2.5 (s1) hit.
    assert std == {"eta_p": 1.0, "eta_w": 1.0, "eta_tot": 1.0, "n_correct": 3.0, "n_queries": 3.0}


def test_bad_inputs_name_the_argument():
    with pytest.raises(ValueError, match="test_scans"):
        eta_standard(col(0, 1), [0, 1], col(0, 1), [0])
    with pytest.raises(ValueError, match="dimension"):
        eta_standard(col(0, 1), [0, 1], np.zeros((2, 2)), [0, 1])
    with pytest.raises(ValueError, match="metric"):
        eta_standard(col(0, 1), [0, 1], col(0, 1), [0, 1], metric="manhattan")
    with pytest.raises(ValueError, match="test_feats"):
        eta_public_code(np.array([[np.nan]]), [0])
    with pytest.raises(ValueError, match="test_paths"):
        eta_public_code(col(0, 1), [0, 1], test_paths=["a"])


# --- the notebook's ordering: natsorted paths within a scan, scans s0..s23 in natural order (issue 16) -----------

def test_natural_key_orders_numbers_as_numbers():
    from histokit.evaluation.kimia import natural_key

    names = ["s0_10.jpg", "s0_2.jpg", "s0_1.jpg"]
    assert sorted(names) == ["s0_1.jpg", "s0_10.jpg", "s0_2.jpg"]
    assert sorted(names, key=natural_key) == ["s0_1.jpg", "s0_2.jpg", "s0_10.jpg"]


def test_public_code_query_is_the_first_patch_in_natural_order():
    # Scan s0 listed lexicographically (s0_10.jpg before s0_2.jpg), as a directory listing sorts it. The notebook
    # natsorts, so s0_2.jpg (at 0.0) is the query: its 2 nearest are both s0 -> 2 of 2. Querying s0_10.jpg (at 1.0),
    # the first row in lexicographic order, reaches 1.8 (s1) first -> 1 of 2.
    feats = col(1.0, 0.0, 1.8, 6.0, 10.0, 11.0)
    scans = [0, 0, 1, 1, 1, 2]
    paths = ["test/s0/s0_10.jpg", "test/s0/s0_2.jpg", "test/s1/s1_1.jpg", "test/s1/s1_2.jpg", "test/s1/s1_3.jpg",
             "test/s2/s2_1.jpg"]
    assert eta_public_code(feats, scans, test_paths=paths)["eta_p"] == pytest.approx(1.0)
    assert eta_public_code(feats, scans)["eta_p"] == pytest.approx(5 / 6)  # given (lexicographic) order


def test_public_code_visits_scans_in_natural_order():
    # s2 before s10 (the notebook's range(24)): s2's query 0.0 searches depth 2 -> {0.0, 1.0 (s10)}: 1 of 2; s10's
    # query then searches everything: 1 of 1. In string order s10 would come first and both scans score full.
    eta = eta_public_code(col(0.0, 5.0, 1.0), ["s2", "s2", "s10"])
    assert eta["eta_p"] == pytest.approx(2 / 3)
    assert eta["eta_w"] == pytest.approx((1 / 2 + 1) / 2)


def test_eval_stage_passes_the_test_paths(monkeypatch):
    from types import SimpleNamespace

    from histokit.papers import get_recipe
    from histokit.retrieval.features import FeatureSet
    from histokit.stages import common, index

    paths = ["x/s0/s0_10.jpg", "x/s0/s0_2.jpg", "x/s1/s1_1.jpg", "x/s1/s1_2.jpg", "x/s1/s1_3.jpg", "x/s2/s2_1.jpg"]
    test = FeatureSet(col(1.0, 0.0, 1.8, 6.0, 10.0, 11.0), np.array([0, 0, 1, 1, 1, 2]), np.arange(10, 16))
    images = SimpleNamespace(samples=[SimpleNamespace(path=f"unused/{i}.jpg") for i in range(10)]
                             + [SimpleNamespace(path=p) for p in paths])
    monkeypatch.setattr(index, "feature_parts", lambda ctx, model, dataset: {"train": test, "test": test})
    monkeypatch.setattr(common, "load_recipe_dataset", lambda ctx, key, test=False: images)
    recipe = get_recipe("lgffem", "full")
    spec = next(e for e in recipe.evaluations if e.table == "table1_public_code")
    records = spec.run(SimpleNamespace(recipe=recipe, paper="lgffem"))
    eta_p = [r["value"] for r in records if r["metric"] == "eta_p"]
    assert len(eta_p) == 3  # one per strategy row
    assert eta_p == pytest.approx([100.0] * 3)  # natural order: s0_2.jpg queries (lexicographic order gives 83.3)


def test_records_in_percent_are_the_floats_the_percent_api_returned():
    """The table layer's percent (eta_percent) is bit for bit what eta_* computed when it returned percent itself
    (100 * hits / n, 100 * mean, p * w / 100), so switching the API to fractions moved no table value."""
    from histokit.evaluation.protocols.kimia_eta import eta_percent

    rng = np.random.default_rng(0)
    for _ in range(300):
        n_scans = int(rng.integers(1, 25))
        sizes = rng.integers(1, 80, n_scans).astype(np.float64)
        hits = np.floor(rng.random(n_scans) * (sizes + 1))
        old_p = 100.0 * hits.sum() / sizes.sum()
        old_w = 100.0 * float(np.mean(hits / sizes))
        old = {"eta_p": float(old_p), "eta_w": old_w, "eta_tot": float(old_p * old_w / 100.0)}
        from histokit.evaluation.kimia import _etas

        fractions = _etas(hits, sizes)
        assert eta_percent(fractions) == old  # exact equality, not approx
        assert fractions["eta_tot"] == pytest.approx(old["eta_tot"] / 100, rel=1e-12)
