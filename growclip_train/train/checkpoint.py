"""Checkpoints: DeepSpeed's own layout for resuming, consolidated safetensors for growth and eval.

- ``<phase>/checkpoints/global_step<N>/`` + ``latest``: DeepSpeed's files, then our signed manifest
  (size and keyed hash of every file, metadata; ``signing``), then ``latest``; resume takes the
  newest checkpoint that verifies and says which it refused and why. Nothing is unpickled from a
  folder whose manifest does not verify. At another world size it loads a universal conversion.
- ``consolidated_state_dict``: all ZeRO partitions of a verified checkpoint merged by DeepSpeed's
  zero_to_fp32 machinery, for a model folder (``growclip_ds/model_folder.py``).
"""
from __future__ import annotations

import hmac
import json
import os
import shutil
import time
from pathlib import Path

import torch

from growclip_train import faults
from growclip_ds.distributed import any_ranks, barrier, rank_world
from growclip_ds.fileio import atomic_write_text, fsync_path
from growclip_train.train import cadence, signing
from growclip_train.train import universal as universal_ckpt
from growclip_train.log import log


MANIFEST = "growclip_manifest.json"
REFUSED = "refused"        # <checkpoints>/refused/<tag>.<time>: refused checkpoints, moved aside, never deleted


class CheckpointError(RuntimeError):
    pass


def latest_tag(ckpt_dir: Path) -> str | None:
    """The tag ``latest`` names; None without one, or for one a damaged disk left unreadable."""
    f = Path(ckpt_dir) / "latest"
    try:
        return f.read_text().strip() if f.exists() else None
    except UnicodeDecodeError:
        return None


def _files(folder: Path) -> list[Path]:
    return [f for f in sorted(folder.rglob("*")) if f.is_file() and f.name != MANIFEST]


def write_manifest(folder: Path, tag: str, meta: dict) -> None:
    """Size and keyed hash of every file of ``folder`` (each fsynced first: what is signed is on the
    device), the folder's tag, our metadata, the key's id, and the manifest's own MAC."""
    k = signing.key()
    files, listed = {}, _files(folder)
    for f in listed:
        fsync_path(f)
        files[str(f.relative_to(folder))] = {"bytes": f.stat().st_size, "hmac": signing.file_mac(f, k)}
    for d in {f.parent for f in listed}:
        fsync_path(d)
    body = {"tag": tag, "meta": meta, "files": files, "key_id": signing.key_id(k)}
    atomic_write_text(folder / MANIFEST, json.dumps({**body, "signature": signing.sign(body, k)}))


def manifest_key_id(folder: Path) -> str | None:
    """The key id a checkpoint's manifest records (None: no readable manifest, or one from before ids)."""
    try:
        return json.loads((Path(folder) / MANIFEST).read_text()).get("key_id")
    except (OSError, ValueError, AttributeError):   # ValueError: bad JSON or bytes that are not UTF-8
        return None


