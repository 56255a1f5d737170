"""histokit.models."""
from . import lgffem  # registers LGFFEM
