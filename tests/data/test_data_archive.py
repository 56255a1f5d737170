"""safe_extract: good zip / tar.gz extract once (marker); traversal, absolute paths, links and devices refused."""
from __future__ import annotations

import io
import stat
import tarfile
import zipfile

import pytest

from histokit.data import UnsafeArchiveError, safe_extract


def _zip(path, members: dict[str, bytes], attrs: dict[str, int] | None = None):
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            info = zipfile.ZipInfo(name)
            if attrs and name in attrs:
                info.external_attr = attrs[name] << 16
            zf.writestr(info, data)
    return path


def _tar(path, members: list[tarfile.TarInfo], data: dict[str, bytes] | None = None):
    with tarfile.open(path, "w:gz") as tf:
        for m in members:
            payload = (data or {}).get(m.name)
            if payload is not None:
                m.size = len(payload)
                tf.addfile(m, io.BytesIO(payload))
            else:
                tf.addfile(m)
    return path


def _file(name: str) -> tarfile.TarInfo:
    return tarfile.TarInfo(name)


def test_zip_extracts_and_second_run_is_noop(tmp_path):
    archive = _zip(tmp_path / "a.zip", {"top/x.txt": b"hello", "top/sub/y.txt": b"world"})
    out = tmp_path / "out"
    safe_extract(archive, out, progress=False)
    assert (out / "top" / "x.txt").read_bytes() == b"hello"
    assert (out / "top" / "sub" / "y.txt").read_bytes() == b"world"
    (out / "top" / "x.txt").unlink()
    safe_extract(archive, out, progress=False)  # marker present: nothing is re-extracted
    assert not (out / "top" / "x.txt").exists()


def test_tar_gz_extracts(tmp_path):
    archive = _tar(tmp_path / "a.tar.gz", [_file("d/x.txt")], {"d/x.txt": b"abc"})
    safe_extract(archive, tmp_path / "out", progress=False)
    assert (tmp_path / "out" / "d" / "x.txt").read_bytes() == b"abc"


@pytest.mark.parametrize("name", ["../evil.txt", "ok/../../evil.txt", "/tmp/evil_abs.txt", "C:/evil.txt"])
@pytest.mark.bad_input
def test_zip_slip_refused_naming_member(tmp_path, name):
    archive = _zip(tmp_path / "bad.zip", {"fine.txt": b"ok", name: b"pwned"})
    with pytest.raises(UnsafeArchiveError) as info:
        safe_extract(archive, tmp_path / "out", progress=False)
    assert name in str(info.value) and "bad.zip" in str(info.value)
    assert not (tmp_path / "evil.txt").exists()
    assert not (tmp_path / "out" / "fine.txt").exists()  # checked before anything is written


@pytest.mark.bad_input
def test_zip_symlink_refused(tmp_path):
    archive = _zip(tmp_path / "link.zip", {"link": b"/etc/passwd"}, {"link": stat.S_IFLNK | 0o777})
    with pytest.raises(UnsafeArchiveError, match="'link' is a symbolic link"):
        safe_extract(archive, tmp_path / "out", progress=False)


@pytest.mark.bad_input
def test_tar_traversal_refused(tmp_path):
    archive = _tar(tmp_path / "bad.tar.gz", [_file("../../evil.txt")], {"../../evil.txt": b"x"})
    with pytest.raises(UnsafeArchiveError, match=r"\.\./\.\./evil\.txt"):
        safe_extract(archive, tmp_path / "out", progress=False)
    assert not (tmp_path / "evil.txt").exists()


@pytest.mark.bad_input
def test_tar_absolute_path_refused(tmp_path):
    archive = _tar(tmp_path / "abs.tar.gz", [_file("/tmp/evil_abs")], {"/tmp/evil_abs": b"x"})
    with pytest.raises(UnsafeArchiveError, match="absolute"):
        safe_extract(archive, tmp_path / "out", progress=False)


@pytest.mark.parametrize("kind", [tarfile.SYMTYPE, tarfile.LNKTYPE])
@pytest.mark.bad_input
def test_tar_links_refused(tmp_path, kind):
    link = _file("innocent")
    link.type, link.linkname = kind, "/etc/passwd"
    archive = _tar(tmp_path / "links.tar.gz", [link])
    with pytest.raises(UnsafeArchiveError, match="'innocent' is a (symbolic|hard) link"):
        safe_extract(archive, tmp_path / "out", progress=False)
    assert not (tmp_path / "out" / "innocent").exists()


@pytest.mark.parametrize("kind", [tarfile.CHRTYPE, tarfile.BLKTYPE, tarfile.FIFOTYPE])
@pytest.mark.bad_input
def test_tar_device_files_refused(tmp_path, kind):
    dev = _file("dev0")
    dev.type = kind
    archive = _tar(tmp_path / "dev.tar.gz", [dev])
    with pytest.raises(UnsafeArchiveError, match="'dev0' is a device"):
        safe_extract(archive, tmp_path / "out", progress=False)


@pytest.mark.bad_input
def test_not_an_archive(tmp_path):
    (tmp_path / "plain.zip").write_bytes(b"not an archive")
    with pytest.raises(UnsafeArchiveError, match="neither a zip nor a tar"):
        safe_extract(tmp_path / "plain.zip", tmp_path / "out", progress=False)
