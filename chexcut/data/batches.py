"""Batches of (uint8 images, targets, mask) for training and inference.

The dataset is indexed by *batches* (lists of row indices), so reading the prepared cache is
one fancy-indexed memmap copy per batch instead of one Python call per image; without a cache,
each image of the batch is decoded from its file.
"""

from __future__ import annotations

import contextlib
import signal

import numpy as np
import torch

from chexcut.data.cache import ImageCache
from chexcut.data.images import load_image
from chexcut.data.tables import LabelTable
from chexcut.errors import ChexcutError


class XrayBatches(torch.utils.data.Dataset):
    """``ds[[i, j, ...]] -> (uint8 (B, 1, S, S), targets (B, L), mask (B, L), rows (B,))``."""

    def __init__(self, table: LabelTable, image_size: int, resize: str = "squash", cache: ImageCache | None = None):
        self.table = table
        self.image_size = image_size
        self.resize = resize
        self.cache = cache
        self.cache_rows = cache.rows(table.files) if cache is not None else None
        self.targets = torch.from_numpy(table.targets)
        self.mask = torch.from_numpy(table.mask)

    def __len__(self) -> int:
        return len(self.table)

    def __getitem__(self, rows):
        rows = np.asarray(rows, dtype=np.int64)
        if self.cache is not None:
            cr = self.cache_rows[rows]
            order = np.argsort(cr, kind="stable")  # sequential memmap reads
            images = np.empty((len(rows), self.image_size, self.image_size), dtype=np.uint8)
            images[order] = self.cache.images[cr[order]]
        else:
            images = np.stack([load_image(self.table.files[i], self.image_size, self.resize) for i in rows])
        idx = torch.from_numpy(rows)
        return torch.from_numpy(images).unsqueeze(1), self.targets[idx], self.mask[idx], idx


