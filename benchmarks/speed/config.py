"""Benchmark sizes per device and mode. The method never changes with the size: the same kit calls, smaller inputs.

``full`` on a CPU keeps `make speed` under 10 minutes on a small machine (112 px tiles, a few batches); on a GPU it
uses the paper's 224 px and bf16. ``quick`` is a smoke run of every section in about a minute. Gallery-growth sizes
reach 10^6 in ``full`` with few queries (exact search of 10^6 x 384 with many queries is minutes on a CPU).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional

BACKBONES = ("vit_small_patch16_224", "swin_tiny_patch4_window7_224", "resnet50", "densenet121", "convnextv2_atto")
# each SSL method with the backbone its papers train (section 7: training loader vs training step)
TRAIN_METHODS = (("dino", "vit_small_patch16_224"), ("esvit", "swin_tiny_patch4_window7_224"),
                 ("ibot", "vit_small_patch16_224"), ("moco", "vit_small_patch16_224"), ("simclr", "resnet50"),
                 ("mae", "vit_small_patch16_224"))


@dataclass(frozen=True)
class BenchConfig:
    mode: str                         # full | quick | test: named in the report; targets at reduced sizes say so
    backbones: tuple = BACKBONES
    image_size: int = 112
    batch_size: int = 8
    n_batches: int = 2
    warmup: int = 1
    repeats: int = 7
    min_run_s: float = 0.5           # each timed model sample lasts at least this (fast models: several passes)
    precision: str = "fp32"
    memory_format_backbone: Optional[str] = "resnet50"   # also timed without channels_last, to show its effect
    compile_backbone: Optional[str] = None               # also timed with torch.compile (GPU runs)
    e2e_backbone: str = "vit_small_patch16_224"
    e2e_images: int = 32
    e2e_batch_size: int = 16
    dim: int = 384
    n_classes: int = 9
    k: int = 10
    gallery: int = 100_000
    search_queries: int = 32         # kit-vs-bare overhead: many cheap interleaved repeats beat few costly ones
    search_repeats: int = 15
    ann_queries: int = 256
    ann_repeats: int = 3
    ivf_nprobes: tuple = (1, 4, 16, 64)
    hnsw_efs: tuple = (16, 64, 256)
    hnsw_m: int = 16                 # the kit's default is 32; 16 halves a 10^5 build on a CPU
    eval_queries: int = 10_000
    loop_sample: int = 100
    latency_backbones: tuple = ("vit_small_patch16_224", "swin_tiny_patch4_window7_224")
    latency_image_size: int = 224
    latency_repeats: int = 10
    growth_sizes: tuple = (1_000, 10_000, 100_000, 1_000_000)
    growth_queries: int = 32
    growth_hnsw_max: int = 100_000
    growth_nprobe: int = 16
    train_methods: tuple = TRAIN_METHODS
    train_batch_size: int = 8
    train_batches: int = 2           # timed loader batches and training steps (after one untimed each)
    train_n_local: int = 2           # local crops of the multi-crop methods (the papers: 8 on a GPU run)

    @property
    def at_target_size(self) -> bool:
        """Whether the metric-evaluation target's own sizes (10,000 queries x 100,000 items) were run."""
        return self.eval_queries >= 10_000 and self.gallery >= 100_000

    @classmethod
    def for_device(cls, device_type: str, quick: bool = False) -> "BenchConfig":
        if quick:
            return cls(
                mode="quick", backbones=("vit_small_patch16_224", "resnet50"), image_size=32, batch_size=4,
                n_batches=2, repeats=3, min_run_s=0.0, e2e_images=16, e2e_batch_size=8, gallery=5_000, search_queries=16,
                search_repeats=5, ann_queries=64,
                ivf_nprobes=(1, 8), hnsw_efs=(16, 64), eval_queries=500, loop_sample=50,
                latency_backbones=("vit_small_patch16_224",), latency_image_size=64, latency_repeats=5,
                growth_sizes=(1_000, 10_000), growth_queries=16, growth_hnsw_max=10_000,
                train_methods=(("dino", "vit_small_patch16_224"), ("ibot", "vit_small_patch16_224")),
                train_batch_size=4, train_batches=1,
                precision="bf16" if device_type == "cuda" else "fp32",
            )
        if device_type == "cuda":
            return cls(
                mode="full", image_size=224, batch_size=256, n_batches=8, warmup=3, repeats=10, precision="bf16",
                compile_backbone="vit_small_patch16_224", e2e_images=8192, e2e_batch_size=256, hnsw_m=32,
                latency_repeats=50, train_batch_size=64, train_batches=8, train_n_local=8,
            )
        return cls(mode="full")

    def with_(self, **changes) -> "BenchConfig":
        return replace(self, **changes)
