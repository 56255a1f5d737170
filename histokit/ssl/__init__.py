"""histokit.ssl: one file per self-supervised framework (DINO, EsViT, iBOT, MoCo v3, SimCLR, MAE), each a method
module ``forward(views) -> (loss, logs)`` that the one training engine (``histokit.train.engine``) drives."""
from .base import SSLMethod
from .registry import ViewSpec, create_method, list_methods, views_for

__all__ = ["SSLMethod", "ViewSpec", "create_method", "list_methods", "views_for"]
