"""Symmetric contrastive (CLIP) loss over the global batch, in local-loss form.

Each rank scores its own images against every rank's texts (and vice versa); features are
gathered *with* gradient, so after the data-parallel gradient average the update equals that of
the single-process loss over the global batch (the open_clip local_loss + gather_with_grad form).
"""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F

from .distributed import rank_world


class _GatherWithGrad(torch.autograd.Function):
    """all_gather forward; backward sums every rank's gradient of the gathered tensor (one
    all-reduce, which gloo and NCCL both have) and keeps this rank's rows. Equal sizes per rank."""

    @staticmethod
    def forward(ctx, x):
        ctx.rank, ctx.rows = dist.get_rank(), x.shape[0]
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        return grad[ctx.rank * ctx.rows:(ctx.rank + 1) * ctx.rows]


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` from every rank in rank order; gradients flow back to each owner."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    return _GatherWithGrad.apply(x)


def clip_loss(img: torch.Tensor, txt: torch.Tensor, logit_scale: torch.Tensor, gather: bool = True) -> torch.Tensor:
    """Mean of image->text and text->image cross-entropies; ``img``/``txt`` are this rank's
    normalised features, ``logit_scale`` is exp(log-scale), already clamped by the model.
    ``gather=False``: the loss of this rank's batch alone (every rank scoring the same batch)."""
    if not gather:
        labels = torch.arange(img.shape[0], device=img.device)
        return 0.5 * (F.cross_entropy(logit_scale * img @ txt.T, labels)
                      + F.cross_entropy(logit_scale * txt @ img.T, labels))
    rank = rank_world()[0]
    all_img, all_txt = gather_with_grad(img), gather_with_grad(txt)
    labels = torch.arange(img.shape[0], device=img.device) + rank * img.shape[0]
    logits_i2t = logit_scale * img @ all_txt.T
    logits_t2i = logit_scale * txt @ all_img.T
    return 0.5 * (F.cross_entropy(logits_i2t, labels) + F.cross_entropy(logits_t2i, labels))


def lwf_kl(img: torch.Tensor, txt: torch.Tensor, logit_scale: torch.Tensor, old_img: torch.Tensor,
           old_txt: torch.Tensor, old_scale: torch.Tensor) -> torch.Tensor:
    """LwF's distillation term (TiC-CLIP): KL(old || new) between the row-softmaxes of the old and the
    new model's in-batch similarity matrices, image->text and text->image rows averaged, over the
    global batch. ``old_*`` are the frozen previous model's normalised features and scale (no grad)."""
    all_img, all_txt = gather_with_grad(img), gather_with_grad(txt)
    with torch.no_grad():
        all_old_img, all_old_txt = gather_with_grad(old_img), gather_with_grad(old_txt)
    terms = []
    for mine, others, old_mine, old_others in ((img, all_txt, old_img, all_old_txt),
                                               (txt, all_img, old_txt, all_old_img)):
        log_new = F.log_softmax(logit_scale * mine @ others.T, dim=1)
        log_old = F.log_softmax(old_scale * old_mine @ old_others.T, dim=1)
        terms.append(F.kl_div(log_new, log_old, log_target=True, reduction="batchmean"))
    return 0.5 * (terms[0] + terms[1])
