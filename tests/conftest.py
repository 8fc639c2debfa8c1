"""Shared fixtures.

Tests read real files through ``shared_data``: the full reference data (``CXR_SHARED_DATA``, default
``../shared/data`` beside the checkout) when it is there, otherwise the small committed subset in
``tests/fixtures/reference`` (same layout; see its PROVENANCE.md), so a fresh clone runs the whole suite. The few
tests that need the full tables (all 421 films, the 112,120-row NIH table...) ask for ``full_reference_data`` and
are skipped, saying so, without it.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("CXR_SHARED_DATA", REPO.parent / "shared" / "data"))
FIXTURE_REFERENCE = REPO / "tests" / "fixtures" / "reference"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The reference data folder: the full one when present, else the committed subset laid out the same way."""
    return SHARED_DATA if SHARED_DATA.is_dir() else FIXTURE_REFERENCE


@pytest.fixture(scope="session")
def full_reference_data() -> Path:
    """The full reference data; the test is skipped (with how to get it) when only the committed subset is here."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"optional: needs the full reference data, not found at {SHARED_DATA} "
                    "(set CXR_SHARED_DATA to a copy; README 'Tests')")
    return SHARED_DATA


def pytest_collection_modifyitems(config, items):
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except Exception:
        has_cuda = False
    if not has_cuda:
        skip = pytest.mark.skip(reason="needs CUDA; run through the device tool")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)


@pytest.fixture(scope="session")
def make_tiny_bundle():
    """Factory: write a random-init bundle (resnet10t, 14 NIH findings, 64 px) to a folder and return its path.

    Small enough for fast tests; seeded inside ``fork_rng`` so the global torch RNG is left as it was.
    """

    def make(out: Path, arch: str = "resnet10t", size: int = 64, seed: int = 0) -> Path:
        import torch

        from cxrkit.bundle import save_bundle
        from cxrkit.data.labels import NIH_FINDINGS
        from cxrkit.models import create_model

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = create_model(arch, len(NIH_FINDINGS))
        return save_bundle(out, model, label_names=NIH_FINDINGS, input_size=size, preresize=size, mean=0.449,
                           std=0.226)

    return make
