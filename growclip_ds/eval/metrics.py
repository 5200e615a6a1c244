"""Evaluation metrics as pure functions of embeddings (tested against hand computations)."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def class_embeddings(prompt_embs: torch.Tensor) -> torch.Tensor:
    """(classes, templates, d) normalised prompt embeddings -> (classes, d) prompt-ensemble classifier:
    the mean over templates, renormalised (CLIP's prompt ensembling)."""
    return F.normalize(prompt_embs.mean(dim=1), dim=-1)


def topk_accuracy(logits: torch.Tensor, labels: torch.Tensor, ks=(1, 5)) -> dict[str, float]:
    """Fraction of rows whose label is among the k highest logits (k capped at the class count)."""
    out = {}
    for k in ks:
        top = logits.topk(min(k, logits.shape[1]), dim=1).indices
        out[f"top{k}"] = (top == labels[:, None]).any(dim=1).float().mean().item()
    return out


def recall_at_k(sim: torch.Tensor, ks=(1, 5, 10), match: torch.Tensor | None = None) -> dict[str, float]:
    """Rows are queries, columns candidates; ``match[i, j]`` is True where candidate j is a right answer
    for query i (default: the diagonal). A query's rank is the number of wrong candidates that score
    at least as high as its best right one: ties count against the query (a model whose embeddings all
    coincide scores chance, not 1.0)."""
    if match is None:
        match = torch.eye(*sim.shape, dtype=torch.bool)
    best = sim.masked_fill(~match, float("-inf")).max(dim=1, keepdim=True).values
    ranks = ((sim >= best) & ~match).sum(dim=1)
    return {f"R@{k}": (ranks < k).float().mean().item() for k in ks}


def retrieval_metrics(img: torch.Tensor, txt: torch.Tensor, text_image=None, ks=(1, 5, 10)) -> dict:
    """Image->text and text->image recall; ``text_image[j]`` is the image of caption j (default: j),
    so an image with several captions is found when any of them is."""
    sim = img @ txt.T
    if text_image is None:
        match = torch.eye(len(img), len(txt), dtype=torch.bool)
    else:
        match = torch.zeros(len(img), len(txt), dtype=torch.bool)
        match[torch.as_tensor(text_image), torch.arange(len(txt))] = True
    return {"image_to_text": recall_at_k(sim, ks, match), "text_to_image": recall_at_k(sim.T, ks, match.T)}
