"""growclip_ds: the GrowCLIP library (CLIP whose model grows with its data): the model, growth operators on
state dicts, data, tokenizer, evaluation, loading and export. Training runs, checkpoints and launches are
the application's, ``growclip_train``, which imports this package and is never imported by it.

    model, transform, tokenizer = growclip_ds.load("runs/demo/step4")
"""
import os as _os
import sys as _sys

__version__ = "0.1.0"

# DeepSpeed JIT-builds ops (shm_comm on CPU) into torch's extension folder, by default one per user
# (~/.cache/torch_extensions). Two checkouts (two venvs) on one machine then rebuild each other's op
# at every switch, 70-130 s each; inside a venv, keep the builds in the venv (scripts/setup.sh makes
# them there). An explicit TORCH_EXTENSIONS_DIR wins.
if _sys.prefix != _sys.base_prefix:
    _os.environ.setdefault("TORCH_EXTENSIONS_DIR", _os.path.join(_sys.prefix, "torch_extensions"))


def load(step_dir, device="cpu", tokenizer=None):
    """(model, image transform, tokenizer) of a finished step folder: growclip_ds/factory.py."""
    from .factory import load as _load

    return _load(step_dir, device, tokenizer)
