"""growclip_train: the application around the growclip_ds library: launches, phases, methods, run folders,
checkpoints, reports, plans and SLURM (open_clip keeps open_clip_train beside open_clip the same way)."""

import os as _os
import sys as _sys

# DeepSpeed JIT-builds ops (shm_comm on CPU) into torch's extension folder, by default one per user
# (~/.cache/torch_extensions). Two checkouts (two venvs) on one machine then rebuild each other's op
# at every switch, 70-130 s each; inside a venv, keep the builds in the venv (scripts/setup.sh makes
# them there). An explicit TORCH_EXTENSIONS_DIR wins. The application sets it (it runs DeepSpeed);
# importing the library changes no environment.
if _sys.prefix != _sys.base_prefix:
    _os.environ.setdefault("TORCH_EXTENSIONS_DIR", _os.path.join(_sys.prefix, "torch_extensions"))
