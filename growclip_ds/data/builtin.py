"""Make the built-in corpus: T growth steps of img2dataset shards, a manifest, held-out evaluation
sets and a BPE tokenizer, all deterministic for a seed.

    growclip-ds data make --config demo                        # corpus v2 -> data/builtin/
    growclip-ds data make --config demo --set data.corpus=v1 --root data/builtin-v1   # the 2026-11 reports'

Two corpora (``data.corpus``): v1 (scenes.py) adds concepts as it grows; v2 (scenes_v2.py, the default)
adds content that needs capacity (bound attributes, relations), so that growth can pay (GROWCLIP.md 4d).
``corpus.json`` in the folder records which one and its seed.
"""
from __future__ import annotations

import io
import json
import random
import shutil
from pathlib import Path

from tqdm import tqdm

from ..errors import InputError
from ..eval import sets
from ..fileio import atomic_write_text
from . import scenes, scenes_v2
from .manifest import Manifest, ShardEntry
from .shards import write_shard
from .tokenizer import train_bpe

CORPORA = {"v1": scenes, "v2": scenes_v2}
CORPUS_FILE = "corpus.json"


def corpus_module(version: str):
    if version not in CORPORA:
        raise InputError(f"data.corpus: one of {', '.join(CORPORA)} (got {version!r})")
    return CORPORA[version]


def recorded_corpus(root) -> str | None:
    """The built-in corpus a data folder holds: ``corpus.json``'s, else "v1" for a folder ``data make`` wrote
    before that file existed (a ``shards/`` folder), else None (a user's own data: ``data split``)."""
    root = Path(root)
    if (root / CORPUS_FILE).exists():
        return json.loads((root / CORPUS_FILE).read_text())["corpus"]
    return "v1" if (root / "shards").is_dir() else None


def _jpeg(img) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=92)
    return buf.getvalue()


def _sample(world, key: str, scene, rng, step: int) -> dict:
    img = world.render(scene, rng)
    return {"key": key, "jpg": _jpeg(img), "txt": world.caption(scene, rng), "width": img.width,
            "height": img.height, "url": f"synthetic://step{step}/{key}",
            "meta": {"step": step, **world.meta(scene)}}


def _step_samples(world, rng, step: int, num_steps: int, n: int, key) -> list[dict]:
    """``n`` samples of step t, the i-th keyed ``key(i)``; a draw may hold several scenes (v2's family of four),
    each a sample, the last draw cut at ``n``."""
    out = []
    while len(out) < n:
        for scene in world.draw_train(rng, step, num_steps)[: n - len(out)]:
            out.append(_sample(world, key(len(out)), scene, rng, step))
    return out


def make_builtin(root, num_steps: int = 4, samples_per_step: int = 2048, shard_size: int = 256,
                 eval_per_class: int = 40, retrieval_size: int = 400, vocab_size: int = 512,
                 seed: int = 0, progress: bool = True, corpus: str = "v2") -> Manifest:
    world = corpus_module(corpus)
    root = Path(root)
    entries, captions = [], []
    total = num_steps * samples_per_step
    bar = tqdm(total=total, desc="built-in corpus", unit="img", disable=not progress)
    shard_id = 0
    for step in range(1, num_steps + 1):
        rng = random.Random(f"{seed}-train-{step}")
        for start in range(0, samples_per_step, shard_size):
            n = min(shard_size, samples_per_step - start)
            samples = _step_samples(world, rng, step, num_steps, n, lambda i: f"{shard_id:05d}{i:04d}")
            path = root / "shards" / f"{shard_id:05d}.tar"
            write_shard(path, samples)
            captions += [s["txt"] for s in samples]
            entries.append(ShardEntry(path, step, n))
            shard_id += 1
            bar.update(n)
    bar.close()
    shutil.rmtree(root / sets.EVAL_DIR, ignore_errors=True)   # generated sets only: a remake leaves no stale file
    _make_eval(world, root / sets.EVAL_DIR, num_steps, eval_per_class, retrieval_size, seed)
    train_bpe(captions, root / "tokenizer", vocab_size)
    manifest = Manifest(root, entries)
    manifest.save()
    atomic_write_text(root / CORPUS_FILE, json.dumps({"corpus": corpus, "seed": seed, "num_steps": num_steps,
                                                      "samples_per_step": samples_per_step}))
    return manifest


def _make_eval(world, out: Path, num_steps: int, per_class: int, retrieval_size: int, seed: int) -> None:
    """Zero-shot tasks uniform over every class (of all steps), a separate selection split of the
    same tasks (GAS scores candidates on it, never on the test split), and a test and a selection
    retrieval set with the same number of pairs from each growth step (drawn as that step's data);
    written in the formats users' own sets have (eval/sets.py)."""
    specs = []
    for role, tag in (("test", "zero_shot"), ("selection", "selection")):
        for task, (classes, prompts, draw) in world.eval_tasks(num_steps).items():
            rng = random.Random(f"{seed}-{tag}-{task}")
            samples = []
            for ci in range(len(classes)):
                for j in range(per_class):
                    s = _sample(world, f"{task}{ci:02d}{j:04d}", draw(rng, ci), rng, num_steps)
                    samples.append({"key": s["key"], "image": s["jpg"], "ext": "jpg", "label": ci, "meta": s["meta"]})
            sets.write_zeroshot(out / role / task, classes, prompts, samples)
            specs.append(sets.SetSpec(task, f"{role}/{task}", "zeroshot", role))
    per_step = max(1, retrieval_size // num_steps)
    for role, tag in (("test", "eval-retrieval"), ("selection", "select-retrieval")):
        rng = random.Random(f"{seed}-{tag}")
        samples = [s for step in range(1, num_steps + 1)
                   for s in _step_samples(world, rng, step, num_steps, per_step, lambda j: f"ret{step}{j:05d}")]
        sets.write_retrieval(out / role / "retrieval", [{"key": s["key"], "image": s["jpg"], "ext": "jpg",
                                                         "captions": [s["txt"]], "meta": s["meta"]} for s in samples])
        specs.append(sets.SetSpec("retrieval", f"{role}/retrieval", "retrieval", role))
    sets.write_index(out, specs)
