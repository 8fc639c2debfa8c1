"""Drawing heatmaps: colour overlays, boxes, captions, PNG bytes and the HTML contact sheet."""
from __future__ import annotations

import html
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from cxrkit import RESEARCH_NOTICE
from cxrkit.explain.boxes import ExplainError

BOX_COLOUR = (255, 255, 255)      # RGB; white reads on every part of the jet colormap
TRUTH_COLOUR = (0, 255, 0)        # ground-truth boxes, when shown


def overlay(image_u8: np.ndarray, heatmap: np.ndarray, alpha: float = 0.45,
            colormap: int = cv2.COLORMAP_JET) -> np.ndarray:
    """Blend a [0, 1] heatmap (any size; resized to the image) in ``colormap`` over a uint8 grey image -> RGB uint8."""
    image = np.asarray(image_u8)
    if image.dtype != np.uint8 or image.ndim != 2:
        raise ExplainError(f"overlay needs a uint8 H x W grey image, got {image.dtype} {image.shape}")
    if not 0.0 <= alpha <= 1.0:
        raise ExplainError(f"alpha must be in [0, 1], got {alpha}")
    heat = np.asarray(heatmap, dtype=np.float32)
    if heat.ndim != 2:
        raise ExplainError(f"heatmap must be 2-D, got shape {heat.shape}")
    if heat.shape != image.shape:
        heat = cv2.resize(heat, (image.shape[1], image.shape[0]), interpolation=cv2.INTER_LINEAR)
    heat_u8 = (np.clip(np.nan_to_num(heat), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    colour = cv2.cvtColor(cv2.applyColorMap(heat_u8, colormap), cv2.COLOR_BGR2RGB)
    grey = cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    return cv2.addWeighted(grey, 1.0 - alpha, colour, alpha, 0.0)


def draw_boxes(rgb: np.ndarray, boxes: Sequence[Sequence[float]], colour: tuple[int, int, int] = BOX_COLOUR,
               thickness: int | None = None) -> np.ndarray:
    """Draw ``(x, y, w, h[, score])`` boxes on a copy of an RGB image."""
    out = rgb.copy()
    t = thickness or max(1, round(max(rgb.shape[:2]) / 256))
    for b in boxes:
        x, y, w, h = (int(round(v)) for v in b[:4])
        cv2.rectangle(out, (x, y), (x + max(w - 1, 0), y + max(h - 1, 0)), colour, t)
    return out


def add_caption(rgb: np.ndarray, lines: Sequence[str]) -> np.ndarray:
    """Stack a black band with text lines above an RGB image (ASCII text; OpenCV's Hershey font)."""
    w = rgb.shape[1]
    scale = max(0.35, min(1.0, w / 700))
    line_h = int(22 * scale) + 6
    band = np.zeros((line_h * len(lines) + 4, w, 3), dtype=np.uint8)
    for k, text in enumerate(lines):
        text = text.encode("ascii", "replace").decode()
        cv2.putText(band, text, (4, line_h * (k + 1) - 4), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 1,
                    cv2.LINE_AA)
    return np.vstack([band, rgb])


def fit_display(image: np.ndarray, max_side: int, min_side: int = 0) -> tuple[np.ndarray, float]:
    """Scale an image so its long side lies in [min_side, max_side] (figures stay small, captions stay legible);
    returns it and the factor."""
    h, w = image.shape[:2]
    long = max(h, w)
    f = max_side / long if long > max_side else (min_side / long if long < min_side else 1.0)
    if f == 1.0:
        return image, 1.0
    interp = cv2.INTER_AREA if f < 1 else cv2.INTER_LINEAR
    return cv2.resize(image, (max(1, round(w * f)), max(1, round(h * f))), interpolation=interp), f


def render_finding(image_u8: np.ndarray, heatmap: np.ndarray, boxes: Sequence[Sequence[float]], finding: str,
                   prob: float | None, *, method: str = "", truth: Sequence[Sequence[float]] = (),
                   extra: str = "", max_side: int = 1024, min_side: int = 256, alpha: float = 0.45) -> np.ndarray:
    """The figure for one finding: overlay, detected boxes (white), ground-truth boxes (green), and a caption with
    the finding, its probability, the method and the research-use notice. Returns RGB uint8, long side scaled into
    [min_side, max_side]."""
    image, f = fit_display(np.asarray(image_u8), max_side, min_side)
    heat = np.asarray(heatmap, dtype=np.float32)
    rgb = overlay(image, heat, alpha=alpha)
    scale = lambda bs: [tuple(v * f for v in b[:4]) for b in bs]  # noqa: E731
    rgb = draw_boxes(rgb, scale(truth), TRUTH_COLOUR)
    rgb = draw_boxes(rgb, scale(boxes), BOX_COLOUR)
    title = finding if prob is None else f"{finding}  p={prob:.3f}"
    head = " | ".join(s for s in (title, method, extra) if s)
    return add_caption(rgb, [head, "Research use only - not for diagnosis"])


def png_bytes(rgb: np.ndarray) -> bytes:
    """Encode an RGB uint8 image as PNG bytes."""
    ok, buf = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise ExplainError("OpenCV could not encode the figure as PNG")
    return buf.tobytes()


def write_png(path: str | Path, rgb: np.ndarray) -> None:
    """Write an RGB uint8 image as a PNG file (atomic: a partial file never carries the final name)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(png_bytes(rgb))
    tmp.replace(path)


def contact_sheet_html(entries: Sequence[dict], title: str = "cxrkit explanations", warning: str | None = None) -> str:
    """A self-contained HTML page (relative image links) with one row per image.

    ``entries``: ``{"image": name, "error": str | None, "figures": [{"finding", "prob", "png" (relative path),
    "boxes": n}]}``.
    """
    esc = html.escape
    rows = []
    for e in entries:
        if e.get("error"):
            cells = f'<td class="err" colspan="99">not explained: {esc(e["error"])}</td>'
        else:
            cells = "".join(
                f'<td><a href="{esc(f["png"])}"><img src="{esc(f["png"])}" loading="lazy"></a>'
                f'<div>{esc(f["finding"])} p={f["prob"]:.3f}, {f["boxes"]} box(es)</div></td>'
                for f in e["figures"])
        rows.append(f'<tr><th>{esc(e["image"])}</th>{cells}</tr>')
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>
<style>body{{font-family:sans-serif;margin:1em}} img{{width:256px;display:block}} td,th{{vertical-align:top;
padding:4px;text-align:left}} .notice{{background:#fee;padding:.5em;border:1px solid #c00}} .err{{color:#a00}}</style>
</head><body>
<h1>{esc(title)}</h1>
<p class="notice">{esc(RESEARCH_NOTICE)}</p>
{f'<p class="notice"><b>{esc(warning)}</b></p>' if warning else ""}
<table>
{chr(10).join(rows)}
</table>
</body></html>
"""
