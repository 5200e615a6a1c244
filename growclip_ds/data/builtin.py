"""Make the built-in corpus: T growth steps of img2dataset shards, a manifest, held-out evaluation
sets and a BPE tokenizer, all deterministic for a seed.

    growclip-ds data make --config demo        # writes data/builtin/
"""
from __future__ import annotations

import io
import random
import shutil
from pathlib import Path

from tqdm import tqdm

from ..eval import sets
from . import scenes
from .manifest import Manifest, ShardEntry
from .shards import write_shard
from .tokenizer import train_bpe



def _jpeg(img) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=92)
    return buf.getvalue()


def _sample(key: str, scene, rng, step: int) -> dict:
    img = scenes.render(scene, rng)
    return {"key": key, "jpg": _jpeg(img), "txt": scenes.caption(scene, rng), "width": img.width,
            "height": img.height, "url": f"synthetic://step{step}/{key}",
            "meta": {"step": step, **scene.__dict__}}


def make_builtin(root, num_steps: int = 4, samples_per_step: int = 2048, shard_size: int = 256,
                 eval_per_class: int = 40, retrieval_size: int = 400, vocab_size: int = 512,
                 seed: int = 0, progress: bool = True) -> Manifest:
    root = Path(root)
    entries, captions = [], []
    total = num_steps * samples_per_step
    bar = tqdm(total=total, desc="built-in corpus", unit="img", disable=not progress)
    shard_id = 0
    for step in range(1, num_steps + 1):
        rng = random.Random(f"{seed}-train-{step}")
        for start in range(0, samples_per_step, shard_size):
            n = min(shard_size, samples_per_step - start)
            samples = [_sample(f"{shard_id:05d}{i:04d}", scenes.sample_scene(rng, step, num_steps), rng, step)
                       for i in range(n)]
            path = root / "shards" / f"{shard_id:05d}.tar"
            write_shard(path, samples)
            captions += [s["txt"] for s in samples]
            entries.append(ShardEntry(path, step, n))
            shard_id += 1
            bar.update(n)
    bar.close()
    shutil.rmtree(root / sets.EVAL_DIR, ignore_errors=True)   # generated sets only: a remake leaves no stale file
    _make_eval(root / sets.EVAL_DIR, num_steps, eval_per_class, retrieval_size, seed)
    train_bpe(captions, root / "tokenizer", vocab_size)
    manifest = Manifest(root, entries)
    manifest.save()
    return manifest


def _make_eval(out: Path, num_steps: int, per_class: int, retrieval_size: int, seed: int) -> None:
    """Zero-shot tasks uniform over every class (of all steps), a separate selection split of the
    same tasks (GAS scores candidates on it, never on the test split), and a test and a selection
    retrieval set with the same number of pairs from each growth step (drawn as that step's data);
    written in the formats users' own sets have (eval/sets.py)."""
    specs = []
    for role, tag in (("test", "zero_shot"), ("selection", "selection")):
        for task, classes in scenes.TASKS.items():
            rng = random.Random(f"{seed}-{tag}-{task}")
            samples = []
            for ci, cname in enumerate(classes):
                for j in range(per_class):
                    scene = scenes.sample_scene(rng, num_steps, num_steps, **{task: cname})
                    s = _sample(f"{task}{ci:02d}{j:04d}", scene, rng, num_steps)
                    samples.append({"key": s["key"], "image": s["jpg"], "ext": "jpg", "label": ci, "meta": s["meta"]})
            phrases = scenes.CLASS_PHRASES.get(task, {})
            sets.write_zeroshot(out / role / task, [phrases.get(c, c) for c in classes], scenes.PROMPTS[task], samples)
            specs.append(sets.SetSpec(task, f"{role}/{task}", "zeroshot", role))
    per_step = max(1, retrieval_size // num_steps)
    for role, tag in (("test", "eval-retrieval"), ("selection", "select-retrieval")):
        rng = random.Random(f"{seed}-{tag}")
        samples = [_sample(f"ret{step}{j:05d}", scenes.sample_scene(rng, step, num_steps), rng, step)
                   for step in range(1, num_steps + 1) for j in range(per_step)]
        sets.write_retrieval(out / role / "retrieval", [{"key": s["key"], "image": s["jpg"], "ext": "jpg",
                                                         "captions": [s["txt"]], "meta": s["meta"]} for s in samples])
        specs.append(sets.SetSpec("retrieval", f"{role}/retrieval", "retrieval", role))
    sets.write_index(out, specs)
