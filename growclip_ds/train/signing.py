"""Keyed hashes for the files of a run folder: the trust boundary of checkpoint loading.

DeepSpeed's optimizer and model-state files are pickles, and loading them (``load_checkpoint``,
``zero_to_fp32``, the universal conversion) can run code. So every checkpoint folder gets a manifest
with the HMAC-SHA256 of each file and of the manifest itself, under a secret key that lives outside
the run folder; nothing in a folder is unpickled before its manifest verifies. Anyone who can write
the run folder but not read the key cannot make a file that passes (CRC32, which catches
corruption, would not stop tampering).

The key: ``$GROWCLIP_CHECKPOINT_KEY`` (any string), else the file ``$GROWCLIP_KEY_FILE`` (default
``~/.config/growclip_ds/checkpoint.key``, created with 32 random bytes and mode 0600 on first use).
Every node of a job must see the same key (a shared home, or the variable set in the job).
"""
from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
from pathlib import Path

KEY_ENV, KEY_FILE_ENV = "GROWCLIP_CHECKPOINT_KEY", "GROWCLIP_KEY_FILE"


def key_file() -> Path:
    return Path(os.environ.get(KEY_FILE_ENV) or Path.home() / ".config" / "growclip_ds" / "checkpoint.key")


def key() -> bytes:
    if os.environ.get(KEY_ENV):
        return os.environ[KEY_ENV].encode()
    path = key_file()
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(secrets.token_bytes(32))
        try:
            os.link(tmp, path)           # first writer wins; a concurrent rank reads the winner's key
        except FileExistsError:
            pass
        tmp.unlink()
    data = path.read_bytes()
    if len(data) < 16:
        raise ValueError(f"{path}: checkpoint key shorter than 16 bytes; delete it to make a new one")
    return data


def file_mac(path: Path, k: bytes) -> str:
    h = hmac.new(k, digestmod=hashlib.sha256)
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def sign(body: dict, k: bytes) -> str:
    """MAC of a manifest body (sorted JSON), so neither a file entry nor the metadata can be edited."""
    return hmac.new(k, json.dumps(body, sort_keys=True).encode(), hashlib.sha256).hexdigest()
