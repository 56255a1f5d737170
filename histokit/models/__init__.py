"""histokit.models."""
from . import lgffem  # registers LGFFEM
from . import cyphervit  # registers CypherViT encoders
