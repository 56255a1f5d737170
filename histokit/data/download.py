"""Resumable, verified downloads with urllib: one file (:func:`download_file`) or a dataset's files (:func:`download`).

- An interrupted download leaves ``<name>.part``; the next attempt asks for the rest with an HTTP ``Range`` header
  (a server that ignores it sends everything again and the part is restarted).
- 5xx answers, dropped connections, timeouts and stalls are retried with exponential back-off; 4xx answers are
  not (a 404 means the manifest's URL is wrong, and the error names it).
- Hostile or broken servers are bounded: one ``deadline`` for the whole call (default 12 h), a stall detector
  (fewer than ``min_rate`` bytes/s over ``stall_window`` s, default 1 KiB/s over 60 s: a server trickling a byte
  every few seconds fails in a minute instead of hanging), and answers no retry can fix fail at once: an invalid
  ``Content-Length``, a length other than the manifest's size (an HTML login page served with 200), a
  ``Content-Range`` other than the one asked for, more bytes than the manifest's size. A server that drops the
  body is reported as such ("closed the connection after N of M bytes"), not as "no network", and every message
  says whether a ``.part`` is kept and how large it is. Only ``http://`` and ``https://`` URLs are fetched, also
  after a redirect (:mod:`histokit.data.safepaths`).
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
import re
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
from .safepaths import url_problem

_CHUNK = 1 << 16
USER_AGENT = "histokit-data/0.1 (+urllib)"


DEFAULT_TIMEOUT = 30.0          # s: one socket operation (connect, one read)
DEFAULT_DEADLINE = 12 * 3600.0  # s: the whole call, every attempt and back-off included (11 GB at 0.3 MB/s)
DEFAULT_MIN_RATE = 1024.0       # bytes/s: below this, averaged over ``stall_window``, the transfer has stalled
DEFAULT_STALL_WINDOW = 60.0     # s


class _Attempt(Exception):
    """One request failed in a way worth retrying; the message says what was received."""


class _ShortRead(_Attempt):
    """The server closed the connection before the whole body arrived (urllib returns b'' instead of raising)."""


class _Stalled(_Attempt):
    """Fewer than ``min_rate`` bytes/s arrived over a whole ``stall_window`` (or nothing within it)."""


class _Fatal(Exception):
    """An answer no retry can fix (a bad Content-Length, a foreign Content-Range, too many bytes, the deadline)."""

    def __init__(self, message: str, keep_aside_part: bool = False):
        super().__init__(message)
        self.keep_aside_part = keep_aside_part


def _bytes(n: Optional[int]) -> str:
    return "?" if n is None else f"{n:,}"


class _Clock:
    """The limits of one :func:`download_file` call: the overall deadline and the stall detector's parameters."""

    def __init__(self, timeout: float, deadline: Optional[float], min_rate: float, stall_window: float):
        self.timeout, self.deadline, self.min_rate, self.window = timeout, deadline, min_rate, stall_window
        self.start = time.monotonic()
        self.until = None if deadline is None else self.start + deadline

    def left(self) -> float:
        return float("inf") if self.until is None else self.until - time.monotonic()

    def socket_timeout(self) -> float:
        """A blocking read returns within the stall window and the deadline, whatever the server does."""
        limit = min(self.timeout, self.window if self.min_rate > 0 else self.timeout, self.left())
        return max(limit, 0.001)

    def check_deadline(self, received: str) -> None:
        if self.left() <= 0:
            raise _Fatal(f"the overall deadline of {self.deadline:g} s passed after {received} bytes (for a slow link, "
                         "give a larger one: --deadline SECONDS, or deadline=)")


