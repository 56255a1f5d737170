"""JSON schema (as a Python dict) of ``data_manifests/<name>.yaml``; validated with ``jsonschema`` on load.

One manifest describes one dataset: where it comes from (files, URLs, sizes, checksums and who published the
checksum), under which license, how to get it by hand when the host needs a login, how it is laid out once
extracted (which loader reads it), its classes, official splits, what a group id is (patient / slide / scan), and
how large images are tiled, and how large the full release is (``expected_counts``: a hand-placed copy that differs
is reported by ``verify`` as a warning, e.g. a subset or a mock).

Beyond the schema, :func:`histokit.data.manifests.validate_manifest_dict` applies the confinement rule of
:mod:`histokit.data.safepaths` to every path the manifest names (files' ``name`` / ``extract_to``, the layout's
``subdir``, split folders, label CSVs, image folders, fold files, class folders: relative, no ``..``, inside the
dataset folder) and accepts only ``http(s)`` URLs.
"""
from __future__ import annotations

ACCESS = ["open", "login", "bundled", "unavailable"]
LAYOUT_TYPES = ["class_folders", "csv", "pannuke_npy", "kimia", "medmnist_npz"]
# "third-party (unconfirmed)": the digest comes from public code, not from the host, until a real download confirms it.
CHECKSUM_SOURCES = ["host", "third-party (unconfirmed)", "none"]

_HEX = {"type": "string", "pattern": "^[0-9a-f]+$"}

FILE_SCHEMA = {
    "type": "object",
    "required": ["name", "url", "size", "checksums", "checksum_source"],
    "additionalProperties": False,
    "properties": {
        "name": {"type": "string", "minLength": 1},  # path relative to the dataset directory, inside it
        "url": {"type": ["string", "null"]},  # direct http(s) URL (open), or the page to fetch it from (login)
        "size": {"type": ["integer", "null"], "minimum": 0},  # bytes; null when the host does not state it
        "checksums": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "sha256": {**_HEX, "minLength": 64, "maxLength": 64},
                "md5": {**_HEX, "minLength": 32, "maxLength": 32},
            },
        },
        "checksum_source": {"enum": CHECKSUM_SOURCES},
        "checksum_note": {"type": "string"},
        "extract": {"type": "boolean"},  # an archive to unpack into the dataset directory
        "extract_to": {"type": "string"},  # subfolder of the dataset directory to unpack into (default: itself)
        "optional": {"type": "boolean"},  # not needed by the default layout (e.g. the 28 px PathMNIST)
    },
}

SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "histokit dataset manifest",
    "type": "object",
    "required": [
        "name", "title", "homepage", "license", "citation", "access", "files", "layout", "classes", "splits",
        "groups",
    ],
    "additionalProperties": False,
    "properties": {
        "name": {"type": "string", "pattern": "^[a-z0-9_]+$"},
        "title": {"type": "string", "minLength": 1},
        "homepage": {"type": "string", "minLength": 1},
        "license": {
            "type": "object",
            "required": ["name", "redistributable"],
            "additionalProperties": False,
            "properties": {
                "name": {"type": "string"},
                "url": {"type": ["string", "null"]},
                "redistributable": {"type": "boolean"},
            },
        },
        "citation": {"type": "string", "minLength": 1},
        "access": {"enum": ACCESS},
        "unavailable_reason": {"type": "string"},
        "files": {"type": "array", "items": FILE_SCHEMA},
        "manual_steps": {"type": "array", "items": {"type": "string"}},
        "layout": {
            "type": "object",
            "required": ["type", "subdir"],
            "properties": {
                "type": {"enum": LAYOUT_TYPES},
                "subdir": {"type": "string"},  # relative to the dataset directory; "" = the directory itself
                "patterns": {"type": "array", "items": {"type": "string"}},
                "image_size": {"type": ["array", "null"], "items": {"type": "integer"}},  # [width, height]
                "microns_per_pixel": {"type": ["number", "null"]},
                "notes": {"type": "string"},
            },
            # type-specific keys (split_dirs, csv, folds, ...) are checked by the loader that reads them
            "additionalProperties": True,
        },
        "target": {"enum": ["class", "regression"]},
        "classes": {"type": "array", "items": {"type": "string"}},
        "class_folders": {"type": "object", "additionalProperties": {"type": "string"}},  # folder -> class
        "protocol_merges": {
            "type": "object",
            "additionalProperties": {
                "type": "object",
                "required": ["merge"],
                "properties": {
                    "merge": {"type": "object", "additionalProperties": {"type": "string"}},
                    "source": {"type": "string"},
                },
            },
        },
        "splits": {
            "type": "object",
            "required": ["type", "description"],
            "additionalProperties": False,
            "properties": {
                "type": {"enum": ["official", "none"]},
                "description": {"type": "string"},
                "names": {"type": "array", "items": {"type": "string"}},
            },
        },
        "groups": {
            "type": "object",
            "required": ["id", "source", "description"],
            "additionalProperties": False,
            "properties": {
                "id": {"enum": ["patient", "slide", "scan", "source_image", "fold", None]},
                # image: the image file a tile was cut from (tiled datasets: tiles of one image stay together)
                "source": {"enum": ["filename_regex", "csv_column", "folder", "fold", "image", None]},
                "regex": {"type": "string"},  # group(1) of a re.search on the file name
                "column": {"type": "string"},
                "description": {"type": "string"},
            },
        },
        "tiling": {
            "type": ["object", "null"],
            "required": ["strategy", "description"],
            "additionalProperties": False,
            "properties": {
                "strategy": {"enum": ["none", "resize", "tile"]},
                "tile_size": {"type": "integer", "minimum": 1},
                "stride": {"type": "integer", "minimum": 1},
                "min_tissue": {"type": "number", "minimum": 0, "maximum": 1},
                "description": {"type": "string"},
            },
        },
        "expected_counts": {  # the full release's size; `histokit data verify` warns (never fails) when it differs
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "images": {"type": "integer", "minimum": 0},
                "classes": {"type": "integer", "minimum": 0},
                "splits": {"type": "object", "additionalProperties": {"type": "integer", "minimum": 0}},
            },
        },
        "notes": {"type": "string"},
    },
    "allOf": [
        {  # an unavailable dataset must say why
            "if": {"properties": {"access": {"const": "unavailable"}}},
            "then": {"required": ["unavailable_reason"]},
        },
        {  # a login host must say how to get the files by hand
            "if": {"properties": {"access": {"const": "login"}}},
            "then": {"required": ["manual_steps"]},
        },
    ],
}
