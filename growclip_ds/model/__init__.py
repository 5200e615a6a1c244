"""The GrowCLIP model: elastic layers, encoders and the dual-stream CLIP. Imports no DeepSpeed."""
from .clip import GrowCLIP, PAD_ID, check_contains, param_count

__all__ = ["GrowCLIP", "PAD_ID", "check_contains", "param_count"]
