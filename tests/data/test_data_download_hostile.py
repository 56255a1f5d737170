"""Hostile and broken servers, against a local HTTP server (tests/data_helpers.py): a trickle is caught by the
stall detector and the overall deadline (tiny values here, minutes by default) instead of hanging; an invalid
Content-Length, a foreign Content-Range, an HTML page instead of the file and an endless body each get one clear
error; a body dropped mid-way says how much arrived and that running again resumes it (not "no network"); and no
message claims a .part that does not exist."""
from __future__ import annotations

import hashlib
import os
import re
import time

import pytest
import yaml

from histokit import paths
from histokit.data import DownloadError, ManualDownloadRequired, download
from histokit.data.download import DEFAULT_DEADLINE, DEFAULT_MIN_RATE, DEFAULT_STALL_WINDOW, download_file

from data_helpers import serve

DATA = os.urandom(300_000)
SHA = hashlib.sha256(DATA).hexdigest()
FAST = dict(backoff=0.01, timeout=5, progress=False)

pytestmark = pytest.mark.fault


def test_defaults_catch_a_trickle_within_minutes_but_allow_a_slow_real_download():
    assert DEFAULT_MIN_RATE * DEFAULT_STALL_WINDOW > 5 * 60 / 5  # a byte every 5 s is far below the minimum
    assert DEFAULT_STALL_WINDOW <= 120 and DEFAULT_MIN_RATE <= 10_000  # a 10 kB/s link still gets through
    assert DEFAULT_DEADLINE >= 11_690_284_003 / 1e6  # NCT-CRC-HE-100K at 1 MB/s fits


def test_a_trickling_server_is_a_stall_not_a_hang(tmp_path):
    """One byte every 50 ms (20 B/s) against a minimum of 1,000 B/s over 0.3 s: caught in well under a second."""
    start = time.monotonic()
    with serve({"/f.bin": DATA}, {"/f.bin": ["trickle"]}, trickle_interval=0.05) as (url, state):
        with pytest.raises(DownloadError) as info:
            download_file(f"{url}/f.bin", tmp_path / "f.bin", size=len(DATA), sha256=SHA, retries=0,
                          min_rate=1000, stall_window=0.3, **FAST)
    assert time.monotonic() - start < 5
    msg = str(info.value)
    assert "stalled" in msg and "below the minimum of 1,000 bytes/s" in msg and "of 300,000 bytes" in msg
    part = tmp_path / "f.bin.part"
    assert part.exists() and f"{part} ({part.stat().st_size:,} bytes) is kept" in msg
    assert info.value.http_status == 200 and "\n" not in msg


def test_the_overall_deadline_ends_a_slow_but_steady_transfer(tmp_path):
    """Fast enough for the stall detector (100 B/s against 10 B/s), slower than the whole-call deadline."""
    start = time.monotonic()
    with serve({"/f.bin": DATA}, {"/f.bin": ["trickle"] * 5}, trickle_interval=0.01) as (url, state):
        with pytest.raises(DownloadError, match=r"overall deadline of 0.6 s passed after [\d,]+ of 300,000 bytes"):
            download_file(f"{url}/f.bin", tmp_path / "f.bin", size=len(DATA), retries=3, deadline=0.6,
                          min_rate=10, stall_window=0.2, **FAST)
    assert time.monotonic() - start < 5
    assert len(state.requests) == 1  # the deadline is not retried


@pytest.mark.bad_input
def test_an_invalid_content_length_is_one_clear_error(tmp_path):
    with serve({"/f.bin": DATA}, {"/f.bin": ["badlength"] * 5}) as (url, state):
        with pytest.raises(DownloadError) as info:
            download_file(f"{url}/f.bin", tmp_path / "f.bin", size=len(DATA), retries=3, **FAST)
    msg = str(info.value)
    assert "invalid Content-Length header 'abc'" in msg and f"{url}/f.bin" in msg
    assert "no partial file is kept" in msg and not (tmp_path / "f.bin.part").exists()
    assert len(state.requests) == 1  # a retry cannot fix it


def test_a_dropped_body_says_how_much_arrived_and_to_run_again(tmp_path):
    """Each answer stops halfway: 150,000, then 225,000 of 300,000 bytes; the part is kept and named."""
    with serve({"/f.bin": DATA}, {"/f.bin": ["drop", "drop"]}) as (url, _):
        with pytest.raises(DownloadError) as info:
            download_file(f"{url}/f.bin", tmp_path / "f.bin", size=len(DATA), sha256=SHA, retries=1, **FAST)
        msg = str(info.value)
        assert "server closed the connection after 225,000 of 300,000 bytes" in msg
        assert "(225,000 bytes) is kept: run again to resume" in msg
        assert info.value.http_status == 206  # a server answered: not a network failure
        download_file(f"{url}/f.bin", tmp_path / "f.bin", size=len(DATA), sha256=SHA, **FAST)  # run again
    assert (tmp_path / "f.bin").read_bytes() == DATA


