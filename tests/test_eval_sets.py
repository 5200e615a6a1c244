"""Evaluation sets in users' formats (CLIP_benchmark webdataset, image folder, multi-caption
retrieval): read back exactly, and evaluated equal to a plain per-image recomputation."""
import io
import json

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from growclip_ds.config import replace
from growclip_ds.data.loader import image_transform
from growclip_ds.data.tokenizer import TextTokenizer
from growclip_ds.eval import sets as evalsets
from growclip_ds.eval.evaluate import EvalSets, classifier, evaluate
from growclip_ds.model import GrowCLIP
from growclip_train.presets import load_config

CFG = load_config("tiny")
ARCH = CFG.arch


def _img(rgb, fmt="JPEG") -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (40, 36), rgb).save(buf, format=fmt)
    return buf.getvalue()


COLOURS = {"red": (220, 20, 20), "green": (20, 200, 40), "blue": (30, 30, 230)}


@pytest.fixture(scope="module")
def model_tok(tiny_data):
    torch.manual_seed(0)
    return GrowCLIP(ARCH, seed=5).eval(), TextTokenizer(tiny_data / "tokenizer", ARCH.context_length)


def _zeroshot_samples():
    out = []
    for i in range(7):
        label = i % 3
        rgb = tuple(min(255, c + 9 * i) for c in list(COLOURS.values())[label])
        out.append({"key": f"s{i:03d}", "image": _img(rgb), "ext": "jpg", "label": label})
    return out


def _reference_top1(model, tok, samples, classes, templates) -> float:
    """Per image and per class, no batching, no spreading: the definition of zero-shot top-1."""
    tf = image_transform(ARCH.image_size)
    with torch.no_grad():
        cls = []
        for c in classes:
            e = model.encode_text(tok([t.replace("{c}", c) for t in templates]))
            cls.append(F.normalize(e.mean(0), dim=-1))
        cls = torch.stack(cls)
        hits = 0
        for s in samples:
            x = tf(Image.open(io.BytesIO(s["image"])).convert("RGB"))[None]
            hits += int((model.encode_image(x) @ cls.T).argmax() == s["label"])
    return hits / len(samples)


def test_clip_benchmark_layout_and_image_folder_agree_with_reference(tmp_path, model_tok):
    model, tok = model_tok
    samples, classes = _zeroshot_samples(), list(COLOURS)
    templates = ["a photo of a {c}.", "a {c} square"]
    evalsets.write_zeroshot(tmp_path / "wds", classes, templates, samples)
    folder = tmp_path / "folder"
    for s in samples:   # the same images as an image-folder tree, class names from the folder names
        d = folder / f"{s['label']}_{classes[s['label']]}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"{s['key']}.png").write_bytes(_img(Image.open(io.BytesIO(s["image"])).getpixel((0, 0)), "PNG"))
    (folder / evalsets.CLASSNAMES).write_text("\n".join(classes))
    (folder / evalsets.TEMPLATES).write_text("\n".join(templates))
    spec = [{"name": "wds", "path": str(tmp_path / "wds"), "kind": "zeroshot"},
            {"name": "folder", "path": str(folder), "kind": "zeroshot"}]
    sets = EvalSets(replace(CFG.data, eval=tuple(spec)), ARCH.image_size)
    wds_set, folder_set = sets.zeroshot
    assert wds_set.labels == [s["label"] for s in samples]                 # file order
    assert folder_set.labels == sorted(s["label"] for s in samples)        # class folders in name order
    assert wds_set.classes == folder_set.classes == classes and wds_set.templates == templates
    res = evaluate(model, sets, tok, batch=3)   # 7 images in batches of 3: a partial last batch
    ref = _reference_top1(model, tok, samples, classes, templates)
    assert res["zero_shot"]["wds"]["top1"] == pytest.approx(ref)
    assert res["zero_shot"]["folder"]["top1"] == pytest.approx(ref)   # PNG of the same colours: same pixels
    assert res["zero_shot"]["wds"]["num_classes"] == 3