def batch_order(n: int, batch_size: int, shuffle: bool, seed: int, epoch: int, drop_last: bool = False,
                rank: int = 0, world: int = 1) -> list[list[int]]:
    """The batches of one epoch: a permutation seeded by (seed, epoch), split across ranks.

    Deterministic, so a resumed run replays exactly the batches it would have seen.
    """
    if shuffle:
        g = np.random.default_rng([seed, epoch])
        perm = g.permutation(n)
    else:
        perm = np.arange(n)
    if world > 1:  # pad to a multiple of world so every rank takes the same number of steps
        total = -(-n // world) * world
        perm = np.concatenate([perm, perm[: total - n]])
        perm = perm[rank::world]
    batches = [perm[i:i + batch_size].tolist() for i in range(0, len(perm), batch_size)]
    if drop_last and batches and len(batches[-1]) < batch_size:
        batches.pop()
    return batches


def ignore_stop_signals(_worker_id: int = 0) -> None:
    """In a decoding worker: SIGTERM and SIGINT are for the main process. Slurm's scancel, a time limit,
    torchrun and ``kill -TERM -PGID`` signal the whole process group; a worker killed by it would turn the
    main process's orderly stop (checkpoint, exit 143) into a crash. Workers end with their parent."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)  # blocked since its start: now ignored, a pending one
    # is dropped


STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}


@contextlib.contextmanager
def stop_signals_blocked():
    """While decoding workers start (main thread): SIGTERM and SIGINT are held, so a worker inherits them blocked
    and never dies of one before :func:`ignore_stop_signals` runs in it (a signal to the process group in that
    window crashed the run with "DataLoader worker ... killed by signal" instead of a checkpoint). The main
    process gets a held signal when the block ends."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def make_loader(ds: XrayBatches, batches, workers: int | None, pin: bool, persistent: bool = False, seed: int = 0):
    """Batches of ``ds`` in the given order: threads over the cache when there is one, else a
    DataLoader with ``workers`` decoding processes (batch_size=None: the dataset builds each batch; None: the
    default for the CPUs this process may use).

    ``batches`` is any iterable of row lists, re-read at every ``iter()`` (a
    :class:`chexcut.training.session.MutableBatches` changes per epoch). ``persistent`` keeps decoding processes
    alive across epochs; their own generator (``seed``) means making an iterator never consumes the
    global RNG, so a resumed run replays the same random stream."""
    from chexcut.data.cpus import resolve_workers

    workers = resolve_workers(workers)
    if ds.cache is not None:
        return CachedBatchLoader(ds, batches, pin=pin, threads=max(2, min(workers, 8)))
    kw = {}
    if workers > 0:
        kw = {"num_workers": workers, "persistent_workers": persistent, "prefetch_factor": 4,
              "worker_init_fn": ignore_stop_signals}
    return DecodingLoader(ds, batch_size=None, sampler=batches, pin_memory=pin,
                          generator=torch.Generator().manual_seed(seed), **kw)


def worker_error(e: BaseException) -> BaseException:
    """A decoding worker's error as the main process should raise it: PyTorch re-raises a worker's
    ChexcutError as ``ChexcutError("Caught ChexcutError in DataLoader worker process 0. Original Traceback
    ...")``; the user's line is its last one."""
    text = str(e)
    if isinstance(e, ChexcutError) and text.startswith("Caught ChexcutError in DataLoader worker"):
        last = [ln for ln in text.strip().splitlines() if ln.strip()][-1]
        return ChexcutError(last.split("ChexcutError: ", 1)[-1])
    return e


def _stop(loader, it) -> None:
    """Shut down iterator ``it``'s decoding workers; a persistent loader forgets it (it would hand the stopped
    workers out again)."""
    shutdown = getattr(it, "_shutdown_workers", None)
    if shutdown is not None:
        shutdown()
    if getattr(loader, "_iterator", None) is it:
        loader._iterator = None


def stop_workers(*loaders) -> None:
    """Shut down the decoding workers of these loaders now (persistent ones included): a command that ends, in
    error or not, never leaves a worker for the interpreter's exit to wait on."""
    for loader in loaders:
        it = getattr(loader, "_iterator", None)
        if it is not None:
            _stop(loader, it)


class DecodingLoader(torch.utils.data.DataLoader):
    """A DataLoader whose worker errors end the command: the worker's one line is raised (not its traceback),
    and the workers are shut down first. Without that, the exit hangs: at interpreter exit multiprocessing
    terminates daemonic workers with SIGTERM, which decoding workers ignore (:func:`ignore_stop_signals`), then
    joins them for ever."""

    def __iter__(self):
        with stop_signals_blocked():  # the workers start here (the first epoch of a persistent loader)
            it = super().__iter__()
        try:
            yield from it
        except GeneratorExit:  # the consumer stopped early (max steps): persistent workers stay for the next epoch
            raise
        except BaseException as e:
            _stop(self, it)
            error = worker_error(e)
            if error is e:
                raise
            raise error from None


class CachedBatchLoader:
    """Batches straight from the prepared cache, gathered by a few threads into (pinned) tensors.

    No worker processes: each image is copied from the memmap directly into the tensor the device
    copy reads from, so each batch is copied once on the host instead of three
    times (worker -> shared memory -> main -> pinned). ``batches`` is any iterable of row lists,
    re-read at every ``iter()`` (so a :class:`chexcut.training.session.MutableBatches` works across epochs).
    Batches come out in order; ``depth`` of them are prepared ahead.
    """

    def __init__(self, ds: XrayBatches, batches, pin: bool = False, threads: int = 4, depth: int = 6):
        if ds.cache is None:
            raise ValueError("CachedBatchLoader needs a dataset backed by the image cache")
        self.ds, self.batches, self.pin = ds, batches, pin
        self.threads, self.depth = max(1, threads), max(1, depth)

    def __len__(self) -> int:
        return len(self.batches)

    def load(self, rows):
        ds = self.ds
        rows = np.asarray(rows, dtype=np.int64)
        s = ds.image_size
        images = torch.empty((len(rows), 1, s, s), dtype=torch.uint8, pin_memory=self.pin)
        out, src = images.numpy(), ds.cache.images
        for j, r in enumerate(ds.cache_rows[rows]):  # one contiguous memcpy per image: faster than np.take
            out[j, 0] = src[r]
        idx = torch.from_numpy(rows)
        return images, ds.targets[idx], ds.mask[idx], idx

    def __iter__(self):
        from collections import deque
        from concurrent.futures import ThreadPoolExecutor

        todo = iter(list(self.batches))
        with ThreadPoolExecutor(self.threads) as pool:
            pending = deque(pool.submit(self.load, b) for _, b in zip(range(self.depth), todo))
            try:
                while pending:
                    f = pending.popleft()
                    nxt = next(todo, None)
                    if nxt is not None:
                        pending.append(pool.submit(self.load, nxt))
                    yield f.result()
            finally:
                for f in pending:
                    f.cancel()
