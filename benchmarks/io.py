"""Only for ``benchmarks/speed/report.py``'s ``from ..io import atomic_write_text``, written when the speed benchmark
lived in ``histokit/bench/`` (issue 18 moved it here unedited so another branch's change to it merges cleanly).
Delete this file once report.py imports ``histokit.io`` itself."""
from histokit.io import atomic_write_text  # noqa: F401
