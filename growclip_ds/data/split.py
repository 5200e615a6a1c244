"""Turn a user's img2dataset folder into a growing corpus: steps, held-out sets, a tokenizer.

    growclip-ds data split SHARDS --steps 4                  # random equal split, shard by shard
    growclip-ds data split SHARDS --steps 4 --sizes 4,2,1,1  # unequal steps (relative sizes)
    growclip-ds data split SHARDS --by year [--steps 3]      # TiC-CLIP: steps from a column, oldest first

What it writes, all under SHARDS (the user's files are only read, never changed):
- ``manifest.parquet``: shard -> step, its number of training samples, and the keys held out of it;
- ``eval/test/retrieval`` and ``eval/selection/retrieval``: two disjoint held-out retrieval sets
  (the same number of pairs from each step, ``json`` "step" set), never trained on: the loader
  skips every held-out key. The test set is reported; the selection set is where GAS and Patching
  choose. ``eval/sets.json`` lists them;
- ``tokenizer/``: a BPE trained on step 1's training captions (unless one is there or ``--no-tokenizer``);
- with ``--by``, shards whose samples fall into several steps are regrouped into step-pure copies
  under ``regrouped/`` (pure shards are used as they are).
"""
from __future__ import annotations

import contextlib
import json
import random
import tarfile
from pathlib import Path

import pyarrow.parquet as pq
from tqdm import tqdm

from ..errors import InputError
from ..eval import sets as evalsets
from ..fileio import atomic_path
from .manifest import Manifest, ShardEntry
from .shards import tar_samples
from .tokenizer import train_bpe

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")


def shard_rows(tar: Path, column: str | None = None) -> list[dict]:
    """(key, caption[, column]) of each successful sample of a shard: from img2dataset's parquet when
    present, else by reading the tar (json for the column, txt for the caption)."""
    pq_path = tar.with_suffix(".parquet")
    if pq_path.exists():
        t = pq.read_table(pq_path)
        if column and column not in t.column_names:
            raise InputError(f"{pq_path}: no column {column!r} (columns: {', '.join(t.column_names)}); "
                             f"img2dataset writes extra columns with --save_additional_columns '[\"{column}\"]'")
        rows = t.to_pylist()
        return [{"key": r["key"], "caption": r.get("caption") or "", "value": r.get(column) if column else None}
                for r in rows if r.get("status", "success") == "success"]
    out = []
    for s in tar_samples([tar]):
        if not any(e in s for e in IMAGE_EXTS):
            continue
        meta = json.loads(s["json"]) if "json" in s else {}
        if column and column not in meta:
            raise InputError(f"{tar}: sample {s['__key__']!r} has no {column!r} in its json")
        out.append({"key": s["__key__"], "caption": s.get("txt", b"").decode("utf-8", "replace"),
                    "value": meta.get(column) if column else None})
    return out


def steps_by_weight(sizes: list[int], weights: list[float], seed: int) -> list[int]:
    """Random split of shards (with ``sizes`` samples) into len(weights) steps of relative sizes
    ``weights``: shards in a seeded order, each to the step its sample midpoint falls in."""
    order = list(range(len(sizes)))
    random.Random(seed).shuffle(order)
    total, bounds, acc = sum(sizes), [], 0.0
    for w in weights:
        acc += w / sum(weights)
        bounds.append(acc)
    step, done = [0] * len(sizes), 0
    for i in order:
        mid = (done + sizes[i] / 2) / total
        step[i] = 1 + next(k for k, b in enumerate(bounds) if mid <= b + 1e-12)
        done += sizes[i]
    return step


