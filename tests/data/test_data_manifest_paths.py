"""A manifest is data, and its paths are confined: every path it names (files[].name, extract_to, layout.subdir,
split folders, label CSVs, PanNuke folds, class folders) must stay inside the dataset folder, and only http(s)
URLs are fetched. The rule (histokit.data.safepaths.path_problem) runs when the manifest is loaded, so nothing is
written, read, moved aside or replaced outside the dataset folder; the error names the manifest file and the field.
Paths read from the data itself (a label CSV's image column) go through the same rule when the dataset loads."""
from __future__ import annotations

import csv
import hashlib

import pytest
import yaml

from histokit import paths
from histokit.data import DownloadError, ManifestError, download, load_dataset, load_manifest, prepare
from histokit.data.download import download_file
from histokit.data.mock import mock_dataset

from data_helpers import class_folder_zip, serve

pytestmark = pytest.mark.security


def _manifest(tmp_path, base: str, mutate):
    """``<tmp>/manifests/<base>.yaml``: the bundled manifest ``base`` changed by ``mutate(data)``."""
    data = yaml.safe_load((paths.MANIFEST_DIR / f"{base}.yaml").read_text())
    mutate(data)
    mdir = tmp_path / "manifests"
    mdir.mkdir(exist_ok=True)
    (mdir / f"{base}.yaml").write_text(yaml.safe_dump(data))
    return mdir


def _set(path: str, value):
    """A mutation setting the dotted ``path`` (list indices as numbers) to ``value``."""
    def mutate(data):
        keys = [int(k) if k.isdigit() else k for k in path.split(".")]
        node = data
        for k in keys[:-1]:
            node = node[k]
        node[keys[-1]] = value
    return mutate


def _rename_class_folder(data):
    data["class_folders"]["../../0_N"] = data["class_folders"].pop("0_N")


@pytest.mark.parametrize("base, mutate, field, value", [
    ("bach", _set("files.0.name", "../../x.zip"), "files.0.name", "../../x.zip"),
    ("bach", _set("files.0.name", "/etc/hostname"), "files.0.name", "/etc/hostname"),
    ("bach", _set("files.0.name", "..\\..\\x.zip"), "files.0.name", "..\\\\..\\\\x.zip"),
    ("bach", _set("files.0.name", "C:/x.zip"), "files.0.name", "C:/x.zip"),
    ("bach", _set("files.0.name", "."), "files.0.name", "."),
    ("bach", _set("files.0.extract_to", "../../.."), "files.0.extract_to", "../../.."),
    ("bach", _set("layout.subdir", "../../.."), "layout.subdir", "../../.."),
    ("bach", _set("layout.subdir", "/"), "layout.subdir", "/"),
    ("bracs", _set("layout.split_dirs.train", "../../train"), "layout.split_dirs.train", "../../train"),
    ("bracs", _rename_class_folder, "class_folders", "../../0_N"),
    ("breastpathq", _set("layout.split_csvs.train.csv", "../../labels.csv"), "layout.split_csvs.train.csv",
     "../../labels.csv"),
    ("breastpathq", _set("layout.split_csvs.val.image_dir", "/data"), "layout.split_csvs.val.image_dir", "/data"),
    ("breastpathq", _set("layout.path_template", "../../{slide}_{rid}.tif"), "layout.path_template",
     "../../{slide}_{rid}.tif"),
    ("pannuke", _set("layout.folds.0.images", "../../images.npy"), "layout.folds.0.images", "../../images.npy"),
])
def test_a_path_leaving_the_dataset_folder_is_refused_naming_manifest_and_field(tmp_path, base, mutate, field,
                                                                                 value):
    mdir = _manifest(tmp_path, base, mutate)
    with pytest.raises(ManifestError) as info:
        load_manifest(base, manifest_dir=mdir)
    msg = str(info.value)
    assert str(mdir / f"{base}.yaml") in msg and f"field {field}" in msg and value in msg
    assert "inside the dataset folder" in msg and "\n" not in msg


@pytest.mark.parametrize("url", ["file:///etc/hostname", "ftp://example.org/x.zip", "data:,hello",
                                 "/etc/hostname", "zenodo.org/records/1/x.zip"])
def test_only_http_and_https_urls_are_accepted(tmp_path, url):
    mdir = _manifest(tmp_path, "bach", _set("files.0.url", url))
    with pytest.raises(ManifestError) as info:
        load_manifest("bach", manifest_dir=mdir)
    msg = str(info.value)
    assert str(mdir / "bach.yaml") in msg and "field files.0.url" in msg and url in msg and "http" in msg


def test_download_file_itself_refuses_a_file_url(tmp_path):
    with pytest.raises(DownloadError, match=r"file:///etc/hostname.*only http:// and https://"):
        download_file("file:///etc/hostname", tmp_path / "hostname", retries=0, progress=False)
    assert not (tmp_path / "hostname").exists() and not (tmp_path / "hostname.part").exists()


def test_a_redirect_to_another_scheme_is_not_followed(tmp_path):
    with serve({"/f.bin": b"x"}, {"/f.bin": ["redirect_ftp"]}) as (url, state):
        with pytest.raises(DownloadError, match=r"HTTP 302 \(redirect to 'ftp://127.0.0.1/etc/hostname' refused"):
            download_file(f"{url}/f.bin", tmp_path / "f.bin", retries=2, backoff=0.01, progress=False)
    assert len(state.requests) == 1 and sorted(p.name for p in tmp_path.iterdir()) == []


