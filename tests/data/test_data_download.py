"""Downloads against a local HTTP server: full, resumed (Range), 404, 500-then-retry, mismatch, no-op re-run,
offline; and a whole dataset prepared end to end from a manifest pointing at the server."""
from __future__ import annotations

import hashlib
import os
import shutil

import pytest

from histokit import paths
from histokit.data import (ChecksumMismatch, DownloadError, ManualDownloadRequired, download, load_dataset,
                           prepare, verify)
from histokit.data.download import download_file, manual_instructions
from histokit.data.manifests import load_manifest

from data_helpers import class_folder_zip, serve

DATA = os.urandom(300_000)
SHA = hashlib.sha256(DATA).hexdigest()
MD5 = hashlib.md5(DATA).hexdigest()
FAST = dict(backoff=0.01, timeout=5, progress=False)


def test_full_download_verifies_and_renames(tmp_path):
    with serve({"/f.bin": DATA}) as (url, state):
        out = download_file(f"{url}/f.bin", tmp_path / "f.bin", size=len(DATA), sha256=SHA, md5=MD5, **FAST)
    assert out.read_bytes() == DATA
    assert not (tmp_path / "f.bin.part").exists()
    assert state.requests == [("/f.bin", None)]


@pytest.mark.fault
def test_interrupted_download_resumes_with_range(tmp_path):
    with serve({"/f.bin": DATA}, {"/f.bin": ["drop"]}) as (url, state):
        out = download_file(f"{url}/f.bin", tmp_path / "f.bin", size=len(DATA), sha256=SHA, **FAST)
    assert out.read_bytes() == DATA
    assert len(state.requests) == 2
    first, second = state.requests
    assert first[1] is None
    assert second[1] is not None and second[1].startswith("bytes=") and second[1] != "bytes=0-"


@pytest.mark.fault
def test_part_file_from_killed_run_is_resumed(tmp_path):
    (tmp_path / "f.bin.part").write_bytes(DATA[:1000])
    with serve({"/f.bin": DATA}) as (url, state):
        download_file(f"{url}/f.bin", tmp_path / "f.bin", sha256=SHA, **FAST)
    assert state.requests == [("/f.bin", "bytes=1000-")]
    assert (tmp_path / "f.bin").read_bytes() == DATA


@pytest.mark.fault
def test_server_ignoring_range_restarts_the_part(tmp_path):
    (tmp_path / "f.bin.part").write_bytes(b"x" * 1000)  # garbage that must not be kept in front
    with serve({"/f.bin": DATA}, {"/f.bin": ["norange"]}) as (url, _):
        download_file(f"{url}/f.bin", tmp_path / "f.bin", sha256=SHA, **FAST)
    assert (tmp_path / "f.bin").read_bytes() == DATA


@pytest.mark.bad_input
def test_404_fails_at_once_naming_the_url(tmp_path):
    with serve({}) as (url, state):
        with pytest.raises(DownloadError, match=r"404.*missing\.zip") as info:
            download_file(f"{url}/missing.zip", tmp_path / "m.zip", retries=3, **FAST)
    assert info.value.http_status == 404
    assert len(state.requests) == 1  # no retry on a client error
    assert not (tmp_path / "m.zip").exists()


@pytest.mark.fault
def test_500_is_retried_then_succeeds(tmp_path):
    with serve({"/f.bin": DATA}, {"/f.bin": ["500", "500"]}) as (url, state):
        download_file(f"{url}/f.bin", tmp_path / "f.bin", sha256=SHA, retries=3, **FAST)
    assert len(state.requests) == 3
    assert (tmp_path / "f.bin").read_bytes() == DATA


@pytest.mark.fault
def test_persistent_500_gives_up_after_retries(tmp_path):
    with serve({"/f.bin": DATA}, {"/f.bin": ["500"] * 10}) as (url, state):
        with pytest.raises(DownloadError, match="after 3 attempts") as info:
            download_file(f"{url}/f.bin", tmp_path / "f.bin", retries=2, **FAST)
    assert info.value.http_status == 500 and len(state.requests) == 3


@pytest.mark.bad_input
def test_checksum_mismatch_keeps_bad_file_aside(tmp_path):
    with serve({"/f.bin": DATA}, {"/f.bin": ["wrong"]}) as (url, _):
        with pytest.raises(ChecksumMismatch) as info:
            download_file(f"{url}/f.bin", tmp_path / "f.bin", sha256=SHA, **FAST)
    msg = str(info.value)
    bad = bytes([DATA[0] ^ 0xFF]) + DATA[1:]
    assert SHA in msg and hashlib.sha256(bad).hexdigest() in msg and "f.bin" in msg
    assert not (tmp_path / "f.bin").exists()
    corrupt = tmp_path / "f.bin.corrupt"
    assert corrupt.read_bytes() == bad  # kept, not deleted
    assert info.value.kept_as == corrupt


