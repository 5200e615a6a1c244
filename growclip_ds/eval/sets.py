"""Evaluation sets in the formats users already have, read as streams (bounded memory).

A set is a folder in one of three layouts:

- zero-shot classification, CLIP_benchmark's webdataset layout (``clip_benchmark eval --dataset wds/NAME
  --dataset_root FOLDER`` reads what we write): ``classnames.txt`` (line i names label i),
  ``zeroshot_classification_templates.txt`` (one prompt per line with ``{c}``; optional, default "a
  photo of a {c}."), ``test/nshards.txt`` (n) and ``test/0.tar .. test/{n-1}.tar`` whose samples hold
  an image (jpg/jpeg/png/webp) and ``cls`` (the label as text); folders without ``nshards.txt``
  (``test/*.tar`` or ``*.tar``, this project's layout before 2026-12-04) are read too;
- zero-shot classification, an image folder tree: one sub-folder per class (sorted names are labels
  0..K-1), ``classnames.txt`` optional (else the folder names, ``_`` read as a space);
- retrieval (Flickr30K/COCO style), the same layout plus ``dataset_type.txt`` ("retrieval"), whose
  samples hold an image and ``txt`` with one caption per line (several lines: several captions of that image); an optional
  ``json`` with ``"step"`` groups the pairs by growth step (TiC-CLIP's dynamic retrieval).

Which sets a run uses: ``data.eval`` (a list of {name, path, kind, role}) or, when that is empty,
``<data.root>/eval/sets.json``, which ``growclip-ds data make`` and ``data split`` write through the
writers below. ``role`` is "test" (reported) or "selection" (GAS, Patching: choices are made there,
never on the test sets).
"""
from __future__ import annotations

import io
import json
import tarfile
from dataclasses import asdict, dataclass
from pathlib import Path

from ..data.shards import tar_samples
from ..errors import InputError
from ..fileio import atomic_path, atomic_write_text


KINDS, ROLES = ("zeroshot", "retrieval"), ("test", "selection")
EVAL_DIR = "eval"          # <data.root>/eval: the evaluation sets and their index
INDEX = "sets.json"
CLASSNAMES, TEMPLATES = "classnames.txt", "zeroshot_classification_templates.txt"
SPLIT, NSHARDS, DATASET_TYPE = "test", "nshards.txt", "dataset_type.txt"   # CLIP_benchmark's wds layout
DEFAULT_TEMPLATES = ["a photo of a {c}."]
IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")


@dataclass(frozen=True)
class SetSpec:
    """One evaluation set: ``path`` is a folder, relative to the data root unless absolute."""

    name: str
    path: str
    kind: str
    role: str = "test"

    def validate(self, where: str) -> "SetSpec":
        if not self.name or not self.path:
            raise InputError(f"{where}: an evaluation set needs 'name' and 'path' (got {asdict(self)})")
        if self.kind not in KINDS:
            raise InputError(f"{where}: set {self.name!r}: kind must be one of {KINDS} (got {self.kind!r})")
        if self.role not in ROLES:
            raise InputError(f"{where}: set {self.name!r}: role must be one of {ROLES} (got {self.role!r})")
        return self

    @classmethod
    def parse(cls, d, where: str) -> "SetSpec":
        if not isinstance(d, dict):
            raise InputError(f"{where}: each evaluation set is an object {{name, path, kind, role}} (got {d!r})")
        unknown = set(d) - {"name", "path", "kind", "role"}
        if unknown:
            raise InputError(f"{where}: unknown key {sorted(unknown)[0]!r} in evaluation set {d}; "
                             "known: name, path, kind, role")
        return cls(**{k: str(v) for k, v in d.items()}).validate(where)


def list_sets(data_root, configured=(), role: str | None = None) -> list[SetSpec]:
    """The configured sets (``data.eval``) or those of ``<data_root>/eval/sets.json``, of one role."""
    if configured:
        specs = [SetSpec.parse(d, "data.eval") for d in configured]
    else:
        index = Path(data_root) / EVAL_DIR / INDEX
        if not index.exists() and (index.parent / "tasks.json").exists():
            raise FileNotFoundError(f"{index.parent} was written by an older version (tasks.json): remake the "
                                    "built-in data with `growclip-ds data make --force` (same shards and images)")
        if not index.exists():
            raise FileNotFoundError(
                f"{index} not found and data.eval is empty: run `growclip-ds data split {data_root}` (it carves "
                "held-out retrieval and selection sets from your shards) or list your sets in data.eval "
                "(formats: growclip_ds/eval/sets.py, README 'Train on your own img2dataset shards')")
        specs = [SetSpec.parse(d, str(index)) for d in json.loads(index.read_text())["sets"]]
    return [s for s in specs if role is None or s.role == role]


