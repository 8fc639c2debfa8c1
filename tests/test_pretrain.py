"""`cxr pretrain` (SimSiam) on tiny data: it learns, resumes exactly, reads folders of films, and its backbone file
initialises `cxr train --pretrained` (architecture and weights)."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch
from test_training import make_tiny_nih

from cxrkit.cli import main
from cxrkit.training.pretrain import BACKBONE_FILE, PretrainConfig, pretrain


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    from cxrkit.data.cache import prepare

    base = tmp_path_factory.mktemp("pre")
    prepare(make_tiny_nih(base / "nih", n=64, size=40), base / "cache", size=40, workers=1, progress=False)
    return base / "cache"


def _cfg(cache, out, **kw) -> PretrainConfig:
    args = dict(sources=[str(cache)], out=str(out), arch="cxr_tiny", image_size=32, epochs=2, batch_size=16,
                proj_dim=64, max_steps_per_epoch=2, num_threads=1, quiet=True, precision="fp32")
    args.update(kw)
    return PretrainConfig(**args)


def _weights(path):
    from safetensors.torch import load_file

    return load_file(str(path))


def test_pretrain_resumes_exactly_and_feeds_train(cache, tmp_path, capsys):
    straight = pretrain(_cfg(cache, tmp_path / "a"))
    assert straight.epochs_run == 2 and straight.backbone.is_file()
    history = [json.loads(x) for x in (tmp_path / "a" / "history.jsonl").read_text().splitlines()]
    assert len(history) == 2 and all(np.isfinite(h["loss"]) and h["collapse_std"] > 0 for h in history)
    # stopped after its first epoch, then resumed through the CLI: the same weights as the uninterrupted run
    assert pretrain(_cfg(cache, tmp_path / "b"), on_epoch=lambda record: True).epochs_run == 1
    main(["pretrain", str(cache), "--out", str(tmp_path / "b"), "--resume", "--quiet"])
    assert "backbone:" in capsys.readouterr().out
    a, b = _weights(straight.backbone), _weights(tmp_path / "b" / BACKBONE_FILE)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # a changed setting is refused on resume, with a short message
    with pytest.raises(SystemExit) as exc:
        main(["pretrain", str(cache), "--out", str(tmp_path / "b"), "--lr", "0.1", "--resume"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "cannot resume" in err and len(err.strip().splitlines()) == 1

    from cxrkit.models import create_model
    from cxrkit.training.config import resolve_config

    # the file names its architecture, so --pretrained alone is enough
    cfg = resolve_config(None, cache=str(cache), out=str(tmp_path / "t"), pretrained=str(straight.backbone))
    assert cfg.arch == "cxr_tiny"
    model = create_model("cxr_tiny", 3, pretrained=str(straight.backbone))
    own = model.backbone.state_dict()
    assert all(torch.equal(own[k.removeprefix("backbone.")], v) for k, v in a.items())


def test_pretrain_reads_a_folder_of_films(tmp_path):
    folder = tmp_path / "films"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(20):
        cv2.imwrite(str(folder / f"f{i}.png"), rng.integers(0, 255, (50, 40), dtype=np.uint8))
    (folder / "broken.png").write_bytes(b"not a png")
    result = pretrain(_cfg(folder, tmp_path / "run", epochs=1, batch_size=8, image_size=32))
    films = np.load(tmp_path / "run" / "films.npy")
    assert films.shape == (20, 32, 32) and result.n_films == 20 and result.backbone.is_file()
