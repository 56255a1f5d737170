"""histokit.retrieval: features (batched extraction + timing) -> FAISS index -> retrieval metrics.

Habijan et al. (EUSIPCO 2025) pipeline: pooled encoder embedding, L2-normalized (``features``), indexed with FAISS
and searched by cosine similarity (``index``), scored with mAP@k / P@k / nDCG@k (``metrics``).
"""
from .features import FeatureSet, extract_features, l2_normalize, load_features, measure_latency, save_features
from .index import build_index, load_index, recall_at_k, save_index, search
from .metrics import (
    AP_NORMALIZATIONS,
    RetrievalResult,
    average_precision_at_k,
    evaluate_retrieval,
    ndcg_at_k,
    precision_at_k,
    relevance_matrix,
    retrieval_latency_ms,
    retrieval_scores,
    summarize,
)

__all__ = [
    "FeatureSet", "extract_features", "l2_normalize", "load_features", "measure_latency", "save_features",
    "build_index", "load_index", "recall_at_k", "save_index", "search",
    "AP_NORMALIZATIONS", "RetrievalResult", "average_precision_at_k", "evaluate_retrieval", "ndcg_at_k",
    "precision_at_k", "relevance_matrix", "retrieval_latency_ms", "retrieval_scores", "summarize",
]
