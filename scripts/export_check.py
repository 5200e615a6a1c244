"""Export a finished step in both formats and compare embeddings with growclip_ds's own model.

    .venv/bin/python scripts/export_check.py runs/vitb/step1

Prints the largest absolute difference of the unit-norm image and text embeddings (random images,
three captions) for Hugging Face CLIPModel and, when it is installed, open_clip.
"""
import sys
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import growclip_ds  # noqa: E402
from growclip_ds.export import export  # noqa: E402


def main(step: Path) -> None:
    model, _, tok = growclip_ds.load(step)
    texts = ["a red circle", "a blue square on the left", "a green triangle at the top right of the picture"]
    ids = tok(texts)
    images = torch.randn(4, 3, model.arch.image_size, model.arch.image_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        img, txt = model.encode_image(images), model.encode_text(ids)
    with tempfile.TemporaryDirectory() as tmp:
        from transformers import AutoTokenizer, CLIPModel

        export(step, "hf", Path(tmp) / "hf")
        hf = CLIPModel.from_pretrained(str(Path(tmp) / "hf")).eval()
        hf_ids = AutoTokenizer.from_pretrained(str(Path(tmp) / "hf"))(
            texts, padding="max_length", max_length=ids.shape[1], truncation=True, return_tensors="pt").input_ids
        with torch.no_grad():
            a, b = hf.get_image_features(pixel_values=images), hf.get_text_features(input_ids=hf_ids)
        a, b = getattr(a, "pooler_output", a), getattr(b, "pooler_output", b)
        print(f"hf: token ids equal {torch.equal(hf_ids, ids)}; max |difference| image "
              f"{(F.normalize(a, dim=-1) - img).abs().max():.2e}, text {(F.normalize(b, dim=-1) - txt).abs().max():.2e}")
        try:
            import open_clip
        except ImportError:
            print("open_clip: not installed (pip install open_clip_torch)")
            return
        export(step, "open_clip", Path(tmp) / "oc")
        oc = open_clip.create_model_and_transforms(f"local-dir:{Path(tmp) / 'oc'}")[0].eval()
        with torch.no_grad():
            a, b = oc.encode_image(images, normalize=True), oc.encode_text(hf_ids, normalize=True)
        print(f"open_clip: max |difference| image {(a - img).abs().max():.2e}, text {(b - txt).abs().max():.2e}")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
