"""Test-time augmentation for chest films: each film is scored as the mean over four views, the film itself, a 5 %
zoom-in and 3 % shifts along both diagonals. No horizontal flip: a mirrored chest film shows the heart on the wrong
side, which no real film does, so a flip view asks the model about an impossible image."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

TTA_VIEWS = ((1.0, 0.0, 0.0), (1.05, 0.0, 0.0), (1.0, 0.03, 0.03), (1.0, -0.03, -0.03))  # (zoom, shift x, shift y)


def tta_batches(images_u8: torch.Tensor) -> list[torch.Tensor]:
    """The :data:`TTA_VIEWS` of a uint8 B x 1 x S x S batch, as uint8 batches (pixels from outside are black)."""
    x = images_u8.float()
    out = []
    for zoom, tx, ty in TTA_VIEWS:
        if (zoom, tx, ty) == (1.0, 0.0, 0.0):
            out.append(images_u8)
            continue
        theta = torch.tensor([[1 / zoom, 0.0, tx * 2], [0.0, 1 / zoom, ty * 2]]).expand(x.shape[0], 2, 3)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        warped = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        out.append(warped.round().clamp(0, 255).to(torch.uint8))
    return out


class TTAPredictor:
    """Wraps a loaded bundle: ``forward_uint8`` averages each output over the views; everything else (``config``
    included, the same object) is the wrapped predictor's."""

    def __init__(self, predictor):
        self._pred = predictor

    def __getattr__(self, name):
        return getattr(self._pred, name)

    def forward_uint8(self, batch_u8: torch.Tensor) -> dict[str, np.ndarray]:
        outs = [self._pred.forward_uint8(v) for v in tta_batches(batch_u8)]
        # class maps of shifted and zoomed views do not register to the film: scores only
        return {k: np.mean([np.asarray(o[k]) for o in outs], axis=0).astype(np.float32) for k in outs[0]
                if k != "cam"}
