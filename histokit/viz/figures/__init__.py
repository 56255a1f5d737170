"""The figures a recipe lists (``Recipe.figures``): one typed part per kind, each with ``run(ctx) -> Path``."""
from .attention import AttentionHeads, ClsAttention
from .base import Figure
from .embeddings import Projection, UmapPanels
from .retrieval import GradCam, RetrievalGallery

__all__ = ["Figure", "RetrievalGallery", "UmapPanels", "AttentionHeads", "ClsAttention", "GradCam", "Projection"]
