"""What a growth step was trained with, and the checks that keep a resume honest.

A step records its config (``step<t>/config.json``) and a fingerprint of its data
(``step<t>/data.json``: the manifest's rows for D^t with their held-out keys, each shard's size, the
run tokenizer's files) when its first phase starts. A later launch of that step compares:

- config: any field that changes what is trained (everything but ``OPERATIONAL``) refuses the resume
  with the field named, unless ``--allow-config-change`` (then the change is recorded in
  ``config_changes.jsonl`` and GAS scores computed under the old values are set aside);
- data: a different manifest, a changed shard or tokenizer refuses the resume (the fast-forward of
  a phase counts samples of the recorded data; held-out keys must not move into training);
- ranks: after the process group starts, every rank's config, data and key hashes are gathered and
  must agree, or the job stops naming the ranks and what differs.
"""
from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

from growclip_ds.config import ConfigError
from growclip_ds.fileio import atomic_write_text

# fields that change how a run is operated, not what it computes: free to change at a resume
OPERATIONAL = {
    "train.log_every", "train.checkpoint_every", "train.checkpoint_every_minutes", "train.keep_checkpoints",
    "train.max_nonfinite", "train.collective_timeout_s", "train.grad_checkpointing", "train.monitor", "data.num_workers", "data.max_bad_in_row",
    "data.max_idle_minutes", "data.warn_bad_fraction",
    "train.zero_stage", "train.micro_batch",   # how the work is partitioned, not what is computed
    "data.root", "data.tokenizer",             # where the data is: its content is compared by data.json
}


def flat(d: dict, prefix: str = "") -> dict:
    """{"train.lr": 1e-3, ...} from a nested config dict."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def config_changes(old: dict, new: dict) -> dict:
    """{field: (old, new)} for every training-relevant field that differs."""
    a, b = flat(old), flat(new)
    return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b))
            if k not in OPERATIONAL and json.dumps(a.get(k)) != json.dumps(b.get(k))}


def _sha(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def tokenizer_hash(folder: Path) -> str | None:
    folder = Path(folder)
    if not folder.is_dir():
        return None
    h = hashlib.sha256()
    for f in sorted(p for p in folder.rglob("*") if p.is_file()):
        h.update(str(f.relative_to(folder)).encode() + b"\0" + f.read_bytes())
    return h.hexdigest()[:16]


def data_fingerprint(cfg, t: int) -> dict:
    """What step t trains on: the manifest rows of steps 1..t (shard, step, samples, held-out keys), each
    shard's byte size, all held-out keys (evaluation must stay out of training) and the tokenizer."""
    from growclip_ds.data.manifest import Manifest

    m = Manifest.load(cfg.data.root)
    rows = [[str(e.path.relative_to(m.root)), e.step, e.num_samples, e.path.stat().st_size if e.path.exists() else None]
            for e in m.shards(t)]
    return {"shards": _sha(rows), "num_shards": len(rows), "num_samples": m.num_samples(t),
            "holdout": _sha(sorted(m.holdout)), "tokenizer": tokenizer_hash(Path(cfg.data.tokenizer)),
            "root": str(Path(cfg.data.root).resolve())}


def _data_diff(old: dict, new: dict) -> list[str]:
    return [k for k in ("shards", "num_shards", "num_samples", "holdout", "tokenizer") if old.get(k) != new.get(k)]


def check_resume(cfg, step_dir, t: int, allow_change: bool, writer: bool, log=print) -> dict:
    """Before a launch of step ``t`` trains: refuse a changed config field or changed data (see the
    module doc); on a first launch, or an allowed change, record what the step runs with. Returns the
    data fingerprint (for ``agreement``); raises ConfigError naming what differs and what to do."""
    new, fp = cfg.to_dict(), data_fingerprint(cfg, t)
    data_file = step_dir.data_file
    if data_file.exists():
        old_fp = json.loads(data_file.read_text())
        bad = _data_diff(old_fp, fp)
        if bad:
            raise ConfigError(
                f"the data of step {t} changed since {step_dir.path} started ({', '.join(bad)} differ from "
                f"{data_file}): resuming would fast-forward over other samples"
                f"{' or train on held-out ones' if 'holdout' in bad else ''}. Restore the data the step started "
                f"with (root {old_fp.get('root')}), or start the step afresh in another run folder")
    if step_dir.config_file.exists():
        changes = config_changes(step_dir.read_config(), new)
        if changes and not allow_change:
            shown = "; ".join(f"{k}: {o!r} -> {n!r}" for k, (o, n) in list(changes.items())[:6])
            raise ConfigError(
                f"{step_dir.path} was started with another config ({shown}); resuming would continue the "
                f"phase under new values. Rerun with the recorded config ({step_dir.config_file}), or pass "
                "--allow-config-change to continue with the new values (the change is recorded)")
        if changes and writer:
            with open(step_dir.changes_file, "a") as f:
                f.write(json.dumps({"time": time.strftime("%Y-%m-%dT%H:%M:%S"),
                                    "changes": {k: list(v) for k, v in changes.items()}}) + "\n")
            log(f"[growclip_ds] --allow-config-change: continuing {step_dir.path} with "
                f"{', '.join(changes)} changed (recorded in {step_dir.changes_file.name})")
            scores = step_dir.gas_scores
            if scores.exists() and not step_dir.phase("gas").finished:
                scores.rename(scores.with_name(f"{scores.name}.{time.strftime('%Y%m%d-%H%M%S')}.old"))
                log(f"[growclip_ds] set aside GAS scores computed under the old config ({scores.name}.*.old)")
    if writer:
        Path(step_dir.path).mkdir(parents=True, exist_ok=True)
        atomic_write_text(step_dir.config_file, json.dumps(new, indent=1))
        if not data_file.exists():
            atomic_write_text(data_file, json.dumps(fp, indent=1))
    return fp


def agreement(cfg, data: dict, key_id: str) -> dict:
    """What every rank must agree on: config, data fingerprint (``check_resume``'s), checkpoint key id."""
    from growclip_train import faults

    conf = cfg.to_dict()
    if faults.skew("stale"):      # fault injection: this rank read a stale config
        conf["train"]["lr"] = conf["train"]["lr"] * 2
    return {"config": conf, "data": data, "key_id": key_id}


def check_ranks_agree(mine: dict) -> None:
    """All-gather every rank's ``agreement`` and raise (on every rank) naming the ranks and fields that
    differ from rank 0's."""
    import torch.distributed as dist

    if not dist.is_initialized() or dist.get_world_size() == 1:
        return
    views = [None] * dist.get_world_size()
    dist.all_gather_object(views, {"config": flat(mine["config"]), "data": mine["data"], "key_id": mine["key_id"]})
    ref, bad = views[0], []
    for r, v in enumerate(views[1:], 1):
        fields = [f"config {k}" for k in sorted(set(ref["config"]) | set(v["config"]))
                  if json.dumps(ref["config"].get(k)) != json.dumps(v["config"].get(k))]
        fields += [f"data {k}" for k in _data_diff(ref["data"], v["data"])]
        fields += ["checkpoint key id"] if v["key_id"] != ref["key_id"] else []
        if fields:
            bad.append(f"rank {r}: {', '.join(fields[:5])}")
    if bad:
        raise ConfigError("ranks disagree with rank 0 on what to train (" + "; ".join(bad) + "): a stale config, "
                          "manifest, tokenizer or checkpoint key on some node. Make every node see the same files "
                          "and key, then rerun")
