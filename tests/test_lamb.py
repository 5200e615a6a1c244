"""PartitionedLamb under ZeRO-1/2/3 at 2 and 3 ranks equals unpartitioned timm LAMB in one process;
timm's LAMB as a plain client optimizer under ZeRO does not. Cases run by conftest.rank_checks
(one launch per world size)."""
import pytest
import torch

from tests.rank_worker import LR, STEPS, WD, batch, groups, make_model


CASES = [(1, 2, "exact"), (3, 2, "exact"), (2, 2, "naive"), (2, 3, "exact")]   # (ZeRO stage, world, mode)


@pytest.fixture(scope="module")
def results(rank_checks):
    return {case: torch.load(rank_checks[("lamb",) + case]) for case in CASES}


@pytest.fixture(scope="module")
def reference():
    from timm.optim import Lamb

    model = make_model()
    opt = Lamb(groups(model), lr=LR, max_grad_norm=None)
    for step in range(STEPS):
        x, y = batch(step)
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        opt.step()
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def _max_rel(a, b):
    return max(((a[k] - b[k]).norm() / b[k].norm()).item() for k in b)


# every ZeRO stage once and both world sizes
@pytest.mark.parametrize("stage,world", [(1, 2), (2, 3), (3, 2)])
def test_partitioned_lamb_equals_single_process_lamb(stage, world, reference, results):
    got = results[(stage, world, "exact")]
    assert _max_rel(got["state"], reference) < 1e-6
    # float64 trust ratios of step 1: m_hat = g, v_hat = g^2, so u = g / (|g| + eps) + wd * w
    model = make_model().double()
    x, y = batch(0)
    torch.nn.functional.mse_loss(model(x.double()), y.double()).backward()
    for n, p in model.named_parameters():
        if n.endswith("weight"):
            u = p.grad / (p.grad.abs() + 1e-6) + WD * p.detach()
            assert got["trust1"][n] == pytest.approx((p.detach().norm() / u.norm()).item(), rel=1e-6)


def test_naive_client_lamb_under_zero_differs(reference, results):
    got = results[(2, 2, "naive")]
    assert _max_rel(got["state"], reference) > 1e-3
