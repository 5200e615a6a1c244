"""The contrastive loss on 2 gloo ranks equals a float64 single-process recomputation."""
import torch
import torch.nn.functional as F

from tests.rank_worker import N, loss_data


def test_loss_and_grads_on_two_ranks_equal_float64_reference(rank_checks):
    got = torch.load(rank_checks[("loss",)])      # tests/rank_worker.py's loss job, 2 ranks through torchrun
    x, y, a0, b0 = (t.double() for t in loss_data())
    a, b = a0.clone().requires_grad_(), b0.clone().requires_grad_()
    s = torch.tensor(2.5, dtype=torch.float64, requires_grad=True)
    logits = s.exp() * F.normalize(x @ a, dim=-1) @ F.normalize(y @ b, dim=-1).T
    labels = torch.arange(2 * N)
    ref = 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels))
    ref.backward()
    torch.testing.assert_close(got["loss"].double(), ref.detach(), rtol=1e-6, atol=1e-6)
    for k, r in (("a", a.grad), ("b", b.grad), ("s", s.grad)):
        torch.testing.assert_close(got[k].double(), r, rtol=1e-5, atol=1e-6)