def resolve(data_root, spec: SetSpec) -> Path:
    p = Path(spec.path)
    return p if p.is_absolute() else Path(data_root) / EVAL_DIR / p


# ----------------------------------------------------------------------------- reading
def _tars(folder: Path) -> list[Path]:
    """``test/0.tar .. test/{n-1}.tar`` as ``test/nshards.txt`` says, else (older layout) the sorted tars."""
    count = folder / SPLIT / NSHARDS
    if count.exists():
        try:
            n = int(count.read_text().strip())
        except ValueError:
            raise InputError(f"{count}: must hold the number of shards (got {count.read_text()[:40]!r})") from None
        tars = [folder / SPLIT / f"{i}.tar" for i in range(n)]
        missing = [t for t in tars if not t.exists()]
        if missing:
            raise FileNotFoundError(f"{count} says {n} shard(s) but {missing[0]} is missing; restore it or rewrite the "
                                    "set (growclip-ds data make --force / data split --force)")
        return tars
    for sub in (folder / SPLIT, folder):
        tars = sorted(sub.glob("*.tar"))
        if tars:
            return tars
    return []


def _image_ext(sample: dict):
    return next((e for e in IMAGE_EXTS if e in sample), None)


def _samples(tars: list[Path], need: str):
    """The samples of ``tars`` in file order; each must hold an image and ``need``."""
    for s in tar_samples(tars):
        if _image_ext(s) is None or need not in s:
            raise InputError(f"{s.get('__url__')}: sample {s.get('__key__')!r} needs an image and {need!r}")
        yield s


def _is_image_folder(folder: Path) -> bool:
    return any(p.is_dir() and p.name != "test" for p in folder.iterdir())


class ZeroShotSet:
    """Classes, prompt templates, labels, and the images as a stream of encoded bytes in a fixed order."""

    kind = "zeroshot"

    def __init__(self, name: str, folder: Path):
        self.name, self.folder = name, folder
        if not folder.is_dir():
            raise FileNotFoundError(f"evaluation set {name!r}: {folder} is not a folder")
        tpl = folder / TEMPLATES
        self.templates = _lines(tpl) if tpl.exists() else list(DEFAULT_TEMPLATES)
        bad = [t for t in self.templates if "{c}" not in t]
        if bad:
            raise InputError(f"{tpl}: every template needs '{{c}}' for the class name; first without: {bad[0]!r}")
        self.tars = _tars(folder)
        if self.tars:
            if not (folder / CLASSNAMES).exists():
                raise FileNotFoundError(f"evaluation set {name!r}: {folder / CLASSNAMES} is missing "
                                        "(CLIP_benchmark's webdataset layout: one class name per line)")
            self.classes = _lines(folder / CLASSNAMES)
            self.files = None
            self.labels = [int(s["cls"]) for s in self._raw()]
        elif _is_image_folder(folder):
            dirs = sorted(p for p in folder.iterdir() if p.is_dir())
            self.classes = _lines(folder / CLASSNAMES) if (folder / CLASSNAMES).exists() else \
                [d.name.replace("_", " ") for d in dirs]
            if len(self.classes) != len(dirs):
                raise InputError(f"{folder / CLASSNAMES}: {len(self.classes)} names for {len(dirs)} class folders")
            self.files = [(f, i) for i, d in enumerate(dirs) for f in sorted(d.iterdir())
                          if f.suffix.lower().lstrip(".") in IMAGE_EXTS]
            self.labels = [i for _, i in self.files]
        else:
            raise FileNotFoundError(f"evaluation set {name!r}: {folder} has neither .tar shards (test/*.tar) "
                                    "nor one image folder per class")
        if not self.labels:
            raise InputError(f"evaluation set {name!r}: {folder} holds no images")
        out = [y for y in self.labels if not 0 <= y < len(self.classes)]
        if out:
            raise InputError(f"evaluation set {name!r}: label {out[0]} outside 0..{len(self.classes) - 1} "
                             f"({len(self.classes)} lines in {CLASSNAMES})")

    def __len__(self) -> int:
        return len(self.labels)

    def _raw(self):
        for s in _samples(self.tars, "cls"):
            s["cls"] = s["cls"].decode().strip()
            yield s

    def images(self):
        """Encoded image bytes, in label order of ``self.labels``."""
        if self.files is not None:
            for f, _ in self.files:
                yield f.read_bytes()
        else:
            for s in self._raw():
                yield s[_image_ext(s)]

    def prompts(self) -> list[str]:
        """Every (class, template) prompt, class-major."""
        return [t.replace("{c}", c) for c in self.classes for t in self.templates]


