"""Every manifest validates; schema errors name the file and field; facts the protocols rely on are present."""
from __future__ import annotations

import csv
import re

import pytest
import yaml

from histokit import paths
from histokit.data import ManifestError, list_manifests, load_manifest

EXPECTED = {"nct_crc_he_100k", "nct_crc_he_100k_nonorm", "crc_val_he_7k", "kather2016", "kather2016_tiny",
            "kimia_path24c", "bracs", "bach", "pannuke", "breastpathq", "pathmnist", "vgh_nki"}


def test_all_datasets_have_valid_manifests():
    assert EXPECTED <= set(list_manifests())
    for name in list_manifests():
        m = load_manifest(name)
        assert m.name == name and m.path.name == f"{name}.yaml"
        for f in m.files:
            if f.checksums:
                assert f.checksum_source in ("host", "third-party (unconfirmed)")
        if m.access == "login":
            assert m.manual_steps and any("<root>" in s for s in m.manual_steps)
        if m.access == "open":
            assert all(f.url and f.url.startswith("https://") for f in m.files)


def test_only_cc_by_is_redistributable():
    for name in list_manifests():
        m = load_manifest(name)
        assert m.redistributable == (m.license["name"] == "CC BY 4.0"), name


def test_reference_checksums_are_marked_third_party():
    crc = load_manifest("nct_crc_he_100k").files[0]
    assert crc.size == 11_690_284_003 and crc.checksums == {"md5": "6fd702d11df6292bc054397ae038a464"}
    assert crc.checksum_source == "third-party (unconfirmed)"
    k16 = load_manifest("kather2016").files[0]
    assert k16.checksums["sha256"].startswith("936d0b95") and k16.checksum_source == "third-party (unconfirmed)"


def test_crc_manifests_carry_chen_krishnan_merge():
    for name in ("nct_crc_he_100k", "nct_crc_he_100k_nonorm", "crc_val_he_7k"):
        m = load_manifest(name)
        assert m.classes == ("ADI", "BACK", "DEB", "LYM", "MUC", "MUS", "NORM", "STR", "TUM")
        assert m.protocol_merges["chen_krishnan"]["merge"] == {"MUS": "STR"}


def test_tiny_manifest_matches_bundled_labels_csv():
    m = load_manifest("kather2016_tiny")
    assert m.access == "bundled"
    with open(paths.BUNDLED_TILES_DIR / "labels.csv") as fh:
        rows = {r["path"]: r for r in csv.DictReader(fh)}
    files = {f.name: f for f in m.files}
    assert set(files) == set(rows)
    for name, f in files.items():
        assert f.checksums["sha256"] == rows[name]["sha256"] and f.size == int(rows[name]["bytes"])


def test_group_regexes_parse_real_file_names():
    k16 = re.compile(load_manifest("kather2016").groups["regex"])
    assert k16.search("10009_CRC-Prim-HE-03_009.tif_Row_301_Col_151.tif").group(1) == "CRC-Prim-HE-03"
    bracs = re.compile(load_manifest("bracs").groups["regex"])
    assert bracs.search("BRACS_1003_N_1.png").group(1) == "BRACS_1003"


def test_unavailable_manifest_states_reason():
    m = load_manifest("vgh_nki")
    assert m.access == "unavailable" and "Stanford" in m.unavailable_reason


def _bad_manifest(tmp_path, mutate):
    data = yaml.safe_load((paths.MANIFEST_DIR / "bach.yaml").read_text())
    mutate(data)
    (tmp_path / "bach.yaml").write_text(yaml.safe_dump(data))
    return tmp_path


@pytest.mark.parametrize("mutate, field", [
    (lambda d: d.update(access="ftp"), "access"),
    (lambda d: d["files"][0]["checksums"].update(md5="xyz"), "files.0.checksums.md5"),
    (lambda d: d["files"][0].pop("size"), "files.0"),
    (lambda d: d["layout"].update(type="hdf5"), "layout.type"),
    (lambda d: d.pop("license"), "<top level>"),
])
@pytest.mark.bad_input
def test_schema_errors_name_file_and_field(tmp_path, mutate, field):
    mdir = _bad_manifest(tmp_path, mutate)
    with pytest.raises(ManifestError) as info:
        load_manifest("bach", manifest_dir=mdir)
    assert str(tmp_path / "bach.yaml") in str(info.value) and f"field {field}:" in str(info.value)


@pytest.mark.bad_input
def test_login_without_manual_steps_is_invalid(tmp_path):
    mdir = _bad_manifest(tmp_path, lambda d: d.update(access="login"))
    with pytest.raises(ManifestError, match="manual_steps"):
        load_manifest("bach", manifest_dir=mdir)


@pytest.mark.bad_input
def test_unknown_manifest_lists_known_ones():
    with pytest.raises(ManifestError, match="kather2016_tiny"):
        load_manifest("no_such_set")
