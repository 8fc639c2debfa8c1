"""Limited box supervision: radiologists' boxes for some training films, image labels alone for the rest.

After Li et al. 2018 ("Thoracic disease identification and localization with limited supervision"): the linear
head applied at every location of the feature map gives a patch logit per finding (the CAM before its ReLU, whose
mean is the image logit), and for a film whose finding has a box, the patch logits are trained to put the finding
in the cells the box touches: a cross-entropy between their softmax over the cells and the box's cells (uniform
over them). Films without boxes train on their labels only, as before.

Why a softmax over the cells and not Li et al.'s per-cell "here / not here" BCE: with global average pooling the
image logit is the mean of the patch logits, so pushing every cell outside a small box towards "not here" pulls the
film's own logit down. Measured (docs/explain.md): per-cell BCE on 10 % of the films cost 0.08 of phantom
validation mean AUROC (0.85 vs 0.93; Hernia 0.56). The softmax is blind to the logits' level, so it only moves
where the finding is, not whether it is there; the logits are standardised over the cells first so it cannot be
lowered by scaling weights up either. The weight matters most: at 0.5-1 this loss still cost 0.1 of validation
AUROC; at 0.1 (the default) every box of the training films raised it (0.967 vs 0.937) and the localisation
(docs/explain.md, "Limited box supervision").

The masks follow the film through the same on-device affine augmentation as its pixels
(:func:`cxrkit.training.augment.affine_params` with the step's generator), at a quarter of the model's input size,
which is finer than any feature map a mask is pooled to.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from cxrkit.data.errors import CxrError
from cxrkit.training.augment import AugmentSpec, augment_batch, affine_params, step_generator

MASK_DIVISOR = 4  # masks are drawn at input size / 4


@dataclass(frozen=True)
class BoxTargets:
    """Boxes of the supervised training films: cache row -> ((class index, x, y, w, h) in cache pixels, ...)."""

    boxes: dict[int, tuple[tuple[int, float, float, float, float], ...]]
    cache_size: int

    @property
    def n_films(self) -> int:
        return len(self.boxes)

    @property
    def n_boxes(self) -> int:
        return sum(len(b) for b in self.boxes.values())

    @classmethod
    def from_cache(cls, cache, train_rows: np.ndarray, fraction: float, seed: int) -> "BoxTargets":
        """Boxes of ``round(fraction * len(train_rows))`` training films drawn (seeded) from those that have boxes
        for the cache's findings; the rest of the films keep their labels only."""
        names = list(cache.label_names)
        table = cache.boxes
        if table is None or not len(table):
            raise CxrError(f"--box-supervision needs ground-truth boxes, and cache {cache.path} has none; prepare a "
                           "cache from a dataset with a box list (NIH's BBox_List_2017.csv, or phantoms)")
        table = table[table["row"].isin(np.asarray(train_rows)) & table["label"].isin(names)]
        with_boxes = np.unique(table["row"].to_numpy())
        if not len(with_boxes):
            raise CxrError(f"none of the {len(train_rows)} training films of {cache.path} has a box for its findings; "
                           "--box-supervision has nothing to learn from")
        n = min(len(with_boxes), int(round(fraction * len(train_rows))))
        chosen = set(np.random.default_rng(seed).choice(with_boxes, size=n, replace=False).tolist())
        boxes: dict[int, list] = {}
        for r in table[table["row"].isin(chosen)].itertuples(index=False):
            boxes.setdefault(int(r.row), []).append((names.index(r.label), float(r.x), float(r.y), float(r.w),
                                                     float(r.h)))
        return cls({k: tuple(v) for k, v in sorted(boxes.items())}, int(cache.size))

    def batch_masks(self, rows: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """For a batch of cache ``rows`` at model input ``size``: (batch position, class, mask P x 1 x m x m) of
        every supervised (film, finding) pair, m = size / MASK_DIVISOR; None when the batch has none. A finding
        with several boxes on a film gets them all in one mask."""
        m = max(1, size // MASK_DIVISOR)
        f = m / self.cache_size
        pairs: dict[tuple[int, int], np.ndarray] = {}
        for j, row in enumerate(np.asarray(rows).tolist()):
            for c, x, y, w, h in self.boxes.get(int(row), ()):
                mask = pairs.setdefault((j, c), np.zeros((m, m), np.float32))
                x0, y0 = int(np.floor(x * f)), int(np.floor(y * f))
                x1, y1 = max(x0 + 1, int(np.ceil((x + w) * f))), max(y0 + 1, int(np.ceil((y + h) * f)))
                mask[max(0, y0):min(m, y1), max(0, x0):min(m, x1)] = 1.0
        if not pairs:
            return None
        keys = list(pairs)
        return (np.asarray([k[0] for k in keys]), np.asarray([k[1] for k in keys]),
                np.stack([pairs[k] for k in keys])[:, None])


def warp_masks(masks: torch.Tensor, positions: np.ndarray, batch: int, spec: AugmentSpec | None, seed: int,
               epoch: int, step: int, rank: int) -> torch.Tensor:
    """The masks moved by the affine warp their films got in :func:`cxrkit.training.augment.augment` (the same
    generator draws the same parameters; the affine is its first use)."""
    if spec is None or spec.is_identity:
        return masks
    theta = affine_params(batch, spec, step_generator(seed, epoch, step, rank))
    return augment_batch(masks, theta[torch.as_tensor(positions)], fill=0.0)


def patch_loss(model, feats: torch.Tensor, positions: np.ndarray, classes: np.ndarray,
               masks: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of each supervised pair's patch logits (the linear or LSE head at every feature-map cell), as a
    softmax over the cells, against the cells its boxes touch (uniform over them)."""
    head = getattr(model, "head", None)
    fc = getattr(head, "fc", None)
    if fc is None:
        raise CxrError("--box-supervision needs the linear or LSE head (patch logits are its weights at every "
                       "cell); train with --head linear or --head lse")
    pos_t = torch.as_tensor(positions, device=feats.device)
    cls_t = torch.as_tensor(classes, device=feats.device)
    f = feats[pos_t].float()                                       # P x F x h x w
    logits = torch.einsum("pf,pfhw->phw", fc.weight[cls_t].float(), f).flatten(1)  # the bias shifts every cell alike
    target = (F.adaptive_max_pool2d(masks.to(feats.device), f.shape[-2:]) > 0.5).float().flatten(1)
    keep = target.sum(dim=1) > 0  # a box warped off the film leaves nothing to aim at
    if not bool(keep.any()):
        return logits.sum() * 0.0
    target = target[keep] / target[keep].sum(dim=1, keepdim=True)
    # standardised over the cells: the loss sees the map's shape only, so it cannot be lowered by scaling the head
    # or the features up (which the label loss then has to undo)
    logits = logits[keep]
    logits = (logits - logits.mean(dim=1, keepdim=True)) / logits.std(dim=1, keepdim=True).clamp_min(1e-3)
    return -(target * torch.log_softmax(logits, dim=1)).sum(dim=1).mean()
