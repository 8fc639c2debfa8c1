"""`cxr bench train`: training img/s of the cxrkit path vs the reference CheXNet recipe, measured in one run.

(a) cxrkit: uint8 batches from the prepared cache (CacheLoader, pinned, prefetched), :func:`to_model_input` + flip/
    affine on the device, AMP (bf16 by default on GPU), channels_last, torch.compile, batch 256.
(b) reference (the public CheXNet reimplementations): torchvision DenseNet-121 on 3-channel input, fp32, batch 16,
    PNG files decoded by PIL in a torch DataLoader with workers, torchvision Resize(256) / RandomResizedCrop(224) /
    RandomHorizontalFlip / ToTensor / Normalize.
Both train (forward, backward, Adam step) on the same images; img/s is timed over ``steps`` after ``warmup``.
"""
from __future__ import annotations

import os
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from cxrkit.data.errors import CxrError

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@dataclass
class BenchSpec:
    """What to measure; None means 'pick for this device' (see :func:`resolve`)."""

    cache: Path | None = None
    source: Path | None = None
    work_dir: Path | None = None
    arch: str = "densenet121"
    size: int = 224
    batch: int = 256
    ref_batch: int = 16
    steps: int = 30
    warmup: int = 5
    precision: str = "auto"
    compile: bool | None = None
    channels_last: bool = True
    workers: int | None = None
    n_images: int | None = None
    png_size: int | None = None
    device: str = "auto"
    skip_reference: bool = False
    seed: int = 0


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _cycle(make_iter):
    """Endless batches: a new epoch whenever one runs out (a small bench set still gives many steps)."""
    epoch = 0
    while True:
        n = 0
        for item in make_iter(epoch):
            n += 1
            yield item
        if n == 0:
            raise CxrError("the benchmark data set is smaller than one batch; pass a larger --n-images or a "
                           "smaller --batch")
        epoch += 1


def _time_steps(step, batches, warmup: int, steps: int, batch: int, device: torch.device) -> dict:
    for _ in range(warmup):
        step(next(batches))
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        step(next(batches))
    _sync(device)
    elapsed = time.perf_counter() - t0
    return {"img_per_s": steps * batch / elapsed, "seconds": elapsed, "steps": steps, "batch": batch}


def build_inputs(spec: BenchSpec, device: torch.device, work: Path):
    """The cache (and the original image files behind it, for the reference path); phantom data when none given."""
    from cxrkit.data.cache import open_cache, prepare

    cache_size = max(spec.size, round(spec.size * 256 / 224))  # CheXNet's Resize(256) before a 224 crop
    if spec.cache is not None:
        return open_cache(spec.cache)
    source = spec.source
    if source is None:
        from cxrkit.data.phantom import generate

        n = spec.n_images or (max(2 * spec.batch, 1024) if device.type == "cuda" else 2 * spec.batch)
        png = spec.png_size or (1024 if device.type == "cuda" else max(cache_size, 128))
        source = work / f"phantom_{n}_{png}"
        if not (source / "Data_Entry_2017.csv").is_file():
            generate(source, n, size=png, seed=spec.seed, workers=os.cpu_count() or 1, progress=True)
    return prepare(source, work / f"cache_{cache_size}", size=cache_size, progress=True)


def bench_cxrkit(spec: BenchSpec, cache, device: torch.device) -> dict:
    """Throughput of the cxrkit training step on the cache (the same Trainer `cxr train` uses)."""
    from cxrkit.data.loader import CacheLoader
    from cxrkit.training.config import TrainConfig
    from cxrkit.training.losses import prevalence_pos_weight
    from cxrkit.training.trainer import Trainer

    compile_ = spec.compile if spec.compile is not None else device.type == "cuda"
    cfg = TrainConfig(cache=str(cache.path), out="-", arch=spec.arch, image_size=spec.size, batch_size=spec.batch,
                      precision=spec.precision, compile=compile_, channels_last=spec.channels_last,
                      device=str(device), seed=spec.seed)
    trainer = Trainer(cfg, len(cache.label_names), prevalence_pos_weight(cache.labels()), device)
    loader = CacheLoader(cache, None, spec.batch, shuffle=True, seed=spec.seed, drop_last=True, device=device)

    def epoch_iter(e):
        loader.set_epoch(e)
        return iter(loader)

    counter = iter(range(1 << 62))

    def step(batch):
        images, labels, _ = batch
        trainer.micro_step(images, labels, 0, next(counter), 1)
        trainer.optimizer_step()

    result = _time_steps(step, _cycle(epoch_iter), spec.warmup, spec.steps, spec.batch, device)
    amp = trainer.amp_dtype
    result.update(arch=spec.arch, size=spec.size, precision=str(amp).removeprefix("torch.") if amp else "fp32",
                  channels_last=spec.channels_last, compile=compile_, cache_size=cache.size)
    return result


