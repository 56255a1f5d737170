"""safe_extract refuses duplicate member names and decompression bombs (size, ratio and member-count limits, checked
before anything is written), and names a truncated or damaged archive instead of a traceback. Bombs are built small
here (a few MiB of zeros) and met with a tiny limit, or the default 100x ratio limit."""
from __future__ import annotations

import io
import os
import tarfile
import warnings
import zipfile

import pytest

from histokit.data import CorruptArchiveError, UnsafeArchiveError, safe_extract
from histokit.data.archive import DEFAULT_MAX_BYTES, DEFAULT_MAX_RATIO
from histokit.data.cli import main

pytestmark = pytest.mark.bad_input
ZEROS = bytes(4 << 20)  # 4 MiB: deflates to ~4 kB, 1000x


def _zip(path, members: list[tuple[str, bytes]], compression=zipfile.ZIP_DEFLATED):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # zipfile warns about a duplicate name, and writes it anyway
        with zipfile.ZipFile(path, "w", compression) as zf:
            for name, data in members:
                zf.writestr(name, data)
    return path


def _tar(path, members: list[tuple[str, bytes]]):
    with tarfile.open(path, "w:gz") as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


def test_defaults_fit_the_largest_real_archive():
    nct_zip = 11_690_284_003  # NCT-CRC-HE-100K.zip (its TIFFs barely compress)
    assert DEFAULT_MAX_BYTES > 3 * nct_zip and DEFAULT_MAX_RATIO >= 50


@pytest.mark.parametrize("make", [_zip, _tar], ids=["zip", "tar.gz"])
def test_a_member_given_twice_is_refused_naming_it(tmp_path, make):
    archive = make(tmp_path / ("dup.zip" if make is _zip else "dup.tar.gz"),
                   [("top/a.png", b"first"), ("top/b.png", b"b"), ("top/a.png", b"second")])
    with pytest.raises(UnsafeArchiveError) as info:
        safe_extract(archive, tmp_path / "out", progress=False)
    msg = str(info.value)
    assert archive.name in msg and "'top/a.png' appears twice (members 1 and 3)" in msg
    assert not (tmp_path / "out" / "top").exists()  # refused before anything is written


def test_names_that_differ_only_in_spelling_are_the_same_member(tmp_path):
    archive = _tar(tmp_path / "dup.tar.gz", [("top/a.png", b"first"), ("top//./a.png", b"second")])
    with pytest.raises(UnsafeArchiveError, match="appears twice"):
        safe_extract(archive, tmp_path / "out", progress=False)


@pytest.mark.parametrize("make", [_zip, _tar], ids=["zip", "tar.gz"])
def test_a_bomb_is_refused_by_the_default_ratio_limit(tmp_path, make):
    archive = make(tmp_path / ("bomb.zip" if make is _zip else "bomb.tar.gz"),
                   [("fine.txt", b"ok"), ("zeros.bin", ZEROS)])
    assert archive.stat().st_size * 100 < len(ZEROS)
    with pytest.raises(UnsafeArchiveError) as info:
        safe_extract(archive, tmp_path / "out", progress=False)
    msg = str(info.value)
    assert archive.name in msg and "'zeros.bin'" in msg and "limit 100x" in msg and "max_ratio=" in msg
    assert not (tmp_path / "out" / "zeros.bin").exists() and not (tmp_path / "out" / "fine.txt").exists()


@pytest.mark.parametrize("make", [_zip, _tar], ids=["zip", "tar.gz"])
def test_the_extraction_size_limit_names_the_member_that_crosses_it(tmp_path, make):
    members = [(f"d/{i}.bin", os.urandom(400)) for i in range(5)]  # random: no ratio to speak of
    archive = make(tmp_path / ("big.zip" if make is _zip else "big.tar.gz"), members)
    with pytest.raises(UnsafeArchiveError) as info:
        safe_extract(archive, tmp_path / "out", progress=False, max_bytes=1000)
    msg = str(info.value)
    assert "limit of 1,000 bytes" in msg and "'d/2.bin'" in msg and "max_bytes=" in msg
    assert not (tmp_path / "out" / "d").exists()
    safe_extract(archive, tmp_path / "out", progress=False, max_bytes=2000)  # within the limit: extracted
    assert (tmp_path / "out" / "d" / "4.bin").read_bytes() == members[4][1]


def test_the_member_count_limit(tmp_path):
    archive = _zip(tmp_path / "many.zip", [(f"f{i}", b"") for i in range(5)])
    with pytest.raises(UnsafeArchiveError, match=r"more than 3 members \(at member 'f3'\)"):
        safe_extract(archive, tmp_path / "out", progress=False, max_members=3)


def test_a_bomb_is_refused_by_the_cli_in_one_line(tmp_path, capsys, monkeypatch):
    """Through `histokit data prepare`: the archive is verified, then refused at extraction; exit 1, no traceback."""
    import hashlib

    import yaml

    from histokit import paths

    mdir = tmp_path / "manifests"
    mdir.mkdir()
    monkeypatch.setattr(paths, "MANIFEST_DIR", mdir)
    root = tmp_path / "data"
    (root / "toyset").mkdir(parents=True)
    archive = _zip(root / "toyset" / "toy.zip", [("toy/A/zeros.png", ZEROS)])  # in place: nothing to download
    (mdir / "toyset.yaml").write_text(yaml.safe_dump({
        "name": "toyset", "title": "toy", "homepage": "https://example.org", "citation": "none", "access": "open",
        "license": {"name": "CC BY 4.0", "url": None, "redistributable": True},
        "files": [{"name": "toy.zip", "url": "https://example.org/toy.zip", "size": archive.stat().st_size,
                   "checksums": {"sha256": hashlib.sha256(archive.read_bytes()).hexdigest()},
                   "checksum_source": "host", "extract": True}],
        "layout": {"type": "class_folders", "subdir": "toy"}, "classes": ["A"],
        "splits": {"type": "none", "description": "none"},
        "groups": {"id": None, "source": None, "description": "none"},
    }))
    assert main(["data", "prepare", "toyset", "--root", str(root), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "toy.zip" in err and "'toy/A/zeros.png'" in err and "decompression bomb" in err
    assert not (root / "toyset" / "toy").exists()


def test_a_truncated_tar_gz_is_named_not_a_traceback(tmp_path):
    data = _tar(tmp_path / "full.tar.gz", [(f"d/{i}.bin", os.urandom(50_000)) for i in range(3)]).read_bytes()
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptArchiveError, match=r"cut\.tar\.gz is truncated or damaged.*histokit data prepare"):
        safe_extract(cut, tmp_path / "out", progress=False)


def test_a_zip_member_with_a_bad_crc_is_named(tmp_path):
    archive = _zip(tmp_path / "crc.zip", [("a.txt", b"hello world" * 100)], compression=zipfile.ZIP_STORED)
    data = bytearray(archive.read_bytes())
    data[data.find(b"hello")] ^= 0x01
    archive.write_bytes(bytes(data))
    with pytest.raises(CorruptArchiveError, match=r"crc\.zip is truncated or damaged \(member 'a.txt'\).*CRC"):
        safe_extract(archive, tmp_path / "out", progress=False)
