"""Kimia η_p / η_w / η_tot: the standard protocol and the ffnir notebook's variant on hand-computed toy sets."""
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
    assert eta["eta_p"] == pytest.approx(100 * 3 / 5)
    assert eta["eta_w"] == pytest.approx(100 * (1 / 2 + 2 / 3) / 2)
    assert eta["eta_tot"] == pytest.approx(60.0 * 100 * (1 / 2 + 2 / 3) / 2 / 100)


def test_standard_protocol_cosine_metric():
    train = np.array([[1, 0], [0, 1]], dtype=np.float32)
    test = np.array([[10, 1], [1, 3], [3, 1]], dtype=np.float32)  # by angle: scan 0, 1, 0
    eta = eta_standard(train, [0, 1], test, [0, 1, 1], metric="cosine")
    assert eta["eta_p"] == pytest.approx(200 / 3)
    assert eta["eta_w"] == pytest.approx(75.0)
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
    assert eta["eta_p"] == pytest.approx(100 * 5 / 6)
    assert eta["eta_w"] == pytest.approx(100 * (1 / 2 + 1 + 1) / 3)
    assert eta["eta_tot"] == pytest.approx(eta["eta_p"] * eta["eta_w"] / 100)


def test_public_code_variant_groups_scans_keeping_within_scan_order():
    perm = [5, 2, 0, 3, 1, 4]  # scans interleaved; within-scan order (r0 before r1, r2 < r3 < r4) preserved
    shuffled = eta_public_code(PUBLIC_FEATS[perm], np.array(PUBLIC_SCANS)[perm])
    assert shuffled == pytest.approx(eta_public_code(PUBLIC_FEATS, PUBLIC_SCANS))


def test_public_code_variant_first_patch_of_each_scan_is_the_query():
    scans = [0, 0, 1, 1, 1, 2]
    # s0's query 0.0: its nearest other patch is 1.0 (s0) -> 2 of 2; s1 (query 1.8, depth 5) 3 of 3; s2 1 of 1.
    assert eta_public_code(col(0.0, 1.0, 1.8, 6.0, 10.0, 11.0), scans)["eta_p"] == pytest.approx(100.0)
    # Same patches, 1.0 listed first: its nearest other patch is 1.8 (s1) -> s0 gets 1 of 2.
    assert eta_public_code(col(1.0, 0.0, 1.8, 6.0, 10.0, 11.0), scans)["eta_p"] == pytest.approx(100 * 5 / 6)


def test_public_code_variant_name_identity_reproduces_collisions():
    # The notebook intersects file *names*; an s1 patch named like an unretrieved s0 patch counts for s0.
    names = ["a", "b", "b", "c", "d", "e"]
    eta = eta_public_code(PUBLIC_FEATS, PUBLIC_SCANS, test_names=names)
    # s0: retrieved names {a (r0), b (r2)} ∩ {a, b} = 2 -> full credit; s1: 3 of 3; s2: 1 of 1.
    assert eta["eta_p"] == pytest.approx(100.0)
    assert eta["eta_w"] == pytest.approx(100.0)


def test_standard_and_public_code_differ_on_the_same_features():
    # Standard with the test set as its own "training" set would always hit (self-match); the protocols differ.
    std = eta_standard(PUBLIC_FEATS, PUBLIC_SCANS, col(0.4, 4.0, 2.0), [0, 0, 1])
    # 0.4->0.0 (s0) hit; 4.0->5.0 (s0) hit; 2.0->2.5 (s1) hit.
    assert std == {"eta_p": pytest.approx(100.0), "eta_w": pytest.approx(100.0), "eta_tot": pytest.approx(100.0)}


def test_bad_inputs_name_the_argument():
    with pytest.raises(ValueError, match="test_scans"):
        eta_standard(col(0, 1), [0, 1], col(0, 1), [0])
    with pytest.raises(ValueError, match="dimension"):
        eta_standard(col(0, 1), [0, 1], np.zeros((2, 2)), [0, 1])
    with pytest.raises(ValueError, match="metric"):
        eta_standard(col(0, 1), [0, 1], col(0, 1), [0, 1], metric="manhattan")
    with pytest.raises(ValueError, match="test_feats"):
        eta_public_code(np.array([[np.nan]]), [0])
    with pytest.raises(ValueError, match="test_names"):
        eta_public_code(col(0, 1), [0, 1], test_names=["a"])
