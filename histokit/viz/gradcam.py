"""Grad-CAM++ on LGFFEM's neck nodes for a retrieval pair — Nuñez-Fernández et al., Sensors 2025, Sec. 4.2.2, Figs. 4-6.

The paper applies Grad-CAM++ (Chattopadhyay et al., WACV 2018) to the outer fusion nodes P1_2, P2_2, P3_2, P4_2 of
each of the 3 neck layers, plus "the collapse of all outer nodes" of a layer, for a query and its top retrieved
patch. A retrieval model has no class score, so the target is the embedding similarity (pytorch-grad-cam's
"similarity to concept" pattern): the CAM of an image explains the cosine similarity between its descriptor and the
other image's descriptor. The combined map is pytorch-grad-cam's multi-layer aggregation (mean of the per-node maps,
rescaled), given all four nodes at once.

The CAM itself is ``pytorch_grad_cam.GradCAMPlusPlus``; this module only picks the layers, the target and the plot.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from pytorch_grad_cam import GradCAMPlusPlus  # noqa: E402
from pytorch_grad_cam.utils.image import show_cam_on_image  # noqa: E402
from ..progress import progress_bar  # noqa: E402

from ..io import atomic_path  # noqa: E402

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
COMBINED = "combined"


class EmbeddingSimilarityTarget:
    """Grad-CAM target: cosine similarity of the model's embedding to a fixed reference embedding."""

    def __init__(self, reference: torch.Tensor):
        if reference.ndim != 1:
            raise ValueError(f"reference embedding must be 1-D (D,), got shape {tuple(reference.shape)}")
        self.reference = reference.detach()

    def __call__(self, model_output: torch.Tensor) -> torch.Tensor:
        return F.cosine_similarity(model_output, self.reference.to(model_output.device), dim=0)


def _check_image(x: torch.Tensor, name: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor) or x.ndim != 3 or x.shape[0] != 3:
        raise ValueError(f"{name} must be a normalised image tensor (3, H, W), got "
                         f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x)}")
    return x


def _embed(model: torch.nn.Module, image: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(image.unsqueeze(0))[0]


class _NodeGradCAMPlusPlus(GradCAMPlusPlus):
    """GradCAMPlusPlus that also keeps each target layer's map, so one forward/backward gives the four node maps
    and (through the library's own aggregation) their combination."""

    def aggregate_multi_layers(self, cam_per_target_layer):
        self.per_layer = [c[:, 0] for c in cam_per_target_layer]
        return super().aggregate_multi_layers(cam_per_target_layer)


def node_gradcams(model, image: torch.Tensor, reference_embedding: torch.Tensor, *,
                  layers: Optional[Sequence[int]] = None) -> dict[tuple[int, str], np.ndarray]:
    """Grad-CAM++ maps of ``image`` for each outer node and their combination, per neck layer.

    ``model``: an :class:`~histokit.models.lgffem.LGFFEM` (anything with ``outer_node_modules()``).
    ``image``: (3, H, W) normalised tensor; ``reference_embedding``: (D,) descriptor the similarity is taken to.
    Returns ``{(layer_index, "P1_2" | ... | "P4_2" | "combined"): (H, W) float array in [0, 1]}``.
    """
    _check_image(image, "image")
    nodes_per_layer = model.outer_node_modules()
    layers = range(len(nodes_per_layer)) if layers is None else layers
    device = next(model.parameters()).device
    x = image.unsqueeze(0).to(device)
    targets = [EmbeddingSimilarityTarget(reference_embedding)]
    maps: dict[tuple[int, str], np.ndarray] = {}
    for li in layers:
        if not 0 <= li < len(nodes_per_layer):
            raise ValueError(f"layers: neck layer {li} does not exist (model has {len(nodes_per_layer)})")
        names, modules = zip(*nodes_per_layer[li].items())
        with _NodeGradCAMPlusPlus(model=model, target_layers=list(modules)) as cam:
            combined = cam(input_tensor=x, targets=targets)[0]
            # The library pairs activations with gradients by hook order; the four nodes of a layer have four
            # different resolutions, so equal shapes prove the pairing is right.
            acts, grads = cam.activations_and_grads.activations, cam.activations_and_grads.gradients
            if [a.shape for a in acts] != [g.shape for g in grads]:
                raise RuntimeError("Grad-CAM++ activation/gradient pairing mismatch on the LGFFEM neck nodes")
            for name, node_map in zip(names, cam.per_layer):
                maps[(li, name)] = node_map[0].astype(np.float32)
            maps[(li, COMBINED)] = combined.astype(np.float32)
    return maps


def _to_display(image: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    m = torch.tensor(mean, dtype=image.dtype).view(3, 1, 1)
    s = torch.tensor(std, dtype=image.dtype).view(3, 1, 1)
    return (image.detach().cpu() * s + m).clamp(0, 1).permute(1, 2, 0).numpy().astype(np.float32)


def gradcam_figure(model, query: torch.Tensor, retrieved: Sequence[torch.Tensor] | torch.Tensor,
                   path: str | Path, *, layers: Optional[Sequence[int]] = None,
                   retrieved_titles: Optional[Sequence[str]] = None, query_title: str = "query",
                   mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                   progress: bool = True) -> Path:
    """Write a PNG grid of Grad-CAM++ overlays (the paper's Figs. 4-6 in one figure).

    Rows: the query, then each retrieved image. Columns: the image, then for every neck layer its nodes
    P1_2..P4_2 and their combination. The query row explains its similarity to the top retrieved image; each
    retrieved row explains its similarity to the query. Images are normalised (3, H, W) tensors; ``mean``/``std``
    undo the normalisation for display. Returns ``path``.
    """
    _check_image(query, "query")
    retrieved = list(retrieved)
    if not retrieved:
        raise ValueError("retrieved must hold at least one image")
    for i, r in enumerate(retrieved):
        _check_image(r, f"retrieved[{i}]")
    if retrieved_titles is not None and len(retrieved_titles) != len(retrieved):
        raise ValueError(f"retrieved_titles has {len(retrieved_titles)} entries for {len(retrieved)} images")
    model.eval()
    device = next(model.parameters()).device
    q_emb = _embed(model, query.to(device))
    rows = [(query, _embed(model, retrieved[0].to(device)), query_title)]
    titles = retrieved_titles or [f"retrieved #{i + 1}" for i in range(len(retrieved))]
    rows += [(r, q_emb, t) for r, t in zip(retrieved, titles)]

    all_maps = [node_gradcams(model, img, ref, layers=layers)
                for img, ref, _ in progress_bar(rows, desc="Grad-CAM++", disable=not progress, leave=False)]
    keys = list(all_maps[0])
    fig, axes = plt.subplots(len(rows), 1 + len(keys), figsize=(1.9 * (1 + len(keys)), 2.1 * len(rows)),
                             squeeze=False)
    for r, ((img, _, title), maps) in enumerate(zip(rows, all_maps)):
        rgb = _to_display(img, mean, std)
        axes[r, 0].imshow(rgb)
        axes[r, 0].set_title(title, fontsize=8)
        for c, key in enumerate(keys, start=1):
            axes[r, c].imshow(show_cam_on_image(rgb, maps[key], use_rgb=True))
            layer, node = key
            axes[r, c].set_title(f"layer {layer + 1} {node}", fontsize=8)
    for ax in axes.flat:
        ax.axis("off")
    fig.suptitle("LGFFEM Grad-CAM++ on the neck's outer fusion nodes", fontsize=10)
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return path