def steps_by_value(values: list, num_steps: int | None) -> dict:
    """Map each distinct value (sorted: oldest first) to a step: one step per value, or ``num_steps``
    groups of consecutive values of about equal sample counts (a value is never split)."""
    counts: dict = {}
    for v in values:
        counts[v] = counts.get(v, 0) + 1
    distinct = sorted(counts)
    if num_steps is None:
        return {v: i + 1 for i, v in enumerate(distinct)}
    if num_steps > len(distinct):
        raise InputError(f"--steps {num_steps}: the column has only {len(distinct)} distinct values "
                         f"({distinct[:8]}); use --steps {len(distinct)} or fewer")
    out, before, total = {}, 0, len(values)
    for v in distinct:
        out[v] = min(num_steps, 1 + int(num_steps * (before + counts[v] / 2) / total))
        before += counts[v]
    used = sorted(set(out.values()))
    if used != list(range(1, num_steps + 1)):   # a dominant value swallowed a step: renumber densely
        remap = {s: i + 1 for i, s in enumerate(used)}
        out = {v: remap[s] for v, s in out.items()}
    return out


def _regroup(tar: Path, step_of_key: dict, out_dir: Path) -> list[tuple[Path, int, int]]:
    """Copy a mixed shard's samples into one shard per step, each written atomically; [(path, step, samples)]."""
    writers, counts = {}, {}
    with contextlib.ExitStack() as open_shards:   # closes each tar, then renames it into place (or removes it)
        for s in tar_samples([tar]):
            t = step_of_key.get(s["__key__"])
            if t is None:
                continue
            if t not in writers:
                path = out_dir / f"{tar.stem}_step{t}.tar"
                tmp = open_shards.enter_context(atomic_path(path))
                writers[t] = (path, open_shards.enter_context(tarfile.open(tmp, "w")))
            _copy_sample(writers[t][1], s)
            counts[t] = counts.get(t, 0) + 1
    return [(writers[t][0], t, counts[t]) for t in sorted(writers)]


def _copy_sample(tar: tarfile.TarFile, sample: dict) -> None:
    import io

    for ext, data in sample.items():
        if ext.startswith("__"):
            continue
        info = tarfile.TarInfo(f"{sample['__key__']}.{ext}")
        info.size, info.mode = len(data), 0o644
        tar.addfile(info, io.BytesIO(data))


def carve(entries: list[ShardEntry], rows: dict, per_step: int, seed: int) -> dict[str, dict]:
    """2 x ``per_step`` held-out keys of each step, from as few shards as give 4x that many
    candidates (so carving reads a few shards, not the corpus): {key: {"step", "role"}}."""
    rng = random.Random(f"{seed}-holdout")
    out = {}
    for t in sorted({e.step for e in entries}):
        shards = [e for e in entries if e.step == t]
        rng.shuffle(shards)
        pool = []
        for e in shards:
            pool += [r["key"] for r in rows[e.path]]
            if len(pool) >= 8 * per_step:
                break
        if len(pool) < 4 * per_step:
            raise InputError(f"step {t} has {len(pool)} samples, too few to hold out 2 x {per_step} "
                             "(--holdout smaller, or fewer steps)")
        picked = rng.sample(sorted(pool), 2 * per_step)
        for i, k in enumerate(picked):
            out[k] = {"step": t, "role": "test" if i < per_step else "selection"}
    return out


def _write_heldout(root: Path, entries: list[ShardEntry], held: dict) -> list:
    """Copy the held-out samples into the two retrieval sets (reading only the shards that hold them)."""
    found = {"test": [], "selection": []}
    keys_of = {e.path: set(e.holdout) for e in entries if e.holdout}
    for path, keys in keys_of.items():
        for s in tar_samples([path]):
            if s["__key__"] not in keys:
                continue
            ext = next((e for e in IMAGE_EXTS if e in s), None)
            caption = s.get("txt", b"").decode("utf-8", "replace").strip()
            if ext is None or not caption:
                continue
            h = held[s["__key__"]]
            found[h["role"]].append({"key": s["__key__"], "image": s[ext], "ext": ext, "captions": [caption],
                                     "meta": {"step": h["step"], "shard": path.name}})
    specs = []
    for role, samples in found.items():
        samples.sort(key=lambda s: (s["meta"]["step"], s["key"]))
        evalsets.write_retrieval(root / evalsets.EVAL_DIR / role / "retrieval", samples)
        specs.append(evalsets.SetSpec("retrieval", f"{role}/retrieval", "retrieval", role))
    evalsets.write_index(root / evalsets.EVAL_DIR, specs)
    return specs


