"""Ye et al. 2024 (CypherViT) recipe: each framework's own optimisation reaches the engine, the baselines' local
crops, the re-split ratios and paired test of Table 3, the stage-0 [cls] token ablation row, the protocol cards."""
import inspect

import pytest

from histokit.papers import get_recipe
from histokit.papers.cyphervit import FRAMEWORKS
from histokit.stages import open_stage
from histokit.stages import train as train_stage
from histokit.train import engine


def test_fit_hands_the_runs_own_optimisation_to_the_engine(tmp_path, monkeypatch):
    """Weight-decay schedule, clipping (and its mode), betas and min_lr of a TrainSpec reach ``engine.train``: before,
    the stage passed only the constant weight decay, so DINO ran without 0.04 -> 0.4 and without clipping."""
    seen, accepted = {}, set(inspect.signature(engine.train).parameters)

    def fake_train(method, loader, **kwargs):
        seen.update(kwargs)
        return []

    monkeypatch.setattr("histokit.train.engine.train", fake_train)
    ctx = open_stage("cyphervit", "smoke", run_dir=str(tmp_path), device="cpu")
    for name in ("dino_vit", "mae_vit"):
        spec = ctx.recipe.train_spec(name)
        encoder, _ = train_stage.initial_encoder(ctx, spec, "all")
        seen.clear()
        train_stage.fit(ctx, spec, encoder, tmp_path / name)
        assert set(train_stage.optimisation_kwargs(spec)) <= accepted
        assert (seen["weight_decay"], seen["weight_decay_end"], seen["grad_clip"], seen["grad_clip_mode"],
                seen["betas"], seen["min_lr"], seen["optimizer"]) == (
            spec.weight_decay, spec.weight_decay_end, spec.grad_clip, spec.grad_clip_mode, spec.betas, spec.min_lr,
            spec.optimizer)
        if name == "dino_vit":
            assert (seen["weight_decay"], seen["weight_decay_end"], seen["grad_clip"]) == (0.04, 0.4, 3.0)
            assert seen["grad_clip_mode"] == "per_param"
        else:
            assert seen["betas"] == (0.9, 0.95) and seen["grad_clip"] is None and seen["weight_decay_end"] is None
