"""Training batches from webdataset shards, deterministic per (seed, epoch, rank, worker) and
resumable mid-epoch without decoding what was already consumed.

Every rank yields exactly ``batches_per_epoch`` micro-batches per epoch (ranks that ran out of
shards would hang the collective otherwise): each (rank, worker) reads an endless shard stream,
either resampled with replacement (``data.resample``, the default) or its own slice of the shard
list reshuffled per pass, and stops after its share of batches. A batch is ``micro_batch`` good
samples; undecodable samples, empty captions and unreadable shards are skipped and counted.

Resume: each batch carries the number of raw samples its worker had consumed. The trainer stores
those in the checkpoint; a resumed worker fast-forwards that many raw samples (bytes only, no
decoding) through the same seeded shuffle, and the DataLoader's round-robin is rotated so batch k
of the resumed run is batch k of the uninterrupted one.
"""
from __future__ import annotations

import io
import random
import time
from dataclasses import dataclass, field

import torch
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from torchvision.transforms import v2 as T

from ..errors import InputError
from ..model.init import name_seed
from .mixture import in_buffer
from .shards import tar_samples

MEAN, STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")


def image_transform(size: int):
    """Resize the shorter side to ``size``, center crop, normalise (the paper: center crop only)."""
    return T.Compose([T.ToImage(), T.Resize(size, interpolation=T.InterpolationMode.BICUBIC, antialias=True),
                      T.CenterCrop(size), T.ToDtype(torch.float32, scale=True), T.Normalize(MEAN, STD)])


class DataStall(RuntimeError):
    """Too many undecodable samples in a row, or too long without a decoded one."""


def decode_sample(raw: dict, transform):
    """(image tensor, caption), or a string saying why the sample cannot be used. Never unpickles."""
    ext = next((e for e in IMAGE_EXTS if e in raw), None)
    if ext is None or "txt" not in raw:
        return f"no image ({'/'.join(IMAGE_EXTS)}) or no txt in the sample (keys: {sorted(raw)[:6]})"
    try:
        text = raw["txt"].decode("utf-8").strip()
        with Image.open(io.BytesIO(raw[ext])) as im:
            img = transform(im.convert("RGB"))
    except Exception as e:  # noqa: BLE001 - any undecodable sample is skipped and counted
        return f"{type(e).__name__}: {str(e)[:200]}"
    return (img, text) if text else "empty caption"


@dataclass
class Liveness:
    """Bounds on a stream that yields nothing usable: ``max_bad_in_row`` undecodable samples in a
    row, or ``max_idle_s`` seconds without a decoded sample (0 disables either)."""

    max_bad_in_row: int = 1000
    max_idle_s: float = 600.0

    def check(self, bad_in_row: int, idle_s: float, url: str, reason: str) -> None:
        if (self.max_bad_in_row and bad_in_row >= self.max_bad_in_row) or (self.max_idle_s and idle_s >= self.max_idle_s):
            raise DataStall(f"{bad_in_row} undecodable samples in a row and {idle_s:.0f} s without a usable one "
                            f"(data.max_bad_in_row, data.max_idle_minutes); last from shard {url}: {reason}. "
                            "Check these shards (e.g. open one image with PIL) or remove them from the manifest")


class _Counter:
    def __init__(self):
        self.bad_shards = 0

    def handler(self, exn: Exception) -> bool:
        self.bad_shards += 1
        return True  # skip the rest of that shard and go on


@dataclass
class EpochPlan:
    """What one rank reads in one epoch; ``raw_done[role]`` is the resume point of each worker role."""

    shards: list
    seed: int
    epoch: int
    rank: int
    world: int
    micro_batch: int
    batches: int
    num_workers: int = 0
    resample: bool = True
    shuffle_buffer: int = 256
    start_batch: int = 0
    raw_done: list = field(default_factory=list)
    stream_tag: str = ""        # set after a resume at another world size: fresh per-rank streams
    sources: list = field(default_factory=list)   # replay mixture: [(shards, weight, keep)]; empty: ``shards``
    exclude: frozenset = frozenset()   # held-out keys (the manifest's evaluation samples): never yielded
    liveness: Liveness = field(default_factory=Liveness)


