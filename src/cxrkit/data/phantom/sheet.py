"""A contact sheet: one normal film and one film per finding (same patient), each sign's box outlined."""
from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np

from cxrkit.data.labels import NIH_FINDINGS
from cxrkit.data.phantom.difficulty import Difficulty
from cxrkit.data.phantom.population import sample_population
from cxrkit.data.phantom.render import render_film


def contact_sheet(path: os.PathLike | str, tile: int = 176, seed: int = 0, cols: int = 5,
                  difficulty: Difficulty | float | None = None) -> Path:
    """Write a palette PNG of 15 tiles (normal + the 14 findings, PA films of one patient).

    Grey levels are kept to 240 palette entries plus the box and caption colours, so the sheet stays small
    (~250 KB at the default tile size) for the documentation.
    """
    from PIL import Image

    spec = next(s for s in sample_population(64, seed=seed) if s.view == "PA").with_findings([])
    tiles = []
    for name in ("",) + NIH_FINDINGS:
        film = render_film(spec.with_findings([name] if name else []), tile, difficulty)
        grey = (film.image.astype(np.uint16) * 239 // 255).astype(np.uint8)  # palette 0..239 = grey
        if name in film.boxes:
            x, y, w, h = film.boxes[name]
            cv2.rectangle(grey, (int(x), int(y)), (int(np.ceil(x + w)) - 1, int(np.ceil(y + h)) - 1), 240, 1)
        cv2.putText(grey, name or "normal", (4, 13), cv2.FONT_HERSHEY_SIMPLEX, 0.38, 241, 1, cv2.LINE_8)
        tiles.append(grey)
    while len(tiles) % cols:
        tiles.append(np.zeros_like(tiles[0]))
    rows = [np.hstack(tiles[i:i + cols]) for i in range(0, len(tiles), cols)]
    sheet = Image.fromarray(np.vstack(rows), mode="P")
    palette = [v for g in range(240) for v in (g * 255 // 239,) * 3] + [255, 40, 40, 255, 230, 0]
    sheet.putpalette(palette + [0] * (768 - len(palette)))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path, optimize=True)
    return path