class RetrievalSet:
    """Images with one or more captions each: ``texts`` flat, ``text_image[j]`` the image of caption j."""

    kind = "retrieval"

    def __init__(self, name: str, folder: Path):
        self.name, self.folder = name, folder
        self.tars = _tars(folder) if folder.is_dir() else []
        if not self.tars:
            raise FileNotFoundError(f"evaluation set {name!r}: no .tar shards in {folder} (or {folder}/test)")
        self.texts, self.text_image, self.steps = [], [], []
        for i, s in enumerate(_samples(self.tars, "txt")):
            caps = [c.strip() for c in s["txt"].decode("utf-8").splitlines() if c.strip()]
            if not caps:
                raise InputError(f"{s['__url__']}: sample {s['__key__']!r} has an empty caption")
            self.texts += caps
            self.text_image += [i] * len(caps)
            self.steps.append(int(json.loads(s["json"]).get("step", 0)) if "json" in s else 0)

    def __len__(self) -> int:
        return len(self.steps)

    def images(self):
        for s in _samples(self.tars, "txt"):
            yield s[_image_ext(s)]


def open_set(data_root, spec: SetSpec):
    folder = resolve(data_root, spec)
    return (ZeroShotSet if spec.kind == "zeroshot" else RetrievalSet)(spec.name, folder)


def _lines(path: Path) -> list[str]:
    return [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]


# ----------------------------------------------------------------------------- writing
def _write_tar(path: Path, members) -> None:
    """``members``: (name, bytes); written under a temporary name, then renamed."""
    with atomic_path(path) as tmp, tarfile.open(tmp, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            tar.addfile(info, io.BytesIO(data))


def write_zeroshot(folder, classes: list[str], templates: list[str], samples) -> Path:
    """CLIP_benchmark's layout; ``samples``: dicts {key, image (bytes), ext, label, meta (optional)}."""
    folder = Path(folder)
    members = []
    for s in samples:
        members += [(f"{s['key']}.{s['ext']}", s["image"]), (f"{s['key']}.cls", str(s["label"]).encode())]
        if s.get("meta"):
            members.append((f"{s['key']}.json", json.dumps(s["meta"]).encode()))
    _write_shards(folder, members)
    atomic_write_text(folder / CLASSNAMES, "\n".join(classes) + "\n")
    atomic_write_text(folder / TEMPLATES, "\n".join(templates) + "\n")
    return folder


def write_retrieval(folder, samples) -> Path:
    """``samples``: dicts {key, image (bytes), ext, captions (list), meta (optional, "step")}."""
    folder = Path(folder)
    members = []
    for s in samples:
        members += [(f"{s['key']}.{s['ext']}", s["image"]), (f"{s['key']}.txt", "\n".join(s["captions"]).encode())]
        if s.get("meta"):
            members.append((f"{s['key']}.json", json.dumps(s["meta"]).encode()))
    _write_shards(folder, members)
    atomic_write_text(folder / DATASET_TYPE, "retrieval\n")
    return folder


def _write_shards(folder: Path, members) -> None:
    """CLIP_benchmark's split folder: ``test/0.tar`` and ``test/nshards.txt`` (1: our sets are small)."""
    _write_tar(folder / SPLIT / "0.tar", members)
    atomic_write_text(folder / SPLIT / NSHARDS, "1\n")


def write_index(eval_root, specs: list[SetSpec]) -> Path:
    path = Path(eval_root) / INDEX
    atomic_write_text(path, json.dumps({"sets": [asdict(s) for s in specs]}, indent=1))
    return path