def save(engine, ckpt_dir: Path, global_step: int, meta: dict, keep: int = 0) -> str:
    """DeepSpeed's checkpoint, then a signed manifest (size and keyed hash of every file, our metadata), then
    ``latest`` (atomically), in that order: a crash or a full disk at any point leaves the previous
    ``latest`` valid. A folder of the same tag left by an earlier, unfinished save (perhaps at
    another world size, with more partition files) is removed first, so a checkpoint never mixes
    files of two saves. A failed save removes its partial folder and raises on every rank. After a
    good save, all but the ``keep`` newest checkpoints are deleted (0: none)."""
    rank, _ = rank_world()
    tag = f"global_step{global_step}"
    folder = Path(ckpt_dir) / tag
    stale = rank == 0 and folder.exists()
    if any_ranks(stale and tag == latest_tag(ckpt_dir))[0]:   # every rank raises, none waits for rank 0
        raise CheckpointError(f"{folder} is the checkpoint `latest` names; refusing to save over it")
    if stale:
        log.info(f"removing {folder}: left by a save that did not finish")
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
    if not any_ranks(failed is not None)[0] and rank == 0:
        try:
            write_manifest(folder, tag, meta)
            atomic_write_text(Path(ckpt_dir) / "latest", tag)
            cadence.retain(ckpt_dir, keep, tag)
        except OSError as e:
            failed = e
    if any_ranks(failed is not None)[0]:
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
        body = {k: doc[k] for k in ("tag", "meta", "files") + (("key_id",) if "key_id" in doc else ())}
    except (ValueError, KeyError, TypeError):   # ValueError: bad JSON or bytes that are not UTF-8
        return f"{man} is unreadable"
    k = signing.key()
    if doc.get("key_id") not in (None, signing.key_id(k)):
        return (f"{man} was signed with another checkpoint key (id {doc['key_id']}; the key at "
                f"${signing.KEY_ENV} or {signing.key_file()} has id {signing.key_id(k)}): point "
                f"${signing.KEY_FILE_ENV} at that key, or if you trust this checkpoint as it is: "
                f"growclip-ds checkpoint resign {folder}")
    if not hmac.compare_digest(str(doc.get("signature", "")), signing.sign(body, k)):
        return (f"{man} is not signed with this machine's checkpoint key (${signing.KEY_ENV} or "
                f"{signing.key_file()}): written elsewhere, before keyed manifests, or edited")
    if body["tag"] != folder.name:
        return (f"{man} was signed for {body['tag']!r}, not {folder.name!r}: a checkpoint copied or renamed "
                "(loading it would silently roll the phase back)")
    unlisted = [str(f.relative_to(folder)) for f in _files(folder) if str(f.relative_to(folder)) not in body["files"]]
    if unlisted:
        return (f"{folder} holds {len(unlisted)} file(s) its manifest does not list ({', '.join(unlisted[:3])}): "
                "added after the save; DeepSpeed would unpickle them. Remove them if you know what they are")
    for rel, want in body["files"].items():
        f = folder / rel
        if not f.exists():
            return f"{f} is missing"
        if f.stat().st_size != want["bytes"]:
            return f"{f} has {f.stat().st_size} bytes, the manifest says {want['bytes']} (truncated?)"
        if not hmac.compare_digest(signing.file_mac(f, k), want["hmac"]):
            return f"{f} fails its keyed hash (corrupt or tampered)"
    return None


