"""Errors of the data layer. Each one names the file, field or URL at fault so a user knows what to fix."""
from __future__ import annotations


class DataError(Exception):
    """Base class: every data-layer failure the CLI turns into a one-line message and exit code 1."""


class ManifestError(DataError, ValueError):
    """A manifest file is missing, unparsable, or fails the schema (the message names the file and the field)."""


class DownloadError(DataError):
    """A download failed for good (HTTP 4xx, or 5xx / connection errors after all retries); names the URL.

    ``http_status`` is the last HTTP status, or None when no server answered (offline, DNS, refused, timeout).
    ``no_answer`` is True when the network is the likely cause (no server ever answered); False for a refusal made
    before any request (a URL that is not http(s), a destination that is a folder).
    """

    def __init__(self, message: str, url: str = "", http_status: int | None = None, *,
                 no_answer: bool | None = None):
        super().__init__(message)
        self.url, self.http_status = url, http_status
        self.no_answer = http_status is None if no_answer is None else no_answer


class ChecksumMismatch(DataError):
    """A file's digest differs from the manifest's. The bad file is kept aside (``<name>.corrupt``), never deleted."""

    def __init__(self, path, algorithm: str, expected: str, actual: str, kept_as=None):
        self.path, self.algorithm, self.expected, self.actual, self.kept_as = path, algorithm, expected, actual, kept_as
        kept = f"; the bad file was moved aside to {kept_as}" if kept_as else ""
        super().__init__(f"{algorithm} mismatch for {path}: expected {expected}, got {actual}{kept}")


class ManualDownloadRequired(DataError):
    """The host needs a login / agreement, is unavailable, or cannot be reached: the message says what to fetch,
    from where, and where to put it under the data root."""


class DatasetNotFoundError(DataError, FileNotFoundError):
    """A dataset's folder or files are not where its manifest's layout says they are."""


class UnsafeArchiveError(DataError):
    """An archive member would escape the destination (absolute path, ``..``), is a link or a device file, or is
    given twice; or the archive expands past the size, ratio or member-count limit (a decompression bomb)."""


class CorruptArchiveError(DataError):
    """An archive is truncated or damaged (bad CRC, cut-off stream); the message names it and the member."""


class CorruptImageError(DataError):
    """An image file is empty, truncated or not decodable (the message names the file)."""


class ImageTooLargeError(DataError):
    """An image exceeds PIL's decompression-bomb limit; the message names the file and how to raise the limit."""


class SplitMismatchError(DataError, ValueError):
    """A stored split file was made with other parameters or for another dataset."""
