"""Training throughput, MFU, data wait and peak memory of the DeepSpeed engine, with a plain PyTorch
DDP loop on the same model, data and ranks timed in the same run (blocks interleaved A B A B), and
optionally the engine after ``engine.compile()`` (``--compile``) and open_clip's own model and loss
under DDP on the same architecture and weights (``--peer open_clip``; needs open_clip and an
architecture it can express: ``arch.stem=patch``, ``arch.tower=clip``).

    python benchmarks/throughput.py --config demo --ranks 2 --zero 2 --steps 10 --rounds 3
    python benchmarks/throughput.py --config demo --ranks 2 --zero 3 --data shards
    python benchmarks/throughput.py --config demo --set arch.stem=patch ... --set arch.tower=clip --peer open_clip --compile
    python benchmarks/throughput.py ... --peer open_clip --profile runs/profile   # + torch.profiler tables per loop
    torchrun --nproc_per_node 8 benchmarks/throughput.py --config vit-b-16 --precision bf16 ...  # GPU

Without RANK in the environment it starts ``--ranks`` local processes with torchrun (CPU: gloo).
The engine is built by ``growclip_train.train.engine.build_engine``, the trainer's own function.
MFU = model FLOPs (3 x forward per sample) / peak; on CPU the peak is an fp32 matmul measured by
all ranks at once in the same run, on a GPU the data-sheet peak (``common.PEAK_FLOPS``).
Writes docs/benchmarks/throughput_<config>_zero<k>_w<ranks>_<device>_<date>.{json,md}.
"""
from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import REPO, device_name, measure_matmul_peak, table_peak, write_record  # noqa: E402


SYNTH_EOT = 3   # the end-of-text id of the synthetic captions


def batches(args, cfg, rank: int, world: int, device):
    """Endless (images, tokens) micro-batches: fixed random tensors, or the real shard loader."""
    import torch

    arch, t = cfg.arch, cfg.train
    if args.data == "synthetic":
        g = torch.Generator().manual_seed(rank)
        images = torch.randn(t.micro_batch, 3, arch.image_size, arch.image_size, generator=g).to(device)
        tokens = torch.randint(SYNTH_EOT + 1, arch.vocab_size, (t.micro_batch, arch.context_length), generator=g)
        tokens[:, -1] = SYNTH_EOT          # one end-of-text token, last: both models pool the same position
        tokens = tokens.to(device)
        while True:
            yield images, tokens
    from growclip_ds.data.loader import EpochPlan, make_loader
    from growclip_ds.data.manifest import Manifest
    from growclip_ds.data.tokenizer import load_tokenizer

    shards = [e.path for e in Manifest.load(cfg.data.root).shards(cfg.data.num_steps)]
    plan = EpochPlan(shards=shards, seed=0, epoch=0, rank=rank, world=world, micro_batch=t.micro_batch,
                     batches=10 ** 9, num_workers=cfg.data.num_workers, resample=True)
    for b in make_loader(plan, arch.image_size, load_tokenizer(cfg, arch)):
        yield b["images"].to(device, non_blocking=True), b["tokens"].to(device, non_blocking=True)


class DDPTrainer:
    """The reference: torch DDP, the same optimizer groups and clipping, gradient accumulation."""

    def __init__(self, model, t, world: int, device, groups=None):
        import torch
        from torch.nn.parallel import DistributedDataParallel

        from growclip_train.train.engine import param_groups

        self.model = DistributedDataParallel(model.to(device), device_ids=[device.index] if device.type == "cuda" else None)
        groups = groups or param_groups(model, t.weight_decay)
        if t.optimizer == "lamb":
            from timm.optim import Lamb
            self.opt = Lamb(groups, lr=t.lr, betas=tuple(t.betas), eps=t.eps, max_grad_norm=None)
        else:
            self.opt = torch.optim.AdamW(groups, lr=t.lr, betas=tuple(t.betas), eps=t.eps)
        self.accum, self.clip = t.grad_accum(world), t.grad_clip
        self.autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=t.precision == "bf16")

    def step(self, data, loss_fn, clock) -> float:
        import contextlib

        import torch

        for i in range(self.accum):
            sync = contextlib.nullcontext() if i == self.accum - 1 else self.model.no_sync()
            images, tokens = next(data)
            with sync, self.autocast:
                loss = loss_fn(*self.model(images, tokens))
                clock("forward")
                loss.backward()             # DDP all-reduces gradient buckets during backward
                clock("backward")
        if self.clip:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        clock("step")
        return loss.item()


