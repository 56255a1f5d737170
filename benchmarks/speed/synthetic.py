"""Synthetic retrieval data for the search and metric benchmarks: only the timings matter, but the vectors have
the shape of real SSL embeddings (384-d, L2-normalized, classes as clusters, low intrinsic dimension), so that
approximate indexes are measured on data where they behave as on real features, not on isotropic noise."""
from __future__ import annotations

import numpy as np

from histokit.retrieval.features import l2_normalize

_CHUNK = 100_000


def make_retrieval_data(n_gallery: int, n_queries: int, *, dim: int = 384, n_classes: int = 9,
                        intrinsic_dim: int = 32, seed: int = 0):
    """``(gallery (N, dim), gallery_labels (N,), queries (Q, dim), query_labels (Q,))``, float32 unit rows.

    Each vector = class centre + Gaussian spread in a random ``intrinsic_dim``-dimensional subspace, plus a little
    isotropic noise; classes overlap enough that mAP@10 stays inside (0, 1). Generated in chunks of 100k rows.
    """
    if n_gallery < 1 or n_queries < 1:
        raise ValueError(f"need n_gallery >= 1 and n_queries >= 1, got {n_gallery} and {n_queries}")
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((n_classes, intrinsic_dim), dtype=np.float32)
    proj = (rng.standard_normal((intrinsic_dim, dim), dtype=np.float32) / np.sqrt(intrinsic_dim)).astype(np.float32)

    def draw(n):
        labels = rng.integers(0, n_classes, n)
        out = np.empty((n, dim), dtype=np.float32)
        for lo in range(0, n, _CHUNK):
            lab = labels[lo:lo + _CHUNK]
            latent = centers[lab] + 1.5 * rng.standard_normal((lab.size, intrinsic_dim), dtype=np.float32)
            block = latent @ proj
            block += 0.1 * rng.standard_normal(block.shape, dtype=np.float32)
            out[lo:lo + lab.size] = l2_normalize(block)
        return out, labels

    gallery, g_labels = draw(n_gallery)
    queries, q_labels = draw(n_queries)
    return gallery, g_labels, queries, q_labels
