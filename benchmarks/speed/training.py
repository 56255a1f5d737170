"""Section 7: training input per SSL method: what the method's training loader delivers (decode, its multi-crop or
two-view augmentation, iBOT's masks, collation, with the workers and pinned memory of the kit's loader policy)
against what a training step consumes (forward, backward, AdamW step, EMA update) on the device, in images/s.

The ratio loader / step below 1 means the device waits for data: a starved GPU shows on any machine as a number,
not as a slow run. Images are the bundled real Kather 2016 tiles (224 px PNG), through the stage's own
``views_transform`` at the benchmark's sizes; the step runs on one in-memory batch (no loading inside its clock).
"""
from __future__ import annotations

import time

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from histokit.data.loading import loader_kwargs
from histokit.distributed.sampler import PerSampleSeed
from histokit.models.backbones import create_encoder
from histokit.papers.recipe import TrainSpec
from histokit.paths import BUNDLED_TILES_DIR
from histokit.retrieval.features import synchronize
from histokit.ssl import create_method
from histokit.train.engine import move_to_device
from .rows import Row, SectionResult
from .timing import median


class TileViews(Dataset):
    """``(transform(tile), 0, i)`` over image files, repeated to ``n`` items: decoded on every read, as in training.
    A module-level class, so spawned workers can unpickle it."""

    def __init__(self, paths: list, n: int, transform):
        self.paths, self.n, self.transform = list(paths), int(n), transform

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        with Image.open(self.paths[i % len(self.paths)]) as im:
            return self.transform(im.convert("RGB")), 0, i


def local_size(image_size: int) -> int:
    """The papers' 96 px local crops at 224 px, scaled, a multiple of 16 px and at least 32."""
    return max(32, image_size * 96 // 224 // 16 * 16)


def training_dataset(method_name: str, method, cfg, n: int) -> PerSampleSeed:
    from histokit.train.methods import views_transform

    spec = TrainSpec(name=f"bench_{method_name}", method=method_name, encoder="-", dataset="-",
                     image_size=cfg.image_size, local_size=local_size(cfg.image_size), n_local=cfg.train_n_local)
    transform = views_transform(spec, spec.mean, spec.std)
    if hasattr(method, "views_with_masks"):
        transform = method.views_with_masks(transform)
    paths = sorted(BUNDLED_TILES_DIR.glob("*/*.png"))
    return PerSampleSeed(TileViews(paths, n, transform), seed=0)


def loader_rate(dataset, batch_size: int, device: torch.device) -> tuple[float, int]:
    """Images/s the loader delivers after its first batch (worker start-up is not throughput); its worker count."""
    kwargs = loader_kwargs(device)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, drop_last=True, **kwargs)
    it = iter(loader)
    next(it)
    t0 = time.perf_counter()
    n = sum(len(batch[2]) for batch in it)
    return n / (time.perf_counter() - t0), kwargs["num_workers"]


def step_rate(method, batch, device: torch.device, steps: int, precision: str) -> float:
    """Images/s of training steps (forward + backward + AdamW + the method's hooks) on one device-resident batch;
    median over ``steps`` after one warm-up step."""
    method.to(device).train()
    opt = torch.optim.AdamW([p for p in method.parameters() if p.requires_grad], lr=1e-6)
    inputs = method.batch_to_inputs(move_to_device(batch, device))
    use_amp = device.type == "cuda" and precision == "bf16"
    times = []
    for i in range(steps + 1):
        synchronize(device)
        t0 = time.perf_counter()
        method.on_step(i, steps + 1, steps_per_epoch=steps + 1)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
            loss, _ = method(*inputs)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        method.before_optimizer_step()
        opt.step()
        method.after_step()
        synchronize(device)
        if i:
            times.append(time.perf_counter() - t0)
    return len(batch[2]) / median(times)


def run_training_section(cfg, device: torch.device, log=print) -> SectionResult:
    result = SectionResult()
    bs = cfg.train_batch_size
    for name, backbone in cfg.train_methods:
        log(f"  training input: {name} ({backbone})")
        torch.manual_seed(0)
        method = create_method(name, create_encoder(backbone, img_size=cfg.image_size))
        dataset = training_dataset(name, method, cfg, bs * (cfg.train_batches + 1))
        loaded, workers = loader_rate(dataset, bs, device)
        batch = next(iter(DataLoader(dataset, batch_size=bs)))
        stepped = step_rate(method, batch, device, cfg.train_batches, cfg.precision)
        common = dict(batch_size=bs, precision=cfg.precision, image_size=cfg.image_size, n=bs * cfg.train_batches)
        starved = "the device waits for data" if loaded < stepped else "the loader keeps up"
        result.rows += [
            Row("training", f"{name}: training loader ({workers} workers)", loaded, "img/s", loaded / stepped,
                "training step (same batch size)", note=f"{backbone}; {starved}", key=f"training/ratio/{name}",
                **common),
            Row("training", f"{name}: training step ({backbone})", stepped, "img/s",
                note="forward + backward + AdamW + EMA, one in-memory batch", key=f"training/step/{name}", **common),
        ]
        del method
    result.notes.append(
        f"Per method: the kit's training loader (bundled real tiles decoded from PNG, the method's views at "
        f"{cfg.image_size} px global / {local_size(cfg.image_size)} px local with {cfg.train_n_local} local crops, "
        f"iBOT's masks; workers by `histokit.data.loading`) against the training step on this device. A ratio "
        "below 1 is a starved device: more loader workers (cores) or cheaper augmentation would speed training up.")
    return result
