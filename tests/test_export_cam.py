"""The exported graph's class-map output: CAM from the fast runtime's single pass equals torch's CAM, and the DICOM
node uses it (no second, torch, forward for heatmaps)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from box_agreement import assert_box_size_maps_agree

pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def exported(make_tiny_bundle, tmp_path_factory):
    from cxrkit.deploy.export import export

    bundle = make_tiny_bundle(tmp_path_factory.mktemp("cam") / "bundle", size=96)
    export(bundle, format="onnx")
    return bundle


def _film(h=300, w=260):
    yy, xx = np.mgrid[0:h, 0:w]
    return (120 + 60 * np.sin(xx / 13.0) * np.cos(yy / 29.0) + 40 * (xx > w / 2)).astype(np.uint8)


@pytest.mark.parametrize("backend", ["onnx", "openvino", "torch"])
def test_graph_cam_equals_torch_cam(exported, backend):
    """The class maps a predictor returns with its scores (the graphs', and the torch model's of the same forward)
    are the torch explainer's CAM."""
    if backend == "openvino":
        pytest.importorskip("openvino")
    from cxrkit.deploy.onnx_runtime import load_predictor
    from cxrkit.explain import explain_images
    from cxrkit.explain.cam import maps_from_graph

    image = _film()  # not square: the padding is cropped off on the way back
    torch_pred = load_predictor(exported, backend="torch")
    graph = load_predictor(exported, backend=backend)
    out = graph.predict_full([image])
    assert out["cam"].shape[:2] == (1, len(graph.label_names))
    ref = explain_images(torch_pred, [image])[0]
    maps = maps_from_graph(graph, out["cam"][0], range(len(graph.label_names)), *image.shape)
    assert maps.shape == (len(graph.label_names), *image.shape)
    for k, name in enumerate(graph.label_names):
        assert np.abs(maps[k] - ref[name]).max() < 1e-4, name


def test_node_heatmaps_come_from_the_graph(exported, tmp_path, monkeypatch):
    from cxrkit.deploy.dicom.config import build_config
    from cxrkit.deploy.dicom.process import Processor
    from cxrkit.deploy.dicom.spool import Spool
    from cxrkit.explain import explain_images
    from cxrkit.explain.finding_boxes import box_map_shape

    proc = Processor(exported, build_config(spool=tmp_path / "spool", backend="onnx"), Spool(tmp_path / "spool"))
    image = _film()
    out = proc.predictor.predict_full([image])
    names = ["Effusion", "Nodule"]
    # the node's maps cover the film at box size (at most 256 px), from either source
    ref = explain_images(proc.explainer(), [image], names, shapes=[box_map_shape(*image.shape)])[0]

    def no_torch(*a, **k):
        raise AssertionError("the torch explainer ran although the graph has class maps")

    monkeypatch.setattr("cxrkit.explain.explain_images", no_torch)
    maps = proc._heatmaps(image, names, out["cam"][0])
    for name in names:
        assert maps[name].shape == box_map_shape(*image.shape) == (256, 222)
        assert np.abs(maps[name] - ref[name]).max() < 1e-4


@pytest.mark.parametrize("crop", [None, (slice(0, 837), slice(None))])
def test_boxes_from_box_size_maps_match_the_full_size_maps(exported, shared_data, crop):
    """`cxr predict` makes the graph's maps at most BOX_SIDE px and scales the boxes to the film, instead of
    upsampling each map to the full film first: on a real 1024-px film (and a non-square crop of it) the boxes
    agree with the full-size extraction within one map pixel (4 film pixels), up to a rare threshold-edge case."""
    from cxrkit.data.decode import read_image
    from cxrkit.deploy.onnx_runtime import load_predictor
    from cxrkit.explain.cam import maps_from_graph
    from cxrkit.explain.finding_boxes import box_map_shape

    image = read_image(shared_data / "dicom" / "cr_monochrome2_jpeg_baseline.dcm")
    image = np.ascontiguousarray(image[crop]) if crop else image
    graph = load_predictor(exported, backend="onnx")
    cam = graph.predict_full([image])["cam"][0]
    classes = range(len(graph.label_names))
    full = maps_from_graph(graph, cam, classes, *image.shape)
    small = maps_from_graph(graph, cam, classes, *box_map_shape(*image.shape))
    assert small.shape[1:] == box_map_shape(*image.shape) and max(small.shape[1:]) == 256
    assert_box_size_maps_agree(zip(full, small), image.shape, score_tol=0.01)


