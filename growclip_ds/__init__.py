"""growclip_ds: GrowCLIP (CLIP pre-training whose model grows with its data) on DeepSpeed."""
__version__ = "0.1.0"