def test_retrieval_with_several_captions_per_image(tmp_path, model_tok):
    model, tok = model_tok
    caps = [["a red square", "red"], ["a green square"], ["blue thing", "a blue square", "blue"]]
    samples = [{"key": f"r{i}", "image": _img(rgb), "ext": "jpg", "captions": caps[i], "meta": {"step": 1 + i // 2}}
               for i, rgb in enumerate(COLOURS.values())]
    evalsets.write_retrieval(tmp_path / "ret", samples)
    data = replace(CFG.data, eval=({"name": "ret", "path": str(tmp_path / "ret"), "kind": "retrieval"},))
    sets = EvalSets(data, ARCH.image_size)
    r = sets.retrieval[0]
    assert r.texts == [c for cs in caps for c in cs] and r.text_image == [0, 0, 1, 2, 2, 2] and r.steps == [1, 1, 2]
    res = evaluate(model, sets, tok, batch=2)
    tf = image_transform(ARCH.image_size)
    with torch.no_grad():
        img = torch.cat([model.encode_image(tf(Image.open(io.BytesIO(s["image"])).convert("RGB"))[None])
                         for s in samples])
        txt = model.encode_text(tok(r.texts))
    sim = img @ txt.T
    i2t = sum(r.text_image[int(sim[i].argmax())] == i for i in range(3)) / 3
    t2i = sum(int(sim[:, j].argmax()) == r.text_image[j] for j in range(6)) / 6
    assert res["retrieval_sets"]["ret"]["image_to_text"]["R@1"] == pytest.approx(i2t)
    assert res["retrieval_sets"]["ret"]["text_to_image"]["R@1"] == pytest.approx(t2i)
    assert res["retrieval"] == res["retrieval_sets"]["ret"] and set(res["retrieval_by_step"]) == {"1", "2"}


def test_bad_sets_name_the_file_and_the_fix(tmp_path):
    s = _zeroshot_samples()
    evalsets.write_zeroshot(tmp_path / "a", ["red", "green"], ["{c}"], s)   # labels 0..2, two names
    with pytest.raises(ValueError, match="label 2 outside 0..1"):
        evalsets.ZeroShotSet("a", tmp_path / "a")
    evalsets.write_zeroshot(tmp_path / "b", list(COLOURS), ["a photo"], s)
    with pytest.raises(ValueError, match=r"needs '\{c\}'"):
        evalsets.ZeroShotSet("b", tmp_path / "b")
    (tmp_path / "c").mkdir()
    with pytest.raises(FileNotFoundError, match="neither .tar shards"):
        evalsets.ZeroShotSet("c", tmp_path / "c")
    with pytest.raises(FileNotFoundError, match="data split"):
        evalsets.list_sets(tmp_path / "nodata")
    with pytest.raises(ValueError, match="kind must be one of"):
        load_config("tiny", ['data.eval=[{"name": "x", "path": "y", "kind": "classify"}]'])


def test_thousand_classes_eighty_templates_encode_in_bounded_batches(model_tok):
    """ImageNet-sized prompt sets: the text encoder never sees more than ``batch`` prompts at once,
    and the classifier equals a per-class recomputation."""
    model, tok = model_tok
    dset = type("Set", (), {"classes": [f"class {i}" for i in range(1000)],
                            "templates": [f"photo {j} of a {{c}}" for j in range(80)]})()
    dset.prompts = lambda: [t.replace("{c}", c) for c in dset.classes for t in dset.templates]
    seen, encode = [], model.encode_text
    model.encode_text = lambda t: (seen.append(len(t)), encode(t))[1]
    try:
        cls = classifier(model, dset, tok, batch=256)
    finally:
        del model.encode_text
    assert max(seen) == 256 and sum(seen) == 80_000 and cls.shape == (1000, ARCH.embed_dim)
    with torch.no_grad():
        for i in (0, 517, 999):
            e = encode(tok([t.replace("{c}", dset.classes[i]) for t in dset.templates]))
            torch.testing.assert_close(cls[i], F.normalize(e.mean(0), dim=-1), atol=1e-5, rtol=1e-5)


def test_builtin_data_is_written_in_the_user_formats(tiny_data):
    index = json.loads((tiny_data / "eval" / "sets.json").read_text())["sets"]
    assert {(s["name"], s["kind"], s["role"]) for s in index} == \
        {(n, "zeroshot", r) for n in ("colour", "shape", "position", "binding", "relation")
         for r in ("test", "selection")} | \
        {("retrieval", "retrieval", r) for r in ("test", "selection")}
    colour = tiny_data / "eval" / "test" / "colour"
    assert (colour / "classnames.txt").exists() and (colour / "zeroshot_classification_templates.txt").exists()
    # CLIP_benchmark's wds layout (clip_benchmark reads it: tests/test_export.py); retrieval sets say so
    assert sorted(p.name for p in (colour / "test").iterdir()) == ["0.tar", "nshards.txt"]
    assert (colour / "test" / "nshards.txt").read_text().strip() == "1"
    retrieval = next(tiny_data / "eval" / s["path"] for s in index if s["kind"] == "retrieval")
    assert (retrieval / "dataset_type.txt").read_text().strip() == "retrieval"
    assert sorted(p.name for p in (retrieval / "test").iterdir()) == ["0.tar", "nshards.txt"]
