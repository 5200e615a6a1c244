"""One rank of the LAMB-under-ZeRO check (run by tests/test_lamb.py through torchrun).

    torchrun --nproc_per_node 2 tests/lamb_worker.py STAGE MODE OUT.pt
MODE: "exact" (growclip_ds PartitionedLamb) or "naive" (timm's Lamb as a client optimizer)."""
import os
import sys

import torch

STEPS, BATCH, LR, WD = 20, 12, 0.02, 0.1


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
    stage, mode, out = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    import deepspeed
    from timm.optim import Lamb

    from growclip_ds.train.lamb import PartitionedLamb, attach_to_engine, zero_segments

    deepspeed.init_distributed(dist_backend="gloo")
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
    torch.distributed.barrier()  # no rank exits while a peer's gloo still talks to it
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
