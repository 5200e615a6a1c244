"""The contrastive loss on 2 gloo ranks equals a float64 single-process recomputation."""
import os

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from growclip_ds.loss import clip_loss
from tests.conftest import free_port

N, D_IN, D = 6, 5, 4  # per-rank batch, input dim, feature dim


def _data():
    g = torch.Generator().manual_seed(0)
    return (torch.randn(2 * N, D_IN, generator=g), torch.randn(2 * N, D_IN, generator=g),
            torch.randn(D_IN, D, generator=g), torch.randn(D_IN, D, generator=g))


def _worker(rank, port, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    x, y, a0, b0 = _data()
    a, b = a0.clone().requires_grad_(), b0.clone().requires_grad_()
    s = torch.tensor(2.5, requires_grad=True)
    sl = slice(rank * N, (rank + 1) * N)
    loss = clip_loss(F.normalize(x[sl] @ a, dim=-1), F.normalize(y[sl] @ b, dim=-1), s.exp())
    loss.backward()
    for t in (a.grad, b.grad, s.grad, loss.detach()):  # what data parallelism does: average over ranks
        dist.all_reduce(t)
        t /= 2
    if rank == 0:
        torch.save({"loss": loss.detach(), "a": a.grad, "b": b.grad, "s": s.grad}, out)
    dist.barrier()  # no rank tears gloo down while a peer still talks to it
    dist.destroy_process_group()


def test_loss_and_grads_on_two_ranks_equal_float64_reference(tmp_path):
    out = tmp_path / "r.pt"
    mp.start_processes(_worker, args=(free_port(), str(out)), nprocs=2, start_method="spawn")
    got = torch.load(out)
    x, y, a0, b0 = (t.double() for t in _data())
    a, b = a0.clone().requires_grad_(), b0.clone().requires_grad_()
    s = torch.tensor(2.5, dtype=torch.float64, requires_grad=True)
    logits = s.exp() * F.normalize(x @ a, dim=-1) @ F.normalize(y @ b, dim=-1).T
    labels = torch.arange(2 * N)
    ref = 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels))
    ref.backward()
    torch.testing.assert_close(got["loss"].double(), ref.detach(), rtol=1e-6, atol=1e-6)
    for k, r in (("a", a.grad), ("b", b.grad), ("s", s.grad)):
        torch.testing.assert_close(got[k].double(), r, rtol=1e-5, atol=1e-6)
