"""Load and validate dataset manifests (``data_manifests/<name>.yaml``) into frozen :class:`Manifest` objects.

A manifest is data, not code: the downloader, the verifier and the dataset loaders all read it, so adding a dataset
means adding a YAML file (and, at most, a layout loader).
"""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional

import jsonschema
import yaml

from .. import paths
from .errors import ManifestError
from .manifest_schema import SCHEMA
from .safepaths import manifest_path_errors


@dataclass(frozen=True)
class FileSpec:
    """One file of a dataset: where to get it, how large it is, and its digests."""

    name: str
    url: Optional[str]
    size: Optional[int]
    checksums: Mapping[str, str]
    checksum_source: str
    extract: bool = False
    extract_to: str = ""
    optional: bool = False
    checksum_note: str = ""


@dataclass(frozen=True)
class Layout:
    """How the dataset looks on disk once extracted; ``params`` holds the type-specific keys (split_dirs, csv, ...)."""

    type: str
    subdir: str
    patterns: tuple[str, ...] = ()
    image_size: Optional[tuple[int, int]] = None
    microns_per_pixel: Optional[float] = None
    params: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Manifest:
    name: str
    title: str
    homepage: str
    license: Mapping[str, Any]
    citation: str
    access: str
    files: tuple[FileSpec, ...]
    layout: Layout
    classes: tuple[str, ...]
    splits: Mapping[str, Any]
    groups: Mapping[str, Any]
    path: Path
    manual_steps: tuple[str, ...] = ()
    unavailable_reason: str = ""
    target: str = "class"
    class_folders: Mapping[str, str] = field(default_factory=dict)
    protocol_merges: Mapping[str, Any] = field(default_factory=dict)
    tiling: Optional[Mapping[str, Any]] = None
    notes: str = ""
    expected_counts: Mapping[str, Any] = field(default_factory=dict)

    @property
    def tiles(self) -> bool:
        """Whether loading cuts each image into tiles (``tiling.strategy == "tile"``)."""
        return bool(self.tiling) and self.tiling.get("strategy") == "tile"

    @property
    def hand_placed(self) -> bool:
        """Whether the files must be put in place by hand (login or unavailable host)."""
        return self.access in ("login", "unavailable")

    @property
    def redistributable(self) -> bool:
        return bool(self.license.get("redistributable", False))

    @property
    def required_files(self) -> tuple[FileSpec, ...]:
        return tuple(f for f in self.files if not f.optional)


def manifest_path(name: str, manifest_dir: Optional[Path] = None) -> Path:
    return Path(manifest_dir or paths.MANIFEST_DIR) / f"{name}.yaml"


def list_manifests(manifest_dir: Optional[Path] = None) -> list[str]:
    """Names of all manifests (file stems), sorted."""
    return sorted(p.stem for p in Path(manifest_dir or paths.MANIFEST_DIR).glob("*.yaml"))


def _field_path(error: jsonschema.ValidationError) -> str:
    return ".".join(str(p) for p in error.absolute_path) or "<top level>"


def validate_manifest_dict(data: Any, source: Path | str) -> None:
    """Raise :class:`ManifestError` naming ``source`` and the first offending field (all errors are listed): the
    schema first, then the paths and URLs (:func:`histokit.data.safepaths.manifest_path_errors`)."""
    validator = jsonschema.Draft202012Validator(SCHEMA)
    errors = sorted(validator.iter_errors(data), key=lambda e: list(map(str, e.absolute_path)))
    if errors:
        lines = [f"  field {_field_path(e)}: {e.message}" for e in errors]
        raise ManifestError(f"invalid manifest {source}:\n" + "\n".join(lines))
    # the confinement rule (histokit.data.safepaths): every path stays inside the dataset folder, URLs are http(s)
    problems = manifest_path_errors(data)
    if len(problems) == 1:
        raise ManifestError(f"invalid manifest {source}: {problems[0]}")
    if problems:
        raise ManifestError(f"invalid manifest {source}:\n" + "\n".join(f"  {p}" for p in problems))


# libyaml's C loader where PyYAML has it: the bundled manifest lists 100 files, 0.2 s a read in pure Python
_LIBYAML = bool(getattr(yaml, "__with_libyaml__", False))