class _PngDataset(torch.utils.data.Dataset):
    """The reference recipe's dataset: open each PNG with PIL, convert to RGB, torchvision transforms."""

    def __init__(self, paths, labels, transform):
        self.paths, self.labels, self.transform = list(paths), np.nan_to_num(labels, nan=0.0), transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i):
        from PIL import Image

        with Image.open(self.paths[i]) as img:
            x = self.transform(img.convert("RGB"))
        return x, torch.from_numpy(self.labels[i])


def bench_reference(spec: BenchSpec, cache, device: torch.device) -> dict:
    """Throughput of the reference CheXNet recipe on the original image files behind the cache."""
    from torchvision import transforms as T
    from torchvision.models import densenet121

    paths = cache.index["path"].to_numpy()
    missing = [p for p in paths[:5] if not Path(p).is_file()]
    if missing:
        raise CxrError(f"the reference recipe reads the original PNGs, but {missing[0]} (from the cache index) does "
                       "not exist; pass --source with the image folder or --skip-reference")
    resize = round(spec.size * 256 / 224)
    transform = T.Compose([T.Resize(resize), T.RandomResizedCrop(spec.size), T.RandomHorizontalFlip(), T.ToTensor(),
                           T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    dataset = _PngDataset(paths, cache.labels(), transform)
    workers = spec.workers if spec.workers is not None else (os.cpu_count() or 1)
    gen = torch.Generator().manual_seed(spec.seed)
    loader = torch.utils.data.DataLoader(dataset, batch_size=spec.ref_batch, shuffle=True, num_workers=workers,
                                         pin_memory=device.type == "cuda", drop_last=True, generator=gen,
                                         persistent_workers=workers > 0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.seed)
        model = densenet121(weights=None)
    model.classifier = torch.nn.Linear(model.classifier.in_features, len(cache.label_names))
    model = model.to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, betas=(0.9, 0.999))
    criterion = torch.nn.BCEWithLogitsLoss()

    def step(batch):
        x, y = batch
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        loss = criterion(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    result = _time_steps(step, _cycle(lambda e: iter(loader)), spec.warmup, spec.steps, spec.ref_batch, device)
    result.update(arch="torchvision densenet121 (3-channel)", size=spec.size, precision="fp32", workers=workers)
    return result


def run_bench(spec: BenchSpec) -> dict:
    """Run both paths (reference unless skipped) and return a JSON-able result with the speed-up ratio."""
    from cxrkit.training.distributed import DistInfo, pick_device

    device = pick_device(spec.device, DistInfo())
    tmp = None
    if spec.work_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="cxr-bench-train-")
        work = Path(tmp.name)
    else:
        work = Path(spec.work_dir)
        work.mkdir(parents=True, exist_ok=True)
    try:
        cache = build_inputs(spec, device, work)
        if len(cache) < spec.batch:
            raise CxrError(f"the cache has {len(cache)} images, fewer than one batch of {spec.batch}; lower --batch "
                           "or use more images")
        result = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                  "torch": torch.__version__, "threads": torch.get_num_threads(), "n_images": len(cache),
                  "spec": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(spec).items()}}
        result["cxrkit"] = bench_cxrkit(spec, cache, device)
        if not spec.skip_reference:
            result["reference"] = bench_reference(spec, cache, device)
            result["ratio"] = result["cxrkit"]["img_per_s"] / result["reference"]["img_per_s"]
        return result
    finally:
        if tmp is not None:
            tmp.cleanup()


def format_result(result: dict) -> str:
    """A few human-readable lines."""
    a = result["cxrkit"]
    lines = [f"device: {result['device']}  (torch {result['torch']}, {result['n_images']} images)",
             f"cxrkit    : {a['img_per_s']:10.1f} img/s  ({a['arch']} {a['size']} px, {a['precision']}, batch "
             f"{a['batch']}, channels_last={a['channels_last']}, compile={a['compile']})"]
    if "reference" in result:
        b = result["reference"]
        lines.append(f"reference : {b['img_per_s']:10.1f} img/s  ({b['arch']} {b['size']} px, fp32, batch {b['batch']},"
                     f" PIL + torchvision transforms, {b['workers']} workers)")
        lines.append(f"speed-up  : {result['ratio']:.2f}x (goal >= 10x on an H100)")
        if a["arch"] != "densenet121":
            lines.append(f"note      : the cxrkit path ran {a['arch']}, the reference DenseNet-121: the ratio compares "
                         "different models (use the defaults for the real comparison)")
    return "\n".join(lines)
