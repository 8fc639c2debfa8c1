"""The model registry: every listed architecture, both heads, the normal head, pretrained weights from files."""
from __future__ import annotations

import pytest
import torch

from cxrkit.data.errors import CxrError
from cxrkit.models import create_model, list_models, to_model_input
from cxrkit.models.pretrained import PretrainedError

torch.set_num_threads(1)

ARCHS = ["densenet121", "resnet50", "vgg19_bn", "inception_v3", "mobilenetv2", "mobilenetv3", "efficientnet_b0",
         "efficientnet_b3", "convnext_tiny", "cxr_tiny", "cxr_tiny_s16"]


@pytest.mark.parametrize("arch", ARCHS)
def test_every_listed_arch_builds_and_runs(arch):
    assert arch in list_models()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = create_model(arch, 14).eval()
    side = 80 if arch == "inception_v3" else 64  # inception's stem needs >= 75 px
    with torch.inference_mode():
        out = model(torch.randn(1, 1, side, side))
    assert out.shape == (1, 14) and torch.isfinite(out).all()


def test_cxr_tiny_s16_halves_the_stride_with_the_same_weights():
    """The stride-16 variant: twice as fine a feature map, same parameter shapes (its last stage is dilated, not
    resized), and the arch name round-trips through the model spec."""
    tiny, s16 = create_model("cxr_tiny", 3).eval(), create_model("cxr_tiny_s16", 3).eval()
    with torch.inference_mode():
        f32 = tiny.forward_all(torch.randn(1, 1, 160, 160))["features"]
        f16 = s16.forward_all(torch.randn(1, 1, 160, 160))["features"]
    assert f32.shape[-2:] == (5, 5) and f16.shape[-2:] == (10, 10)
    assert {k: v.shape for k, v in tiny.state_dict().items()} == {k: v.shape for k, v in s16.state_dict().items()}
    assert s16.spec()["arch"] == "cxr_tiny_s16"
    dilated = [m for m in s16.backbone.modules() if isinstance(m, torch.nn.Conv2d) and m.dilation == (2, 2)]
    assert len(dilated) == 2 and all(m.stride == (1, 1) for m in dilated)


def test_attention_head_maps_and_normal_head():
    model = create_model("resnet10t", 5, head="attention", normal_head=True).eval()
    with torch.inference_mode():
        out = model.forward_all(torch.randn(2, 1, 64, 64))
    b, f, h, w = out["features"].shape
    assert out["logits"].shape == (2, 5) and out["abnormal_logit"].shape == (2,)
    assert out["attention"].shape == (2, 5, h, w)
    torch.testing.assert_close(out["attention"].sum(dim=(2, 3)), torch.ones(2, 5))
    assert model.spec() == {"arch": "resnet10t", "num_classes": 5, "in_chans": 1, "head": "attention",
                            "normal_head": True, "drop_rate": 0.0}
    plain = create_model("resnet10t", 5).eval()
    with torch.inference_mode():
        o = plain.forward_all(torch.randn(2, 1, 64, 64))
    assert o["attention"] is None and o["abnormal_logit"] is None


def test_lse_head_pools_the_patch_logits_between_their_mean_and_their_max():
    """LSE pooling of the linear head's patch logits: near average pooling (the linear head's logit) for a small r,
    near the hottest cell for a large one, always between the two; r and the head round-trip through the spec."""
    torch.manual_seed(0)
    feats, weight, bias = torch.randn(3, 256, 5, 5), torch.randn(4, 256) * 0.1, torch.randn(4)
    logits = {}
    for r in (0.01, 5.0, 1e3):
        model = create_model("cxr_tiny", 4, head="lse", lse_r=r).eval()
        with torch.no_grad():
            model.head.fc.weight.copy_(weight)
            model.head.fc.bias.copy_(bias)
            logits[r], _ = model.head(feats)
        assert model.spec()["head"] == "lse" and model.spec()["lse_r"] == r
    w, b = model.head.fc.weight, model.head.fc.bias
    patch = torch.einsum("cf,bfhw->bchw", w, feats).flatten(2) + b[:, None]
    mean, peak = patch.mean(-1), patch.amax(-1)
    for r, got in logits.items():  # the definition, in float64
        p64 = patch.double()
        ref = torch.log(torch.exp(r * (p64 - p64.amax(-1, keepdim=True))).mean(-1)) / r + p64.amax(-1)
        torch.testing.assert_close(got.double(), ref, atol=1e-4, rtol=0)
    torch.testing.assert_close(logits[0.01], mean, atol=0.05, rtol=0)
    torch.testing.assert_close(logits[1e3], peak, atol=0.01, rtol=0)
    assert bool((logits[5.0] >= mean - 1e-5).all() and (logits[5.0] <= peak + 1e-5).all())
    assert bool((logits[5.0] > mean + 0.05).any())  # r = 5 really sharpens
    linear = create_model("cxr_tiny", 4).eval()
    linear.head.load_state_dict(model.head.state_dict())  # same weights, same names
    torch.testing.assert_close(linear.head(feats)[0], mean, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="r > 0"):
        create_model("cxr_tiny", 4, head="lse", lse_r=0.0)


