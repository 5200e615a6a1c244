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


def recall_at_k(sim: torch.Tensor, ks=(1, 5, 10)) -> dict[str, float]:
    """Rows are queries, columns candidates, the match of query i is candidate i. Ties count
    against the query (a model whose embeddings all coincide scores chance, not 1.0)."""
    true = sim.diagonal()[:, None]
    ranks = (sim > true).sum(dim=1) + (sim == true).sum(dim=1) - 1  # candidates that beat or tie the match
    return {f"R@{k}": (ranks < k).float().mean().item() for k in ks}


def retrieval_metrics(img: torch.Tensor, txt: torch.Tensor, ks=(1, 5, 10)) -> dict:
    sim = img @ txt.T
    return {"image_to_text": recall_at_k(sim, ks), "text_to_image": recall_at_k(sim.T, ks)}
