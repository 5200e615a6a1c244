"""Growth architecture selection (GAS): score all 64 candidates with the supernet's weights.

    psi* = argmax  A(psi) + alpha * (N^{t-1} / N^t) * (P^{t-1} / P(psi))          growth.select=paper
    psi* = argmax  A(psi) - kappa * log2(F(psi) / F^{t-1})                        growth.select=compute

The compute rule (docs/growth.md, "growth that pays"): under a FLOP budget a candidate whose training
costs F(psi) per sample sees F^{t-1}/F(psi) of the samples the step t-1 architecture would, and
kappa (``growth.compute_penalty``) is the selection accuracy one halving of the samples costs; index
0 (no growth) has no penalty, so growth is chosen only when its supernet accuracy pays for it.

A is the selection accuracy (eval/evaluate.py ``selection_accuracy``: mean zero-shot top-1 over the
selection split's classification sets, or mean R@1 over its retrieval sets when it has none). An image embedding depends only on
(conv layers, image blocks, image heads, shared blocks) and a text embedding only on (text blocks,
text heads, shared blocks, image heads: the shared width is the image width), so 16 image and 16
text encoder passes score all 64 candidates. A growth delta of 0 makes indices the same net (the demo's
``delta_conv_layers=0``: 0 and 4, 8 and 12, ...): each distinct net and encoder variant is scored once,
and the 64-row table keeps the paper's indices, a duplicate's row marked ``same_as`` its lowest index.
The 32 passes are spread over all ranks; each finished variant is saved under the ``gas`` phase folder
and each score appended to the step's score file (``rundir``) as soon as it is known, so a restarted
GAS redoes neither.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from growclip_train import faults
from growclip_ds.config import ArchConfig, GrowthConfig
from growclip_ds.distributed import barrier, rank_world
from growclip_ds.fileio import atomic_path, atomic_write_text
from growclip_train.rundir import StepDir
from growclip_ds.eval.evaluate import (classifier, encode_images, encode_texts, selection_accuracy, set_retrieval_metrics,
                             zeroshot_metrics)
from growclip_ds.growth import space
from growclip_ds.model import param_count
from growclip_ds.model.flops import train_flops


def size_term(cand: ArchConfig, prev: ArchConfig, prev_params: int, n_prev: int, n_now: int,
              growth: GrowthConfig) -> float:
    """What GAS adds to a candidate's accuracy: the paper's size term or the compute penalty."""
    if growth.select == "compute":
        return -growth.compute_penalty * math.log2(train_flops(cand) / train_flops(prev))
    return growth.alpha * (n_prev / n_now) * (prev_params / param_count(cand))


@torch.no_grad()
def image_embeddings(model, arch: ArchConfig, sets, batch: int = 256) -> dict[str, torch.Tensor]:
    """Image embeddings of every selection set, all encoded on this rank (ranks score different variants)."""
    model.set_arch(arch)
    return {d.name: encode_images(model, sets, d, batch, spread=False) for d in sets.sets}


@torch.no_grad()
def text_embeddings(model, arch: ArchConfig, sets, tokenize, batch: int = 256) -> dict[str, torch.Tensor]:
    """The classifier of every zero-shot set and the caption embeddings of every retrieval set."""
    model.set_arch(arch)
    return {d.name: classifier(model, d, tokenize, batch, spread=False) if d.kind == "zeroshot" else
            encode_texts(model, d.texts, tokenize, batch, spread=False) for d in sets.sets}


def accuracy(img: dict, txt: dict, sets) -> float:
    """A in [0, 1]: the selection accuracy of one candidate's image and text embeddings."""
    result = {"zero_shot": {d.name: zeroshot_metrics(img[d.name], txt[d.name], d) for d in sets.zeroshot},
              "retrieval_sets": {d.name: set_retrieval_metrics(img[d.name], txt[d.name], d.text_image)
                                 for d in sets.retrieval}}
    return selection_accuracy(result)


def _variant_file(folder: Path, kind: str, key: tuple) -> Path:
    return folder / f"{kind}_{'_'.join(map(str, key))}.safetensors"


