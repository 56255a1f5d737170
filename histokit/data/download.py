"""Resumable, verified downloads with urllib: one file (:func:`download_file`) or a dataset's files (:func:`download`).

- An interrupted download leaves ``<name>.part``; the next attempt asks for the rest with an HTTP ``Range`` header
  (a server that ignores it sends everything again and the part is restarted).
- 5xx answers, dropped connections and timeouts are retried with exponential back-off; 4xx answers are not
  (a 404 means the manifest's URL is wrong, and the error names it).
- The finished part is checked (size, sha256 / md5) and renamed onto its final name in one ``os.replace`` (same
  directory, hence atomic): a file under its final name is always complete. A file whose digest differs is moved
  aside to ``<name>.corrupt`` (nothing is deleted) and :class:`ChecksumMismatch` names both digests.
- A verified file gets a small marker (``.<name>.verified.json``: size, mtime, digests); while the file is unchanged a
  later call returns at once without a request or re-hashing. Without a marker an existing file is hashed, never
  fetched again if it matches.
"""
from __future__ import annotations

import http.client
import json
import os
import socket
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Optional

from ..progress import progress_bar, progress_write

from ..io import atomic_write_json
from .errors import ChecksumMismatch, DownloadError, ManualDownloadRequired
from .hashing import file_digests, read_stat_marker
from .manifests import FileSpec, Manifest, dataset_dir, layout_entries, load_manifest

_CHUNK = 1 << 16
USER_AGENT = "histokit-data/0.1 (+urllib)"


class _ShortRead(Exception):
    """The connection closed before Content-Length bytes arrived (urllib returns b'' instead of raising)."""


def _marker_path(dest: Path) -> Path:
    return dest.with_name(f".{dest.name}.verified.json")


def _expected(sha256: Optional[str], md5: Optional[str]) -> dict[str, str]:
    return {k: v.lower() for k, v in (("sha256", sha256), ("md5", md5)) if v}


def _marker_matches(dest: Path, expected: dict[str, str]) -> bool:
    rec = read_stat_marker(_marker_path(dest), dest)
    return rec is not None and all(rec.get("digests", {}).get(k) == v for k, v in expected.items())


def _write_marker(dest: Path, digests: dict[str, str]) -> None:
    st = dest.stat()
    atomic_write_json(_marker_path(dest), {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "digests": digests})


def keep_aside(path: Path, name: Optional[Path] = None) -> Path:
    """Rename ``path`` to ``<name>.corrupt`` (``.corrupt.1``, ... if taken; ``name`` defaults to ``path``) and
    return the new path. Used instead of deleting: a bad download stays inspectable."""
    name = name or path
    target = name.with_name(name.name + ".corrupt")
    n = 0
    while target.exists():
        n += 1
        target = name.with_name(f"{name.name}.corrupt.{n}")
    os.replace(path, target)
    return target


def check_file(path: Path, *, size: Optional[int], expected: dict[str, str], progress: bool = True,
               shown_as: Optional[Path] = None) -> dict[str, str]:
    """Raise :class:`ChecksumMismatch` if ``path`` has the wrong size or digest; return the computed digests."""
    shown = shown_as or path
    actual_size = path.stat().st_size
    if size is not None and actual_size != size:
        raise ChecksumMismatch(shown, "size", f"{size} bytes", f"{actual_size} bytes")
    digests = file_digests(path, expected, progress=progress)
    for algorithm, want in expected.items():
        if digests[algorithm] != want:
            raise ChecksumMismatch(shown, algorithm, want, digests[algorithm])
    return digests


def _verify_or_keep_aside(path: Path, dest: Path, size, expected, progress) -> dict[str, str]:
    try:
        return check_file(path, size=size, expected=expected, progress=progress, shown_as=dest)
    except ChecksumMismatch as exc:
        kept = keep_aside(path, dest)
        raise ChecksumMismatch(dest, exc.algorithm, exc.expected, exc.actual, kept_as=kept) from None


def _write_all(fh, chunk: bytes, part: Path) -> None:
    """Write all of ``chunk`` (a raw file may accept less per call). A disk error (full disk, quota) names the part
    file and says it is kept: the bytes already written are a prefix of the file, and the next run resumes them."""
    view = memoryview(chunk)
    try:
        while view:
            view = view[fh.write(view):]
    except OSError as exc:
        raise OSError(exc.errno, f"{exc.strerror}; the partial download is kept and the next run resumes it",
                      str(part)) from exc


def _fetch_into(url: str, part: Path, *, size: Optional[int], timeout: float, progress: bool) -> None:
    """One request: resume ``part`` from its current length (Range) or start it; raise on a short read."""
    offset = part.stat().st_size if part.exists() else 0
    if size is not None and offset == size:
        return  # the part is already complete (killed between the last byte and the rename)
    if size is not None and offset > size:
        keep_aside(part)  # longer than the file can be: not ours to append to
        offset = 0
    headers = {"User-Agent": USER_AGENT}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout) as resp:
        if offset and resp.status != 206:
            offset = 0  # the server ignored the Range header and sends the whole file
        length = resp.headers.get("Content-Length")
        length = int(length) if length is not None else None
        total = offset + length if length is not None else size
        received = 0
        # unbuffered: what write() accepted is on disk, so a failed write leaves no buffer for close() to re-fail on
        with open(part, "ab" if offset else "wb", buffering=0) as fh, progress_bar(
            total=total, initial=offset, unit="B", unit_scale=True, disable=not progress, desc=part.name[:-5]
        ) as bar:
            while True:
                chunk = resp.read(_CHUNK)
                if not chunk:
                    break
                _write_all(fh, chunk, part)
                received += len(chunk)
                bar.update(len(chunk))
        if length is not None and received < length:
            raise _ShortRead(f"connection closed after {offset + received} of {total} bytes")


