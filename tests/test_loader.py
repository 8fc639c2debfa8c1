"""CacheLoader: coverage per epoch, determinism, DDP shards, batch contents, early exit, errors."""
from __future__ import annotations

import threading

import cv2
import numpy as np
import pytest
import torch

from cxrkit.data.cache import open_cache, prepare
from cxrkit.data.errors import CxrError
from cxrkit.data.loader import CacheLoader

N = 37  # prime: no batch size or world size divides it


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("loader")
    src = root / "nih"
    (src / "images").mkdir(parents=True)
    lines = ["Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
             "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]"]
    for i in range(N):
        name = f"{i:08d}_000.png"
        cv2.imwrite(str(src / "images" / name), np.full((24, 24), i * 6, np.uint8))  # pixel value encodes the row
        lines.append(f"{name},{'Effusion' if i % 3 else 'No Finding'},0,{i},50,M,PA,24,24,0.1,0.1")
    (src / "Data_Entry_2017.csv").write_text("\n".join(lines) + "\n")
    prepare(src, root / "cache", size=16, workers=1, progress=False)
    return open_cache(root / "cache")


def collect(loader: CacheLoader) -> tuple[list[np.ndarray], np.ndarray]:
    batches = [rows.numpy() for _, _, rows in loader]
    return batches, np.concatenate(batches) if batches else np.zeros(0, np.int64)


def test_every_row_once_per_epoch_and_batches_hold_the_right_data(cache):
    loader = CacheLoader(cache, None, 8, shuffle=True, seed=3)
    assert len(loader) == 5
    seen = []
    for images, labels, rows in loader:
        assert images.dtype == torch.uint8 and images.shape[1:] == (1, 16, 16)
        assert labels.dtype == torch.float32 and labels.shape == (len(rows), len(cache.label_names))
        assert rows.dtype == torch.int64 and (np.diff(rows.numpy()) > 0).all()  # sorted for the memmap
        assert torch.equal(images[:, 0], torch.from_numpy(np.asarray(cache.images[rows.numpy()])))
        assert np.array_equal(labels.numpy(), cache.labels(rows.numpy()), equal_nan=True)
        seen.append(rows.numpy())
    seen = np.concatenate(seen)
    assert sorted(seen) == list(range(N))
    # the pixels really are the rows' images (value i * 6 written for row i, order kept by prepare)
    images, _, rows = next(iter(CacheLoader(cache, [4, 9], 2)))
    assert images[:, 0, 8, 8].tolist() == [24, 54] and rows.tolist() == [4, 9]


def test_deterministic_for_seed_and_epoch(cache):
    a = CacheLoader(cache, None, 8, shuffle=True, seed=1)
    b = CacheLoader(cache, None, 8, shuffle=True, seed=1)
    for epoch in (0, 1):
        a.set_epoch(epoch)
        b.set_epoch(epoch)
        assert np.array_equal(collect(a)[1], collect(b)[1])
    a.set_epoch(0)
    e0 = collect(a)[1]
    a.set_epoch(1)
    assert not np.array_equal(e0, collect(a)[1])
    c = CacheLoader(cache, None, 8, shuffle=True, seed=2)
    assert not np.array_equal(e0, collect(c)[1])
    plain = collect(CacheLoader(cache, None, 8))[1]
    assert plain.tolist() == list(range(N))


@pytest.mark.parametrize("world_size", [2, 3, 4])
def test_ddp_shards_are_disjoint_equal_and_cover(cache, world_size):
    rows = cache.rows("train")
    shares = []
    for rank in range(world_size):
        loader = CacheLoader(cache, rows, 4, shuffle=True, seed=7, rank=rank, world_size=world_size)
        loader.set_epoch(2)
        shares.append(collect(loader)[1])
        assert len(loader) == -(-len(shares[-1]) // 4)
    per_rank = -(-len(rows) // world_size)
    assert all(len(s) == per_rank for s in shares)  # equal size: every rank steps the same number of times
    allrows = np.concatenate(shares)
    assert set(allrows) == set(rows)  # covering
    pad = per_rank * world_size - len(rows)
    assert len(allrows) - len(set(allrows)) == pad  # disjoint apart from DistributedSampler-style padding
    # like DistributedSampler: one permutation per epoch, padded with its head, dealt round-robin
    one = CacheLoader(cache, rows, 4, shuffle=True, seed=7)
    one.set_epoch(2)
    padded = np.concatenate([one.epoch_rows(), one.epoch_rows()[:pad]])
    for rank, share in enumerate(shares):
        assert sorted(share) == sorted(padded[rank::world_size])


def test_drop_last_and_subset_rows(cache):
    rows = np.array([3, 1, 30, 2, 7], dtype=np.int64)
    loader = CacheLoader(cache, rows, 2, drop_last=True)
    batches, got = collect(loader)
    assert len(loader) == 2 and [len(b) for b in batches] == [2, 2]
    assert got.tolist() == [1, 3, 2, 30]
    assert collect(CacheLoader(cache, [], 4))[1].size == 0


def test_breaking_early_stops_the_prefetch_thread(cache):
    before = threading.active_count()
    for _ in range(3):
        for _batch in CacheLoader(cache, None, 2, prefetch=2):
            break
    assert threading.active_count() == before


def test_errors_surface_in_the_consumer(cache):
    loader = CacheLoader(cache, None, 4)
    loader._labels = np.zeros((1, 1), np.float32)  # a broken gather must raise here, not hang the thread
    with pytest.raises(IndexError):
        list(loader)
    with pytest.raises(CxrError, match="row numbers"):
        CacheLoader(cache, [N], 4)
    with pytest.raises(CxrError, match="rank"):
        CacheLoader(cache, None, 4, rank=2, world_size=2)
    if not torch.cuda.is_available():
        with pytest.raises(CxrError, match="CUDA"):
            CacheLoader(cache, None, 4, pin_memory=True)


@pytest.mark.gpu
def test_cuda_pinned_double_buffer(cache):
    loader = CacheLoader(cache, None, 4, shuffle=True, seed=0, device="cuda")
    assert loader.pin_memory
    seen = []
    for images, labels, rows in loader:
        assert images.is_cuda and labels.is_cuda
        assert torch.equal(images[:, 0].cpu(), torch.from_numpy(np.asarray(cache.images[rows.numpy()])))
        seen.append(rows.numpy())
    assert sorted(np.concatenate(seen)) == list(range(N))

