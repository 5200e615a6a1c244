"""Trained models out to the ecosystem: a Hugging Face ``CLIPModel`` folder or an open_clip checkpoint.

    growclip-ds export runs/vitb/step1 --format hf --out exported/hf
    model = transformers.CLIPModel.from_pretrained("exported/hf")
    tok = transformers.AutoTokenizer.from_pretrained("exported/hf")
    ids = tok(texts, padding="max_length", max_length=model.config.text_config.max_position_embeddings,
              truncation=True, return_tensors="pt").input_ids

    growclip-ds export runs/vitb/step1 --format open_clip --out exported/oc
    model, _, preprocess = open_clip.create_model_and_transforms("local-dir:exported/oc")
    tokenize = open_clip.get_tokenizer("local-dir:exported/oc")      # the folder's tokenizer: our ids
    clip_benchmark eval --model local-dir:exported/oc --dataset wds/colour --dataset_root data/builtin/eval/test/colour

These two hold CLIP's own function only: a patch stem, CLIP's towers (``arch.tower=clip``) and no
shared blocks, i.e. the ``vit-b-16`` preset and any run trained with those settings; open_clip refuses
anything else with the field that does not fit, and ``--format hf`` writes it with its own modeling code
instead (export_remote.py: ``AutoModel.from_pretrained(DIR, trust_remote_code=True)``). The exported models compute the same embeddings as
``growclip_ds.load`` (tests/test_export.py: 1e-5).

Token ids stay growclip_ds's (the tokenizer's + 1, 0 pads): the folder holds a tokenizer with those
ids that adds the start and end tokens itself, so the call above gives exactly what the model was
trained on; the open_clip config names it (``text_cfg.hf_tokenizer_name``), so ``open_clip.get_tokenizer``
returns it, and so do the tools built on open_clip (CLIP_benchmark). Keeping the shift also keeps Hugging
Face's text pooling off its legacy ``eos_token_id == 2`` path.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from .config import ArchConfig
from .errors import InputError

FORMATS = ("hf", "open_clip")
PAD = "<|growclip_pad|>"


def check_exportable(arch: ArchConfig) -> None:
    """Raise ValueError naming every field that CLIP's function cannot express."""
    problems = []
    if arch.stem != "patch":
        problems.append("arch.stem='conv': CLIP embeds patches with one bias-free conv (train with arch.stem=patch)")
    if arch.tower != "clip":
        problems.append("arch.tower='growclip': the pooled token is projected before the final LayerNorm and the "
                        "head has a bias; CLIP has LayerNorm, then a bias-free projection (train with arch.tower=clip)")
    if arch.shared_blocks:
        problems.append(f"arch.shared_blocks={arch.shared_blocks}: CLIP's towers share no blocks")
    if problems:
        raise InputError("this model cannot be written as CLIP: " + "; ".join(problems)
                         + " (the vit-b-16 preset has all three)")


def _blocks(state: dict, prefix: str, n: int):
    """Per block: (index, {canonical name: tensor}) with q, k, v apart."""
    for i in range(n):
        p = f"{prefix}.{i}."
        q, k, v = state[p + "attn.qkv_weight"]
        qb, kb, vb = state[p + "attn.qkv_bias"]
        yield i, {"ln1.weight": state[p + "ln1.weight"], "ln1.bias": state[p + "ln1.bias"],
                  "q.weight": q, "q.bias": qb, "k.weight": k, "k.bias": kb, "v.weight": v, "v.bias": vb,
                  "out.weight": state[p + "attn.proj.weight"], "out.bias": state[p + "attn.proj.bias"],
                  "ln2.weight": state[p + "ln2.weight"], "ln2.bias": state[p + "ln2.bias"],
                  "fc1.weight": state[p + "mlp.fc1.weight"], "fc1.bias": state[p + "mlp.fc1.bias"],
                  "fc2.weight": state[p + "mlp.fc2.weight"], "fc2.bias": state[p + "mlp.fc2.bias"]}


HF_BLOCK = {"ln1": "layer_norm1", "ln2": "layer_norm2", "q": "self_attn.q_proj", "k": "self_attn.k_proj",
            "v": "self_attn.v_proj", "out": "self_attn.out_proj", "fc1": "mlp.fc1", "fc2": "mlp.fc2"}