def split_corpus(root, num_steps: int | None = 4, sizes: list[float] | None = None, by: str | None = None,
                 holdout: int | None = None, seed: int = 0, shard_dir: str | None = None,
                 vocab_size: int = 49408, tokenizer: bool = True, progress=print) -> Manifest:
    """Write manifest.parquet, the held-out sets and (if missing) a tokenizer; see the module doc.
    ``progress``: where messages go (None: silent, no progress bar)."""
    say = progress or (lambda _: None)
    root = Path(root)
    folder = root / shard_dir if shard_dir else root
    tars = sorted(folder.glob("*.tar"))
    if not tars:
        raise FileNotFoundError(f"{folder}: no .tar shards (img2dataset --output_format webdataset writes 00000.tar, ...)")
    rows = {t: shard_rows(t, by) for t in tqdm(tars, desc="reading shards", unit="shard", disable=progress is None
                                                 or len(tars) < 2)}
    empty = [t.name for t in tars if not rows[t]]
    if empty:
        say(f"skipping {len(empty)} shard(s) without a successful sample: {', '.join(empty[:5])}")
        tars = [t for t in tars if rows[t]]
    if by:
        values = [r["value"] for t in tars for r in rows[t]]
        missing = sum(v is None for v in values)
        if missing:
            raise InputError(f"--by {by}: {missing} of {len(values)} samples have no value; fill them or drop them")
        step_of_value = steps_by_value(values, num_steps)
        entries = []
        for t in tars:
            steps = {step_of_value[r["value"]] for r in rows[t]}
            if len(steps) == 1:
                entries.append(ShardEntry(t, steps.pop(), len(rows[t])))
                continue
            for path, step, n in _regroup(t, {r["key"]: step_of_value[r["value"]] for r in rows[t]},
                                          root / "regrouped"):
                rows[path] = [r for r in rows[t] if step_of_value[r["value"]] == step]
                entries.append(ShardEntry(path, step, n))
        say(f"--by {by}: " + ", ".join(f"step {s} <- {[v for v, k in step_of_value.items() if k == s]}"
                                            for s in sorted(set(step_of_value.values()))))
    else:
        weights = sizes or [1.0] * num_steps
        if len(tars) < len(weights):
            raise InputError(f"{folder}: {len(tars)} shard(s), need at least one per step ({len(weights)}); "
                             "reshard with a smaller img2dataset --number_sample_per_shard")
        step = steps_by_weight([len(rows[t]) for t in tars], weights, seed)
        entries = [ShardEntry(t, s, len(rows[t])) for t, s in zip(tars, step)]
        if len({e.step for e in entries}) < len(weights):
            raise InputError(f"{folder}: {len(tars)} shards cannot make {len(weights)} steps of sizes {weights}; "
                             "use more, smaller shards or other --sizes")
    total = sum(e.num_samples for e in entries)
    nsteps = len({e.step for e in entries})
    per_step = max(1, (holdout if holdout is not None else min(1000, round(0.05 * total))) // nsteps)
    held = carve(entries, rows, per_step, seed)
    entries = [ShardEntry(e.path, e.step, e.num_samples - sum(r["key"] in held for r in rows[e.path]),
                          tuple(sorted(r["key"] for r in rows[e.path] if r["key"] in held))) for e in entries]
    _write_heldout(root, entries, held)
    m = Manifest(root, entries)
    m.save()
    if tokenizer and not (root / "tokenizer").exists():
        caps = [r["caption"] for e in entries if e.step == 1 for r in rows[e.path] if r["key"] not in held]
        say(f"training a BPE tokenizer on {len(caps)} step-1 captions ...")
        with atomic_path(root / "tokenizer") as tmp:   # renamed when whole: a crash or a full disk
            train_bpe(caps, tmp, vocab_size)            # never leaves a partial tokenizer later splits keep
        say(f"trained a BPE tokenizer on {len(caps)} step-1 captions -> {root / 'tokenizer'}")
    return m
