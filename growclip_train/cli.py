"""``growclip-ds``: data, evaluation and the demo job.

    growclip-ds data make --config demo            # built-in growing corpus (v2) -> data/builtin
    growclip-ds data make --config demo --set data.corpus=v1 --root data/builtin-v1   # the corpus before 2026-12-07
    growclip-ds data split /path/to/img2dataset --steps 4 [--sizes 4,2,1,1 | --by year]
    growclip-ds eval runs/demo/step1 --config demo
    growclip-ds demo                               # make data, grow over all steps on 2 ranks, report
    growclip-ds plan runs/demo --config demo       # what the next growth step would do, and its cost
    growclip-ds plan --config paper --cluster 2x8xH100   # memory per ZeRO stage and GPU-hours of a cluster run
    growclip-ds report runs/demo
    growclip-ds checkpoint resign runs/demo       # re-sign checkpoints you trust with this machine's key
    growclip-ds export runs/vitb/step1 --format hf --out exported/hf   # CLIPModel / open_clip (vit-b-16 style)
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from growclip_ds.config import ConfigError
from growclip_ds.data.manifest import MANIFEST
from growclip_ds.presets import load_config
from growclip_train.local_launch import local_command, local_env



def _data_make(args) -> int:
    from growclip_ds.data.builtin import make_builtin, recorded_corpus

    cfg = load_config(args.config, args.set)
    d = cfg.data
    root = Path(args.root or d.root)
    if (root / "manifest.parquet").exists() and not args.force:
        have = recorded_corpus(root)
        if have != d.corpus and have is not None:
            print(f"{root} holds built-in corpus {have}, the config asks for {d.corpus}: remake it with --force, "
                  f"or use another --root (runs that trained on {root} keep pointing at it)", file=sys.stderr)
            return 2
        print(f"{root}/manifest.parquet exists (corpus {have}); use --force to remake it")
        return 0
    m = make_builtin(root, d.num_steps, d.samples_per_step, d.shard_size, d.eval_per_class, d.retrieval_size,
                     vocab_size=cfg.arch.vocab_size, seed=args.seed, corpus=d.corpus)
    print(f"wrote {len(m.entries)} shards, N^t = {[m.num_samples(t) for t in range(1, m.num_steps + 1)]} to {root}")
    return 0


def _data_split(args) -> int:
    from growclip_ds.data.split import split_corpus
    from growclip_ds.eval.sets import EVAL_DIR, INDEX

    root = Path(args.root)
    if (root / MANIFEST).exists() and not args.force:
        print(f"{root / MANIFEST} exists (runs may have trained on it); use --force to split again")
        return 2
    sizes = [float(x) for x in args.sizes.split(",")] if args.sizes else None
    steps = args.steps if args.steps is not None else (len(sizes) if sizes else None if args.by else 4)
    if sizes and steps != len(sizes):
        raise ValueError(f"--sizes has {len(sizes)} entries for --steps {steps}")
    m = split_corpus(root, steps, sizes, args.by, args.holdout, args.seed, vocab_size=args.vocab_size,
                     tokenizer=not args.no_tokenizer)
    for t in range(1, m.num_steps + 1):
        print(f"step {t}: {len(m.shards([t]))} shards, {m.num_samples([t]):,} new samples, N^{t} = {m.num_samples(t):,}")
    print(f"held out {len(m.holdout)} samples (eval/test/retrieval, eval/selection/retrieval; never trained on)")
    print(f"wrote {root / MANIFEST} and {root / EVAL_DIR / INDEX}")
    return 0


def _eval(args) -> int:
    from growclip_ds.config import replace
    from growclip_ds.data.tokenizer import load_tokenizer
    from growclip_ds.distributed import accelerator_device
    from growclip_ds.eval.evaluate import EvalSets, evaluate
    from growclip_ds.factory import build
    from growclip_ds.model_folder import run_tokenizer_dir
    from growclip_ds.model_folder import read_model

    cfg = load_config(args.config, args.set)
    sd, arch = read_model(Path(args.model))
    model = build(sd, arch, accelerator_device())
    if run_tokenizer_dir(args.model).exists():   # the vocabulary the run was trained with
        cfg = replace(cfg, data=replace(cfg.data, tokenizer=str(run_tokenizer_dir(args.model))))
    role = "selection" if args.split == "selection" else "test"
    res = evaluate(model, EvalSets(cfg.data, arch.image_size, role=role), load_tokenizer(cfg, arch))
    print(json.dumps(res, indent=1))
    return 0


def _export(args) -> int:
    from growclip_ds.export import export

    out = export(args.step_dir, args.format, args.out, args.tokenizer)
    print(f"export: {args.format} model and tokenizer written to {out}")
    return 0


def _demo(args) -> int:
    cfg = load_config(args.config, args.set)
    run_dir = Path(args.run_dir or f"runs/{cfg.name}")
    rc = _data_make(argparse.Namespace(config=args.config, set=args.set, root=None, force=False, seed=0))
    if rc:
        return rc
    steps = range(1, (args.steps or cfg.data.num_steps) + 1)
    for step in steps:
        cmd = local_command(["-m", "growclip_train.launch", "--step", str(step), "--config", args.config, "--run-dir",
                             str(run_dir)] + sum((["--set", s] for s in args.set), []), args.ranks, args.port)
        print("+", " ".join(cmd), flush=True)
        rc = subprocess.call(cmd, env=local_env())
        if rc:
            print(f"step {step} failed with exit code {rc}; re-run the same command to resume", file=sys.stderr)
            return rc
    from growclip_train.report import write_report

    path = write_report(run_dir)
    print(path.read_text())
    print(f"report: {path} and {path.with_suffix('.png')}")
    return 0


def _report(args) -> int:
    from growclip_train.compare import is_comparison, write_comparison
    from growclip_train.report import write_report

    folder = Path(args.run_dir)
    if not folder.is_dir():
        raise SystemExit(f"report: {folder} is not a folder (give a run folder or a folder of run folders)")
    path = write_comparison(folder) if is_comparison(folder) else write_report(folder)
    print(path.read_text())
    return 0


def _plan(args) -> int:
    cfg = load_config(args.config, args.set)
    if args.cluster:
        from growclip_train.plan_cluster import parse_cluster, plan_cluster

        print(plan_cluster(cfg, parse_cluster(args.cluster), args.mfu, args.samples_per_step, args.steps))
        return 0
    if not args.run_dir:
        raise ValueError("plan: name a run folder (what its next step would do) or --cluster NODESxGPUSxKIND")
    from growclip_train.plan_step import plan_next_step

    print(plan_next_step(cfg, Path(args.run_dir)))
    return 0


def _slurm(args) -> int:
    from growclip_train import slurm

    if args.hostfile_check:
        hosts = slurm.parse_hostfile(Path(args.hostfile_check).read_text(), args.hostfile_check)
        print(f"{args.hostfile_check}: {len(hosts)} hosts, {sum(hosts.values())} slots")
        return 0
    config = args.config
    from growclip_train.rundir import RunDir

    recorded = [s.config_file for s in RunDir(args.run_dir).steps() if s.config_file.exists()]
    if config is None:
        config = str(recorded[-1]) if recorded else "paper"
    load_config(config)  # a bad config fails here, not on the cluster
    cmd = slurm.batch_command(args.run_dir, args.step, config, args.nodes, args.gpus_per_node, args.mode,
                              args.time, args.partition, [])
    return slurm.submit_or_print(cmd, args.submit)


def _resign(args) -> int:
    from growclip_train.train.checkpoint import MANIFEST as CKPT_MANIFEST, REFUSED, CheckpointError, resign

    root = Path(args.path)
    folders = sorted({m.parent for m in root.rglob(CKPT_MANIFEST) if REFUSED not in m.relative_to(root).parts}
                     | ({root} if (root / CKPT_MANIFEST).exists() else set()))
    if not folders:
        raise FileNotFoundError(f"checkpoint resign: no checkpoint manifest ({CKPT_MANIFEST}) under {root}")
    failed = 0
    for f in folders:
        try:
            print(resign(f))
        except CheckpointError as e:
            print(f"error: {e}", file=sys.stderr)
            failed += 1
    return 2 if failed else 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="growclip-ds", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", default="demo", help="preset name or JSON file")
    common.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE")

    data = sub.add_parser("data", help="make or split image-text shards").add_subparsers(dest="what", required=True)
    mk = data.add_parser("make", parents=[common], help="write the built-in growing corpus (data.corpus: v2, the "
                                                        "default, or v1)")
    mk.add_argument("--root", default=None, help="output folder (default: data.root)")
    mk.add_argument("--seed", type=int, default=0)
    mk.add_argument("--force", action="store_true")
    mk.set_defaults(fn=_data_make)
    sp = data.add_parser("split", help="an img2dataset folder -> growth steps, held-out evaluation sets and a "
                                       "tokenizer (growclip_ds/data/split.py)")
    sp.add_argument("root", help="the img2dataset output folder (NNNNN.tar + NNNNN.parquet)")
    sp.add_argument("--steps", type=int, default=None, help="growth steps (default 4; with --by: one per value)")
    sp.add_argument("--sizes", default=None, metavar="W1,W2,...",
                    help="relative step sizes, e.g. 4,2,1,1 (default: equal)")
    sp.add_argument("--by", default=None, metavar="COLUMN",
                    help="steps from this parquet/json column (e.g. year, from img2dataset's "
                         "--save_additional_columns), oldest first")
    sp.add_argument("--holdout", type=int, default=None, metavar="N",
                    help="held-out pairs in each of the test and selection sets (default: 5%% of the "
                         "samples, at most 1000)")
    sp.add_argument("--vocab-size", type=int, default=49408,
                    help="model vocabulary of the BPE trained on step 1's captions (arch.vocab_size must be "
                         ">= it; the demo preset has 512)")
    sp.add_argument("--no-tokenizer", action="store_true", help="do not train a tokenizer (set data.tokenizer)")
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--force", action="store_true", help="split again although a manifest exists")
    sp.set_defaults(fn=_data_split)

    ev = sub.add_parser("eval", parents=[common], help="zero-shot and retrieval eval of a consolidated model")
    ev.add_argument("model", help="a finished step folder (its model and architecture)")
    ev.add_argument("--split", default="test", choices=("test", "zero_shot", "selection"),
                    help="test (alias zero_shot): the sets numbers are reported on; selection: those choices are "
                         "made on")
    ev.set_defaults(fn=_eval)

    ex = sub.add_parser("export", help="a step's model as a Hugging Face folder (CLIPModel where CLIP can express it, "
                                       "else with its own code: AutoModel, trust_remote_code=True) or an open_clip "
                                       "checkpoint (patch stem, arch.tower=clip: growclip_ds/export.py)")
    ex.add_argument("step_dir", help="a finished step folder (its model and architecture)")
    ex.add_argument("--format", required=True, choices=("hf", "open_clip"))
    ex.add_argument("--out", required=True, help="a new folder")
    ex.add_argument("--tokenizer", default=None, help="tokenizer folder (default: the run's copy, <run>/tokenizer)")
    ex.set_defaults(fn=_export)

    dm = sub.add_parser("demo", parents=[common], help="the main job: data, training on N ranks, report")
    dm.add_argument("--run-dir", default=None)
    dm.add_argument("--ranks", type=int, default=2)
    dm.add_argument("--steps", type=int, default=None, help="growth steps to run (default: data.num_steps)")
    dm.add_argument("--port", type=int, default=29611)
    dm.set_defaults(fn=_demo)

    rp = sub.add_parser("report", help="report.md + report.png of a run folder, or comparison.md + PNGs of a "
                                       "folder of run folders (one method each, as benchmarks/reproduce.py makes)")
    rp.add_argument("run_dir", help="a run folder, or a folder of run folders")
    rp.set_defaults(fn=_report)
    pl = sub.add_parser("plan", parents=[common], help="what the next growth step of a run would do, and its cost; "
                                                       "or, with --cluster, the memory and GPU-hours of a whole run")
    pl.add_argument("run_dir", nargs="?", default=None)
    pl.add_argument("--cluster", default=None, metavar="NODESxGPUSxKIND", help="e.g. 2x8xH100, 16x1xV100 "
                    "(growclip_train/plan_cluster.py; no run folder needed)")
    pl.add_argument("--mfu", type=float, default=0.4, help="--cluster: the model FLOPs utilisation assumed")
    pl.add_argument("--samples-per-step", type=float, default=3.0e6,
                    help="--cluster: new samples per growth step (default CC12M / 4)")
    pl.add_argument("--steps", type=int, default=4, help="--cluster: growth steps")
    pl.set_defaults(fn=_plan)

    sl = sub.add_parser("slurm", help="print (or submit) the sbatch command for a run folder")
    sl.add_argument("run_dir")
    sl.add_argument("--step", type=int, default=None, help="one growth step (default: the whole run)")
    sl.add_argument("--config", default=None, help="default: the run's recorded config, else 'paper'")
    sl.add_argument("--nodes", type=int, default=1)
    sl.add_argument("--gpus-per-node", type=int, default=8)
    sl.add_argument("--mode", choices=("srun", "hostfile"), default="srun")
    sl.add_argument("--time", default="24:00:00")
    sl.add_argument("--partition", default=None)
    sl.add_argument("--hostfile-check", default=None, metavar="FILE", help="validate a hostfile and exit")
    sl.add_argument("--submit", action="store_true", help="run sbatch instead of printing the command")
    sl.set_defaults(fn=_slurm)

    ck = sub.add_parser("checkpoint", help="checkpoint maintenance").add_subparsers(dest="what", required=True)
    rs = ck.add_parser("resign", help="sign checkpoints you trust with this machine's key (after a lost key or a "
                                      "move between clusters); each must still hold exactly the files it was saved with")
    rs.add_argument("path", help="a checkpoint folder, or any folder above checkpoints (a run folder)")
    rs.set_defaults(fn=_resign)

    args = p.parse_args(argv)
    try:
        return args.fn(args)
    except (ConfigError, FileNotFoundError, FileExistsError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