class _HttpOnlyRedirects(urllib.request.HTTPRedirectHandler):
    """Follow a redirect only to another http(s) URL (urllib would follow one to ftp://)."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        problem = url_problem(newurl)
        if problem:
            raise urllib.error.HTTPError(newurl, code, f"redirect to {newurl!r} refused: it {problem}", headers, fp)
        return super().redirect_request(req, fp, code, msg, headers, newurl)


_OPENER = urllib.request.build_opener(_HttpOnlyRedirects)
_CONTENT_RANGE = re.compile(r"^\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*$", re.IGNORECASE)


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


def _content_length(resp) -> Optional[int]:
    raw = resp.headers.get("Content-Length")
    if raw is None:
        return None
    try:
        length = int(raw.strip())
    except ValueError:
        length = -1
    if length < 0:
        raise _Fatal(f"the server sent an invalid Content-Length header {raw!r} (not a byte count)")
    return length


def _fetch_into(url: str, part: Path, *, size: Optional[int], clock: _Clock, progress: bool,
                answered: list) -> None:
    """One request: resume ``part`` from its current length (Range) or start it; raise :class:`_Attempt` on a short
    read or a stall, :class:`_Fatal` on an answer no retry can fix. ``answered`` gets each HTTP status received."""
    offset = part.stat().st_size if part.exists() else 0
    if size is not None and offset == size:
        return  # the part is already complete (killed between the last byte and the rename)
    if size is not None and offset > size:
        keep_aside(part)  # longer than the file can be: not ours to append to
        offset = 0
    headers = {"User-Agent": USER_AGENT}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    request = urllib.request.Request(url, headers=headers)
    with _OPENER.open(request, timeout=clock.socket_timeout()) as resp:
        answered.append(resp.status)
        if offset and resp.status != 206:
            offset = 0  # the server ignored the Range header and sends the whole file
        if offset:
            match = _CONTENT_RANGE.match(resp.headers.get("Content-Range", ""))
            if match and int(match.group(1)) != offset:
                if int(match.group(1)) != 0:
                    raise _Fatal(f"asked for bytes {offset}- the server answered Content-Range "
                                 f"{resp.headers['Content-Range']!r}")
                offset = 0  # the whole file, labelled as a part: start the part again
        length = _content_length(resp)
        total = offset + length if length is not None else size
        if size is not None and length is not None and total != size:
            kind = resp.headers.get("Content-Type") or "no Content-Type"
            raise _Fatal(f"the server announces {total:,} bytes ({kind}) but the manifest says {size:,}: this is not "
                         "the file (a login or error page, or the wrong URL?)")
        received = 0
        read = getattr(resp, "read1", None) or resp.read  # read1: what has arrived, never waiting for a full chunk
        window_start, window_bytes = time.monotonic(), 0
        # unbuffered: what write() accepted is on disk, so a failed write leaves no buffer for close() to re-fail on
        with open(part, "ab" if offset else "wb", buffering=0) as fh, progress_bar(
            total=total, initial=offset, unit="B", unit_scale=True, disable=not progress, desc=part.name[:-5]
        ) as bar:
            while True:
                so_far = f"{offset + received:,} of {_bytes(total)}"
                clock.check_deadline(so_far)
                try:
                    chunk = read(_CHUNK)
                except (socket.timeout, TimeoutError):
                    if clock.left() <= 0:
                        clock.check_deadline(so_far)
                    raise _Stalled(f"the transfer stalled: no data for {clock.socket_timeout():g} s after "
                                   f"{so_far} bytes") from None
                except (ConnectionError, http.client.HTTPException) as exc:
                    raise _ShortRead(f"the server closed the connection after {so_far} bytes "
                                     f"({type(exc).__name__})") from None
                if not chunk:
                    break
                if size is not None and offset + received + len(chunk) > size:
                    raise _Fatal(f"the server sent more than the {size:,} bytes the manifest states",
                                 keep_aside_part=True)
                _write_all(fh, chunk, part)
                received += len(chunk)
                bar.update(len(chunk))
                now = time.monotonic()
                if clock.min_rate > 0 and now - window_start >= clock.window:
                    got = received - window_bytes
                    if got / (now - window_start) < clock.min_rate:
                        raise _Stalled(f"the transfer stalled: {got:,} bytes in the last {now - window_start:.1f} s "
                                       f"(below the minimum of {clock.min_rate:,.0f} bytes/s) after "
                                       f"{offset + received:,} of {_bytes(total)} bytes")
                    window_start, window_bytes = now, received
        if total is not None and offset + received < total:
            raise _ShortRead(f"the server closed the connection after {offset + received:,} of {total:,} bytes")


def _part_note(part: Path) -> str:
    """What is left of a failed download, truthfully: the part and its size, or that nothing is kept."""
    n = part.stat().st_size if part.exists() else 0
    if n:
        return f"the partial file {part} ({n:,} bytes) is kept: run again to resume"
    if part.exists():
        part.unlink()  # an empty part holds nothing to resume
    return "no partial file is kept (no bytes arrived)"


def download_file(url: str, dest: str | os.PathLike, *, size: Optional[int] = None, sha256: Optional[str] = None,
                  md5: Optional[str] = None, retries: int = 4, backoff: float = 0.5, timeout: float = DEFAULT_TIMEOUT,
                  deadline: Optional[float] = DEFAULT_DEADLINE, min_rate: float = DEFAULT_MIN_RATE,
                  stall_window: float = DEFAULT_STALL_WINDOW, progress: bool = True) -> Path:
    """Download ``url`` to ``dest``, resuming, retrying and verifying; return ``dest``.

    Limits: ``timeout`` s for one socket operation; ``deadline`` s for the whole call (all attempts and back-off;
    None: no limit); a transfer slower than ``min_rate`` bytes/s over ``stall_window`` s has stalled and is retried
    (``min_rate=0`` turns the detector off). Only http(s) URLs are fetched, also after a redirect.

    Raises :class:`DownloadError` (4xx; a bad answer such as an invalid Content-Length; the deadline; or still
    failing after ``retries`` retries; ``.http_status`` is the last HTTP status, None when no server answered; the
    message says how much arrived and whether a ``.part`` is kept) and :class:`ChecksumMismatch` (bad file kept as
    ``<dest>.corrupt``).
    """
    problem = url_problem(url)
    if problem:
        raise DownloadError(f"refusing to download {url!r}: it {problem}", url, None, no_answer=False)
    dest = Path(dest)
    if dest.is_dir():  # never "moved aside" as a bad download: it may be an extracted copy
        raise DownloadError(f"{dest} is a folder, not a file: the file the manifest names cannot be saved there "
                            "(move or rename the folder); nothing was changed", url, None, no_answer=False)
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
    clock = _Clock(timeout, deadline, min_rate, stall_window)
    answered: list[int] = []
    attempt = 0
    while True:
        try:
            _fetch_into(url, part, size=size, clock=clock, progress=progress, answered=answered)
            break
        except urllib.error.HTTPError as exc:
            exc.close()
            answered.append(exc.code)
            if exc.code == 416 and part.exists():
                break  # nothing left to send: the part is as long as the file; the checksum decides
            if not (500 <= exc.code < 600 or exc.code in (408, 429)):
                raise DownloadError(f"HTTP {exc.code} ({exc.reason}) for {url}; {_part_note(part)}", url,
                                    exc.code) from None
            last = f"HTTP {exc.code} ({exc.reason})"
        except _Fatal as exc:
            note = f"the partial file was moved aside to {keep_aside(part)}" if exc.keep_aside_part and \
                part.exists() else _part_note(part)
            raise DownloadError(f"{url}: {exc}; {note}", url, answered[-1] if answered else None) from None
        except _Attempt as exc:
            last = str(exc)
        except (urllib.error.URLError, http.client.HTTPException, ConnectionError, socket.timeout,
                TimeoutError) as exc:
            last = f"{type(exc).__name__}: {getattr(exc, 'reason', exc)}"
        attempt += 1
        status = answered[-1] if answered else None  # None: no server ever answered (offline, DNS, refused)
        pause = backoff * 2 ** (attempt - 1)
        if attempt > retries or pause >= clock.left():
            why = f"after {attempt} attempts" if attempt > retries else \
                f"after {attempt} attempts (a retry would pass the overall deadline of {clock.deadline:g} s)"
            raise DownloadError(f"giving up on {url} {why}: {last}; {_part_note(part)}", url, status)
        time.sleep(pause)
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
            if exc.no_answer:  # no server answered: offline or host unreachable
                raise ManualDownloadRequired(manual_instructions(manifest, root, f"no network ({exc})")) from exc
            raise
    return paths
