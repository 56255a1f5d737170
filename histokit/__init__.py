"""histokit: a reproducible replication kit for self-supervised ViTs in histopathology image retrieval.

All logic lives in this package; the notebooks in ``notebooks/`` call it stage by stage.
"""

__version__ = "0.1.0"
