"""``growclip-ds``: data, training, evaluation, planning and export of GrowCLIP runs.

    growclip-ds demo                               # make data, grow over all steps on 2 ranks, report
    growclip-ds data make --config demo            # built-in growing corpus (v2) -> data/builtin
    growclip-ds data make --config demo --set data.corpus=v1 --root data/builtin-v1   # the corpus before 2026-12-07
    growclip-ds data split /path/to/img2dataset --steps 4 [--sizes 4,2,1,1 | --by year]
    growclip-ds eval runs/demo/step1               # with the config (data root, sets) the step recorded
    growclip-ds plan runs/demo                     # what the next growth step would do, and its cost
    growclip-ds plan --config paper --cluster 2x8xH100   # memory per ZeRO stage and GPU-hours of a cluster run
    growclip-ds report runs/demo
    growclip-ds slurm runs/paper --nodes 2         # the sbatch command of a run (--submit runs it)
    growclip-ds checkpoint resign runs/demo       # re-sign checkpoints you trust with this machine's key
    growclip-ds export runs/vitb/step1 --format hf --out exported/hf   # CLIPModel / open_clip (vit-b-16 style)

Exit codes (growclip_train/exit_codes.py): 0 done, 1 unexpected error (with its traceback), 2 usage or
input error (one line naming it), 3 preempted (rerun to resume), 4 diverged, 5 undecodable data.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import growclip_ds
from growclip_ds.data.manifest import MANIFEST
from growclip_ds.errors import USER_ERRORS, InputError
from growclip_ds.fileio import atomic_write_text
from growclip_train.presets import load_config
from growclip_train import exit_codes, gc_policy
from growclip_train.local_launch import local_command, local_env
from growclip_train.log import add_arguments as add_log_arguments, setup as setup_log

SPLIT_RECORD = "split.json"   # the arguments a `data split` folder was made with


def _data_make(args) -> int:
    """0 when the folder already holds what was asked (the corpus is deterministic), 2 when it holds
    something else (nothing a user made is overwritten without --force)."""
    from growclip_ds.data.builtin import CORPUS_FILE, make_builtin, recorded_corpus

    cfg = load_config(args.config, args.set)
    d = cfg.data
    root = Path(args.root or d.root)
    want = {"corpus": d.corpus, "seed": args.seed, "num_steps": d.num_steps, "samples_per_step": d.samples_per_step}
    if (root / MANIFEST).exists() and not args.force:
        have = json.loads((root / CORPUS_FILE).read_text()) if (root / CORPUS_FILE).exists() else \
            {"corpus": recorded_corpus(root)}
        if have == want or (have["corpus"] == "v1" == d.corpus and len(have) == 1):  # v1 folders predate the record
            print(f"{root} already holds built-in corpus {d.corpus}; nothing to do (--force remakes it)")
            return exit_codes.OK
        what = "a user's data (data split)" if have["corpus"] is None else f"built-in data made with {have}"
        raise FileExistsError(f"{root} holds {what}, this command asks for {want}: remake it with --force, or use "
                              f"another --root (runs that trained on {root} keep pointing at it)")
    m = make_builtin(root, d.num_steps, d.samples_per_step, d.shard_size, d.eval_per_class, d.retrieval_size,
                     vocab_size=cfg.arch.vocab_size, seed=args.seed, corpus=d.corpus)
    print(f"wrote {len(m.entries)} shards, N^t = {[m.num_samples(t) for t in range(1, m.num_steps + 1)]} to {root}")
    return exit_codes.OK


def _data_split(args) -> int:
    """Like ``data make``: 0 when the folder was already split with these arguments, 2 when it was split
    otherwise (or before splits were recorded); --force splits again."""
    from growclip_ds.data.split import split_corpus
    from growclip_ds.eval.sets import EVAL_DIR, INDEX

    root = Path(args.root)
    sizes = [float(x) for x in args.sizes.split(",")] if args.sizes else None
    steps = args.steps if args.steps is not None else (len(sizes) if sizes else None if args.by else 4)
    if sizes and steps != len(sizes):
        raise InputError(f"--sizes has {len(sizes)} entries for --steps {steps}")
    want = {"steps": steps, "sizes": sizes, "by": args.by, "holdout": args.holdout, "seed": args.seed,
            "vocab_size": args.vocab_size, "tokenizer": not args.no_tokenizer}
    if (root / MANIFEST).exists() and not args.force:
        record = root / SPLIT_RECORD
        if record.exists() and json.loads(record.read_text()) == want:
            print(f"{root} was already split with these arguments; nothing to do (--force splits again)")
            return exit_codes.OK
        raise FileExistsError(f"{root / MANIFEST} exists, made {'with ' + record.read_text().strip() if record.exists() else 'by an earlier split'}"
                              f" (runs may have trained on it); use --force to split again with {want}")
    m = split_corpus(root, steps, sizes, args.by, args.holdout, args.seed, vocab_size=args.vocab_size,
                     tokenizer=not args.no_tokenizer)
    atomic_write_text(root / SPLIT_RECORD, json.dumps(want))
    for t in range(1, m.num_steps + 1):
        print(f"step {t}: {len(m.shards([t]))} shards, {m.num_samples([t]):,} new samples, N^{t} = {m.num_samples(t):,}")
    print(f"held out {len(m.holdout)} samples (eval/test/retrieval, eval/selection/retrieval; never trained on)")
    print(f"wrote {root / MANIFEST} and {root / EVAL_DIR / INDEX}")
    return exit_codes.OK


def _eval(args) -> int:
    from growclip_train.step_eval import config_for, evaluate_step

    cfg = config_for(args.model, args.config, args.set, "demo", "eval")
    role = "selection" if args.split == "selection" else "test"
    print(json.dumps(evaluate_step(args.model, cfg, role, progress=True), indent=1))
    return exit_codes.OK


def _export(args) -> int:
    from growclip_ds.export import export

    out = export(args.step_dir, args.format, args.out, args.tokenizer)
    print(f"export: {args.format} model and tokenizer written to {out}")
    return exit_codes.OK


def _demo(args) -> int:
    from growclip_train.rundir import default_run_dir

    cfg = load_config(args.config, args.set)
    run_dir = default_run_dir(cfg, args.run_dir)
    rc = _data_make(argparse.Namespace(config=args.config, set=args.set, root=None, force=False, seed=0))
    if rc:
        return rc
    last, start = args.steps or cfg.data.num_steps, time.monotonic()
    for step in range(1, last + 1):
        cmd = local_command(["-m", "growclip_train.launch", "--step", str(step), "--config", args.config, "--run-dir",
                             str(run_dir)] + sum((["--set", s] for s in args.set), []), args.ranks, args.port)
        print(f"[demo] growth step {step}/{last}, {_clock(time.monotonic() - start)} elapsed", flush=True)
        print("+", " ".join(cmd), flush=True)
        rc = subprocess.call(cmd, env=local_env())
        if rc:
            print(f"step {step} failed with exit code {rc}; re-run the same command to resume", file=sys.stderr)
            return rc
    from growclip_train.report import write_report

    path = write_report(run_dir)
    print(path.read_text())
    print(f"[demo] {last} growth steps in {_clock(time.monotonic() - start)}; report: {path} and "
          f"{path.with_suffix('.png')}")
    return exit_codes.OK


def _clock(seconds: float) -> str:
    return f"{int(seconds) // 60}:{int(seconds) % 60:02d}"


def _report(args) -> int:
    from growclip_train.compare import is_comparison, write_comparison
    from growclip_train.report import write_report

    folder = Path(args.run_dir)
    if not folder.is_dir():
        raise FileNotFoundError(f"report: {folder} is not a folder (give a run folder or a folder of run folders)")
    path = write_comparison(folder) if is_comparison(folder) else write_report(folder)
    print(path.read_text())
    return exit_codes.OK


def _plan(args) -> int:
    from growclip_train.step_eval import config_for

    cfg = config_for(None if args.cluster else args.run_dir, args.config, args.set, "demo", "plan")
    if args.cluster:
        from growclip_train.plan_cluster import parse_cluster, plan_cluster

        print(plan_cluster(cfg, parse_cluster(args.cluster), args.mfu, args.samples_per_step, args.steps))
        return exit_codes.OK
    if not args.run_dir:
        raise InputError("plan: name a run folder (what its next step would do) or --cluster NODESxGPUSxKIND")
    from growclip_train.plan_step import plan_next_step

    print(plan_next_step(cfg, Path(args.run_dir)))
    return exit_codes.OK


def _slurm(args) -> int:
    from growclip_train import slurm

    if args.hostfile_check:
        hosts = slurm.parse_hostfile(Path(args.hostfile_check).read_text(), args.hostfile_check)
        print(f"{args.hostfile_check}: {len(hosts)} hosts, {sum(hosts.values())} slots")
        return exit_codes.OK
    if not args.run_dir:
        raise InputError("slurm: name a run folder (or --hostfile-check FILE alone)")
    from growclip_train.step_eval import config_for, recorded_config_file

    config = args.config or str(recorded_config_file(args.run_dir) or "paper")
    config_for(args.run_dir, args.config, [], "paper", "slurm")  # a bad config fails here, not on the cluster
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
    return exit_codes.USAGE if failed else exit_codes.OK


def _config_parents() -> tuple[argparse.ArgumentParser, argparse.ArgumentParser]:
    """--config/--set: for commands that make something (default: demo), and for commands on a run or step
    folder (default: the config the folder recorded)."""
    preset = argparse.ArgumentParser(add_help=False)
    preset.add_argument("--config", default="demo", help="preset name or JSON file")
    preset.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE")
    recorded = argparse.ArgumentParser(add_help=False)
    recorded.add_argument("--config", default=None, help="preset name or JSON file (default: the config the folder "
                                                         "recorded, step<t>/config.json; else demo)")
    recorded.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                          help="override a field of that config")
    return preset, recorded


def _add_data(sub, preset) -> None:
    data = sub.add_parser("data", help="make or split image-text shards").add_subparsers(dest="what", required=True)
    mk = data.add_parser("make", parents=[preset], help="write the built-in growing corpus (data.corpus: v2, the "
                                                        "default, or v1)")
    mk.add_argument("--root", default=None, help="output folder (default: data.root)")
    mk.add_argument("--seed", type=int, default=0)
    mk.add_argument("--force", action="store_true", help="remake it although the folder holds data")
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


def _add_models(sub, recorded) -> None:
    ev = sub.add_parser("eval", parents=[recorded], help="zero-shot and retrieval eval of a consolidated model")
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
    ck = sub.add_parser("checkpoint", help="checkpoint maintenance").add_subparsers(dest="what", required=True)
    rs = ck.add_parser("resign", help="sign checkpoints you trust with this machine's key (after a lost key or a "
                                      "move between clusters); each must still hold exactly the files it was saved with")
    rs.add_argument("path", help="a checkpoint folder, or any folder above checkpoints (a run folder)")
    rs.set_defaults(fn=_resign)


def _add_runs(sub, preset, recorded) -> None:
    dm = sub.add_parser("demo", parents=[preset], help="the main job: data, training on N ranks, report")
    dm.add_argument("--run-dir", default=None, help="default: runs/<config name>")
    dm.add_argument("--ranks", type=int, default=2)
    dm.add_argument("--steps", type=int, default=None, help="growth steps to run (default: data.num_steps)")
    dm.add_argument("--port", type=int, default=29611)
    dm.set_defaults(fn=_demo)
    rp = sub.add_parser("report", help="report.md + report.png of a run folder, or comparison.md + PNGs of a "
                                       "folder of run folders (one method each, as benchmarks/reproduce.py makes)")
    rp.add_argument("run_dir", help="a run folder, or a folder of run folders")
    rp.set_defaults(fn=_report)
    pl = sub.add_parser("plan", parents=[recorded], help="what the next growth step of a run would do, and its cost; "
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
    sl.add_argument("run_dir", nargs="?", default=None)
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


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="growclip-ds", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"growclip-ds {growclip_ds.__version__}")
    add_log_arguments(p)
    sub = p.add_subparsers(dest="cmd", required=True, metavar="{demo,data,eval,plan,report,slurm,checkpoint,export}")
    preset, recorded = _config_parents()
    _add_runs(sub, preset, recorded)
    _add_data(sub, preset)
    _add_models(sub, recorded)
    return p


def main(argv=None) -> int:
    """Run one subcommand; what a user can fix is one line and exit code 2, anything else a traceback (1)."""
    from growclip_train.runlock import RunLocked
    from growclip_train.train.checkpoint import CheckpointError

    args = parser().parse_args(argv)
    setup_log(args.log_level, args.log_ranks)
    gc_policy.skip_exit_collection()
    try:
        return args.fn(args)
    except (*USER_ERRORS, RunLocked, CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return exit_codes.USAGE


if __name__ == "__main__":
    sys.exit(main())