def load_manifest(name: str, manifest_dir: Optional[Path] = None) -> Manifest:
    """Read, validate and freeze ``<manifest_dir>/<name>.yaml``."""
    path = manifest_path(name, manifest_dir)
    if not path.is_file():
        known = ", ".join(list_manifests(manifest_dir)) or "none"
        raise ManifestError(f"no manifest named {name!r} ({path} does not exist); known datasets: {known}")
    try:
        text = path.read_text(encoding="utf-8")
        data = yaml.load(text, Loader=yaml.CSafeLoader) if _LIBYAML else yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ManifestError(f"manifest {path} is not valid YAML: {exc}") from exc
    validate_manifest_dict(data, path)
    if data["name"] != path.stem:
        raise ManifestError(f"manifest {path}: field name is {data['name']!r} but the file is named {path.stem!r}")
    return _freeze(data, path)


def _freeze(data: dict, path: Path) -> Manifest:
    layout = dict(data["layout"])
    common = {k: layout.pop(k) for k in ("type", "subdir")}
    size = layout.pop("image_size", None)
    frozen_layout = Layout(
        **common,
        patterns=tuple(layout.pop("patterns", ()) or ()),
        image_size=tuple(size) if size else None,
        microns_per_pixel=layout.pop("microns_per_pixel", None),
        params=layout,  # what is left is type-specific
    )
    files = tuple(
        FileSpec(
            name=f["name"], url=f["url"], size=f["size"], checksums=dict(f["checksums"]),
            checksum_source=f["checksum_source"], extract=f.get("extract", False),
            extract_to=f.get("extract_to", ""), optional=f.get("optional", False),
            checksum_note=f.get("checksum_note", ""),
        )
        for f in data["files"]
    )
    return Manifest(
        name=data["name"], title=data["title"], homepage=data["homepage"], license=dict(data["license"]),
        citation=data["citation"], access=data["access"], files=files, layout=frozen_layout,
        classes=tuple(data["classes"]), splits=dict(data["splits"]), groups=dict(data["groups"]), path=path,
        manual_steps=tuple(data.get("manual_steps", ())), unavailable_reason=data.get("unavailable_reason", ""),
        target=data.get("target", "class"), class_folders=dict(data.get("class_folders", {})),
        protocol_merges=dict(data.get("protocol_merges", {})), tiling=data.get("tiling"), notes=data.get("notes", ""),
        expected_counts=dict(data.get("expected_counts", {})),
    )


def dataset_dir(manifest: Manifest, root: Optional[Path | str] = None) -> Path:
    """The directory holding one dataset: ``<root>/<name>``; the bundled tiles' own folder when bundled and no root.

    ``root`` is the data root shared by all datasets (``--root`` / ``--data-root``), default ``paths.DATA_ROOT``.
    """
    if root is None:
        if manifest.access == "bundled":
            return paths.BUNDLED_TILES_DIR
        root = paths.DATA_ROOT
    return Path(root) / manifest.name


# Files that document a folder rather than hold its data: a folder with only these is not a placed dataset.
DOC_PATTERNS = ("readme*", "license*", "licence*", "*.txt", "*.md", "*.pdf", "*.html", "*.htm", "*.rtf")


def layout_entries(directory: Path | str) -> list[Path]:
    """The entries of ``directory`` that can be data: not hidden (``.*``), not documentation (:data:`DOC_PATTERNS`).
    Empty when the folder does not exist."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.iterdir() if not p.name.startswith(".")
                  and not any(fnmatch.fnmatch(p.name.lower(), pat) for pat in DOC_PATTERNS))


def describe_unpopulated(directory: Path | str) -> str:
    """Why ``directory`` is not a placed dataset, in words (missing, empty, or only documentation files)."""
    directory = Path(directory)
    if not directory.is_dir():
        return f"{directory} does not exist"
    docs = sorted(p.name for p in directory.iterdir() if not p.name.startswith("."))
    if not docs:
        return f"{directory} is empty"
    shown = ", ".join(docs[:5]) + (", ..." if len(docs) > 5 else "")
    return f"{directory} holds no dataset files, only documentation ({shown})"
