"""Box overlaps (property tests), boxes from heatmaps, square-fit geometry, overlays."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from cxrkit.data.errors import CxrError
from cxrkit.data.transforms import fit_square
from cxrkit.explain.boxes import (ExplainError, boxes_from_heatmap, heatmap_mask, iobb, iou, square_fit_geometry,
                                  unfit_box, unfit_map)
from cxrkit.explain.overlay import add_caption, contact_sheet_html, draw_boxes, overlay, png_bytes, render_finding

coord = st.floats(min_value=-50, max_value=500, allow_nan=False)
side = st.floats(min_value=0, max_value=300, allow_nan=False)
boxes = st.tuples(coord, coord, side, side)
positive_boxes = st.tuples(coord, coord, st.floats(0.5, 300), st.floats(0.5, 300))


@settings(max_examples=200, deadline=None)
@given(boxes, boxes)
def test_iou_symmetric_and_bounded(a, b):
    assert iou(a, b) == pytest.approx(iou(b, a))
    assert 0.0 <= iou(a, b) <= 1.0
    assert 0.0 <= iobb(a, b) <= 1.0


@settings(max_examples=200, deadline=None)
@given(boxes, boxes)
def test_iobb_at_least_iou(truth, detected):
    assert iobb(truth, detected) >= iou(truth, detected) - 1e-12


@settings(max_examples=100, deadline=None)
@given(positive_boxes)
def test_identical_boxes_score_one(a):
    assert iou(a, a) == pytest.approx(1.0)
    assert iobb(a, a) == pytest.approx(1.0)


@settings(max_examples=100, deadline=None)
@given(positive_boxes, st.floats(0.01, 0.99), st.floats(0.01, 0.99))
def test_detected_inside_truth_has_iobb_one(truth, fx, fy):
    x, y, w, h = truth
    inner = (x + fx * w / 2, y + fy * h / 2, w / 2, h / 2)
    assert iobb(truth, inner) == pytest.approx(1.0)
    assert iou(truth, inner) == pytest.approx(0.25)


def test_overlap_known_values():
    assert iou((0, 0, 10, 10), (5, 0, 10, 10)) == pytest.approx(50 / 150)
    assert iobb((0, 0, 10, 10), (5, 0, 10, 10)) == pytest.approx(0.5)
    assert iou((0, 0, 10, 10), (20, 20, 5, 5)) == 0.0
    assert iou((0, 0, 0, 0), (0, 0, 0, 0)) == 0.0
    assert iobb((0, 0, 10, 10), (3, 3, 0, 0)) == 0.0
    assert iou((0, 0, 10, 10, 0.9), (0, 0, 10, 10)) == 1.0  # a trailing score is ignored


def _blob(shape, centre, sigma):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return np.exp(-((xx - centre[0]) ** 2 + (yy - centre[1]) ** 2) / (2 * sigma**2)).astype(np.float32)


def test_boxes_from_a_synthetic_blob():
    heat = np.zeros((120, 160), np.float32)
    heat[30:50, 100:140] = 0.8  # rectangle: x 100..139, y 30..49
    out = boxes_from_heatmap(heat, threshold=0.5)
    assert out == [(100, 30, 40, 20, pytest.approx(0.8))]


def test_boxes_two_blobs_sorted_by_score_and_specks_dropped():
    heat = 1.0 * _blob((200, 200), (50, 60), 8) + 0.7 * _blob((200, 200), (150, 140), 8)
    heat[5, 190] = 0.9  # one-pixel speck
    out = boxes_from_heatmap(heat, threshold=0.5, min_area=16)
    assert len(out) == 2
    (x0, y0, w0, h0, s0), (x1, y1, w1, h1, s1) = out
    assert s0 > s1
    assert x0 < 50 < x0 + w0 and y0 < 60 < y0 + h0
    assert x1 < 150 < x1 + w1 and y1 < 140 < y1 + h1
    # a blob's half-maximum box is 2 * sqrt(2 ln 2) sigma wide for the strong one
    assert w0 == pytest.approx(2 * np.sqrt(2 * np.log(2)) * 8, abs=2)
    assert len(boxes_from_heatmap(heat, threshold=0.5, min_area=1)) == 3


def test_threshold_relative_to_max_and_otsu():
    heat = 0.3 * _blob((100, 100), (50, 50), 10)  # the peak is 0.3: thresholds are relative to it
    tight = boxes_from_heatmap(heat, threshold=0.9)[0]
    loose = boxes_from_heatmap(heat, threshold=0.2)[0]
    assert tight[2] < loose[2]
    otsu = boxes_from_heatmap(heat, threshold="otsu")
    assert len(otsu) == 1 and otsu[0][0] < 50 < otsu[0][0] + otsu[0][2]
    assert boxes_from_heatmap(np.zeros((10, 10), np.float32)) == []
    assert not heatmap_mask(np.zeros((4, 4)), "otsu").any()


@pytest.mark.parametrize("bad", [0.0, 1.5, -1, "mean"])
def test_bad_threshold_is_a_clear_error(bad):
    with pytest.raises(ExplainError, match="threshold"):
        boxes_from_heatmap(np.ones((4, 4)), threshold=bad)


def test_bad_heatmaps_are_refused():
    assert issubclass(ExplainError, CxrError)
    with pytest.raises(ExplainError, match="2-D"):
        boxes_from_heatmap(np.ones((2, 4, 4)))
    with pytest.raises(ExplainError, match="NaN"):
        boxes_from_heatmap(np.full((4, 4), np.nan))


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 400), st.integers(1, 400), st.sampled_from([32, 64, 224, 256]))
def test_square_fit_geometry_matches_fit_square(h, w, size):
    _, fit = fit_square(np.zeros((h, w), np.uint8), size)
    assert square_fit_geometry(h, w, size) == fit


def test_unfit_map_undoes_fit_square():
    # a wide image with a bright rectangle: fit to a square, map back, the rectangle is where it was
    img = np.zeros((150, 300), np.uint8)
    img[40:80, 200:260] = 255
    square, fit = fit_square(img, 64)
    back = unfit_map(square.astype(np.float32) / 255, fit, 150, 300)
    assert back.shape == (150, 300)
    ys, xs = np.nonzero(back > 0.5)
    assert abs(ys.min() - 40) <= 3 and abs(ys.max() - 79) <= 3
    assert abs(xs.min() - 200) <= 3 and abs(xs.max() - 259) <= 3
    box = (200.0, 40.0, 60.0, 40.0)
    assert unfit_box((*fit.box(*box), 0.7), fit) == pytest.approx((*box, 0.7))


def test_overlay_blends_a_colormap():
    img = np.full((40, 60), 100, np.uint8)
    heat = np.zeros((20, 30), np.float32)
    heat[:, 15:] = 1.0  # right half hot; resized to the image
    rgb = overlay(img, heat, alpha=0.5)
    assert rgb.shape == (40, 60, 3) and rgb.dtype == np.uint8
    jet_hot = cv2.cvtColor(cv2.applyColorMap(np.array([[255]], np.uint8), cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB)[0, 0]
    np.testing.assert_allclose(rgb[20, 50], 0.5 * 100 + 0.5 * jet_hot, atol=1)
    assert (rgb[20, 5] != rgb[20, 50]).any()
    np.testing.assert_array_equal(overlay(img, heat, alpha=0.0), np.repeat(img[..., None], 3, axis=2))
    with pytest.raises(ExplainError):
        overlay(img.astype(np.float32), heat)
    with pytest.raises(ExplainError):
        overlay(img, heat, alpha=2)


def test_figure_has_caption_boxes_and_encodes_to_png():
    img = np.full((100, 100), 80, np.uint8)
    drawn = draw_boxes(np.zeros((100, 100, 3), np.uint8), [(10, 10, 30, 20, 0.9)], (255, 0, 0), thickness=1)
    assert drawn[10, 10:40, 0].min() == 255 and drawn[15, 20, 0] == 0
    fig = render_finding(img, np.zeros((100, 100), np.float32), [(10, 10, 30, 20, 0.9)], "Effusion", 0.73,
                         min_side=0)
    assert fig.shape[1] == 100 and fig.shape[0] > 100
    # small images are enlarged so the caption stays legible, large ones shrunk; boxes follow the scale
    big = render_finding(img, np.zeros((100, 100), np.float32), [(10, 10, 30, 20, 0.9)], "Effusion", 0.73)
    assert big.shape[1] == 256
    top_edge = big[-256:][24:29, 30:100].min(axis=(1, 2))  # the white box's top edge, at y = 10 * 2.56
    assert top_edge.max() == 255
    small = render_finding(np.zeros((3000, 1500), np.uint8), np.zeros((30, 15)), [], "Mass", None, max_side=600)
    assert small.shape[1] == 300 and small.shape[0] > 600
    assert add_caption(np.zeros((10, 50, 3), np.uint8), ["a", "b"]).shape[0] > 10
    data = png_bytes(fig)
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    decoded = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert decoded.shape == fig.shape


def test_contact_sheet_escapes_and_lists_errors():
    page = contact_sheet_html([
        {"image": "<x>.png", "figures": [{"finding": "Mass", "prob": 0.5, "png": "x/Mass.png", "boxes": 2}]},
        {"image": "bad.dcm", "error": "not a DICOM"},
    ])
    assert "&lt;x&gt;.png" in page and 'src="x/Mass.png"' in page and "not a DICOM" in page
    assert "Research use only" in page


def test_boxes_of_a_box_size_map_come_back_in_the_films_pixels():
    from cxrkit.explain.finding_boxes import DEFAULT_PARAMS, box_map_shape, boxes_with

    film = (837, 1024)  # not square: each axis has its own factor
    small_shape = box_map_shape(*film)
    assert max(small_shape) == 256 and small_shape == (209, 256)
    assert box_map_shape(200, 100) == (200, 100)  # small films keep their size

    def rect(shape, scale):
        heat = np.zeros(shape, np.float32)
        y0, y1, x0, x1 = (round(v * scale) for v in (200, 520, 300, 700))  # in film pixels
        heat[y0:y1, x0:x1] = 0.9
        return heat

    full = boxes_with(rect(film, 1.0), DEFAULT_PARAMS)
    small = boxes_with(rect(small_shape, 256 / 1024), DEFAULT_PARAMS, film_shape=film)
    assert len(full) == len(small) == 1
    # one map pixel is 4 film pixels across (1024 / 256) and 837 / 209 down
    assert np.allclose(full[0][:4], (300, 200, 400, 320), atol=4.01)
    assert np.allclose(small[0][:4], full[0][:4], atol=4.01)
    assert small[0][4] == full[0][4]
    with pytest.raises(ExplainError, match="film_shape"):
        boxes_with(rect(small_shape, 0.25), DEFAULT_PARAMS, film_shape=(0, 1024))


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), grid=st.sampled_from([3, 7, 40, 256]), threshold=st.floats(0.2, 0.95),
       min_area=st.integers(1, 40))
@example(seed=0, grid=256, threshold=0.9, min_area=1)  # thousands of regions
@example(seed=0, grid=7, threshold=0.5, min_area=1)    # a few
def test_boxes_match_a_plain_labelling_of_the_hot_pixels(seed, grid, threshold, min_area):
    """Every box is one 8-connected hot region of at least min_area pixels, scored with its own peak, whether the
    map is smooth (few regions: each peak read inside its box) or speckled (hundreds: one pass for all)."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    heat = cv2.resize(rng.random((grid, grid)).astype(np.float32), (256, 256), interpolation=cv2.INTER_LINEAR)
    labels, n = ndimage.label(heat >= threshold * heat.max(), structure=np.ones((3, 3)))
    want = []
    for k, region in enumerate(ndimage.find_objects(labels), start=1):
        inside = labels[region] == k
        if inside.sum() >= min_area:
            ys, xs = region
            want.append((xs.start, ys.start, xs.stop - xs.start, ys.stop - ys.start, float(heat[region][inside].max())))
    got = boxes_from_heatmap(heat, threshold, min_area)
    assert sorted(got) == sorted(want)
    assert [b[4] for b in got] == sorted((b[4] for b in got), reverse=True)
