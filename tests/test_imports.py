"""Public-weight imports (`cxr import KIND FILE --out BUNDLE`, `--pretrained KIND:FILE`): each kind has a parity
test against the source's own code on the same image, with tiny-but-real files written in that source's format
(random weights: nothing can be downloaded here)."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from cxrkit.bundle import load_bundle
from cxrkit.data.errors import CxrError
from cxrkit.data.labels import NIH_FINDINGS
from cxrkit.models.imports import import_weights
from cxrkit.models.imports.base import IMAGENET_MEAN, IMAGENET_STD
from cxrkit.models.imports.save import save_imported


def film(size: int, seed: int = 0) -> np.ndarray:
    """A grey film-like image: smooth bright body, darker lungs, noise (so features vary across the image)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    body = 180 - 90 * (np.exp(-((xx - 0.3) ** 2 + (yy - 0.5) ** 2) / 0.02) + np.exp(-((xx - 0.7) ** 2 + (yy - 0.5) ** 2) / 0.02))
    return np.clip(body + rng.normal(0, 12, (size, size)), 0, 255).astype(np.uint8)


def settle_batchnorm(model: nn.Module, shape, scale: float, seed: int = 0) -> None:
    """Give random BatchNorm layers realistic running statistics (and a non-trivial output range), as training
    would: a few forward passes in train mode on inputs of the expected scale."""
    g = torch.Generator().manual_seed(seed)
    model.train()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = None  # cumulative average
    with torch.no_grad():
        for _ in range(3):
            model(torch.rand(shape, generator=g) * scale - scale / 2)
    model.eval()


def spread(p: np.ndarray) -> float:
    return float(np.std(p))