def download_file(url: str, dest: str | os.PathLike, *, size: Optional[int] = None, sha256: Optional[str] = None,
                  md5: Optional[str] = None, retries: int = 4, backoff: float = 0.5, timeout: float = 30,
                  progress: bool = True) -> Path:
    """Download ``url`` to ``dest``, resuming, retrying and verifying; return ``dest``.

    Raises :class:`DownloadError` (4xx, or still failing after ``retries`` retries; ``.http_status`` is None for a
    network failure) and :class:`ChecksumMismatch` (bad file kept as ``<dest>.corrupt``).
    """
    dest = Path(dest)
    expected = _expected(sha256, md5)
    if dest.exists():
        if expected and _marker_matches(dest, expected):
            return dest  # verified before and unchanged: no request, no hashing
        try:
            digests = check_file(dest, size=size, expected=expected, progress=progress)
        except ChecksumMismatch as exc:
            kept = keep_aside(dest)
            progress_write(f"{exc}; moved aside to {kept}, downloading again")
        else:
            if expected:
                _write_marker(dest, digests)
            return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    attempt = 0
    while True:
        try:
            _fetch_into(url, part, size=size, timeout=timeout, progress=progress)
            break
        except urllib.error.HTTPError as exc:
            if exc.code == 416 and part.exists():
                break  # nothing left to send: the part is as long as the file; the checksum decides
            if not (500 <= exc.code < 600 or exc.code in (408, 429)):
                raise DownloadError(f"HTTP {exc.code} ({exc.reason}) for {url}", url, exc.code) from None
            last = f"HTTP {exc.code} ({exc.reason})"
            status = exc.code
        except (urllib.error.URLError, http.client.HTTPException, ConnectionError, socket.timeout, TimeoutError,
                _ShortRead) as exc:
            last, status = f"{type(exc).__name__}: {getattr(exc, 'reason', exc)}", None
        attempt += 1
        if attempt > retries:
            raise DownloadError(
                f"giving up on {url} after {attempt} attempts (last error: {last}); "
                f"the partial file {part} is kept and the next run resumes it", url, status,
            )
        time.sleep(backoff * 2 ** (attempt - 1))
    digests = _verify_or_keep_aside(part, dest, size, expected, progress)
    os.replace(part, dest)  # same directory: atomic, so dest is complete or absent
    if expected:
        _write_marker(dest, digests)
    return dest


def manual_instructions(manifest: Manifest, root: Optional[str | os.PathLike] = None, reason: str = "") -> str:
    """Exactly what to fetch for ``manifest``, from where, and where it goes under ``root``."""
    ddir = dataset_dir(manifest, root)
    root_txt = str(ddir.parent)
    lines = [f"{manifest.name} ({manifest.title}) must be downloaded by hand" + (f": {reason}" if reason else ".")]
    if manifest.access == "unavailable":
        lines.append(manifest.unavailable_reason.strip())
    for i, step in enumerate(manifest.manual_steps, 1):
        lines.append(f"  {i}. {step.strip().replace('<root>', root_txt)}")
    files = manifest.required_files
    if files:
        lines.append("Files to fetch:")
    for f in files:
        digest = ", ".join(f"{k} {v}" for k, v in f.checksums.items()) or "no published checksum"
        size = f"{f.size:,} bytes" if f.size else "size not stated"
        lines.append(f"  - {f.name} from {f.url or manifest.homepage}")
        lines.append(f"    put it at {ddir / f.name} ({size}; {digest})")
    if not files:
        lines.append(f"Expected layout: {ddir / manifest.layout.subdir}")
        lines.append(f"Then run: histokit data verify {manifest.name} --root {root_txt}")
    else:
        lines.append(f"Then run: histokit data prepare {manifest.name} --root {root_txt}")
    return "\n".join(lines)


def _files_for(manifest: Manifest, include_optional: bool) -> tuple[FileSpec, ...]:
    return manifest.files if include_optional else manifest.required_files


def download(name: str, root: Optional[str | os.PathLike] = None, *, include_optional: bool = False,
             progress: bool = True, **download_kwargs) -> list[Path]:
    """Fetch every (required) file of dataset ``name`` into ``<root>/<name>/``; return their paths.

    Login and unavailable hosts, and open hosts that cannot be reached, raise :class:`ManualDownloadRequired` with
    the instructions; files already present and verified are not fetched again.
    """
    manifest = load_manifest(name)
    ddir = dataset_dir(manifest, root)
    specs = _files_for(manifest, include_optional)
    if manifest.access in ("bundled", "login", "unavailable"):
        # nothing to fetch: a hand-placed dataset is "downloaded" once its layout folder holds data
        present = (all((ddir / f.name).is_file() for f in specs)
                   and bool(layout_entries(ddir / manifest.layout.subdir)))
        if manifest.hand_placed and not present:
            reason = ("the host cannot serve it" if manifest.access == "unavailable"
                      else "the host requires registration")
            raise ManualDownloadRequired(manual_instructions(manifest, root, reason))
        return [ddir / f.name for f in specs]
    paths = []
    for f in specs:
        try:
            paths.append(download_file(f.url, ddir / f.name, size=f.size, sha256=f.checksums.get("sha256"),
                                       md5=f.checksums.get("md5"), progress=progress, **download_kwargs))
        except DownloadError as exc:
            if exc.http_status is None:  # no server answered: offline or host unreachable
                raise ManualDownloadRequired(manual_instructions(manifest, root, f"no network ({exc})")) from exc
            raise
    return paths
