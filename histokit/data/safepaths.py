"""One confinement rule for every relative path the data layer joins onto a folder it owns.

:func:`path_problem` is the rule: a path may name a file or folder *inside* the folder it is joined to, nothing
else. It is applied to everything a manifest names (``files[].name`` / ``extract_to``, ``layout.subdir``, split
folders, label CSVs and their image folders, PanNuke fold files, class folders: :func:`manifest_path_fields`) when the
manifest is loaded, to archive members before extraction (:mod:`histokit.data.archive`), and to the image paths a
label CSV names (:func:`histokit.data.datasets.load_csv`). The check is lexical (no file system access), so it
holds whatever exists on disk; symbolic links a user placed inside a dataset folder keep working.

:func:`url_problem` is the rule for URLs: only ``http://`` and ``https://`` are fetched (no ``file://``, ``ftp://``,
``data:``), also after a redirect.
"""
from __future__ import annotations

import re
from pathlib import PurePosixPath
from typing import Any, Iterator, Optional
from urllib.parse import urlsplit

_DRIVE = re.compile(r"^[A-Za-z]:")
URL_SCHEMES = ("http", "https")

# layout keys whose string value is a path relative to the layout folder (any depth: split_csvs.train.csv, folds.0.images)
LAYOUT_PATH_KEYS = frozenset({"subdir", "csv", "image_dir", "images", "types", "path_template"})
# layout keys whose value maps names to relative paths (every value is a path)
LAYOUT_PATH_MAPS = frozenset({"split_dirs"})


def path_problem(value: Any, *, allow_empty: bool = True) -> Optional[str]:
    """Why ``value`` is not a relative path that stays inside the folder it is joined to, or None when it is.

    Refused: a non-string, a NUL byte, an absolute path (``/x``, ``\\\\x``, ``C:x``), any ``..`` component
    (backslashes count as separators, as on Windows), and (unless ``allow_empty``) a path naming the folder itself
    (``""``, ``.``)."""
    if not isinstance(value, str):
        return f"is a {type(value).__name__}, not a path"
    if "\x00" in value:
        return "contains a NUL byte"
    posix = value.replace("\\", "/")
    if posix.startswith("/") or _DRIVE.match(posix):
        return "is an absolute path"
    parts = PurePosixPath(posix).parts
    if ".." in parts:
        return "contains '..'"
    if not allow_empty and not parts:
        return "names the folder itself, not a file in it"
    return None


def url_problem(url: Any) -> Optional[str]:
    """Why ``url`` is not a URL the kit fetches (``http://`` or ``https://`` with a host), or None when it is."""
    if not isinstance(url, str):
        return f"is a {type(url).__name__}, not a URL"
    parts = urlsplit(url.strip())
    if parts.scheme.lower() not in URL_SCHEMES:
        return f"is not an http(s) URL (scheme {parts.scheme + ':' if parts.scheme else 'none'}); only http:// and " \
               "https:// URLs are downloaded"
    if not parts.netloc:
        return "has no host"
    return None


def _layout_paths(node: Any, where: str) -> Iterator[tuple[str, Any, bool]]:
    if isinstance(node, dict):
        for key, value in node.items():
            field = f"{where}.{key}"
            if key in LAYOUT_PATH_KEYS and not isinstance(value, (dict, list)):
                yield field, value, True
            elif key in LAYOUT_PATH_MAPS and isinstance(value, dict):
                for sub, path in value.items():
                    yield f"{field}.{sub}", path, True
            else:
                yield from _layout_paths(value, field)
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _layout_paths(value, f"{where}.{i}")


def manifest_path_fields(data: dict) -> Iterator[tuple[str, Any, bool]]:
    """``(field, value, allow_empty)`` for every path a (schema-valid) manifest dict names: the fields
    :func:`path_problem` must accept."""
    for i, f in enumerate(data.get("files") or []):
        yield f"files.{i}.name", f.get("name"), False
        if "extract_to" in f:
            yield f"files.{i}.extract_to", f["extract_to"], True
    yield from _layout_paths(data.get("layout") or {}, "layout")
    for folder in data.get("class_folders") or {}:
        yield "class_folders", folder, False


def manifest_path_errors(data: dict) -> list[str]:
    """One ``field F: VALUE REASON`` line per path or URL of the manifest dict that breaks the rules, and per
    ``files[].name`` given twice."""
    errors = []
    for field, value, allow_empty in manifest_path_fields(data):
        problem = path_problem(value, allow_empty=allow_empty)
        if problem:
            errors.append(f"field {field}: {value!r} {problem}; every path a manifest names must be relative and "
                          f"stay inside the dataset folder")
    seen: dict[str, int] = {}
    for i, f in enumerate(data.get("files") or []):
        url = f.get("url")
        if url is not None:
            problem = url_problem(url)
            if problem:
                errors.append(f"field files.{i}.url: {url!r} {problem}")
        name = f.get("name")
        if isinstance(name, str):
            key = str(PurePosixPath(name.replace("\\", "/")))
            if key in seen:
                errors.append(f"field files.{i}.name: {name!r} is also files.{seen[key]}.name; each file needs "
                              f"its own name (the second would overwrite the first)")
            seen.setdefault(key, i)
    return errors