def hf_state(state: dict, arch: ArchConfig) -> dict[str, torch.Tensor]:
    """Our tensors under ``transformers.CLIPModel``'s names."""
    out = {"vision_model.embeddings.class_embedding": state["image.cls_token"],
           "vision_model.embeddings.patch_embedding.weight": state["image.patchify.weight"],
           "vision_model.embeddings.position_embedding.weight": state["image.pos_emb"],
           "text_model.embeddings.token_embedding.weight": state["text.tok_emb"],
           "text_model.embeddings.position_embedding.weight": state["text.pos_emb"],
           "visual_projection.weight": state["img_head.weight"], "text_projection.weight": state["txt_head.weight"],
           "logit_scale": state["logit_scale"].reshape(())}
    for ours, theirs in (("image.ln_pre", "vision_model.pre_layrnorm"), ("img_ln_final", "vision_model.post_layernorm"),
                         ("txt_ln_final", "text_model.final_layer_norm")):
        out[f"{theirs}.weight"], out[f"{theirs}.bias"] = state[f"{ours}.weight"], state[f"{ours}.bias"]
    for tower, prefix, n in (("vision_model", "image.blocks", arch.img_blocks), ("text_model", "text.blocks", arch.txt_blocks)):
        for i, t in _blocks(state, prefix, n):
            for name, tensor in t.items():
                part, kind = name.split(".")
                out[f"{tower}.encoder.layers.{i}.{HF_BLOCK[part]}.{kind}"] = tensor
    return out


OC_BLOCK = {"ln1": "ln_1", "ln2": "ln_2", "out": "attn.out_proj", "fc1": "mlp.c_fc", "fc2": "mlp.c_proj"}


def open_clip_state(state: dict, arch: ArchConfig) -> dict[str, torch.Tensor]:
    """Our tensors under ``open_clip.CLIP``'s names (its projections are (in, out) matrices)."""
    out = {"visual.class_embedding": state["image.cls_token"], "visual.conv1.weight": state["image.patchify.weight"],
           "visual.positional_embedding": state["image.pos_emb"], "visual.proj": state["img_head.weight"].T,
           "token_embedding.weight": state["text.tok_emb"], "positional_embedding": state["text.pos_emb"],
           "text_projection": state["txt_head.weight"].T, "logit_scale": state["logit_scale"].reshape(())}
    for ours, theirs in (("image.ln_pre", "visual.ln_pre"), ("img_ln_final", "visual.ln_post"),
                         ("txt_ln_final", "ln_final")):
        out[f"{theirs}.weight"], out[f"{theirs}.bias"] = state[f"{ours}.weight"], state[f"{ours}.bias"]
    for tower, prefix, n in (("visual.transformer", "image.blocks", arch.img_blocks),
                             ("transformer", "text.blocks", arch.txt_blocks)):
        for i, t in _blocks(state, prefix, n):
            p = f"{tower}.resblocks.{i}."
            out[p + "attn.in_proj_weight"] = torch.cat([t["q.weight"], t["k.weight"], t["v.weight"]])
            out[p + "attn.in_proj_bias"] = torch.cat([t["q.bias"], t["k.bias"], t["v.bias"]])
            for part, theirs in OC_BLOCK.items():
                out[f"{p}{theirs}.weight"], out[f"{p}{theirs}.bias"] = t[f"{part}.weight"], t[f"{part}.bias"]
    return {k: v.contiguous() for k, v in out.items()}


def shifted_tokenizer(tok, context_length: int):
    """A fast HF tokenizer whose ids are ``tok.backend``'s + 1 (0: a new pad token) and that adds the
    start and end tokens itself: it returns exactly ``TextTokenizer``'s ids when asked to pad and
    truncate to ``context_length``."""
    from tokenizers import Tokenizer, processors
    from transformers import PreTrainedTokenizerFast

    if tok.backend is None:
        raise InputError("export needs a fast (tokenizer.json) tokenizer; save yours with transformers first")
    spec = json.loads(tok.backend.to_str())
    vocab, unk = spec["model"].get("vocab"), spec["model"].get("unk_token")
    if not isinstance(vocab, dict):
        raise InputError(f"export: a {spec['model'].get('type')} tokenizer's ids cannot be shifted (BPE, WordPiece "
                         "and WordLevel can)")
    spec["model"]["vocab"] = {PAD: 0, **{t: i + 1 for t, i in vocab.items()}}   # in the vocab, or it gets a new id
    spec["added_tokens"] = [{**a, "id": a["id"] + 1} for a in spec.get("added_tokens", [])] + [
        {"id": 0, "content": PAD, "single_word": False, "lstrip": False, "rstrip": False, "normalized": False,
         "special": True}]
    spec["padding"] = spec["truncation"] = spec["post_processor"] = None
    backend = Tokenizer.from_str(json.dumps(spec))
    sot = None if tok.sot is None else tok.backend.id_to_token(tok.sot)
    eot = tok.backend.id_to_token(tok.eot)
    ends = [(t, backend.token_to_id(t)) for t in (sot, eot) if t is not None]
    backend.post_processor = processors.TemplateProcessing(
        single=" ".join([sot] * (sot is not None) + ["$A", eot]), special_tokens=ends)
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token=sot, eos_token=eot, pad_token=PAD,
                                   unk_token=unk, model_max_length=context_length)


