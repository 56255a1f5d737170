"""Exact flat search as a torch matmul + sort on the run's device: the GPU search when FAISS has no GPU build.

:func:`histokit.retrieval.index.build_index` returns a :class:`TorchFlatIndex` for ``kind="flat"`` on a CUDA device
when the installed FAISS is faiss-cpu (the default install), so search runs next to the encoder instead of a
single-thread CPU scan. It answers the FAISS calls the kit makes (``d``, ``ntotal``, ``metric_type``,
``search(x, k)``), returns what ``IndexFlatIP`` / ``IndexFlatL2`` return (float32 scores, int64 ids, best first,
id ``-1`` and -/+FLT_MAX padding past ``ntotal``) and is saved as the equivalent FAISS CPU index.

Ties: this search ranks equal scores by lowest id first (a stable sort). FAISS 1.15.1's flat indexes have no
such rule for inner product: measured on integer-valued vectors (exact ties), IndexFlatL2 returns equal distances
lowest id first, but IndexFlatIP lists equal scores highest id first and, where ties straddle the k-th place,
keeps a subset that is neither the lowest nor the highest ids (its heap's insertion order). So the two agree on
every id wherever scores differ, and on the scores everywhere; among exactly equal scores only the ids may differ.
"""
from __future__ import annotations

from typing import Any

import faiss
import numpy as np
import torch

# Query rows per matmul: a (rows, ntotal) float32 score block of at most ~256 MiB, whatever the gallery size.
_BLOCK_ELEMENTS = 1 << 26
_FLT_MAX = float(np.finfo(np.float32).max)


class TorchFlatIndex:
    """An exact flat index (``metric`` ``ip`` or ``l2``) whose gallery lives on ``device`` as a torch tensor."""

    def __init__(self, features: np.ndarray, metric: str = "ip", device: str | torch.device = "cpu"):
        if metric not in ("ip", "l2"):
            raise ValueError(f"metric must be 'ip' or 'l2', got metric={metric!r}")
        x = np.ascontiguousarray(features, dtype=np.float32)
        self.metric = metric
        self.metric_type = faiss.METRIC_INNER_PRODUCT if metric == "ip" else faiss.METRIC_L2
        self.device = torch.device(device)
        self.gallery = torch.from_numpy(x).to(self.device)
        self.ntotal, self.d = int(x.shape[0]), int(x.shape[1])
        # Squared norms once, for the L2 expansion |q|^2 + |g|^2 - 2 q.g (what FAISS's BLAS path computes too).
        self._gallery_sq = (self.gallery * self.gallery).sum(1) if metric == "l2" else None

    def __repr__(self) -> str:
        return f"TorchFlatIndex(metric={self.metric!r}, d={self.d}, ntotal={self.ntotal}, device={str(self.device)!r})"

    def search_torch(self, queries: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-``k`` of (Q, d) ``queries`` as tensors on this index's device (scores float32, ids int64)."""
        q = queries.to(self.device, torch.float32)
        kk = min(int(k), self.ntotal)
        rows = max(1, _BLOCK_ELEMENTS // max(1, self.ntotal))
        scores, ids = [], []
        for start in range(0, q.shape[0], rows):
            block = q[start:start + rows]
            s = block @ self.gallery.T
            if self.metric == "l2":
                s = ((block * block).sum(1, keepdim=True) + self._gallery_sq - 2.0 * s).clamp_min_(0.0)
            # stable: equal scores keep gallery order, i.e. lowest id first (the module docstring on FAISS's ties)
            s, order = torch.sort(s, dim=1, descending=self.metric == "ip", stable=True)
            scores.append(s[:, :kk])
            ids.append(order[:, :kk])
        s, i = torch.cat(scores), torch.cat(ids).to(torch.int64)
        if kk < k:  # FAISS pads missing hits with id -1 and the worst representable score
            pad = k - kk
            s = torch.cat([s, s.new_full((s.shape[0], pad), -_FLT_MAX if self.metric == "ip" else _FLT_MAX)], 1)
            i = torch.cat([i, i.new_full((i.shape[0], pad), -1)], 1)
        return s, i

    def search(self, x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """FAISS's ``index.search``: (scores (Q, k) float32, ids (Q, k) int64) as numpy arrays."""
        with torch.inference_mode():
            s, i = self.search_torch(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)), k)
            return s.cpu().numpy(), i.cpu().numpy()

    def to_faiss(self) -> faiss.Index:
        """The same gallery as a FAISS CPU flat index (what :func:`save_index` writes)."""
        index = faiss.IndexFlatIP(self.d) if self.metric == "ip" else faiss.IndexFlatL2(self.d)
        index.add(self.gallery.cpu().numpy())
        return index


def describe_search(index: Any) -> dict[str, str]:
    """Where ``index`` searches: ``search_backend`` (``faiss-gpu``, ``torch`` or ``faiss-cpu``) and
    ``search_device`` (``cpu``, ``cuda:N``, or ``cuda`` for FAISS replicas on every GPU)."""
    if isinstance(index, TorchFlatIndex):
        return {"search_backend": "torch", "search_device": str(index.device)}
    gpu_device = getattr(index, "_histokit_device", None)
    if gpu_device is not None or "Gpu" in type(index).__name__:
        return {"search_backend": "faiss-gpu", "search_device": str(gpu_device or "cuda")}
    return {"search_backend": "faiss-cpu", "search_device": "cpu"}