def engine_step(engine, data, accum: int, loss_fn, clock) -> float:
    for _ in range(accum):
        images, tokens = next(data)
        loss = loss_fn(*engine(images, tokens))
        clock("forward")
        engine.backward(loss)               # ZeRO reduces gradient buckets during backward
        clock("backward")
        engine.step()                       # clipping, optimizer on this rank's partition, all-gather
        clock("step")
    return loss.item()


class Clock:
    """Adds the time since the previous mark to a named part (forward / backward / step)."""

    def __init__(self, sync):
        self.sync, self.parts, self.t = sync, {}, time.perf_counter()

    def start(self):
        self.sync()
        self.t = time.perf_counter()

    def __call__(self, part: str):
        self.sync()
        now = time.perf_counter()
        self.parts[part] = self.parts.get(part, 0.0) + now - self.t
        self.t = now


class Timed:
    """Wraps a batch iterator to add up the time spent waiting for it."""

    def __init__(self, it):
        self.it, self.wait = it, 0.0

    def __next__(self):
        t0 = time.perf_counter()
        b = next(self.it)
        self.wait += time.perf_counter() - t0
        return b


def peak_memory(device) -> float:
    """GiB: the CUDA allocator's peak, or this process's peak RSS on CPU."""
    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2 ** 30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20


def worker(args) -> None:
    import deepspeed
    import torch
    import torch.distributed as dist

    from growclip_ds.loss import clip_loss
    from growclip_ds.model import GrowCLIP, param_count
    from growclip_ds.model.flops import hardware_train_flops, train_flops
    from growclip_train.presets import load_config
    from growclip_train.accelerator import on_cpu
    from growclip_train.train.engine import build_engine

    overrides = [f"train.zero_stage={args.zero}", f"train.precision={args.precision}",
                 f"train.grad_checkpointing={args.grad_ckpt}"] + args.set
    if args.micro_batch:
        overrides.append(f"train.micro_batch={args.micro_batch}")
    cfg = load_config(args.config, overrides)
    cpu = on_cpu()
    deepspeed.init_distributed(dist_backend="gloo" if cpu else "nccl")
    rank, world = dist.get_rank(), dist.get_world_size()
    device = torch.device("cpu") if cpu else torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dev = device_name()
    dtype = torch.float32 if args.precision == "fp32" else torch.bfloat16
    dist.barrier()
    peak = torch.tensor([measure_matmul_peak(dtype, device, n=args.matmul_n)], dtype=torch.float64)
    dist.all_reduce(peak)                 # what all ranks together reach, measured at the same time
    sheet = table_peak(dev, args.precision)
    peak_total = sheet * world if sheet else peak.item()

    arch, t = cfg.arch, cfg.train
    accum = t.grad_accum(world)
    model_ds, model_ddp = GrowCLIP(arch, seed=t.seed), GrowCLIP(arch, seed=t.seed)
    for m in (model_ds, model_ddp):
        m.set_grad_checkpointing(args.grad_ckpt)
    engine, _, _ = build_engine(model_ds, t, world, total_steps=10 ** 6, ds_config_file=args.ds_config or None)
    ddp = DDPTrainer(model_ddp, t, world, device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    clocks = {"deepspeed": Clock(sync), "ddp": Clock(sync)}
    runs = {"deepspeed": lambda d: engine_step(engine, d, accum, clip_loss, clocks["deepspeed"]),
            "ddp": lambda d: ddp.step(d, clip_loss, clocks["ddp"])}
    if args.compile:
        model_c = GrowCLIP(arch, seed=t.seed)
        model_c.set_grad_checkpointing(args.grad_ckpt)
        engine_c, _, _ = build_engine(model_c, t, world, total_steps=10 ** 6, ds_config_file=args.ds_config or None)
        engine_c.compile()                 # torch.compile through DeepSpeed; compiles in the warm-up steps
        clocks["deepspeed+compile"] = Clock(sync)
        runs["deepspeed+compile"] = lambda d: engine_step(engine_c, d, accum, clip_loss, clocks["deepspeed+compile"])
    if args.peer == "open_clip":
        peer, peer_loss = open_clip_peer(GrowCLIP(arch, seed=t.seed).state_dict(), arch, rank, world)
        groups = [{"params": [p for p in peer.parameters() if p.ndim >= 2], "weight_decay": t.weight_decay},
                  {"params": [p for p in peer.parameters() if p.ndim < 2], "weight_decay": 0.0}]
        oc = DDPTrainer(peer, t, world, device, groups)
        clocks["open_clip"] = Clock(sync)
        runs["open_clip"] = lambda d: oc.step(d, peer_loss, clocks["open_clip"])
    data = {k: Timed(batches(args, cfg, rank, world, device)) for k in runs}
    times = {k: [] for k in runs}
    waits = {k: [] for k in runs}
    first_loss, mem = {}, {}
    for r in range(args.rounds):
        for k, step in runs.items():
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            for i in range(args.steps + (args.warmup if r == 0 else 0)):
                dist.barrier()
                data[k].wait = 0.0
                timed = r > 0 or i >= args.warmup
                if not timed:
                    parts_before = dict(clocks[k].parts)
                clocks[k].start()
                t0 = time.perf_counter()
                loss = step(data[k])
                sync()
                if timed:
                    times[k].append(time.perf_counter() - t0)
                    waits[k].append(data[k].wait)
                else:
                    clocks[k].parts = parts_before
                first_loss.setdefault(k, loss)
            mem[k] = max(mem.get(k, 0.0), peak_memory(device))
    if args.profile:
        profile_loops(args, runs, data, rank)
    gathered = [None] * world
    dist.all_gather_object(gathered, {"times": times, "waits": waits})
    if rank == 0:
        flops = train_flops(arch) * t.global_batch
        hw = hardware_train_flops(arch, args.grad_ckpt) * t.global_batch
        res = {}
        for k in runs:
            # a step ends when its slowest rank ends; take the per-step max over ranks
            step_s = [max(g["times"][k][i] for g in gathered) for i in range(len(times[k]))]
            wait_s = [max(g["waits"][k][i] for g in gathered) for i in range(len(times[k]))]
            med = statistics.median(step_s)
            res[k] = {"median_step_s": med, "samples_per_s": t.global_batch / med,
                      "samples_per_s_per_device": t.global_batch / med / world,
                      "model_flops_per_s": flops / med, "mfu": flops / med / peak_total,
                      "hfu": hw / med / peak_total, "data_wait_share": sum(wait_s) / sum(step_s),
                      "peak_memory_gib": mem[k], "first_loss": first_loss[k], "steps_timed": len(step_s),
                      "rank0_mean_s": {part: v / len(step_s) for part, v in clocks[k].parts.items()}}
        report(args, cfg, world, dev, peak.item(), sheet, res, param_count(arch), flops)
    from growclip_train.accelerator import release_shm_buffer

    dist.barrier()
    release_shm_buffer()
    dist.destroy_process_group()


def profile_loops(args, runs: dict, data: dict, rank: int, steps: int = 3) -> None:
    """``steps`` steady-state steps of each loop under torch.profiler (after the timed rounds): rank 0 writes
    each loop's operators by self CPU time to ``<--profile>/<loop>.txt`` and a Chrome trace beside it."""
    import torch.distributed as dist
    from torch.profiler import ProfilerActivity, profile

    out = Path(args.profile)
    out.mkdir(parents=True, exist_ok=True)
    for k, step in runs.items():
        dist.barrier()
        with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
            for _ in range(steps):
                step(data[k])
        if rank == 0:
            table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=40)
            (out / f"{k}.txt").write_text(f"{k}: {steps} steps, rank 0\n{table}\n")
            prof.export_chrome_trace(str(out / f"{k}.trace.json"))
            print(f"profile of {k}: {out / (k + '.txt')}")


