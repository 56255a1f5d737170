"""histokit.data: manifests -> download / verify / extract -> PatchDataset -> splits, plus transforms, Macenko
stain normalization, tiling, and mock datasets in the real layouts (``mock``, for rehearsals). See each module's
docstring.

The light modules (manifests, download, verify, prepare: no torch) are imported eagerly, which also keeps the
functions ``download`` / ``verify`` / ``prepare`` bound over their same-named submodules. The rest is re-exported
lazily (PEP 562), so ``histokit data list`` or ``verify`` does not pay for importing torch and scikit-learn.
"""
from __future__ import annotations

import importlib

from .archive import safe_extract
from .download import download, download_file, manual_instructions
from .errors import (ChecksumMismatch, CorruptArchiveError, CorruptImageError, DataError, DatasetNotFoundError,
                     DownloadError, ImageTooLargeError, ManifestError, ManualDownloadRequired, SplitMismatchError,
                     UnsafeArchiveError)
from .manifests import FileSpec, Layout, Manifest, dataset_dir, list_manifests, load_manifest
from .prepare import prepare
from .verify import VerificationError, VerifyReport, verify

_LAZY = {
    "datasets": ["PatchDataset", "Sample", "discover_classes", "load_class_folders", "load_csv", "load_dataset",
                 "load_kimia", "load_medmnist", "load_pannuke", "merge_classes", "tile_dataset"],
    "images": ["load_image"],
    "mock": ["MOCKABLE", "write_all_mocks", "write_mock"],
    "splits": ["class_balanced_fraction", "load_or_make_split", "make_split", "official_split"],
    "stain": ["MacenkoNormalizer", "NoTissueError"],
    "tiling": ["Tile", "tile_grid", "tile_image", "tissue_fraction"],
    "transforms": ["HALF_MEAN_STD", "IMAGENET_MEAN", "IMAGENET_STD", "MultiCropTransform", "TwoViewTransform",
                   "eval_transform"],
}
_WHERE = {name: module for module, names in _LAZY.items() for name in names}
__all__ = sorted(set(_WHERE) | {
    "safe_extract", "download", "download_file", "manual_instructions", "ChecksumMismatch", "CorruptArchiveError",
    "CorruptImageError",
    "DataError", "DatasetNotFoundError", "DownloadError", "ImageTooLargeError", "ManifestError",
    "ManualDownloadRequired", "SplitMismatchError", "UnsafeArchiveError", "FileSpec", "Layout", "Manifest",
    "dataset_dir", "list_manifests", "load_manifest", "prepare", "VerificationError", "VerifyReport", "verify",
})


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module 'histokit.data' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    globals()[name] = value  # cache: the next access is a plain attribute
    return value


def __dir__() -> list[str]:
    return __all__