def run_gas(model, prev: ArchConfig, growth: GrowthConfig, sets, tokenize, step: StepDir, prev_params: int,
            n_prev: int, n_now: int, progress: bool = True) -> tuple[int, ArchConfig]:
    """Score every candidate (resuming): variants under the step's ``gas`` phase folder, scores in its
    GAS score file; returns the choice (the caller records it)."""
    rank, world = rank_world()
    folder = step.phase("gas").path
    folder.mkdir(parents=True, exist_ok=True)
    model.eval()
    todo = space.variants(prev, growth)
    mine = todo[rank::world]
    written = 0
    for kind, key, arch in tqdm(mine, desc=f"GAS variants (rank {rank})", disable=not progress or rank != 0):
        f = _variant_file(folder, kind, key)
        if f.exists():
            continue
        emb = image_embeddings(model, arch, sets) if kind == "img" else text_embeddings(model, arch, sets, tokenize)
        with atomic_path(f) as tmp:
            save_file(emb, str(tmp))
        written += 1
        faults.hit("gas", written)
    barrier()
    if rank == 0:
        _score_all(prev, growth, sets, folder, step.gas_scores, prev_params, n_prev, n_now)
    barrier()
    return choose(step.gas_scores, prev, growth)


def _score_all(prev, growth, sets, folder: Path, jsonl: Path, prev_params, n_prev, n_now) -> None:
    rows = read_scores(jsonl)
    if jsonl.exists():  # drop a line a crash cut short before appending after it
        atomic_write_text(jsonl, "".join(json.dumps(r) + "\n" for r in rows))
    done = {r["index"] for r in rows}
    loaded: dict[Path, dict] = {}  # each of the 32 variant files is read once, not once per candidate

    def load(kind: str, key: tuple) -> dict:
        f = _variant_file(folder, kind, key)
        if f not in loaded:
            loaded[f] = load_file(str(f))
        return loaded[f]

    cands = space.candidates(prev, growth)
    first: dict[ArchConfig, dict] = {}   # each distinct net -> the row of its lowest index
    for r in sorted(rows, key=lambda r: r["index"]):
        first.setdefault(cands[r["index"]], r)
    with open(jsonl, "a") as out:
        for i, c in enumerate(cands):
            if i in done:
                continue
            if c in first:   # a growth delta of 0 makes it the same net as a lower index: scored once
                row = {**first[c], "index": i, "same_as": first[c]["index"]}
            else:
                acc = accuracy(load("img", space.image_variant(c)), load("txt", space.text_variant(c)), sets)
                term = size_term(c, prev, prev_params, n_prev, n_now, growth)
                row = {"index": i, "arch": c.to_dict(), "params": param_count(c), "accuracy": acc,
                       "score": acc + term, "size_term": term, "rule": growth.select}
                first[c] = row
            out.write(json.dumps(row) + "\n")
            out.flush()  # in the file as soon as known; a line a crash cuts is rescored from the variants
        os.fsync(out.fileno())


def read_scores(jsonl: Path) -> list[dict]:
    """Complete lines of the score file (a line cut by a crash is ignored and rescored)."""
    if not jsonl.exists():
        return []
    rows = []
    for line in jsonl.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def choose(jsonl: Path, prev: ArchConfig, growth: GrowthConfig) -> tuple[int, ArchConfig]:
    """The argmax of the scores (ties: fewer parameters, then lower index)."""
    rows = {r["index"]: r for r in read_scores(jsonl)}
    if len(rows) != space.NUM_CANDIDATES:
        raise RuntimeError(f"{jsonl}: {len(rows)} of {space.NUM_CANDIDATES} candidates scored")
    best = max(rows.values(), key=lambda r: (r["score"], -r["params"], -r["index"]))
    return best["index"], space.candidate(prev, growth, best["index"])


@torch.no_grad()
def score_each_candidate(model, prev: ArchConfig, growth: GrowthConfig, sets, tokenize) -> list[float]:
    """Reference: one full pass per candidate (64 image + 64 text passes); same accuracies."""
    model.eval()
    return [accuracy(image_embeddings(model, c, sets), text_embeddings(model, c, sets, tokenize), sets)
            for c in space.candidates(prev, growth)]
