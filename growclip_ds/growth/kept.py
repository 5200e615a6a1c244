"""What a growth keeps, measured before any training (docs/growth.md).

    kept = measure_kept(old, grown, batch, sets, tokenizer)
    # {"old": {"loss": L, "top1": A}, "grown": {"loss": L, "top1": A}}

``old`` and ``grown`` are plain models with their architectures set; ``loss`` is the contrastive
loss on one fixed batch of step t's new training data (the same on every rank, not gathered),
``top1`` the selection accuracy (GAS's A: mean zero-shot top-1 of the selection split's tasks, or
its mean R@1 where it has retrieval sets only; never the test split). Every rank must call it: the
evaluation is spread over ranks.
"""
from __future__ import annotations

import torch

from ..loss import clip_loss


@torch.no_grad()
def model_scores(model, batch: dict, sets, tokenize) -> dict:
    from ..eval.evaluate import evaluate, selection_accuracy

    was_training = model.training
    model.eval()
    dev = next(model.parameters()).device
    loss = clip_loss(*model(batch["images"].to(dev), batch["tokens"].to(dev)), gather=False).item()
    top1 = selection_accuracy(evaluate(model, sets, tokenize))
    model.train(was_training)
    return {"loss": loss, "top1": top1}


def measure_kept(old, grown, batch: dict, sets, tokenize) -> dict:
    return {"old": model_scores(old, batch, sets, tokenize), "grown": model_scores(grown, batch, sets, tokenize)}


def describe(kept: dict) -> str:
    """One line: loss and selection top-1, old -> grown."""
    o, g = kept["old"], kept["grown"]
    return (f"loss {o['loss']:.3f} -> {g['loss']:.3f} ({100 * (g['loss'] / o['loss'] - 1):+.1f}%), "
            f"selection accuracy {100 * o['top1']:.1f} -> {100 * g['top1']:.1f}")