def test_cam_of_an_lse_head_is_its_patch_logits():
    from cxrkit.explain.cam import maps_from_outputs, resolve_method

    model = create_model("cxr_tiny", 3, head="lse").eval()
    assert resolve_method(model, "auto") == "cam"
    with torch.inference_mode():
        out = model.forward_all(torch.rand(2, 1, 64, 64))
        cam = maps_from_outputs(model, out, "cam")
    expected = torch.relu(torch.einsum("cf,bfhw->bchw", model.head.fc.weight, out["features"]))
    torch.testing.assert_close(cam, expected)


def test_pretrained_torchvision_pth_into_densenet(tmp_path):
    from torchvision.models import densenet121

    ref = densenet121(weights=None)
    torch.save(ref.state_dict(), tmp_path / "densenet121.pth")
    model = create_model("densenet121", 14, pretrained=tmp_path / "densenet121.pth")
    ours = model.backbone.features.state_dict()
    theirs = ref.features.state_dict()
    # the RGB stem is summed over channels: exact for a grey image (R = G = B)
    torch.testing.assert_close(ours["conv0.weight"], theirs["conv0.weight"].sum(1, keepdim=True))
    for k in ("denseblock4.denselayer16.conv2.weight", "norm5.running_var", "denseblock1.denselayer1.norm1.weight"):
        assert torch.equal(ours[k], theirs[k])
    x = torch.rand(1, 1, 64, 64)
    with torch.inference_mode():
        grey = model.eval().backbone(x)
        rgb = torch.relu(ref.eval().features(x.expand(1, 3, 64, 64)))
    torch.testing.assert_close(grey, rgb, rtol=1e-4, atol=1e-4)


def test_pretrained_timm_safetensors(tmp_path):
    import timm
    from safetensors.torch import save_file

    ref = timm.create_model("resnet10t", pretrained=False, num_classes=1000)
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(tmp_path / "r.safetensors"))
    model = create_model("resnet10t", 3, pretrained=tmp_path / "r.safetensors")
    ours = model.backbone.model.state_dict()
    for k, v in ref.state_dict().items():
        if k.startswith("fc."):
            continue  # the ImageNet classifier is not part of the backbone
        expect = v.sum(1, keepdim=True) if k == "conv1.0.weight" else v
        assert torch.equal(ours[k], expect), k


def test_pretrained_cxr_tiny_file(tmp_path):
    from safetensors.torch import save_file

    src = create_model("cxr_tiny", 14)
    save_file(dict(src.backbone.state_dict()), str(tmp_path / "tiny.safetensors"))
    model = create_model("cxr_tiny", 3, pretrained=tmp_path / "tiny.safetensors")
    for k, v in src.backbone.state_dict().items():
        assert torch.equal(model.backbone.state_dict()[k], v), k


def test_pretrained_from_bundle_dir(tmp_path):
    from cxrkit.bundle import save_bundle

    src = create_model("resnet10t", 14)
    save_bundle(tmp_path / "b", src, label_names=[f"c{i}" for i in range(14)], input_size=64, mean=0.449, std=0.226)
    model = create_model("resnet10t", 2, pretrained=tmp_path / "b")
    for k, v in src.backbone.state_dict().items():
        assert torch.equal(model.backbone.state_dict()[k], v)


def test_pretrained_errors(tmp_path):
    with pytest.raises(PretrainedError, match="does not exist"):
        create_model("resnet10t", 14, pretrained=tmp_path / "missing.pth")
    import timm

    torch.save(timm.create_model("resnet10t").state_dict(), tmp_path / "resnet.pth")
    with pytest.raises(PretrainedError, match="right file"):
        create_model("densenet121", 14, pretrained=tmp_path / "resnet.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(PretrainedError, match="could not read"):
        create_model("resnet10t", 14, pretrained=tmp_path / "junk.pth")
    with pytest.raises(CxrError, match="unknown architecture"):
        create_model("resnet9000", 14)
    with pytest.raises(CxrError, match="num_classes"):
        create_model("resnet10t", 0)


def test_to_model_input_resizes_and_normalises():
    u8 = torch.full((2, 1, 32, 32), 255, dtype=torch.uint8)
    x = to_model_input(u8, 16, mean=0.5, std=0.25)
    assert x.shape == (2, 1, 16, 16) and x.dtype == torch.float32
    torch.testing.assert_close(x, torch.full_like(x, 2.0))
