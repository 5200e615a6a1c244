"""One rank of the multi-rank checks that need no run folder, several per launch (conftest.rank_checks):

    torchrun --nproc_per_node 2 tests/rank_worker.py lamb:STAGE:MODE:OUT.pt loss:OUT.pt ...

lamb (tests/test_lamb.py): MODE "exact" (growclip_train's PartitionedLamb) or "naive" (timm's Lamb as a
client optimizer), a fresh model on a fresh engine per job. loss (tests/test_loss.py): clip_loss and its
gradients averaged over the ranks. Jobs run in turn in one process group."""
import os
import sys

import torch

import growclip_train  # noqa: F401  (the application points DeepSpeed's JIT ops at the venv's prebuilt folder)

STEPS, BATCH, LR, WD = 20, 12, 0.02, 0.1
N, D_IN, D = 6, 5, 4  # the loss check: per-rank batch, input dim, feature dim


def make_model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(13, 7), torch.nn.Tanh(), torch.nn.Linear(7, 11), torch.nn.Tanh(),
                               torch.nn.Linear(11, 3))


def groups(model):
    decay = [p for n, p in model.named_parameters() if n.endswith("weight")]
    rest = [p for n, p in model.named_parameters() if not n.endswith("weight")]
    return [{"params": decay, "weight_decay": WD}, {"params": rest, "weight_decay": 0.0}]


def batch(step):
    g = torch.Generator().manual_seed(1000 + step)
    return torch.randn(BATCH, 13, generator=g), torch.randn(BATCH, 3, generator=g)


def main():
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    from growclip_train import gc_policy

    gc_policy.skip_exit_collection()   # as the application's ranks: 1.5-2 s less per rank exit
    with gc_policy.loading_libraries():
        import deepspeed

    deepspeed.init_distributed(dist_backend="gloo")
    for job in sys.argv[1:]:
        kind, args = job.split(":", 1)
        if kind == "lamb":
            stage, mode, out = args.split(":", 2)
            lamb(int(stage), mode, out)
        else:
            loss(args)
    torch.distributed.barrier()  # no rank exits while a peer's gloo still talks to it
    torch.distributed.destroy_process_group()


def loss_data():
    g = torch.Generator().manual_seed(0)
    return (torch.randn(2 * N, D_IN, generator=g), torch.randn(2 * N, D_IN, generator=g),
            torch.randn(D_IN, D, generator=g), torch.randn(D_IN, D, generator=g))


def loss(out: str):
    import torch.distributed as dist
    import torch.nn.functional as F

    from growclip_ds.loss import clip_loss

    rank = dist.get_rank()
    x, y, a0, b0 = loss_data()
    a, b = a0.clone().requires_grad_(), b0.clone().requires_grad_()
    s = torch.tensor(2.5, requires_grad=True)
    sl = slice(rank * N, (rank + 1) * N)
    value = clip_loss(F.normalize(x[sl] @ a, dim=-1), F.normalize(y[sl] @ b, dim=-1), s.exp())
    value.backward()
    for t in (a.grad, b.grad, s.grad, value.detach()):  # what data parallelism does: average over ranks
        dist.all_reduce(t)
        t /= 2
    if rank == 0:
        torch.save({"loss": value.detach(), "a": a.grad, "b": b.grad, "s": s.grad}, out)
    dist.barrier()


def lamb(stage: int, mode: str, out: str):
    import deepspeed
    from timm.optim import Lamb

    from growclip_train.train.lamb import PartitionedLamb, attach_to_engine, zero_segments

    rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    model = make_model()
    names = {id(p): n for n, p in model.named_parameters()}
    opt = PartitionedLamb(groups(model), lr=LR) if mode == "exact" else Lamb(groups(model), lr=LR, max_grad_norm=None)
    cfg = {"train_batch_size": BATCH, "train_micro_batch_size_per_gpu": BATCH // world,
           "gradient_accumulation_steps": 1, "gradient_clipping": 0.0, "zero_optimization": {"stage": stage},
           "zero_allow_untested_optimizer": True, "steps_per_print": 10 ** 9}
    if stage == 3:
        cfg["zero_optimization"]["stage3_param_persistence_threshold"] = 0
    engine, *_ = deepspeed.initialize(model=model, optimizer=opt, config=cfg)
    attach_to_engine(engine)
    order = [names[id(p)] for p in zero_segments(engine)[1]]
    trust1 = None
    for step in range(STEPS):
        x, y = batch(step)
        sl = slice(rank * BATCH // world, (rank + 1) * BATCH // world)
        loss = torch.nn.functional.mse_loss(engine(x[sl]), y[sl])
        engine.backward(loss)
        engine.step()
        if step == 0 and mode == "exact":
            trust1 = {n: opt.last_trust[i] for i, n in enumerate(order) if i in opt.last_trust}
    params = list(engine.module.parameters())
    ctx = deepspeed.zero.GatheredParameters(params) if stage == 3 else torch.no_grad()
    with ctx:
        state = {n: p.detach().clone() for n, p in engine.module.named_parameters()}
    if rank == 0:
        torch.save({"state": state, "trust1": trust1}, out)
    torch.distributed.barrier()


if __name__ == "__main__":
    main()
