"""verify: the bundled tiles pass; a copy with one changed byte / a missing tile is named; CLI exit codes."""
from __future__ import annotations

import shutil

import pytest

from histokit.data import VerificationError, verify
from histokit.data.cli import main
from histokit.data.verify import MISMATCH, MISSING
from histokit.paths import BUNDLED_TILES_DIR
from histokit.io import sha256_file

TILE = "04_LYMPHO/image_2_label_3.png"


@pytest.fixture
def tiles_copy(tmp_path):
    """The bundled tiles copied to <tmp>/kather2016_tiny (the bundled files are never modified)."""
    shutil.copytree(BUNDLED_TILES_DIR, tmp_path / "kather2016_tiny")
    return tmp_path


def test_bundled_tiles_verify():
    report = verify("kather2016_tiny", progress=False)
    assert report.ok and len(report.checks) == 100
    assert report.directory == BUNDLED_TILES_DIR
    report.raise_for_errors()


@pytest.mark.bad_input
def test_one_changed_byte_is_named(tiles_copy):
    tile = tiles_copy / "kather2016_tiny" / TILE
    expected = sha256_file(tile)
    data = bytearray(tile.read_bytes())
    data[len(data) // 2] ^= 0x01
    tile.write_bytes(bytes(data))
    report = verify("kather2016_tiny", tiles_copy, progress=False)
    assert not report.ok
    [bad] = report.errors
    assert bad.name == TILE and bad.status == MISMATCH
    assert bad.expected["sha256"] == expected and bad.actual["sha256"] == sha256_file(tile)
    with pytest.raises(VerificationError) as info:
        report.raise_for_errors()
    assert TILE in str(info.value) and expected in str(info.value)


@pytest.mark.bad_input
def test_missing_tile_is_named(tiles_copy):
    (tiles_copy / "kather2016_tiny" / TILE).unlink()
    report = verify("kather2016_tiny", tiles_copy, progress=False)
    assert [(c.name, c.status) for c in report.errors] == [(TILE, MISSING)]


def test_hand_placed_dataset_checks_its_folder(tmp_path):
    report = verify("bracs", tmp_path, progress=False)
    assert not report.ok and report.errors[0].status == MISSING
    assert "BRACS_RoI" in report.summary()


def test_cli_exit_codes(tiles_copy, capsys):
    assert main(["data", "verify", "kather2016_tiny", "--root", str(tiles_copy), "--quiet"]) == 0
    (tiles_copy / "kather2016_tiny" / TILE).write_bytes(b"broken")
    assert main(["data", "verify", "kather2016_tiny", "--root", str(tiles_copy), "--quiet"]) == 1
    assert TILE in capsys.readouterr().out
    assert main(["data", "download", "bracs", "--root", str(tiles_copy), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "histokit data download" in err and "bracs.icar.cnr.it" in err
    assert main(["data", "list"]) == 0
    assert "kather2016_tiny" in capsys.readouterr().out
    assert main(["data", "list", "bracs"]) == 0
    assert "step 1: Register" in capsys.readouterr().out