def rgb_imagenet(img: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(img).float().div(255).expand(3, -1, -1)
    return ((x - torch.tensor(IMAGENET_MEAN).view(3, 1, 1)) / torch.tensor(IMAGENET_STD).view(3, 1, 1)).unsqueeze(0)


# -- torchxrayvision ------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def xrv():
    """torchxrayvision itself (the `imports` extra): the reference side of its parity tests."""
    return pytest.importorskip("torchxrayvision")


def xrv_file(xrv, cache_dir: Path, weights: str) -> Path:
    return cache_dir / os.path.basename(xrv.models.model_urls[weights]["weights_url"])


def xrv_reference(xrv, model, img: np.ndarray, size: int) -> np.ndarray:
    """torchxrayvision's own pipeline: normalize to [-1024, 1024], channel axis, centre crop, resize, model."""
    import torchvision

    x = xrv.datasets.normalize(img, 255)[None]
    x = torchvision.transforms.Compose([xrv.datasets.XRayCenterCrop()])(x)
    assert x.shape[-1] == size  # the parity image is already at the native resolution
    with torch.no_grad():
        return model(torch.from_numpy(x).unsqueeze(0)).numpy()[0]


def test_xrv_densenet_parity(tmp_path, xrv):
    weights = "densenet121-res224-all"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        src = xrv.models.DenseNet()  # random init, xrv's own class; its release files are torch.save(model)
    settle_batchnorm(src, (2, 1, 64, 64), 2048)
    with torch.no_grad():
        src.classifier.weight.mul_(0.2)
    path = xrv_file(xrv, tmp_path, weights)
    torch.save(src, path)

    ref_model = xrv.models.DenseNet(weights=weights, cache_dir=str(tmp_path))  # loads our file, sets op_threshs
    assert ref_model.op_threshs is not None
    img = film(224)
    ref = dict(zip(ref_model.targets, xrv_reference(xrv, ref_model, img, 224)))

    bundle = save_imported(import_weights("xrv-densenet121", path), tmp_path / "bundle")
    pred = load_bundle(bundle)
    got = pred.predict([img])[0]
    assert list(pred.label_names) == [n for n in NIH_FINDINGS if n in ref_model.targets]  # all 14 map; 4 dropped
    want = np.array([ref[n] for n in pred.label_names])
    assert spread(want) > 0.02  # the test means something: outputs are not saturated / constant
    np.testing.assert_allclose(got, want, atol=2e-5)
    inp = pred.config["input"]
    assert inp["range"] == [-1024.0, 1024.0] and inp["size"] == 224 and inp["polarity"] == "MONOCHROME2"
    assert pred.config["calibration"]["method"] == "op_norm"
    assert pred.config["provenance"]["imported"]["dropped_outputs"] == ["Lung Lesion", "Fracture", "Lung Opacity",
                                                                        "Enlarged Cardiomediastinum"]


def test_xrv_densenet_pickle_never_runs_code(tmp_path, xrv):
    """The DenseNet release files are pickles: a file whose pickle would run a command is refused, not run."""
    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "evil.pt"
    torch.save({"model": Evil()}, path)
    with pytest.raises(CxrError, match="could not read"):
        import_weights("xrv-densenet121", path)
    assert not marker.exists()


def test_xrv_resnet_parity(tmp_path, xrv):
    weights = "resnet50-res512-all"
    import torchvision

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        net = torchvision.models.resnet50(num_classes=18, weights=None)
        net.conv1 = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
    settle_batchnorm(net, (2, 1, 128, 128), 2048)
    with torch.no_grad():
        net.fc.weight.mul_(0.05)
    path = xrv_file(xrv, tmp_path, weights)
    torch.save(net.state_dict(), path)  # xrv's ResNet files are plain state dicts of this torchvision model

    ref_model = xrv.models.ResNet(weights=weights, cache_dir=str(tmp_path))
    img = film(512, seed=3)
    ref = dict(zip(ref_model.targets, xrv_reference(xrv, ref_model, img, 512)))
    pred = load_bundle(save_imported(import_weights("xrv-resnet50", path), tmp_path / "bundle"))
    want = np.array([ref[n] for n in pred.label_names])
    assert spread(want) > 0.02 and pred.config["input"]["size"] == 512
    np.testing.assert_allclose(pred.predict([img])[0], want, atol=2e-5)


# -- CheXNet reproductions ------------------------------------------------------------------------------------

class ArnowengDenseNet121(nn.Module):
    """arnoweng/CheXNet's model class: torchvision DenseNet-121 with Linear + Sigmoid as classifier."""

    def __init__(self):
        super().__init__()
        import torchvision

        self.densenet121 = torchvision.models.densenet121(weights=None)
        self.densenet121.classifier = nn.Sequential(nn.Linear(1024, 14), nn.Sigmoid())

    def forward(self, x):
        return self.densenet121(x)


def chexnet_model(seed: int) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        m = ArnowengDenseNet121()
    settle_batchnorm(m, (2, 3, 64, 64), 4.0)
    with torch.no_grad():
        m.densenet121.classifier[0].weight.mul_(0.05)
    return m


def test_chexnet_arnoweng_parity(tmp_path):
    import re

    model = chexnet_model(2)
    sd = nn.DataParallel(model).state_dict()  # 'module.densenet121....'
    # the 2018 checkpoint was written by torchvision < 0.3: 'norm.1' where today's modules are 'norm1'
    old = {re.sub(r"\.(norm|relu|conv)(\d)\.", r".\1.\2.", k): v for k, v in sd.items()}
    assert any(".norm.1." in k for k in old) and all(k.startswith("module.densenet121.") for k in old)
    path = tmp_path / "model.pth.tar"
    torch.save({"epoch": 7, "state_dict": old, "best_loss": 0.15}, path)

    img = film(224, seed=5)
    with torch.no_grad():
        want = model(rgb_imagenet(img)).numpy()[0]
    pred = load_bundle(save_imported(import_weights("chexnet-arnoweng", path), tmp_path / "bundle"))
    assert list(pred.label_names) == list(NIH_FINDINGS) and spread(want) > 0.02
    np.testing.assert_allclose(pred.predict([img])[0], want, atol=2e-5)


def test_chexnet_jrzech_needs_trust_pickle(tmp_path):
    import torchvision

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(4)
        model = torchvision.models.densenet121(weights=None)
        model.classifier = nn.Sequential(nn.Linear(1024, 14), nn.Sigmoid())
    settle_batchnorm(model, (2, 3, 64, 64), 4.0)
    with torch.no_grad():
        model.classifier[0].weight.mul_(0.05)
    path = tmp_path / "checkpoint"
    torch.save({"model": model, "best_loss": 0.2, "epoch": 3, "LR": 1e-4}, path)  # reproduce-chexnet's layout

    with pytest.raises(CxrError, match="--trust-pickle"):
        import_weights("chexnet-jrzech", path)
    img = film(224, seed=6)
    with torch.no_grad():
        want = model(rgb_imagenet(img)).numpy()[0]
    pred = load_bundle(save_imported(import_weights("chexnet-jrzech", path, trust_pickle=True), tmp_path / "b"))
    assert spread(want) > 0.02
    np.testing.assert_allclose(pred.predict([img])[0], want, atol=2e-5)


# -- torchvision / timm ImageNet checkpoints ------------------------------------------------------------------

def test_torchvision_densenet_backbone_parity(tmp_path):
    import torchvision

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(5)
        tv = torchvision.models.densenet121(weights=None)
    settle_batchnorm(tv, (2, 3, 128, 128), 4.0)
    path = tmp_path / "densenet121.pth"
    torch.save(tv.state_dict(), path)
    pred = load_bundle(save_imported(import_weights("torchvision", path), tmp_path / "b"))
    assert pred.config["provenance"]["imported"]["head_trained"] is False
    img = film(224, seed=7)
    x = pred.model_input(pred.to_uint8_batch([img]))
    with torch.no_grad():
        ours = pred.model.forward_features(x)
        ref = torch.relu(tv.features(rgb_imagenet(img)))
    assert float(ref.std()) > 1e-3
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_timm_backbone_parity(tmp_path, suffix):
    import timm

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(6)
        net = timm.create_model("resnet18", pretrained=False)
    settle_batchnorm(net, (2, 3, 96, 96), 4.0)
    path = tmp_path / f"resnet18{suffix}"
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))
    else:
        torch.save(net.state_dict(), path)
    imported = import_weights("timm", path, arch="resnet18")
    pred = load_bundle(save_imported(imported, tmp_path / "b"))
    img = film(224, seed=8)
    with torch.no_grad():
        ours = pred.model.forward_features(pred.model_input(pred.to_uint8_batch([img])))
        ref = net.forward_features(rgb_imagenet(img))
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-4)
    with pytest.raises(CxrError, match="--arch"):
        import_weights("timm", path)


