"""Zero-shot classification and retrieval on the evaluation sets, spread over ranks.

    growclip-ds eval runs/demo/step1 --config demo [--split selection]

Each rank decodes and encodes every world-th image of a set, in batches (memory is bounded by the
batch, not by the set: prompts are encoded ``batch`` at a time too); embeddings are gathered and
every rank computes the same metrics. The result is a step's evaluation record (``rundir``): fractions in [0, 1],
``zero_shot`` and ``retrieval_sets`` per set name, ``retrieval`` (the first retrieval set) and
``retrieval_by_step`` (its pairs grouped by growth step) for the report and TiC-CLIP's methods.
"""
from __future__ import annotations

import io

import torch
import torch.distributed as dist
from PIL import Image
from tqdm import tqdm

from ..data.loader import image_transform
from ..distributed import rank_world
from .metrics import class_embeddings, retrieval_metrics, topk_accuracy
from .sets import list_sets, open_set

CACHE_BYTES = 1 << 30   # decoded images of one rank kept across passes (GAS's 16 image passes) up to this


class EvalSets:
    """The evaluation sets of one role ("test", or "selection": for choices made during training,
    GAS and Patching's alpha), opened from ``data.eval`` or ``<data.root>/eval/sets.json``."""

    def __init__(self, data, image_size: int, role: str = "test", kinds=("zeroshot", "retrieval")):
        specs = [s for s in list_sets(data.root, data.eval, role) if s.kind in kinds]
        if not specs:
            raise FileNotFoundError(f"no {'/'.join(kinds)} evaluation set with role {role!r} in "
                                    f"{'data.eval' if data.eval else f'{data.root}/eval/sets.json'}; "
                                    "`growclip-ds data split` carves test and selection retrieval sets")
        self.image_size = image_size
        self.sets = [open_set(data.root, s) for s in specs]
        self._cache: dict = {}

    @property
    def zeroshot(self) -> list:
        return [s for s in self.sets if s.kind == "zeroshot"]

    @property
    def retrieval(self) -> list:
        return [s for s in self.sets if s.kind == "retrieval"]

    def image_batches(self, dset, batch: int, spread: bool = True):
        """This rank's images of ``dset`` (every world-th, in set order; all of them unless ``spread``)
        as tensors of at most ``batch``."""
        rank, world = rank_world() if spread else (0, 1)
        key = (dset.name, dset.kind, rank, world)
        if key in self._cache:
            yield from self._cache[key]
            return
        tf = image_transform(self.image_size)
        keep = len(dset) * 3 * self.image_size ** 2 * 4 / world <= CACHE_BYTES
        out, buf = [], []     # out: this pass's batches, kept only when they are to be cached
        for i, raw in enumerate(dset.images()):
            if i % world == rank:
                with Image.open(io.BytesIO(raw)) as im:
                    buf.append(tf(im.convert("RGB")))
            last = i == len(dset) - 1
            if buf and (len(buf) == batch or last):
                x = torch.stack(buf)
                out += [x] if keep else []
                buf = []
                yield x
        if buf:   # fewer images than the set counted when it was opened
            raise RuntimeError(f"evaluation set {dset.name!r} yielded fewer images than its {len(dset)} samples; "
                               "were its files changed during the run?")
        if keep:
            self._cache[key] = out


def selection_sets(data, image_size: int) -> EvalSets:
    """The sets a selection accuracy is computed on (``selection_accuracy``): the selection split's
    classification sets, or its retrieval sets when it has none."""
    kinds = {s.kind for s in list_sets(data.root, data.eval, "selection")}
    return EvalSets(data, image_size, "selection", kinds=("zeroshot",) if "zeroshot" in kinds else ("retrieval",))


def _gather(local: torch.Tensor, n: int, spread: bool) -> torch.Tensor:
    """Rows i = rank + k * world of every rank, back in order 0..n-1."""
    _, world = rank_world()
    if world == 1 or not spread:
        return local
    gathered = [None] * world
    dist.all_gather_object(gathered, local)
    dim = next(g.shape[1] for g in gathered if g.numel())
    out = torch.empty(n, dim)
    for r, emb in enumerate(gathered):
        if emb.numel():
            out[r::world] = emb
    return out


@torch.no_grad()
def encode_images(model, sets: EvalSets, dset, batch: int = 256, spread: bool = True) -> torch.Tensor:
    """Embeddings of every image of ``dset``; ``spread``: each rank encodes its share and all gather
    (every rank must call), else this rank encodes all (GAS: ranks work on different variants)."""
    parts = [model.encode_image(x.to(_device(model))).float().cpu() for x in sets.image_batches(dset, batch, spread)]
    return _gather(torch.cat(parts) if parts else torch.empty(0), len(dset), spread)


