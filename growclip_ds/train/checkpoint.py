"""Checkpoints: DeepSpeed's own layout for resuming, consolidated safetensors for growth and eval.

- ``<phase>/checkpoints/global_step<N>/`` + ``latest``: DeepSpeed's files, then our signed manifest
  (size and keyed hash of every file, metadata; ``signing``), then ``latest``; resume takes the
  newest checkpoint that verifies and says which it refused and why. Nothing is unpickled from a
  folder whose manifest does not verify. At another world size it loads a universal conversion.
- a model folder (``rundir.MODEL`` + ``rundir.ARCH``, e.g. ``<run>/step<t>``): all ZeRO partitions merged by DeepSpeed's
  zero_to_fp32 machinery, written under a temporary name and then ``os.replace``d.
"""
from __future__ import annotations

import hmac
import json
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .. import faults, rundir
from ..config import ArchConfig
from ..distributed import any_rank, barrier, rank_world
from ..model import param_count
from . import cadence, nonfinite, signing
from . import universal as universal_ckpt


def atomic_write_text(path: Path, text: str) -> None:
    """Write to a temporary name, fsync it, rename over ``path``, fsync the folder: after a power
    loss ``path`` holds either the old or the new text, never an empty file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


MANIFEST = "growclip_manifest.json"


class CheckpointError(RuntimeError):
    pass


def latest_tag(ckpt_dir: Path) -> str | None:
    f = Path(ckpt_dir) / "latest"
    return f.read_text().strip() if f.exists() else None


def write_manifest(folder: Path, tag: str, meta: dict) -> None:
    """Size and keyed hash of every file of ``folder``, our metadata, and the manifest's own MAC."""
    k = signing.key()
    files = {str(f.relative_to(folder)): {"bytes": f.stat().st_size, "hmac": signing.file_mac(f, k)}
             for f in sorted(folder.rglob("*")) if f.is_file() and f.name != MANIFEST}
    body = {"tag": tag, "meta": meta, "files": files}
    atomic_write_text(folder / MANIFEST, json.dumps({**body, "signature": signing.sign(body, k)}))


def save(engine, ckpt_dir: Path, global_step: int, meta: dict, keep: int = 0) -> str:
    """DeepSpeed's checkpoint, then a manifest (size and CRC32 of every file, our metadata), then
    ``latest`` (atomically), in that order: a crash or a full disk at any point leaves the previous
    ``latest`` valid. A folder of the same tag left by an earlier, unfinished save (perhaps at
    another world size, with more partition files) is removed first, so a checkpoint never mixes
    files of two saves. A failed save removes its partial folder and raises on every rank. After a
    good save, all but the ``keep`` newest checkpoints are deleted (0: none)."""
    rank, _ = rank_world()
    tag = f"global_step{global_step}"
    folder = Path(ckpt_dir) / tag
    stale = rank == 0 and folder.exists()
    if any_rank(stale and tag == latest_tag(ckpt_dir)):   # every rank raises, none waits for rank 0
        raise CheckpointError(f"{folder} is the checkpoint `latest` names; refusing to save over it")
    if stale:
        print(f"[growclip_ds] removing {folder}: left by a save that did not finish", flush=True)
        shutil.rmtree(folder)
    barrier()
    failed = None
    faults.disk_full(engine, global_step)
    try:
        engine.save_checkpoint(str(ckpt_dir), tag=tag, client_state={"growclip": meta}, save_latest=False)
    except (OSError, RuntimeError) as e:  # a full disk surfaces from torch.save as a RuntimeError
        failed = e
        barrier()  # the barrier DeepSpeed's save ends with, which this rank skipped
    faults.hit("save", global_step)
    if not any_rank(failed is not None) and rank == 0:
        try:
            write_manifest(folder, tag, meta)
            atomic_write_text(Path(ckpt_dir) / "latest", tag)
            cadence.retain(ckpt_dir, keep, tag)
        except OSError as e:
            failed = e
    if any_rank(failed is not None):
        if rank == 0:
            shutil.rmtree(folder, ignore_errors=True)
        prev = latest_tag(ckpt_dir)
        free = shutil.disk_usage(ckpt_dir).free / 2 ** 20
        raise CheckpointError(f"saving checkpoint {folder} failed ({str(failed or 'on another rank')[:300]}; "
                              f"{free:.1f} MiB free there); removed it. The previous checkpoint {prev or '(none)'} "
                              "is intact: free disk space and rerun the same command to resume from it")
    return tag


def verify(folder: Path) -> str | None:
    """None if ``folder`` is a complete checkpoint signed with our key, else why not (naming the file).
    Reads bytes only: nothing is unpickled."""
    man = folder / MANIFEST
    if not man.exists():
        return f"{man} is missing (the save did not finish)"
    try:
        doc = json.loads(man.read_text())
        body = {k: doc[k] for k in ("tag", "meta", "files")}
    except (json.JSONDecodeError, KeyError, TypeError):
        return f"{man} is unreadable"
    k = signing.key()
    if not hmac.compare_digest(str(doc.get("signature", "")), signing.sign(body, k)):
        return (f"{man} is not signed with this machine's checkpoint key ({signing.KEY_ENV} or "
                f"{signing.key_file()}): written elsewhere, before keyed manifests, or edited")
    for rel, want in body["files"].items():
        f = folder / rel
        if not f.exists():
            return f"{f} is missing"
        if f.stat().st_size != want["bytes"]:
            return f"{f} has {f.stat().st_size} bytes, the manifest says {want['bytes']} (truncated?)"
        if not hmac.compare_digest(signing.file_mac(f, k), want["hmac"]):
            return f"{f} fails its keyed hash (corrupt or tampered)"
    return None


