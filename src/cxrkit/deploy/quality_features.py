"""Cheap image descriptors for the quality gate: a fixed hand-crafted feature vector, explicit checks, colourfulness.

The hand-crafted vector describes what every frontal chest film shares whatever the model was trained on - its
intensity distribution, its coarse layout (dark lungs either side of a bright mediastinum, shoulders, diaphragm),
its left-right symmetry and its edge-orientation statistics - so the gate works even with a phantom-trained model.
"""
from __future__ import annotations

import cv2
import numpy as np

from cxrkit.data.intensity import colourfulness, inversion_contrast  # noqa: F401 (also imported from here)
from cxrkit.data.transforms import fit_square

FEATURE_SIZE = 128      # every image is brought to this square (fit_square, as the model sees it) first
THUMB = 16              # coarse layout thumbnail side
HIST_BINS = 32
HOG_CELL = 16           # HOG on a 64 px image: 4 x 4 cells x 9 orientations
FEATURE_VERSION = 1


def _hog(img64: np.ndarray) -> np.ndarray:
    from skimage.feature import hog

    return hog(img64, orientations=9, pixels_per_cell=(HOG_CELL, HOG_CELL), cells_per_block=(1, 1),
               feature_vector=True).astype(np.float32)


def handcrafted_features(image_u8: np.ndarray) -> np.ndarray:
    """uint8 grey H x W -> float32 feature vector (histogram, layout thumbnail, symmetry, HOG, texture stats)."""
    img = fit_square(np.asarray(image_u8, dtype=np.uint8), FEATURE_SIZE)[0]
    f = img.astype(np.float32) / 255.0
    hist = np.bincount(img.ravel() >> 3, minlength=HIST_BINS).astype(np.float32) / img.size
    thumb = cv2.resize(f, (THUMB, THUMB), interpolation=cv2.INTER_AREA)
    asym = np.abs(thumb - thumb[:, ::-1]).mean().reshape(1)
    gx, gy = cv2.Sobel(f, cv2.CV_32F, 1, 0), cv2.Sobel(f, cv2.CV_32F, 0, 1)
    mag = np.sqrt(gx * gx + gy * gy)
    lap = cv2.Laplacian(f, cv2.CV_32F)
    stats = np.array([f.mean(), f.std(), mag.mean(), np.log1p(lap.var() * 1e3), (img == 0).mean(), (img >= 250).mean(),
                      (mag > 0.5).mean(), inversion_contrast(img)], dtype=np.float32)
    hog = _hog(cv2.resize(img, (64, 64), interpolation=cv2.INTER_AREA))
    # sqrt of the histogram (Hellinger embedding) makes Gaussian modelling of proportions better behaved
    return np.concatenate([np.sqrt(hist), thumb.ravel(), asym, stats, hog]).astype(np.float32)


def file_colourfulness(data: bytes) -> float:
    """Colourfulness of an encoded PNG/JPEG (decoded again in colour: read_image returns grey)."""
    arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    return 0.0 if arr is None else colourfulness(arr, "bgr")


GREY_PHOTOMETRIC = {None, "grey", "grey+alpha"}


def add_colourfulness(meta: dict, data: bytes) -> dict:
    """Set ``meta["colourfulness"]`` for colour PNG/JPEG files (the grey decode hides colour photographs), unless
    the decoder already measured it on the colour pixels it decoded (then the file is not decoded a second time)."""
    if "colourfulness" not in meta and meta.get("source_format") in ("png", "jpeg") \
            and meta.get("photometric") not in GREY_PHOTOMETRIC:
        meta["colourfulness"] = file_colourfulness(data)
    return meta


def explicit_checks(image_u8: np.ndarray) -> str | None:
    """Cheap rule checks that need no fitted model; the reason an image is refused, or None.

    Blank/constant images and near-binary images (documents, line art, masks) are refused outright: no chest
    film has fewer than a handful of distinct grey levels over most of its area.
    """
    image_u8 = np.ascontiguousarray(image_u8, dtype=np.uint8)
    img = fit_square(image_u8, FEATURE_SIZE)[0]
    h, w = image_u8.shape
    # OpenCV's one pass in double precision: numpy's std makes a float64 copy of the whole film first (~3 ms)
    std = float(cv2.meanStdDev(image_u8)[1][0, 0])
    if std < 2.0:
        return f"blank or constant image (intensity std {std:.2f} of 255)"
    if min(h, w) < 32:
        return f"image is only {w} x {h} pixels; too small to be a radiograph"
    # Ignore the fit_square padding when the image was not square.
    content = img[img > 0] if min(h, w) < max(h, w) else img.ravel()
    hist = np.bincount(content, minlength=256).astype(np.float64) / max(1, content.size)
    top2 = np.sort(hist)[-2:].sum()
    if top2 > 0.75:
        return f"near-binary image ({100 * top2:.0f}% of pixels take two grey levels): a document or line art?"
    return None
