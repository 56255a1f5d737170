"""histokit: a reproducible replication kit for self-supervised ViTs in histopathology image retrieval.

All logic lives in this package; the notebooks in ``notebooks/`` call it stage by stage.

``__version__`` is the one place the version is written: pyproject.toml reads it (``[tool.setuptools.dynamic]``), so
the installed package's metadata, ``histokit --version``, CITATION.cff and CHANGELOG.md agree with it
(tests/test_cli_meta.py, tests/test_repo_files.py). The public API, its units (fractions in code, percent only in
rendered tables) and its typing (``py.typed``): docs/api.md.
"""

__version__ = "0.1.0"