def read_meta(folder: Path) -> dict:
    return json.loads((folder / MANIFEST).read_text())["meta"]


def pick_tag(ckpt_dir: Path, log=print) -> str | None:
    """The newest valid checkpoint: ``latest`` if it verifies, else the previous ones in turn.
    Each refused checkpoint is reported with the reason; None if there is no checkpoint at all."""
    ckpt_dir = Path(ckpt_dir)
    tags = cadence.step_tags(ckpt_dir)[::-1]
    latest = latest_tag(ckpt_dir)
    order = ([latest] if latest in tags else []) + [t for t in tags if t != latest]
    refused = []
    for tag in order:
        why = verify(ckpt_dir / tag)
        if why is None:
            log(f"[growclip_ds] resuming from {ckpt_dir / tag}{' instead' if refused else ''}")
            return tag
        refused.append(why)
        log(f"[growclip_ds] refusing checkpoint {ckpt_dir / tag}: {why}")
    if refused:
        raise CheckpointError(f"{ckpt_dir}: no valid checkpoint ({'; '.join(refused)}); "
                              "delete the folder to restart the phase from its initial weights")
    return None


def resume(engine, ckpt_dir: Path, tag: str | None, universal: bool = False) -> dict | None:
    """Load checkpoint ``tag`` (from ``pick_tag``) into the engine; returns our metadata or None.
    ``universal``: ``tag`` was saved at another world size; load its universal conversion."""
    if tag is None:
        return None
    load_tag = tag
    if universal:
        load_tag = f"{tag}_universal"
        universal_ckpt.convert(ckpt_dir, tag, load_tag)
    path, _ = engine.load_checkpoint(str(ckpt_dir), tag=load_tag)
    if path is None:
        raise CheckpointError(f"{Path(ckpt_dir) / load_tag}: DeepSpeed could not load it")
    if universal:
        universal_ckpt.check_loaded(engine, Path(ckpt_dir) / load_tag)
    return read_meta(Path(ckpt_dir) / tag)


def consolidated_state_dict(ckpt_dir: Path, tag: str | None = None) -> dict[str, torch.Tensor]:
    """fp32 state dict with all ZeRO partitions merged (any stage, any world size), from a
    checkpoint whose signed manifest verifies (DeepSpeed's files are pickles)."""
    ckpt_dir = Path(ckpt_dir)
    tag = tag or pick_tag(ckpt_dir)
    if tag is None:
        raise CheckpointError(f"{ckpt_dir}: no checkpoint to consolidate")
    folder = ckpt_dir / tag
    why = verify(folder)
    if why:
        raise CheckpointError(f"refusing to load {folder}: {why}")
    if any(folder.glob("*optim_states.pt")):
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        sd = get_fp32_state_dict_from_zero_checkpoint(str(ckpt_dir), tag=tag)
    else:  # ZeRO-0: the module's full weights are in the model states file
        states = torch.load(folder / "mp_rank_00_model_states.pt", map_location="cpu", weights_only=False)
        sd = states["module"]
    return {k: v.detach().float().contiguous() for k, v in sd.items()}


def write_model(out_dir: Path, state_dict: dict, arch: ArchConfig, extra: dict | None = None) -> None:
    """A model folder: the weights (safetensors) + the architecture (JSON: its fields, "params" and
    ``extra``), each written atomically; file names from ``rundir``."""
    name = rundir.MODEL
    out_dir = Path(out_dir)
    bad = nonfinite.nonfinite_tensors(state_dict)
    if bad:
        raise nonfinite.NonFiniteError(f"{out_dir / name}: not written, {len(bad)} tensor(s) hold NaN/inf "
                                       f"(first: {bad[0]}); a diverged model is never consolidated")
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / (name + ".tmp")
    save_file({k: v.contiguous() for k, v in state_dict.items()}, str(tmp))
    faults.hit("consolidate")
    os.replace(tmp, out_dir / name)
    atomic_write_text(out_dir / rundir.ARCH,
                      json.dumps({**arch.to_dict(), "params": param_count(arch), **(extra or {})}, indent=1))


def read_arch(model_dir: Path) -> ArchConfig:
    path = Path(model_dir) / rundir.ARCH
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: is {model_dir} a finished growth step?")
    d = json.loads(path.read_text())
    fields = set(ArchConfig.__dataclass_fields__)
    return ArchConfig.from_dict({k: v for k, v in d.items() if k in fields}, str(path)).validate()


def read_model(model_dir: Path) -> tuple[dict, ArchConfig]:
    """Load a consolidated model folder without executing code (safetensors + JSON)."""
    model_dir = Path(model_dir)
    arch = read_arch(model_dir)
    path = model_dir / rundir.MODEL
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: is {model_dir} a finished step?")
    return load_file(str(path)), arch


def shared_state(folder: Path, make) -> dict:
    """A starting state dict (PIM, SAP) that rank 0 computes with ``make() -> (state, arch)`` and
    writes as a model folder; every rank then loads the same file."""
    path = Path(folder) / rundir.MODEL
    if rank_world()[0] == 0 and not path.exists():
        sd, arch = make()
        write_model(path.parent, sd, arch, {"role": "initial weights"})
    barrier()
    return load_file(str(path))