@pytest.fixture
def toy_manifest(tmp_path, monkeypatch):
    """``write(url)``: a manifest dir holding toyset, one file served at ``<url>/toy.bin``."""
    mdir = tmp_path / "manifests"
    mdir.mkdir()
    monkeypatch.setattr(paths, "MANIFEST_DIR", mdir)

    def write(url):
        (mdir / "toyset.yaml").write_text(yaml.safe_dump({
            "name": "toyset", "title": "toy", "homepage": url, "citation": "none", "access": "open",
            "license": {"name": "CC BY 4.0", "url": None, "redistributable": True},
            "files": [{"name": "toy.bin", "url": f"{url}/toy.bin", "size": len(DATA), "checksums": {"sha256": SHA},
                       "checksum_source": "host"}],
            "layout": {"type": "class_folders", "subdir": "toy"}, "classes": [],
            "splits": {"type": "none", "description": "none"},
            "groups": {"id": None, "source": None, "description": "none"},
        }))
    return write


def test_a_dropped_body_is_not_reported_as_no_network(tmp_path, toy_manifest):
    with serve({"/toy.bin": DATA}, {"/toy.bin": ["drop"] * 3}) as (url, _):
        toy_manifest(url)
        with pytest.raises(DownloadError, match="closed the connection after") as info:
            download("toyset", tmp_path / "data", progress=False, retries=1, backoff=0.01)
    assert not isinstance(info.value, ManualDownloadRequired) and "no network" not in str(info.value)


def test_the_cli_takes_the_limits_and_reports_in_one_line(tmp_path, toy_manifest, capsys):
    from histokit.data.cli import main

    start = time.monotonic()
    with serve({"/toy.bin": DATA}, {"/toy.bin": ["trickle"] * 9}, trickle_interval=0.05) as (url, _):
        toy_manifest(url)
        code = main(["data", "download", "toyset", "--root", str(tmp_path / "data"), "--quiet", "--deadline", "1",
                     "--min-rate", "1000", "--stall-window", "0.3"])
    err = capsys.readouterr().err
    assert code == 1 and time.monotonic() - start < 5
    assert err.count("\n") == 1 and "histokit data download" in err and "toy.bin" in err
    assert "stalled" in err or "deadline of 1 s" in err


@pytest.mark.parametrize("script, says", [
    (["500"] * 5, "HTTP 500"),
    (["404"], "HTTP 404"),
])
def test_no_message_claims_a_part_file_that_does_not_exist(tmp_path, script, says):
    with serve({"/f.bin": DATA}, {"/f.bin": script}) as (url, _):
        with pytest.raises(DownloadError) as info:
            download_file(f"{url}/f.bin", tmp_path / "f.bin", retries=1, **FAST)
    msg = str(info.value)
    assert says in msg and "no partial file is kept" in msg and "is kept: run again" not in msg
    assert not (tmp_path / "f.bin.part").exists()


@pytest.mark.bad_input
def test_an_html_page_instead_of_the_file_is_refused_before_writing(tmp_path):
    with serve({"/f.bin": DATA}, {"/f.bin": ["html"] * 5}) as (url, state):
        with pytest.raises(DownloadError) as info:
            download_file(f"{url}/f.bin", tmp_path / "f.bin", size=len(DATA), sha256=SHA, retries=3, **FAST)
    msg = str(info.value)
    assert re.search(r"announces \d\d bytes \(text/html\) but the manifest says 300,000", msg)
    assert len(state.requests) == 1 and sorted(os.listdir(tmp_path)) == []


@pytest.mark.bad_input
def test_an_endless_body_stops_at_the_manifest_size(tmp_path):
    with serve({"/f.bin": DATA}, {"/f.bin": ["endless"]}) as (url, _):
        with pytest.raises(DownloadError, match=r"more than the 300,000 bytes the manifest states") as info:
            download_file(f"{url}/f.bin", tmp_path / "f.bin", size=len(DATA), sha256=SHA, retries=0, **FAST)
    kept = tmp_path / "f.bin.part.corrupt"
    assert f"moved aside to {kept}" in str(info.value) and kept.stat().st_size <= len(DATA)
    assert not (tmp_path / "f.bin").exists() and not (tmp_path / "f.bin.part").exists()


@pytest.mark.bad_input
def test_a_content_range_from_the_start_restarts_the_part_instead_of_appending(tmp_path):
    (tmp_path / "f.bin.part").write_bytes(DATA[:1000])
    with serve({"/f.bin": DATA}, {"/f.bin": ["badrange"]}) as (url, state):
        download_file(f"{url}/f.bin", tmp_path / "f.bin", size=len(DATA), sha256=SHA, retries=0, **FAST)
    assert state.requests == [("/f.bin", "bytes=1000-")]
    assert (tmp_path / "f.bin").read_bytes() == DATA
