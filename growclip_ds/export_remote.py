"""Any growclip_ds model as a Hugging Face folder that carries its own code (conv stems, GrowCLIP's towers,
shared blocks: what CLIPModel cannot express):

    growclip-ds export runs/demo/step4 --format hf --out exported/demo4
    model = transformers.AutoModel.from_pretrained("exported/demo4", trust_remote_code=True)
    emb = model.get_image_features(pixel_values=...)   # and get_text_features(input_ids=...), as CLIPModel

The folder holds ``config.json`` (``model_type`` "growclip", the architecture, ``auto_map``),
``model.safetensors``, the modeling code (``modeling_growclip.py``, ``configuration_growclip.py`` and this
package's model files, copied as they are with their imports made local: the code that trained the
model), the tokenizer and image processor (export.py writes those), and a model card.
"""
from __future__ import annotations

import json
from pathlib import Path

from .arch import ArchConfig

PACKAGE = Path(__file__).resolve().parent
BUNDLE = {"arch.py": "arch.py", "config_fields.py": "config_fields.py", "model/clip.py": "clip.py",
          "model/elastic.py": "elastic.py", "model/encoders.py": "encoders.py", "model/init.py": "init.py",
          "model/roles.py": "roles.py"}
LOCAL_IMPORTS = (("from ..arch import", "from .arch import"),)

CONFIGURATION = '''"""growclip_ds's Hugging Face configuration: the architecture's fields under ``arch``."""
from transformers import PretrainedConfig


class GrowCLIPConfig(PretrainedConfig):
    model_type = "growclip"

    def __init__(self, arch=None, **kwargs):
        self.arch = dict(arch or {})
        super().__init__(**kwargs)
'''

MODELING = '''"""growclip_ds's model behind CLIPModel's interface (written by growclip_ds.export_remote)."""
from transformers import PreTrainedModel

from .arch import ArchConfig
from .clip import GrowCLIP
from .configuration_growclip import GrowCLIPConfig


class GrowCLIPModel(PreTrainedModel):
    config_class = GrowCLIPConfig
    base_model_prefix = "growclip"
    main_input_name = "pixel_values"

    def __init__(self, config):
        super().__init__(config)
        self.growclip = GrowCLIP(ArchConfig.from_dict(config.arch).validate())
        self.post_init()

    def _init_weights(self, module):   # the weights come from model.safetensors
        pass

    def get_image_features(self, pixel_values, **kwargs):
        """Projected image embeddings (not normalised, as CLIPModel's)."""
        return self.growclip.encode_image(pixel_values, normalize=False)

    def get_text_features(self, input_ids, attention_mask=None, **kwargs):
        """Projected text embeddings from the exported tokenizer's ids (0 pads; no mask needed)."""
        return self.growclip.encode_text(input_ids, normalize=False)

    def forward(self, input_ids=None, pixel_values=None, attention_mask=None, **kwargs):
        img = self.get_image_features(pixel_values)
        txt = self.get_text_features(input_ids)
        img, txt = img / img.norm(dim=-1, keepdim=True), txt / txt.norm(dim=-1, keepdim=True)
        scale = self.growclip.logit_scale.exp()
        logits = scale * img @ txt.t()
        return {"logits_per_image": logits, "logits_per_text": logits.t(), "image_embeds": img, "text_embeds": txt}
'''


def write_remote_code_model(state: dict, arch: ArchConfig, tmp: Path) -> None:
    """config.json, model.safetensors and the code AutoModel needs, into the folder ``tmp``."""
    import transformers
    from safetensors.torch import save_file

    for src, dst in BUNDLE.items():
        text = (PACKAGE / src).read_text()
        for a, b in LOCAL_IMPORTS:
            text = text.replace(a, b)
        (tmp / dst).write_text(text)
    (tmp / "configuration_growclip.py").write_text(CONFIGURATION)
    (tmp / "modeling_growclip.py").write_text(MODELING)
    config = {"model_type": "growclip", "architectures": ["GrowCLIPModel"], "arch": arch.to_dict(),
              "auto_map": {"AutoConfig": "configuration_growclip.GrowCLIPConfig",
                           "AutoModel": "modeling_growclip.GrowCLIPModel"},
              "torch_dtype": "float32", "transformers_version": transformers.__version__}
    (tmp / "config.json").write_text(json.dumps(config, indent=1) + "\n")
    save_file({f"growclip.{k}": v.contiguous() for k, v in state.items()}, str(tmp / "model.safetensors"),
              metadata={"format": "pt"})


def model_card(step_dir: Path, arch: ArchConfig, fmt: str) -> str:
    """README.md of an export: architecture, parameters, data steps, evaluation, how to load it."""
    from .model import param_count

    step_dir = Path(step_dir)
    eval_file = step_dir / "eval.json"
    ev = json.loads(eval_file.read_text()) if eval_file.exists() else {}
    rows = [f"| {name} (zero-shot top-1) | {100 * r['top1']:.1f} |" for name, r in ev.get("zero_shot", {}).items()]
    for d, r in ev.get("retrieval", {}).items():
        if isinstance(r, dict) and "R@1" in r:
            rows.append(f"| retrieval {d.replace('_', ' ')} R@1 | {100 * r['R@1']:.1f} |")
    load = {"clip": 'transformers.CLIPModel.from_pretrained("DIR")',
            "remote": 'transformers.AutoModel.from_pretrained("DIR", trust_remote_code=True)',
            "open_clip": 'open_clip.create_model_and_transforms("local-dir:DIR")'}[fmt]
    return "\n".join([
        "---", "library_name: " + ("open_clip" if fmt == "open_clip" else "transformers"), "tags: [clip, growclip]", "---",
        f"# GrowCLIP model from `{step_dir}`", "",
        f"Written by `growclip-ds export` (growclip_ds). Trained up to growth step `{step_dir.name}`: "
        "the data of that step and every earlier one.", "",
        "| architecture | value |", "|---|---|",
        *[f"| {k} | {v} |" for k, v in arch.to_dict().items()], f"| parameters | {param_count(arch):,} |", "",
        "| evaluation (the run's held-out test split) | % |", "|---|---|", *(rows or ["| (no eval.json) | - |"]), "",
        "## Load", "```python", f"model = {load}",
        *(['tokenizer = open_clip.get_tokenizer("local-dir:DIR")   # the ids the model was trained on'] if fmt == "open_clip"
          else ['tokenizer = transformers.PreTrainedTokenizerFast.from_pretrained("DIR")   # the ids the model was trained on',
                'processor = transformers.CLIPImageProcessor.from_pretrained("DIR")',
                'ids = tokenizer(texts, padding="max_length", max_length=CONTEXT, truncation=True, return_tensors="pt").input_ids',
                "image_emb = model.get_image_features(pixel_values=processor(images, return_tensors=\"pt\").pixel_values)",
                "text_emb = model.get_text_features(input_ids=ids)   # normalise both for cosine similarity"]),
        "```", ""])