# -- --pretrained KIND:FILE and a bundle as initialisation ----------------------------------------------------

def test_pretrained_kind_initialises_backbone_and_normalisation(tmp_path, xrv):
    from cxrkit.models import create_model

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        src = xrv.models.DenseNet()
    path = tmp_path / "xrv.pt"
    torch.save(src, path)
    model = create_model("densenet121", 3, pretrained=f"xrv-densenet121:{path}")
    assert model.input_norm == (0.5, 1.0 / 2048.0)
    torch.testing.assert_close(model.backbone.features.conv0.weight, src.features.conv0.weight)
    with pytest.raises(CxrError, match="--arch densenet121"):
        create_model("resnet50", 3, pretrained=f"xrv-densenet121:{path}")

    # an imported bundle as the start of a new task: its stem and normalisation come along
    torch.save(chexnet_model(1).state_dict(), tmp_path / "arnoweng.pth")
    bundle = save_imported(import_weights("chexnet-arnoweng", tmp_path / "arnoweng.pth"), tmp_path / "b")
    m2 = create_model("densenet121", 2, pretrained=str(bundle))
    assert m2.stem is not None and m2.input_norm == (0.0, 1.0)
    ref = load_bundle(bundle).model
    torch.testing.assert_close(m2.backbone.features.conv0.weight, ref.backbone.features.conv0.weight)


# -- input normalisation: the bundle records it, the predictor warns on films that disagree ---------------

def test_predictor_warns_on_inverted_or_squashed_films(tmp_path, make_tiny_bundle, shared_data, caplog):
    import glob

    from cxrkit.data.decode import read_image

    pred = load_bundle(make_tiny_bundle(tmp_path / "b"))
    assert pred.config["input"]["polarity"] == "MONOCHROME2"
    from cxrkit.data.intensity import inversion_contrast
    from cxrkit.data.transforms import fit_square

    files = sorted(glob.glob(str(shared_data / "nih-sample" / "**" / "*.png"), recursive=True))[:20]
    # a clearly typical film (most are: the median contrast of real films is 0.28)
    real = next(im for im in map(read_image, files) if inversion_contrast(fit_square(im, 128)[0]) > 0.2)
    squashed = (real // 8).astype(np.uint8)  # what a 12-bit film cut to 8 bits without its window looks like
    with caplog.at_level("WARNING"):
        out = pred.predict_full([real, 255 - real, squashed])
    ok, inverted, low = out["input_warning"]
    assert ok == "" and "looks inverted" in inverted and "use only" in low
    assert "2 of 3 input films do not match" in caplog.text


def test_pretrained_torchvision_kind_uses_the_run_arch_and_exports(tmp_path):
    """torchvision:FILE takes the run's --arch (the file does not name one), keeps the exact RGB stem, and the
    stem survives ONNX export (its constants travel in the graph)."""
    import timm

    from cxrkit.models import create_model

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(9)
        net = timm.create_model("resnet18", pretrained=False)
    torch.save(net.state_dict(), tmp_path / "r18.pth")
    model = create_model("resnet18", 2, pretrained=f"torchvision:{tmp_path / 'r18.pth'}")
    assert model.stem is not None and model.input_norm == (0.0, 1.0)
    torch.testing.assert_close(model.backbone.model.conv1.weight, net.conv1.weight)
    pytest.importorskip("onnxruntime")
    from cxrkit.deploy.export import export_onnx

    bundle = save_imported(import_weights("torchvision", tmp_path / "r18.pth", arch="resnet18"), tmp_path / "b")
    report = export_onnx(bundle)  # cxrkit's own export, with its parity check against the torch predictor
    assert report["max_abs_diff"] <= report["tolerance"]
