"""The node's TOML configuration, destinations, and the runtime choice (no network, no model runs)."""
from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cxrkit.deploy.dicom.config import Destination, NodeConfigError, build_config

AET_CHARS = st.characters(min_codepoint=0x21, max_codepoint=0x7E, blacklist_characters="\\@")


@given(aet=st.text(AET_CHARS, min_size=1, max_size=16), port=st.integers(1, 65535),
       host=st.sampled_from(["127.0.0.1", "pacs.example.org", "[::1]", "localhost"]))
def test_destination_round_trip(aet, port, host):
    d = Destination.parse(f"{aet}@{host}:{port}")
    assert (d.ae_title, d.port) == (aet, port)
    assert Destination.parse(str(d)).host == d.host


@pytest.mark.parametrize("text", ["PACS", "PACS@host", "@host:104", "PACS@host:0", "PACS@host:70000",
                                  "A_VERY_LONG_AE_TITLE_X@h:104", "PA\\CS@h:104"])
def test_bad_destinations_name_the_format(text):
    with pytest.raises(NodeConfigError, match="AET@HOST:PORT"):
        Destination.parse(text)


def test_toml_file_then_flags(tmp_path):
    f = tmp_path / "node.toml"
    f.write_text('[node]\nae_title = "SITE_AI"\nport = 4000\ndestinations = ["PACS@10.0.0.5:104"]\n'
                 'settle_seconds = 2\nurgent_findings = ["Pneumothorax", "Effusion"]\nretention = "keep"\n')
    cfg = build_config(f, port=5000)
    assert (cfg.ae_title, cfg.port, cfg.settle_seconds, cfg.retention) == ("SITE_AI", 5000, 2.0, "keep")
    assert [str(d) for d in cfg.destinations] == ["PACS@10.0.0.5:104"]
    assert cfg.urgent_findings == ("Pneumothorax", "Effusion")
    top = tmp_path / "top.toml"
    top.write_text('port = 4001\n')  # top-level keys work too
    assert build_config(top).port == 4001


@pytest.mark.parametrize("body, key", [
    ('prot = 4000', "unknown key"), ('port = "x"', "port"), ('port = 0', "port"), ('settle_seconds = -1', "settle"),
    ('max_attempts = 2.5', "max_attempts"), ('heatmaps = "yes"', "heatmaps"), ('retention = "forever"', "retention"),
    ('ae_title = "WAY_TOO_LONG_AE_TITLE"', "ae_title"), ('webhook_url = "ftp://x"', "webhook_url"),
    ('destinations = "nonsense"', "AET@HOST:PORT"), ('port = [', "not valid TOML")])
def test_bad_config_names_the_key(tmp_path, body, key):
    f = tmp_path / "bad.toml"
    f.write_text(body + "\n")
    with pytest.raises(NodeConfigError, match=key):
        build_config(f)


def test_missing_config_file(tmp_path):
    with pytest.raises(NodeConfigError, match="not found"):
        build_config(tmp_path / "nope.toml")


def test_runtime_choice(tmp_path, make_tiny_bundle):
    from cxrkit.bundle.format import read_bundle_config, write_bundle_config
    from cxrkit.deploy.runtime import choose_runtime

    bundle = make_tiny_bundle(tmp_path / "b")
    assert choose_runtime(bundle).backend == "torch"  # nothing exported
    assert choose_runtime(bundle, backend="onnx").backend == "onnx"  # asked for: kept
    (bundle / "model.onnx").write_bytes(b"")  # presence is what the choice looks at
    (bundle / "model.int8.onnx").write_bytes(b"")
    choice = choose_runtime(bundle)
    assert choice.backend in ("openvino", "onnx") and choice.precision == "fp32"  # INT8 not verified: not taken
    cfg = read_bundle_config(bundle)
    cfg["export"] = {"int8": {"auroc_change": -0.001}}
    write_bundle_config(bundle, cfg)
    assert choose_runtime(bundle).precision == "int8"
    cfg["export"] = {"int8": {"auroc_change": -0.02}}
    write_bundle_config(bundle, cfg)
    assert choose_runtime(bundle).precision == "fp32"
    assert choose_runtime(bundle, device="cuda").backend == "torch"