def resign(folder: Path) -> str:
    """Sign checkpoint ``folder`` anew with this machine's key (``growclip-ds checkpoint resign``): for
    checkpoints the user vouches for that were signed with a lost or another key. Its manifest must
    still name every file, with the recorded sizes (nothing added, removed or cut short); the tag and
    metadata are kept. Returns what was done; raises CheckpointError when the folder does not match."""
    folder = Path(folder)
    try:
        doc = json.loads((folder / MANIFEST).read_text())
        listed, tag, meta = doc["files"], doc["tag"], doc["meta"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{folder / MANIFEST}: no readable manifest ({e}); only a saved checkpoint can be re-signed")
    if tag != folder.name:
        raise CheckpointError(f"{folder}: its manifest was written for {tag!r}; rename it back before re-signing")
    have = {str(f.relative_to(folder)): f.stat().st_size for f in _files(folder)}
    extra = sorted(set(have) - set(listed))
    gone = sorted(r for r, w in listed.items() if have.get(r) != w["bytes"])
    if extra or gone:
        raise CheckpointError(f"{folder}: not as saved ({len(extra)} unlisted file(s) {extra[:3]}, {len(gone)} missing or "
                              f"resized {gone[:3]}); not re-signed")
    if verify(folder) is None:
        return f"{folder}: already signed with this key"
    write_manifest(folder, tag, meta)
    return f"{folder}: re-signed ({len(listed)} files, key id {signing.key_id(signing.key())})"


def read_meta(folder: Path) -> dict:
    return json.loads((folder / MANIFEST).read_text())["meta"]


KEY_MISMATCH = ("signed with another checkpoint key", "not signed with this machine's checkpoint key")


def pick_tag(ckpt_dir: Path, log=print) -> str | None:
    """The newest valid checkpoint: ``latest`` if it verifies, else the previous ones in turn.
    Each refused checkpoint is reported with the reason; when an older one is taken instead, the
    refused ones are moved aside (``set_aside``) so that the phase can save those steps again.
    None if there is no checkpoint at all, or if every one is damaged (corrupt, cut short, unreadable):
    those are moved aside too and the phase restarts from its initial weights, which it derives again
    exactly (a requeued job would otherwise fail on every start; scripts/chaos.py found it). Checkpoints
    signed with another key stop the start instead: they are likely good, and ``checkpoint resign``
    keeps their work."""
    ckpt_dir = Path(ckpt_dir)
    tags = cadence.step_tags(ckpt_dir)[::-1]
    latest = latest_tag(ckpt_dir)
    order = ([latest] if latest in tags else []) + [t for t in tags if t != latest]
    refused = []
    for tag in order:
        why = verify(ckpt_dir / tag)
        if why is None:
            log(f"[growclip_ds] resuming from {ckpt_dir / tag}{' instead' if refused else ''}")
            if refused:
                set_aside(ckpt_dir, [t for t, _ in refused], tag, log)
            return tag
        refused.append((tag, why))
        log(f"[growclip_ds] refusing checkpoint {ckpt_dir / tag}: {why}")
    if any(k in why for _, why in refused for k in KEY_MISMATCH):
        raise CheckpointError(f"{ckpt_dir}: no valid checkpoint ({'; '.join(w for _, w in refused)}); "
                              "re-sign the ones you trust (growclip-ds checkpoint resign), or move the folder "
                              "aside to restart the phase from its initial weights")
    if refused:
        set_aside(ckpt_dir, [t for t, _ in refused], None, log)
        log("[growclip_ds] no checkpoint of the phase verifies: it restarts from its initial weights")
    return None


def set_aside(ckpt_dir: Path, tags: list[str], latest: str | None, log=print) -> Path:
    """Move refused checkpoints (and their universal conversions) to ``<ckpt_dir>/refused/`` and
    point ``latest`` at the one resumed (None: none, the phase restarts): nothing is deleted, and training
    can save those steps anew."""
    dest = Path(ckpt_dir) / REFUSED
    dest.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for tag in tags:
        for src in (Path(ckpt_dir) / tag, Path(ckpt_dir) / f"{tag}_universal"):
            if src.exists():
                os.replace(src, dest / f"{src.name}.{stamp}")
    if latest is None:
        (Path(ckpt_dir) / "latest").unlink(missing_ok=True)
    else:
        atomic_write_text(Path(ckpt_dir) / "latest", latest)
    log(f"[growclip_ds] moved the refused checkpoint(s) {', '.join(tags)} to {dest} (kept for inspection; "
        f"delete them when done); `latest` is now {latest or 'gone'}")
    return dest


def resume(engine, ckpt_dir: Path, tag: str | None, universal: bool = False) -> dict | None:
    """Load checkpoint ``tag`` (from ``pick_tag``) into the engine; returns our metadata or None.
    ``universal``: ``tag`` was saved at another world size; load its universal conversion, which is
    signed like a checkpoint when written and verified before DeepSpeed reads it."""
    if tag is None:
        return None
    load_tag = tag
    if universal:
        load_tag = universal_conversion(Path(ckpt_dir), tag)
    path, _ = engine.load_checkpoint(str(ckpt_dir), tag=load_tag)
    if path is None:
        raise CheckpointError(f"{Path(ckpt_dir) / load_tag}: DeepSpeed could not load it")
    if universal:
        universal_ckpt.check_loaded(engine, Path(ckpt_dir) / load_tag)
    return read_meta(Path(ckpt_dir) / tag)


def universal_conversion(ckpt_dir: Path, tag: str) -> str:
    """The tag of ``tag``'s universal conversion: rank 0 keeps one that verifies, else (absent, half
    written, tampered) converts again from the verified checkpoint and signs the result."""
    out = f"{tag}_universal"
    if rank_world()[0] == 0:
        why = verify(ckpt_dir / out) if (ckpt_dir / out).exists() else "absent"
        if why != "absent" and why is not None:
            log.warning(f"refusing {ckpt_dir / out}: {why}; converting again")
        if why is not None:
            src_why = verify(ckpt_dir / tag)
            if src_why is not None:
                raise CheckpointError(f"refusing to convert {ckpt_dir / tag}: {src_why}")
            universal_ckpt.convert(ckpt_dir, tag, out)
            write_manifest(ckpt_dir / out, out, {"universal_of": tag})
    barrier()
    return out


def consolidated_state_dict(ckpt_dir: Path, tag: str | None = None) -> dict[str, torch.Tensor]:
    """fp32 state dict with all ZeRO partitions merged (any stage, any world size), from a
    checkpoint whose signed manifest verifies (DeepSpeed's files are pickles)."""
    ckpt_dir = Path(ckpt_dir)
    picked = tag is None
    tag = tag or pick_tag(ckpt_dir)   # pick_tag returns only a checkpoint that verified
    if tag is None:
        raise CheckpointError(f"{ckpt_dir}: no checkpoint to consolidate")
    folder = ckpt_dir / tag
    why = None if picked else verify(folder)
    if why:
        raise CheckpointError(f"refusing to load {folder}: {why}")
    if any(folder.glob("*optim_states.pt")):
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        sd = get_fp32_state_dict_from_zero_checkpoint(str(ckpt_dir), tag=tag)
    else:  # ZeRO-0: the module's full weights are in the model states file
        states = torch.load(folder / "mp_rank_00_model_states.pt", map_location="cpu", weights_only=False)
        sd = states["module"]
    return {k: v.detach().float().contiguous() for k, v in sd.items()}