@pytest.mark.parametrize("backend", ["onnx", "torch"])
def test_predict_boxes_from_the_graph_in_a_worker_batch_by_batch(exported, shared_data, tmp_path, backend,
                                                                 monkeypatch):
    """With the class maps of the same pass (an exported graph's, or the torch model's), `cxr predict` finds a
    batch's boxes in the worker pool while the network runs the next batch, with no second forward: every batch
    still comes out whole, in input order, with the boxes of each film's positive findings (at most BOX_SIDE-px
    maps, in the film's pixels) and error rows in place."""
    import shutil

    from cxrkit.bundle import read_bundle_config, write_bundle_config
    from cxrkit.data.decode import read_image
    from cxrkit.deploy.onnx_runtime import load_predictor
    from cxrkit.deploy.predict import iter_predictions
    from cxrkit.explain.cam import maps_from_graph
    from cxrkit.explain.finding_boxes import box_map_shape, boxes_for

    bundle = tmp_path / "bundle"
    shutil.copytree(exported, bundle)
    cfg = read_bundle_config(bundle)
    cfg["thresholds"] = {n: (0.0 if n in ("Effusion", "Mass") else 1.01) for n in cfg["label_names"]}
    write_bundle_config(bundle, cfg)
    graph = load_predictor(bundle, backend=backend)
    films = sorted((shared_data / "nih-sample" / "images").glob("*.png"))[:3]
    (tmp_path / "bad.png").write_bytes(b"not an image")
    paths = [films[0], tmp_path / "bad.png", shared_data / "dicom" / "cr_monochrome2_jpeg_baseline.dcm", *films[1:]]

    def second_pass(*a, **k):
        raise AssertionError("a second forward ran for the maps although the first one returned them")

    monkeypatch.setattr("cxrkit.explain.cam.explain_images", second_pass)
    batches = list(iter_predictions(graph, paths, batch_size=2, workers=2, gate=None, progress=False))
    monkeypatch.undo()
    assert [len(b) for b in batches] == [2, 2, 1]
    rows = [r for b in batches for r in b]
    assert [r["path"] for r in rows] == [str(p) for p in paths]
    assert rows[1]["status"] == "error" and "boxes" not in rows[1]
    found = 0
    for row, path in zip(rows, paths):
        if row["status"] != "ok":
            continue
        image = read_image(path)
        cam = graph.predict_full([image])["cam"][0]
        assert row["box_method"] == "cam" and set(row["boxes"]) == {"Effusion", "Mass"}
        for name in ("Effusion", "Mass"):
            idx = graph.label_names.index(name)
            small = maps_from_graph(graph, cam, [idx], *box_map_shape(*image.shape))[0]
            want = boxes_for(graph, name, small, "cam", film_shape=image.shape)
            assert len(row["boxes"][name]) == len(want)
            found += len(want)
            if want:
                np.testing.assert_allclose(np.asarray(row["boxes"][name]), np.asarray(want), atol=1e-3)
    assert found >= 3


def test_predict_heatmaps_from_the_graph_in_a_worker(exported, shared_data, tmp_path):
    """Heatmap figures from the graph's maps are written by the worker pool too: every good film gets its figures
    (full-size maps), named after its row, and the boxes drawn on them are the row's."""
    from cxrkit.deploy.onnx_runtime import load_predictor
    from cxrkit.deploy.predict import predict_files

    graph = load_predictor(exported, backend="onnx")
    films = sorted((shared_data / "nih-sample" / "images").glob("*.png"))[:2]
    paths = [*films, shared_data / "dicom" / "cr_monochrome2_jpeg_baseline.dcm"]
    rows = predict_files(graph, paths, batch_size=2, workers=2, gate=None, heatmaps=tmp_path / "maps")
    assert [r["path"] for r in rows] == [str(p) for p in paths]
    for row in rows:
        assert row["status"] == "ok" and row["heatmaps"], row
        for figure in row["heatmaps"]:
            assert Path(figure).is_file() and Path(figure).name.startswith(f"{row['index']:06d}_")
        assert set(row["boxes"]) == set(row["findings"])


def test_a_bundle_tuned_to_layercam_draws_the_same_boxes_on_every_backend(exported, shared_data, tmp_path):
    """The graph's CAM serves only a bundle whose map method is CAM (or untuned): one tuned to LayerCAM gets its
    maps from the torch model on the fast runtimes too, so `cxr predict` on ONNX Runtime and on torch draw the same
    boxes with the same method (the DICOM node and serve follow the same rule)."""
    import shutil

    pytest.importorskip("pytorch_grad_cam")
    from cxrkit.bundle import read_bundle_config, write_bundle_config
    from cxrkit.deploy.onnx_runtime import load_predictor
    from cxrkit.deploy.predict import predict_files
    from cxrkit.explain.finding_boxes import graph_cam_serves

    bundle = tmp_path / "bundle"
    shutil.copytree(exported, bundle)
    cfg = read_bundle_config(bundle)
    cfg["thresholds"] = {n: (0.0 if n in ("Effusion", "Mass") else 1.01) for n in cfg["label_names"]}
    assert graph_cam_serves(cfg)
    cfg.setdefault("explain", {})["method"] = "layercam"
    write_bundle_config(bundle, cfg)
    assert not graph_cam_serves(cfg)
    films = sorted((shared_data / "nih-sample" / "images").glob("*.png"))[:2]
    rows = {}
    for backend in ("onnx", "torch"):
        predictor = load_predictor(bundle, backend=backend)
        rows[backend] = [r for r in predict_files(predictor, films, batch_size=2, workers=2, gate=None,
                                                  progress=False)]
    for graph_row, torch_row in zip(rows["onnx"], rows["torch"]):
        assert graph_row["box_method"] == torch_row["box_method"] == "layercam"
        assert set(graph_row["boxes"]) == {"Effusion", "Mass"}
        for name, boxes in torch_row["boxes"].items():
            np.testing.assert_allclose(np.asarray(graph_row["boxes"][name]), np.asarray(boxes), atol=1e-3)
    # --box-maps graph: the graph's CAM whatever the bundle was tuned to (faster, coarser)
    fast = predict_files(load_predictor(bundle, backend="onnx"), films, batch_size=2, workers=2, gate=None,
                         box_maps="graph", progress=False)
    assert all(r["box_method"] == "cam" and set(r["boxes"]) == {"Effusion", "Mass"} for r in fast)
    with pytest.raises(Exception, match="box maps must be one of"):
        predict_files(load_predictor(bundle, backend="onnx"), films, box_maps="fast", gate=None)
