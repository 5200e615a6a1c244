"""Zero-shot classification and retrieval on the held-out sets, spread over ranks.

    growclip-ds eval --model runs/demo/step1 --data data/builtin

Each rank encodes every world-th image; embeddings are gathered and every rank computes the same
metrics. The result is the ``eval.json`` contract: fractions in [0, 1].
"""
from __future__ import annotations

import io
import json
from pathlib import Path

import torch
import torch.distributed as dist
import webdataset as wds
from PIL import Image

from ..distributed import rank_world
from ..data.loader import IMAGE_EXTS, image_transform
from .metrics import class_embeddings, retrieval_metrics, topk_accuracy


def read_shard(path: Path, image_size: int) -> tuple[torch.Tensor, list[str], list[dict]]:
    """All (image, caption, json) of one small evaluation shard, in file order."""
    if not path.exists():
        raise FileNotFoundError(f"{path}: evaluation shard missing; remake the data (growclip-ds data make)")
    tf = image_transform(image_size)
    imgs, texts, metas = [], [], []
    for s in wds.tariterators.tarfile_samples(iter([{"url": str(path)}])):
        ext = next(e for e in IMAGE_EXTS if e in s)
        with Image.open(io.BytesIO(s[ext])) as im:
            imgs.append(tf(im.convert("RGB")))
        texts.append(s.get("txt", b"").decode())
        metas.append(json.loads(s["json"]) if "json" in s else {})
    return torch.stack(imgs), texts, metas


class EvalSets:
    """The zero-shot tasks and the retrieval set of one split ("zero_shot": test; "selection": for
    choices made during training, GAS and Patching's alpha) named by ``<data>/eval/tasks.json``."""

    def __init__(self, data_root, image_size: int, split: str = "zero_shot", retrieval: bool = True,
                 tasks: bool = True):
        root = Path(data_root) / "eval"
        spec_path = root / "tasks.json"
        if not spec_path.exists():
            raise FileNotFoundError(f"{spec_path} not found: make the built-in data or write a tasks.json")
        spec = json.loads(spec_path.read_text())
        if split not in spec:
            raise KeyError(f"{spec_path}: no {split!r} split; remake the data (growclip-ds data make --force)")
        self.tasks = {}
        for name, t in (spec[split].items() if tasks else ()):
            imgs, _, metas = read_shard(root / t["shard"], image_size)
            labels = torch.tensor([m["label"] for m in metas])
            self.tasks[name] = {"images": imgs, "labels": labels, "classes": t["classes"],
                                "templates": t["templates"]}
        self.retrieval = None
        if retrieval:
            key = "retrieval" if split == "zero_shot" else f"{split}_retrieval"
            if key not in spec:
                raise KeyError(f"{spec_path}: no {key!r} set; remake the data (growclip-ds data make --force)")
            imgs, texts, metas = read_shard(root / spec[key]["shard"], image_size)
            self.retrieval = {"images": imgs, "texts": texts, "steps": [m.get("step", 0) for m in metas]}


@torch.no_grad()
def _encode_spread(fn, items, batch: int) -> torch.Tensor:
    """Encode ``items`` (a tensor or list) spread over ranks; every rank gets all embeddings in order."""
    rank, world = rank_world()
    idx = list(range(rank, len(items), world))
    parts = []
    for i in range(0, len(idx), batch):
        sel = idx[i:i + batch]
        chunk = items[sel] if torch.is_tensor(items) else [items[j] for j in sel]
        parts.append(fn(chunk).float())
    local = torch.cat(parts) if parts else torch.empty(0)
    if world == 1:
        return local
    gathered = [None] * world
    dist.all_gather_object(gathered, local)
    out = torch.empty(len(items), gathered[0].shape[1])
    for r, emb in enumerate(gathered):
        out[r::world] = emb
    return out


def task_prompts(task: dict) -> list[str]:
    """Every (class, template) prompt of a task, class-major."""
    return [tpl.format(c=c) for c in task["classes"] for tpl in task["templates"]]


def task_classifier(prompt_embs: torch.Tensor, task: dict) -> torch.Tensor:
    return class_embeddings(prompt_embs.view(len(task["classes"]), len(task["templates"]), -1))


@torch.no_grad()
def evaluate(model, sets: EvalSets, tokenize, batch: int = 256) -> dict:
    """eval.json content for ``model`` (a plain GrowCLIP with its architecture set)."""
    was_training = model.training
    model.eval()
    enc_img = lambda x: model.encode_image(x)  # noqa: E731
    enc_txt = lambda t: model.encode_text(tokenize(t))  # noqa: E731
    out = {"zero_shot": {}}
    for name, task in sets.tasks.items():
        classifier = task_classifier(_encode_spread(enc_txt, task_prompts(task), batch), task)
        img = _encode_spread(enc_img, task["images"], batch)
        acc = topk_accuracy(img @ classifier.T, task["labels"], ks=(1, 5))
        out["zero_shot"][name] = {**acc, "num_classes": len(task["classes"])}
    r = sets.retrieval
    if r is None:
        model.train(was_training)
        return out
    img = _encode_spread(enc_img, r["images"], batch)
    txt = _encode_spread(enc_txt, r["texts"], batch)
    out["retrieval"] = retrieval_metrics(img, txt)
    out["retrieval_by_step"] = {}   # TiC-CLIP's dynamic retrieval: the held-out pairs of each growth step
    steps = torch.tensor(r["steps"])
    for j in sorted(set(r["steps"])):
        sel = steps == j
        m = retrieval_metrics(img[sel], txt[sel])
        m["mean_R@1"] = 0.5 * (m["image_to_text"]["R@1"] + m["text_to_image"]["R@1"])
        out["retrieval_by_step"][str(j)] = m
    model.train(was_training)
    return out