def hf_config(arch: ArchConfig, tokenizer, logit_scale: float):
    from transformers import CLIPConfig

    common = dict(hidden_act="gelu", layer_norm_eps=1e-5)
    text = dict(vocab_size=arch.vocab_size, hidden_size=arch.txt_width, intermediate_size=arch.mlp_ratio * arch.txt_width,
                num_hidden_layers=arch.txt_blocks, num_attention_heads=arch.txt_heads,
                max_position_embeddings=arch.context_length, pad_token_id=0, bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id, **common)
    vision = dict(hidden_size=arch.img_width, intermediate_size=arch.mlp_ratio * arch.img_width,
                  num_hidden_layers=arch.img_blocks, num_attention_heads=arch.img_heads, image_size=arch.image_size,
                  patch_size=arch.patch_size, num_channels=3, **common)
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=arch.embed_dim,
                      logit_scale_init_value=logit_scale)


def open_clip_config(arch: ArchConfig, tokenizer) -> dict:
    from .data.loader import MEAN, STD

    model = {"embed_dim": arch.embed_dim, "quick_gelu": False,
             "vision_cfg": {"image_size": arch.image_size, "layers": arch.img_blocks, "width": arch.img_width,
                            "head_width": arch.head_dim, "mlp_ratio": arch.mlp_ratio, "patch_size": arch.patch_size},
             "text_cfg": {"context_length": arch.context_length, "vocab_size": arch.vocab_size,
                          "width": arch.txt_width, "heads": arch.txt_heads, "layers": arch.txt_blocks,
                          "mlp_ratio": arch.mlp_ratio, "pool_type": "eos", "eos_id": tokenizer.eos_token_id,
                          # open_clip.get_tokenizer("local-dir:DIR") (CLIP_benchmark, most open_clip tools) then
                          # loads the tokenizer saved in DIR: our ids, not CLIP's BPE. On the Hub, put the
                          # repository id here (open_clip loads hf-hub: tokenizers by this name)
                          "hf_tokenizer_name": "./"}}
    return {"model_cfg": model, "preprocess_cfg": {"mean": list(MEAN), "std": list(STD), "interpolation": "bicubic",
                                                   "resize_mode": "shortest"}}


def _write_image_processor(arch: ArchConfig, tmp: Path) -> None:
    from transformers import CLIPImageProcessor

    from .data.loader import MEAN, STD

    s = arch.image_size
    CLIPImageProcessor(size={"shortest_edge": s}, crop_size={"height": s, "width": s}, image_mean=list(MEAN),
                       image_std=list(STD), resample=3).save_pretrained(tmp)


def _write_hf(state, arch, tokenizer, tmp: Path) -> None:
    """CLIPModel where CLIP can express the model, else a folder with its own code (export_remote.py)."""
    from transformers import CLIPModel

    from .export_remote import write_remote_code_model

    try:
        check_exportable(arch)
    except ValueError:
        write_remote_code_model(state, arch, tmp)
    else:
        model = CLIPModel(hf_config(arch, tokenizer, float(state["logit_scale"].reshape(()))))
        model.load_state_dict(hf_state(state, arch), strict=True)
        model.save_pretrained(tmp)
    _write_image_processor(arch, tmp)


def _write_open_clip(state, arch, tokenizer, tmp: Path) -> None:
    from safetensors.torch import save_file

    save_file(open_clip_state(state, arch), str(tmp / "open_clip_model.safetensors"))
    (tmp / "open_clip_config.json").write_text(json.dumps(open_clip_config(arch, tokenizer), indent=1) + "\n")


def export(step_dir, fmt: str, out, tokenizer_dir=None) -> Path:
    """Write the model of a finished step folder to ``out`` (a new folder), with its tokenizer."""
    from .data.tokenizer import TextTokenizer
    from .export_remote import model_card
    from .fileio import atomic_path
    from .model_folder import run_tokenizer_dir
    from .model_folder import read_model

    if fmt not in FORMATS:
        raise InputError(f"--format: must be one of {', '.join(FORMATS)} (got {fmt!r})")
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out}: exists and is not empty; name a new --out folder")
    state, arch = read_model(Path(step_dir))
    if fmt == "open_clip":
        check_exportable(arch)
    tokenizer = shifted_tokenizer(TextTokenizer(tokenizer_dir or run_tokenizer_dir(step_dir), arch.context_length),
                                  arch.context_length)
    state = {k: v.detach().to("cpu", torch.float32) for k, v in state.items()}
    with atomic_path(out) as tmp:   # the folder appears whole, or not at all
        tmp.mkdir()
        (_write_hf if fmt == "hf" else _write_open_clip)(state, arch, tokenizer, tmp)
        tokenizer.save_pretrained(tmp)
        kind = fmt if fmt == "open_clip" else ("remote" if (tmp / "modeling_growclip.py").exists() else "clip")
        (tmp / "README.md").write_text(model_card(Path(step_dir), arch, kind))
    return out
