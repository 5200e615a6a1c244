"""Keyed hashes for the files of a run folder: the trust boundary of checkpoint loading.

DeepSpeed's optimizer and model-state files are pickles, and loading them (``load_checkpoint``,
``zero_to_fp32``, the universal conversion) can run code. So every checkpoint folder gets a manifest
with the HMAC-SHA256 of each file and of the manifest itself, under a secret key that lives outside
the run folder; nothing in a folder is unpickled before its manifest verifies. Anyone who can write
the run folder but not read the key cannot make a file that passes (CRC32, which catches
corruption, would not stop tampering).

The key: ``$GROWCLIP_CHECKPOINT_KEY`` (at least 16 characters), else the file ``$GROWCLIP_KEY_FILE``
(default ``~/.config/growclip_ds/checkpoint.key``, created with 32 random bytes and mode 0600 on first
use). Every node of a job must see the same key (a shared home, or the variable set in the job): the
launcher checks it before training (``check_key``) and the ranks compare its id (``key_id``), which
every manifest records, so "signed with another key" is told apart from "edited".
``growclip-ds checkpoint resign FOLDER`` re-signs checkpoints the user vouches for.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
from pathlib import Path

from growclip_ds.fileio import fsync_path

KEY_ENV, KEY_FILE_ENV = "GROWCLIP_CHECKPOINT_KEY", "GROWCLIP_KEY_FILE"


def key_file() -> Path:
    return Path(os.environ.get(KEY_FILE_ENV) or Path.home() / ".config" / "growclip_ds" / "checkpoint.key")


MIN_KEY = 16


class CheckpointKeyError(RuntimeError):
    """The checkpoint key is missing, unreadable, too short or not the one a run was signed with."""


def key() -> bytes:
    if os.environ.get(KEY_ENV):
        k = os.environ[KEY_ENV].encode()
        if len(k) < MIN_KEY:
            raise CheckpointKeyError(f"${KEY_ENV} has {len(k)} bytes; a checkpoint key needs at least {MIN_KEY}")
        return k
    path = key_file()
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(secrets.token_bytes(32))
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)           # first writer wins; a concurrent rank reads the winner's key
        except FileExistsError:
            pass
        tmp.unlink()
        fsync_path(path.parent)
    data = path.read_bytes()
    if len(data) < MIN_KEY:
        raise CheckpointKeyError(f"{path}: checkpoint key shorter than {MIN_KEY} bytes; restore the right key file "
                        f"(or set ${KEY_ENV}), or delete it to make a new one and re-sign what you trust")
    return data


def key_id(k: bytes) -> str:
    """A public name for a key (not the key): manifests record it, ranks compare it."""
    return hmac.new(k, b"growclip_ds key id", hashlib.sha256).hexdigest()[:16]


def check_key(signed_ids: set) -> str:
    """Before training: the key exists or can be made, is long enough, and is the one that signed the run's
    checkpoints (``signed_ids``: key ids their manifests record). Returns its id; raises what to do."""
    where = f"${KEY_ENV}" if os.environ.get(KEY_ENV) else str(key_file())
    if signed_ids and not os.environ.get(KEY_ENV) and not key_file().exists():
        raise CheckpointKeyError(f"no checkpoint key at {key_file()}, but this run's checkpoints were signed with key id(s) "
                        f"{', '.join(sorted(signed_ids))}: restore that key file (or set ${KEY_FILE_ENV} / ${KEY_ENV} "
                        "to it) so they can be verified; if you trust the checkpoints as they are, re-sign them with "
                        "a new key: growclip-ds checkpoint resign RUN_DIR")
    try:
        kid = key_id(key())
    except OSError as e:
        raise CheckpointKeyError(f"cannot create or read the checkpoint key {where}: {e}; set ${KEY_FILE_ENV} to a writable "
                        f"path (the same on every node) or ${KEY_ENV}") from e
    other = signed_ids - {kid}
    if other:
        raise CheckpointKeyError(f"this run's checkpoints were signed with key id(s) {', '.join(sorted(other))}, the key at "
                        f"{where} has id {kid}: point ${KEY_FILE_ENV} / ${KEY_ENV} at the key they were signed with; "
                        "if you trust them as they are: growclip-ds checkpoint resign RUN_DIR")
    return kid


def file_mac(path: Path, k: bytes) -> str:
    h = hmac.new(k, digestmod=hashlib.sha256)
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def sign(body: dict, k: bytes) -> str:
    """MAC of a manifest body (sorted JSON), so neither a file entry nor the metadata can be edited."""
    return hmac.new(k, json.dumps(body, sort_keys=True).encode(), hashlib.sha256).hexdigest()
