"""The prepared cache: identical pixels, reuse, invalidation, resume, refusal of a foreign folder."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from chexcut.data.batches import XrayBatches, batch_order
from chexcut.data.cache import open_cache, prepare_cache
from chexcut.data.images import load_image
from chexcut.data.phantom import make_phantom
from chexcut.data.tables import load_split
from chexcut.errors import ChexcutError


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    d = tmp_path_factory.mktemp("ph")
    make_phantom(d, n=60, image_size=48, seed=0)
    return d


def test_cache_matches_decode_and_is_reused(phantom, tmp_path):
    t = load_split(phantom, "all")
    cache, stats = prepare_cache(t.files, 32, folder=tmp_path / "c", workers=2)
    assert stats["decoded"] == len(set(map(str, t.files)))
    ds_cache = XrayBatches(t, 32, cache=cache)
    ds_file = XrayBatches(t, 32)
    rows = [5, 1, 9, 0]
    a, b = ds_cache[rows], ds_file[rows]
    assert a[0].shape == (4, 1, 32, 32) and a[0].dtype.is_floating_point is False
    assert np.array_equal(a[0].numpy(), b[0].numpy())
    assert np.array_equal(a[1].numpy(), t.targets[rows])
    again, stats2 = prepare_cache(t.files, 32, folder=tmp_path / "c")
    assert stats2["decoded"] == 0
    assert open_cache(t.files, 32, "squash", tmp_path / "c") is not None


def test_other_settings_are_never_misused(phantom, tmp_path):
    t = load_split(phantom, "all")
    prepare_cache(t.files, 32, folder=tmp_path / "c", workers=1)
    with pytest.raises(ChexcutError, match="other settings"):
        open_cache(t.files, 40, "squash", tmp_path / "c")
    assert open_cache(t.files, 32, "pad", None) is None  # default location: just not there
    # touching a file changes the fingerprint: the old cache no longer matches
    import os
    st = os.stat(t.files[0])
    os.utime(t.files[0], ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    with pytest.raises(ChexcutError, match="other settings"):
        open_cache(t.files, 32, "squash", tmp_path / "c")
    cache, stats = prepare_cache(t.files, 32, folder=tmp_path / "c", workers=1)  # prepare rebuilds it
    assert stats["decoded"] > 0


def test_resume_after_interruption(phantom, tmp_path):
    t = load_split(phantom, "all")
    calls = []

    def boom(done, total):
        calls.append(done)
        if done >= 32:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        prepare_cache(t.files, 32, folder=tmp_path / "c", workers=1, progress=boom, chunk=16)
    meta = json.loads((tmp_path / "c" / "index.json").read_text())
    assert meta["complete"] is False
    cache, stats = prepare_cache(t.files, 32, folder=tmp_path / "c", workers=1)
    assert stats["reused"] == 32 and stats["decoded"] == len(cache.paths) - 32
    ref = load_image(cache.paths[40], 32, "squash")
    assert np.array_equal(cache.images[40], ref)


def test_bad_image_named_or_skipped(phantom, tmp_path):
    t = load_split(phantom, "all")
    import shutil
    d = tmp_path / "copy"
    shutil.copytree(phantom, d)
    t = load_split(d, "all")
    Path(t.files[3]).write_bytes(b"garbage")
    with pytest.raises(ChexcutError, match=Path(t.files[3]).name):
        prepare_cache(t.files, 32, folder=tmp_path / "c1", workers=1)
    cache, stats = prepare_cache(t.files, 32, folder=tmp_path / "c2", workers=1, skip_bad=True)
    assert stats["bad"] == [str(t.files[3])]


def test_batch_order_is_seeded_and_sharded():
    a = batch_order(10, 4, True, 0, 1)
    assert a == batch_order(10, 4, True, 0, 1) and a != batch_order(10, 4, True, 0, 2)
    assert sorted(sum(a, [])) == list(range(10))
    r0 = batch_order(10, 2, True, 0, 0, rank=0, world=2)
    r1 = batch_order(10, 2, True, 0, 0, rank=1, world=2)
    assert len(r0) == len(r1) and set(sum(r0, [])) | set(sum(r1, [])) == set(range(10))


def test_cached_batch_loader_matches_the_dataset(phantom, tmp_path):
    from chexcut.data.batches import CachedBatchLoader

    t = load_split(phantom, "all")
    cache, _ = prepare_cache(t.files, 32, folder=tmp_path / "c", workers=1)
    ds = XrayBatches(t, 32, cache=cache)
    batches = batch_order(len(ds), 7, True, 0, 0)
    got = list(CachedBatchLoader(ds, batches, threads=3, depth=2))
    assert len(got) == len(batches)
    for b, (x, y, m, rows) in zip(batches, got):
        ref = ds[b]
        assert rows.tolist() == b
        assert torch.equal(x, ref[0]) and torch.equal(y, ref[1]) and torch.equal(m, ref[2])
    # stopping early is fine (no hang), and the loader can be iterated again
    for i, _ in enumerate(CachedBatchLoader(ds, batches, threads=2)):
        if i == 1:
            break
    assert len(list(CachedBatchLoader(ds, batches))) == len(batches)