@torch.no_grad()
def encode_texts(model, texts: list[str], tokenize, batch: int = 256, spread: bool = True) -> torch.Tensor:
    rank, world = rank_world() if spread else (0, 1)
    mine = texts[rank::world]
    parts = [model.encode_text(tokenize(mine[i:i + batch]).to(_device(model))).float().cpu()
             for i in range(0, len(mine), batch)]
    return _gather(torch.cat(parts) if parts else torch.empty(0), len(texts), spread)


def classifier(model, dset, tokenize, batch: int = 256, spread: bool = True) -> torch.Tensor:
    """(classes, d) prompt-ensemble classifier of a zero-shot set (prompts encoded ``batch`` at a time)."""
    emb = encode_texts(model, dset.prompts(), tokenize, batch, spread)
    return class_embeddings(emb.view(len(dset.classes), len(dset.templates), -1))


def _device(model) -> torch.device:
    return next(model.parameters()).device


def zeroshot_metrics(img: torch.Tensor, cls: torch.Tensor, dset) -> dict:
    return {**topk_accuracy(img @ cls.T, torch.tensor(dset.labels), ks=(1, 5)), "num_classes": len(dset.classes)}


def set_retrieval_metrics(img: torch.Tensor, txt: torch.Tensor, text_image: list[int]) -> dict:
    m = retrieval_metrics(img, txt, text_image)
    m["mean_R@1"] = 0.5 * (m["image_to_text"]["R@1"] + m["text_to_image"]["R@1"])
    return m


def by_step(img: torch.Tensor, txt: torch.Tensor, dset) -> dict:
    """TiC-CLIP's dynamic retrieval: metrics over the pairs of each growth step."""
    out = {}
    steps = torch.tensor(dset.steps)
    ti = torch.tensor(dset.text_image)
    for j in sorted(set(dset.steps)):
        imgs = torch.nonzero(steps == j).flatten()
        texts = torch.nonzero(steps[ti] == j).flatten()
        remap = {int(i): k for k, i in enumerate(imgs)}
        out[str(j)] = set_retrieval_metrics(img[imgs], txt[texts], [remap[int(ti[t])] for t in texts])
    return out


def selection_accuracy(result: dict) -> float:
    """A of GAS and the ``kept`` record: the mean zero-shot top-1 over the classification sets, or,
    when the selection split has none (a user's own shards carve retrieval sets only), the mean of
    image->text and text->image R@1 over the retrieval sets."""
    zs = result.get("zero_shot", {})
    if zs:
        return sum(t["top1"] for t in zs.values()) / len(zs)
    rs = result.get("retrieval_sets", {})
    if not rs:
        raise ValueError("no evaluation set to compute a selection accuracy on")
    return sum(r["mean_R@1"] for r in rs.values()) / len(rs)


@torch.no_grad()
def evaluate(model, sets: EvalSets, tokenize, batch: int = 256, progress: bool = False) -> dict:
    """The evaluation record for ``model`` (a plain GrowCLIP with its architecture set). ``progress``: a bar
    over the sets on rank 0 (a set of 1000 classes x 80 prompts is 313 text batches)."""
    was_training = model.training
    model.eval()
    out = {"zero_shot": {}, "retrieval_sets": {}}
    bar = tqdm(total=len(sets.zeroshot) + len(sets.retrieval), desc="evaluation", unit="set",
               disable=not progress or rank_world()[0] != 0)
    for dset in sets.zeroshot:
        bar.set_postfix_str(dset.name)
        out["zero_shot"][dset.name] = zeroshot_metrics(encode_images(model, sets, dset, batch),
                                                       classifier(model, dset, tokenize, batch), dset)
        bar.update()
    for k, dset in enumerate(sets.retrieval):
        bar.set_postfix_str(dset.name)
        img = encode_images(model, sets, dset, batch)
        txt = encode_texts(model, dset.texts, tokenize, batch)
        out["retrieval_sets"][dset.name] = set_retrieval_metrics(img, txt, dset.text_image)
        if k == 0:
            out["retrieval"] = out["retrieval_sets"][dset.name]
            out["retrieval_by_step"] = by_step(img, txt, dset)
        bar.update()
    bar.close()
    model.train(was_training)
    out["device"] = str(_device(model))   # where it ran: the engine's accelerator
    return out
