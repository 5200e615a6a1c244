"""img2dataset's output format: ``NNNNN.tar`` of KEY.jpg/KEY.txt/KEY.json, ``NNNNN.parquet`` of
per-sample stats and ``NNNNN_stats.json``. Writing is atomic per file (temporary name, fsync, then
``os.replace``), so an interrupted generator or a node crash never leaves a half shard under a real
name. Reading opens each shard as a local file (``tar_samples``): a shard path never reaches
webdataset's URL opener, which would run a file named ``pipe:CMD`` as a shell command."""
from __future__ import annotations

import io
import json
import os
import tarfile
import time
from pathlib import Path
from typing import Callable, Iterable, Iterator

import pyarrow as pa
import pyarrow.parquet as pq
import webdataset as wds

from ..fileio import atomic_path


def _opened(paths: Iterable, handler: Callable[[Exception], bool]) -> Iterator[dict]:
    for p in paths:
        try:
            stream = open(os.fspath(p), "rb")     # a file, whatever its name says: never a URL or a pipe
        except OSError as exn:
            if handler(exn):
                continue
            raise
        try:
            yield {"url": os.fspath(p), "stream": stream}
        finally:
            stream.close()


def tar_samples(paths: Iterable, handler: Callable[[Exception], bool] = wds.reraise_exception) -> Iterator[dict]:
    """The samples (dicts of key -> bytes, webdataset's grouping) of the tar files ``paths``, in order.
    ``handler(exn)`` -> True skips what raised (an unreadable shard or member), False stops."""
    files = wds.tariterators.tar_file_expander(_opened(paths, handler), handler=handler)
    return wds.tariterators.group_by_keys(files, handler=handler)


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o644
    tar.addfile(info, io.BytesIO(data))


def atomic_write_table(table: pa.Table, path: Path) -> None:
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def write_shard(path: Path, samples: list[dict]) -> int:
    """Write samples {key, jpg (bytes), txt, meta (dict), width, height} as one img2dataset shard."""
    rows = []
    with atomic_path(path) as tmp, tarfile.open(tmp, "w") as tar:
        for s in samples:
            meta = {"url": s.get("url", f"synthetic://{s['key']}"), "caption": s["txt"], "key": s["key"],
                    "status": "success", "error_message": None, "width": s["width"], "height": s["height"],
                    "original_width": s["width"], "original_height": s["height"], **s.get("meta", {})}
            _add(tar, f"{s['key']}.jpg", s["jpg"])
            _add(tar, f"{s['key']}.txt", s["txt"].encode())
            _add(tar, f"{s['key']}.json", json.dumps(meta).encode())
            rows.append({k: meta[k] for k in ("url", "caption", "key", "status", "error_message", "width",
                                               "height", "original_width", "original_height")})
    atomic_write_table(pa.Table.from_pylist(rows), path.with_suffix(".parquet"))
    stats = {"count": len(rows), "successes": len(rows), "failed_to_download": 0, "failed_to_resize": 0,
             "start_time": time.time(), "end_time": time.time(), "status_dict": {"success": len(rows)}}
    path.with_name(path.stem + "_stats.json").write_text(json.dumps(stats))
    return len(rows)
