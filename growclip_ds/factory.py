"""Trained models out of a run folder, in the manner of open_clip's ``create_model_and_transforms``.

    import growclip_ds
    model, transform, tokenizer = growclip_ds.load("runs/demo/step4")
    img = model.encode_image(transform(pil_image)[None])          # unit-norm embeddings
    txt = model.encode_text(tokenizer(["a red circle"]))

Any architecture (conv or patch stem, shared blocks); no throw-away initialisation, no code executed
from the run folder (safetensors + JSON). The tokenizer is the run's own copy (``<run>/tokenizer``,
the vocabulary fixed at step 1) unless ``tokenizer`` names another folder.
"""
from __future__ import annotations

from pathlib import Path

import torch

from .config import ArchConfig
from .model import GrowCLIP


def build(state: dict, arch: ArchConfig, device="cpu") -> GrowCLIP:
    """A plain model of ``arch`` holding ``state``: tensors allocated uninitialised, then loaded."""
    with torch.device(device):
        model = GrowCLIP(arch, seed=None)
    model.load_state_dict(state)
    return model


def load(step_dir, device="cpu", tokenizer=None):
    """(model in eval mode on ``device``, image transform, tokenizer) of a finished step folder."""
    from .data.loader import image_transform
    from .data.tokenizer import TextTokenizer
    from .model_folder import read_model, run_tokenizer_dir

    state, arch = read_model(Path(step_dir))
    tok_dir = Path(tokenizer) if tokenizer else run_tokenizer_dir(step_dir)
    if not tokenizer and not tok_dir.exists():
        raise FileNotFoundError(f"{tok_dir}: no tokenizer copy in the run folder (runs made before the run kept "
                                "one); pass tokenizer=<the data's tokenizer folder>")
    model = build(state, arch, device).eval()
    return model, image_transform(arch.image_size), TextTokenizer(tok_dir, arch.context_length)