def open_clip_peer(state: dict, arch, rank: int, world: int):
    """open_clip's CLIP model holding our initial weights (growclip_ds.export's mapping: the same
    function, so the first losses agree) and open_clip's own loss, gathered as ours is."""
    import open_clip

    from growclip_ds.export import check_exportable, open_clip_config, open_clip_state

    check_exportable(arch)
    eos = type("Tok", (), {"eos_token_id": SYNTH_EOT})()
    model = open_clip.CLIP(**open_clip_config(arch, eos)["model_cfg"])
    model.load_state_dict(open_clip_state(state, arch))
    loss = open_clip.ClipLoss(local_loss=True, gather_with_grad=True, cache_labels=True, rank=rank, world_size=world)
    return model, loss


def report(args, cfg, world, dev, measured_peak, sheet, res, params, step_flops) -> None:
    ratio = res["deepspeed"]["median_step_s"] / res["ddp"]["median_step_s"]
    record = {"config": args.config, "overrides": args.set, "ds_config": args.ds_config, "params": params,
              "arch": cfg.arch.to_dict(),
              "world_size": world, "zero_stage": args.zero, "precision": args.precision,
              "micro_batch": cfg.train.micro_batch, "global_batch": cfg.train.global_batch,
              "grad_checkpointing": args.grad_ckpt, "data": args.data, "steps": args.steps, "rounds": args.rounds,
              "train_flops_per_step": step_flops, "measured_matmul_peak_flops": measured_peak,
              "datasheet_peak_flops_per_device": sheet, "results": res, "deepspeed_over_ddp_step_time": ratio,
              "memory_note": "peak RSS of the process (both models live in it)" if dev == "cpu" else
              "torch.cuda.max_memory_allocated per mode"}
    peak_note = (f"data-sheet peak {sheet / 1e12:.1f} TFLOP/s per device" if sheet else
                 f"measured {args.precision} matmul peak {measured_peak / 1e9:.1f} GFLOP/s (all ranks at once)")
    table = [f"# Throughput: {args.config} ({params:,} params), ZeRO-{args.zero}, {world} ranks on {dev}, "
             f"{args.precision}, micro batch {cfg.train.micro_batch}, global batch {cfg.train.global_batch}, "
             f"grad ckpt {args.grad_ckpt}, {args.data} data",
             "", f"MFU against the {peak_note}.", "",
             "| loop | step s (median) | samples/s | per device | model GFLOP/s | MFU | HFU | data wait | peak mem GiB |",
             "|---|---|---|---|---|---|---|---|---|"]
    for k, r in res.items():
        table.append(f"| {k} | {r['median_step_s']:.4f} | {r['samples_per_s']:.1f} | {r['samples_per_s_per_device']:.1f} | "
                     f"{r['model_flops_per_s'] / 1e9:.2f} | {r['mfu']:.1%} | {r['hfu']:.1%} | "
                     f"{r['data_wait_share']:.1%} | {r['peak_memory_gib']:.2f} |")
    table += ["", "Where a step goes (rank 0, mean ms; the backward includes the gradient reduction):", "",
              "| loop | forward+loss | backward | optimizer step |", "|---|---|---|---|"]
    for k, r in res.items():
        ms = {p: 1e3 * v for p, v in r["rank0_mean_s"].items()}
        table.append(f"| {k} | {ms['forward']:.1f} | {ms['backward']:.1f} | {ms['step']:.1f} |")
    table += ["", f"DeepSpeed / DDP step time: **{ratio:.3f}** (first-step loss {res['deepspeed']['first_loss']:.5f} "
              f"vs {res['ddp']['first_loss']:.5f})"]
    for k in ("deepspeed+compile", "open_clip"):
        if k in res:
            table.append(f"samples/s, deepspeed / {k}: **{res['deepspeed']['samples_per_s'] / res[k]['samples_per_s']:.3f}**"
                         f" (first-step loss {res[k]['first_loss']:.5f})")
    if "deepspeed+compile" in res and "open_clip" in res:
        table.append(f"samples/s, deepspeed+compile / open_clip: "
                     f"**{res['deepspeed+compile']['samples_per_s'] / res['open_clip']['samples_per_s']:.3f}**")
    print("\n".join(table))
    path = write_record(f"throughput_{args.config}{args.tag and '-' + args.tag}_zero{args.zero}_w{world}", record, table, dev)
    print(f"wrote {path}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="demo", help="preset name or JSON file")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override, repeatable")
    p.add_argument("--ranks", type=int, default=2, help="local processes to start (CPU / one node)")
    p.add_argument("--zero", type=int, default=2, choices=(0, 1, 2, 3))
    p.add_argument("--precision", default="fp32", choices=("fp32", "bf16"))
    p.add_argument("--micro-batch", type=int, default=0, help="0: the config's train.micro_batch")
    p.add_argument("--grad-ckpt", action="store_true", help="activation checkpointing in every block")
    p.add_argument("--data", default="synthetic", choices=("synthetic", "shards"))
    p.add_argument("--steps", type=int, default=10, help="timed optimizer steps per block")
    p.add_argument("--rounds", type=int, default=3, help="blocks per loop, interleaved")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--matmul-n", type=int, default=1024)
    p.add_argument("--tag", default="", help="added to the record's file name (e.g. for --set variants)")
    p.add_argument("--compile", action="store_true", help="also time the engine after engine.compile(), same run")
    p.add_argument("--peer", default="", choices=("", "open_clip"),
                   help="also time open_clip's model and loss under DDP on the same architecture and weights")
    p.add_argument("--ds-config", default="", metavar="JSON",
                   help="DeepSpeed config to time instead of ds_configs/zero<--zero>.json (bucket sizes, overlap)")
    p.add_argument("--profile", default="", metavar="DIR",
                   help="after timing, profile 3 steps of each loop (torch.profiler): operator tables per loop in DIR")
    p.add_argument("--master-port", type=int, default=29720)
    args = p.parse_args()
    if "RANK" in os.environ:
        return worker(args)
    from growclip_train.local_launch import local_command, local_env

    cmd = local_command([__file__] + sys.argv[1:], args.ranks, args.master_port, launcher="torchrun")
    sys.exit(subprocess.run(cmd, env=local_env()).returncode)


if __name__ == "__main__":
    main()