class ShardStream(IterableDataset):
    def __init__(self, plan: EpochPlan, transform, tokenize):
        self.plan, self.transform, self.tokenize = plan, transform, tokenize

    def _shard_urls(self, rng: random.Random, role: int, roles: int, idle: dict, shards: list):
        """Endless shard stream; raises if 2 x (number of shards) + 8 shards in a row gave no sample."""
        p = self.plan
        mine = shards if p.resample else shards[p.rank * roles + role:: p.world * roles]
        if not mine:
            raise InputError(f"data.resample=false needs at least world_size x num_workers = "
                             f"{p.world * roles} shards, the data has {len(shards)}; set data.resample=true")
        while True:
            order = [rng.choice(mine) for _ in mine] if p.resample else rng.sample(mine, len(mine))
            for s in order:
                idle["shards"] += 1
                if idle["shards"] > 2 * len(mine) + 8:
                    raise RuntimeError(f"no readable sample in {idle['shards'] - 1} shard reads in a row "
                                       f"(first shard: {mine[0]}); check the shards' integrity")
                yield s

    def _raw_samples(self, rng: random.Random, role: int, roles: int, counter: _Counter, shards: list,
                     keep: float = 1.0):
        idle = {"shards": 0}
        urls = self._shard_urls(rng, role, roles, idle, shards)
        src = tar_samples(urls, handler=counter.handler)
        buf, size = [], max(1, self.plan.shuffle_buffer)
        for s in src:
            if s.get("__key__") in self.plan.exclude:
                continue
            if keep < 1 and not in_buffer(s.get("__key__", ""), keep, self.plan.seed):
                continue
            idle["shards"] = 0
            buf.append(s)
            if len(buf) >= size:
                i = rng.randrange(len(buf))
                buf[i], buf[-1] = buf[-1], buf[i]
                yield buf.pop()

    def __iter__(self):
        p = self.plan
        info = get_worker_info()
        wid, roles = (0, 1) if info is None else (info.id, info.num_workers)
        role = (p.start_batch + wid) % roles            # rotate so global batch order is preserved
        first = p.start_batch + wid                     # global batch indices this worker yields
        my_batches = len(range(first, p.batches, roles))
        rng = random.Random(name_seed(p.seed, f"data/e{p.epoch}/r{p.rank}/w{role}{p.stream_tag}"))
        counter, raw, bad = _Counter(), 0, 0
        stream = self._mixture(rng, role, roles, counter) if p.sources else \
            self._raw_samples(rng, role, roles, counter, p.shards)
        skip = p.raw_done[role] if p.raw_done else 0
        for _ in range(skip):
            next(stream)
        raw = skip
        bad_in_row, last_good = 0, time.monotonic()
        for _ in range(my_batches):
            imgs, texts, keys, srcs = [], [], [], []
            while len(imgs) < p.micro_batch:
                item = next(stream)
                sample = decode_sample(item, self.transform)
                raw += 1
                if isinstance(sample, str):
                    bad += 1
                    bad_in_row += 1
                    p.liveness.check(bad_in_row, time.monotonic() - last_good, item.get("__url__", "?"), sample)
                    continue
                bad_in_row, last_good = 0, time.monotonic()
                imgs.append(sample[0])
                texts.append(sample[1])
                keys.append(item.get("__key__", ""))
                srcs.append(item.get("__source__", 0))
            yield {"images": torch.stack(imgs), "tokens": self.tokenize(texts), "role": role, "raw_done": raw,
                   "bad_samples": bad, "bad_shards": counter.bad_shards, "keys": keys,
                   "sources": torch.tensor(srcs)}

    def _mixture(self, rng: random.Random, role: int, roles: int, counter: _Counter):
        """Raw samples of a replay mixture: each one from source s with probability weight_s."""
        p = self.plan
        streams = [self._raw_samples(random.Random(name_seed(p.seed, f"data/e{p.epoch}/r{p.rank}/w{role}"
                                                                    f"{p.stream_tag}/src{i}")),
                                     role, roles, counter, shards, keep)
                   for i, (shards, _, keep) in enumerate(p.sources)]
        weights = [w for _, w, _ in p.sources]
        while True:
            i = rng.choices(range(len(streams)), weights)[0]
            item = next(streams[i])
            item["__source__"] = i
            yield item


def make_loader(plan: EpochPlan, image_size: int, tokenize) -> DataLoader:
    ds = ShardStream(plan, image_transform(image_size), tokenize)
    return DataLoader(ds, batch_size=None, num_workers=plan.num_workers,
                      persistent_workers=False, prefetch_factor=4 if plan.num_workers else None)


def first_samples(shards: list, n: int, image_size: int, tokenize, exclude: frozenset = frozenset()) -> dict:
    """The first ``n`` decodable training samples of ``shards`` in file order (held-out keys skipped),
    as one batch: a fixed batch that every rank and every run reads identically (what growth is
    measured on before training)."""
    tf, imgs, texts = image_transform(image_size), [], []
    for raw in tar_samples(shards):
        if raw.get("__key__") in exclude:
            continue
        sample = decode_sample(raw, tf)
        if not isinstance(sample, str):
            imgs.append(sample[0])
            texts.append(sample[1])
        if len(imgs) == n:
            break
    if not imgs:
        raise RuntimeError(f"no decodable sample in {len(shards)} shards (first: {shards[0] if shards else None})")
    return {"images": torch.stack(imgs), "tokens": tokenize(texts)}