def test_second_run_is_a_noop_without_request(tmp_path):
    with serve({"/f.bin": DATA}) as (url, state):
        download_file(f"{url}/f.bin", tmp_path / "f.bin", sha256=SHA, **FAST)
        download_file(f"{url}/f.bin", tmp_path / "f.bin", sha256=SHA, **FAST)
    assert len(state.requests) == 1


def test_existing_file_without_marker_is_hashed_not_fetched(tmp_path):
    (tmp_path / "f.bin").write_bytes(DATA)
    with serve({"/f.bin": DATA}) as (url, state):
        download_file(f"{url}/f.bin", tmp_path / "f.bin", sha256=SHA, **FAST)
    assert state.requests == []


@pytest.mark.fault
def test_offline_is_a_network_error(tmp_path):
    with serve({}) as (url, _):
        pass  # server shut down: the port now refuses connections
    with pytest.raises(DownloadError) as info:
        download_file(f"{url}/f.bin", tmp_path / "f.bin", retries=1, **FAST)
    assert info.value.http_status is None


# ------------------------------------------------------------------------------------------- dataset level


@pytest.fixture
def local_manifest_dir(tmp_path, monkeypatch):
    """A manifest dir with one open dataset served from a local server, plus a copy of the real bracs manifest."""
    mdir = tmp_path / "manifests"
    mdir.mkdir()
    shutil.copy(paths.MANIFEST_DIR / "bracs.yaml", mdir / "bracs.yaml")
    monkeypatch.setattr(paths, "MANIFEST_DIR", mdir)
    return mdir


def _write_toy_manifest(mdir, url, archive: bytes):
    (mdir / "toyset.yaml").write_text(f"""
name: toyset
title: toy class-folder set served locally
homepage: {url}
license: {{name: CC BY 4.0, url: null, redistributable: true}}
citation: none
access: open
files:
  - name: toy.zip
    url: {url}/toy.zip
    size: {len(archive)}
    checksums: {{sha256: {hashlib.sha256(archive).hexdigest()}}}
    checksum_source: host
    extract: true
layout: {{type: class_folders, subdir: toy, patterns: ["*.png"], image_size: [16, 16]}}
classes: [A, B]
splits: {{type: none, description: none}}
groups: {{id: null, source: null, description: none}}
""")


def test_prepare_downloads_verifies_extracts_then_loads(tmp_path, local_manifest_dir):
    archive = class_folder_zip("toy", {"A": 3, "B": 2})
    root = tmp_path / "data"
    with serve({"/toy.zip": archive}) as (url, state):
        _write_toy_manifest(local_manifest_dir, url, archive)
        layout_dir = prepare("toyset", root, progress=False)
        assert layout_dir == root / "toyset" / "toy"
        assert verify("toyset", root, progress=False).ok
        prepare("toyset", root, progress=False)  # second run: no request, no re-extraction
    assert len(state.requests) == 1
    ds = load_dataset("toyset", root)
    assert ds.class_counts() == {"A": 3, "B": 2}


@pytest.mark.fault
def test_open_host_offline_asks_for_manual_download(tmp_path, local_manifest_dir):
    archive = class_folder_zip("toy", {"A": 1, "B": 1})
    with serve({}) as (url, _):
        pass
    _write_toy_manifest(local_manifest_dir, url, archive)
    with pytest.raises(ManualDownloadRequired) as info:
        download("toyset", tmp_path / "data", progress=False, retries=0)
    msg = str(info.value)
    assert f"{url}/toy.zip" in msg and str(tmp_path / "data" / "toyset" / "toy.zip") in msg


@pytest.mark.bad_input
def test_login_host_lists_steps_and_destination(tmp_path, local_manifest_dir):
    with pytest.raises(ManualDownloadRequired) as info:
        download("bracs", tmp_path, progress=False)
    msg = str(info.value)
    assert "https://www.bracs.icar.cnr.it/" in msg
    assert str(tmp_path / "bracs" / "BRACS_RoI" / "latest_version") in msg
    assert "<root>" not in msg


@pytest.mark.bad_input
def test_unavailable_dataset_says_why():
    with pytest.raises(ManualDownloadRequired, match="Stanford"):
        download("vgh_nki", "/nonexistent")
    assert "Stanford" in manual_instructions(load_manifest("vgh_nki"))