@pytest.mark.bad_input
def test_a_folder_under_the_file_name_is_never_moved_aside(tmp_path, toy_dirs):
    """A folder where the archive should be (unpacked by hand under the archive's name) stays as it is."""
    mdir, root = toy_dirs
    archive = class_folder_zip("toy", {"A": 1, "B": 1})
    folder = root / "toyset" / "toy.zip"
    (folder / "toy" / "A").mkdir(parents=True)
    (folder / "toy" / "A" / "x.png").write_bytes(b"mine")
    with serve({"/toy.zip": archive}) as (url, state):
        _toy_manifest(mdir, url, archive, name="toy.zip")
        with pytest.raises(DownloadError, match=r"toy.zip is a folder, not a file.*nothing was changed") as info:
            download("toyset", root, progress=False)
    assert not info.value.no_answer and state.requests == []
    assert (folder / "toy" / "A" / "x.png").read_bytes() == b"mine"
    assert sorted(p.name for p in (root / "toyset").iterdir()) == ["toy.zip"]


@pytest.mark.bad_input
def test_two_files_with_one_name_are_refused(tmp_path):
    def twice(data):
        data["files"].append(dict(data["files"][0], url="https://example.org/other.zip"))
    mdir = _manifest(tmp_path, "bach", twice)
    with pytest.raises(ManifestError, match=r"field files.1.name: 'ICIAR2018_BACH_Challenge.zip' is also files.0"):
        load_manifest("bach", manifest_dir=mdir)


# ------------------------------------------------------------------------------ end to end: nothing outside moves


def _toy_manifest(mdir, url: str, archive: bytes, name: str, extract_to: str = ""):
    (mdir / "toyset.yaml").write_text(yaml.safe_dump({
        "name": "toyset", "title": "toy", "homepage": url, "citation": "none", "access": "open",
        "license": {"name": "CC BY 4.0", "url": None, "redistributable": True},
        "files": [{"name": name, "url": f"{url}/toy.zip", "size": len(archive), "extract": True,
                   "checksums": {"sha256": hashlib.sha256(archive).hexdigest()}, "checksum_source": "host",
                   **({"extract_to": extract_to} if extract_to else {})}],
        "layout": {"type": "class_folders", "subdir": "toy", "patterns": ["*.png"]},
        "classes": ["A", "B"], "splits": {"type": "none", "description": "none"},
        "groups": {"id": None, "source": None, "description": "none"},
    }))


@pytest.fixture
def toy_dirs(tmp_path, monkeypatch):
    mdir = tmp_path / "manifests"
    mdir.mkdir()
    monkeypatch.setattr(paths, "MANIFEST_DIR", mdir)
    return mdir, tmp_path / "data"


def test_an_absolute_name_never_moves_or_replaces_the_file_it_points_at(tmp_path, toy_dirs):
    mdir, root = toy_dirs
    victim = tmp_path / "precious.txt"
    victim.write_text("not a dataset")
    archive = class_folder_zip("toy", {"A": 1, "B": 1})
    with serve({"/toy.zip": archive}) as (url, state):
        _toy_manifest(mdir, url, archive, name=str(victim))
        with pytest.raises(ManifestError, match=r"toyset.yaml: field files.0.name"):
            download("toyset", root, progress=False)
    assert state.requests == []
    assert victim.read_text() == "not a dataset"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["manifests", "precious.txt"]  # no .corrupt, no .part


@pytest.mark.parametrize("name, extract_to", [("../../escaped.zip", ""), ("toy.zip", "../../escaped")])
def test_prepare_writes_nothing_outside_the_dataset_folder(tmp_path, toy_dirs, name, extract_to):
    mdir, root = toy_dirs
    archive = class_folder_zip("toy", {"A": 1, "B": 1})
    with serve({"/toy.zip": archive}) as (url, state):
        _toy_manifest(mdir, url, archive, name=name, extract_to=extract_to)
        with pytest.raises(ManifestError, match=r"toyset.yaml: field files.0.(name|extract_to)"):
            prepare("toyset", root, progress=False)
    assert state.requests == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["manifests"]


def test_a_label_csv_row_cannot_point_outside_the_dataset_folder(tmp_path):
    """The same rule for paths the data names: BreastPathQ's image path is formatted from the CSV's columns."""
    root = tmp_path / "data"
    mock_dataset("breastpathq", root, per_class=1)
    layout = root / "breastpathq" / "breastpathq" / "datasets"
    labels = layout / "train_labels.csv"
    rows = list(csv.DictReader(labels.open()))
    outside = tmp_path / "outside_1.tif"
    outside.write_bytes((layout / "train" / f"{rows[0]['slide']}_{rows[0]['rid']}.tif").read_bytes())
    rows[0]["slide"], rows[0]["rid"] = "../../../../../outside", "1"
    with labels.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    with pytest.raises(ValueError) as info:
        load_dataset("breastpathq", root)
    msg = str(info.value)
    assert str(labels) in msg and "row 1" in msg and "../../../../../outside_1.tif" in msg and "inside" in msg
