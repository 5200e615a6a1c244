"""growclip_ds: the GrowCLIP library (CLIP whose model grows with its data): the model, growth operators on
state dicts, data, tokenizer, evaluation, loading and export. Training runs, checkpoints and launches are
the application's, ``growclip_train``, which imports this package and is never imported by it.

    model, transform, tokenizer = growclip_ds.load("runs/demo/step4")
"""
__version__ = "0.1.0"


def load(step_dir, device="cpu", tokenizer=None):
    """(model, image transform, tokenizer) of a finished step folder: growclip_ds/factory.py."""
    from .factory import load as _load

    return _load(step_dir, device, tokenizer)
