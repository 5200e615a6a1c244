"""Export to Hugging Face CLIPModel and open_clip: the other library, loading what we wrote, computes
our embeddings (1e-5) from the ids of the exported tokenizer, which equal the ids we train on."""
import pytest
import torch
import torch.nn.functional as F

from growclip_ds.data.tokenizer import TextTokenizer, train_bpe
from growclip_ds.export import export
from growclip_ds.model import GrowCLIP
from growclip_ds.model_folder import write_model
from growclip_train.presets import load_config
from growclip_train import cli

CLIP_TOWERS = ["arch.stem=patch", "arch.stem_channels=0", "arch.img_conv_layers=0", "arch.tower=clip",
               "growth.delta_shared_blocks=0", "growth.delta_conv_layers=0", "arch.img_blocks=3"]
TEXTS = ["a red circle on the left", "blue star",
         "a green square on the top of the yellow circle on the right of a blue star"]   # longer than the context


@pytest.fixture(scope="module")
def step(tmp_path_factory):
    """A step folder of a tiny CLIP-tower model whose every tensor (gains and biases too) is random."""
    arch = load_config("tiny", CLIP_TOWERS).arch
    model = GrowCLIP(arch, seed=0)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=g))
    run = tmp_path_factory.mktemp("run")
    write_model(run / "step1", model.state_dict(), arch)
    words = "a the red green blue yellow circle square star on left right top of".split()
    train_bpe([" ".join(words[i:] + words[:i]) for i in range(len(words))] * 4, run / "tokenizer", 120)
    tokens = TextTokenizer(run / "tokenizer", arch.context_length)(TEXTS)
    assert tokens[2, -1] > 0 and (tokens[0] == 0).any()    # one caption truncated, one padded
    images = torch.randn(3, 3, arch.image_size, arch.image_size, generator=g)
    with torch.no_grad():
        model.eval()
        ours = model.encode_image(images), model.encode_text(tokens)
    return run / "step1", arch, images, tokens, ours, model.logit_scale.item()


def _ids(folder, arch):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(folder))
    return tok(TEXTS, padding="max_length", max_length=arch.context_length, truncation=True,
               return_tensors="pt").input_ids


def test_hf_clipmodel_computes_our_embeddings(step, tmp_path):
    from transformers import CLIPModel

    step_dir, arch, images, tokens, (img, txt), scale = step
    assert cli.main(["export", str(step_dir), "--format", "hf", "--out", str(tmp_path / "hf")]) == 0
    hf = CLIPModel.from_pretrained(str(tmp_path / "hf")).eval()
    ids = _ids(tmp_path / "hf", arch)
    assert torch.equal(ids, tokens)
    with torch.no_grad():
        a, b = hf.get_image_features(pixel_values=images), hf.get_text_features(input_ids=ids)
    a, b = getattr(a, "pooler_output", a), getattr(b, "pooler_output", b)
    torch.testing.assert_close(F.normalize(a, dim=-1), img, rtol=0, atol=1e-5)
    torch.testing.assert_close(F.normalize(b, dim=-1), txt, rtol=0, atol=1e-5)
    assert hf.logit_scale.item() == pytest.approx(scale)


def test_open_clip_computes_our_embeddings(step, tmp_path):
    import open_clip

    step_dir, arch, images, tokens, (img, txt), scale = step
    export(step_dir, "open_clip", tmp_path / "oc")
    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{tmp_path / 'oc'}")
    model.eval()
    ids = _ids(tmp_path / "oc", arch)
    assert torch.equal(ids, tokens)
    # what CLIP_benchmark and open_clip tooling call: the folder's own tokenizer, not CLIP's BPE
    assert torch.equal(open_clip.get_tokenizer(f"local-dir:{tmp_path / 'oc'}")(TEXTS), tokens)
    with torch.no_grad():
        torch.testing.assert_close(model.encode_image(images, normalize=True), img, rtol=0, atol=1e-5)
        torch.testing.assert_close(model.encode_text(ids, normalize=True), txt, rtol=0, atol=1e-5)
    assert model.logit_scale.item() == pytest.approx(scale)
    norm = [t for t in preprocess.transforms if type(t).__name__ == "Normalize"][0]
    from growclip_ds.data.loader import MEAN, STD
    assert tuple(norm.mean) == MEAN and tuple(norm.std) == STD


def test_refuses_what_clip_cannot_express_and_never_overwrites(step, tmp_path, capsys):
    step_dir = step[0]
    arch = load_config("tiny").arch            # conv stem, GrowCLIP's towers
    write_model(tmp_path / "run" / "step1", GrowCLIP(arch).state_dict(), arch)
    (tmp_path / "run" / "tokenizer").symlink_to(step_dir.parent / "tokenizer")
    assert cli.main(["export", str(tmp_path / "run" / "step1"), "--format", "open_clip", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "arch.stem='conv'" in err and "arch.tower='growclip'" in err and not (tmp_path / "x").exists()
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    with pytest.raises(FileExistsError, match="not empty"):
        export(step_dir, "hf", mine)
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]


def _png(seed: int, size: int) -> bytes:
    import io

    from PIL import Image

    g = torch.Generator().manual_seed(seed)
    arr = (torch.rand(size, size, 3, generator=g) * 255).to(torch.uint8).numpy()
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def test_clip_benchmark_reads_our_sets_and_scores_the_export_as_we_do(step, tmp_path, monkeypatch):
    """The real `clip_benchmark eval --model local-dir:EXPORT --dataset wds/NAME --dataset_root SET` on sets
    written by growclip_ds.eval.sets (CLIP_benchmark's wds layout) and our open_clip export: no file added
    by hand, and its top-1/top-5 and recall@k equal growclip_ds's own evaluation of the same model."""
    import json
    import sys

    import clip_benchmark.cli as cb
    import clip_benchmark.metrics.zeroshot_classification as cb_cls

    from growclip_ds import load
    from growclip_ds.config import replace
    from growclip_ds.eval import sets
    from growclip_ds.eval.evaluate import EvalSets, evaluate

    step_dir, arch = step[0], step[1]
    colours = ["red", "green", "blue", "yellow", "circle", "square"]   # 6 classes: top-5 is defined there
    sets.write_zeroshot(tmp_path / "eval" / "colour", colours, ["a {c} star.", "the {c} circle on the left."],
                        [{"key": f"{i:04d}", "image": _png(i, arch.image_size), "ext": "png", "label": i % 6}
                         for i in range(24)])
    words = "a the red green blue yellow circle square star on left right top of".split()
    sets.write_retrieval(tmp_path / "eval" / "pairs",
                         [{"key": f"{i:04d}", "image": _png(100 + i, arch.image_size), "ext": "png",
                           "captions": [f"{words[i % 14]} {words[(i + 1 + i // 14) % 14]} star"]}   # 20 different
                          for i in range(20)])
    sets.write_index(tmp_path / "eval", [sets.SetSpec("colour", "colour", "zeroshot", "test"),
                                         sets.SetSpec("pairs", "pairs", "retrieval", "test")])
    assert (tmp_path / "eval" / "colour" / "test" / "nshards.txt").read_text().strip() == "1"
    assert (tmp_path / "eval" / "pairs" / "dataset_type.txt").read_text().strip() == "retrieval"
    model, _, tok = load(step_dir)
    data = replace(load_config("tiny").data, root=str(tmp_path), eval=())
    ours = evaluate(model, EvalSets(data, arch.image_size), tok)
    oc = export(step_dir, "open_clip", tmp_path / "oc")

    def accuracy(output, target, topk=(1,)):   # CLIP_benchmark 1.6.2 calls float() on a 1-element array,
        pred = output.topk(max(topk), 1, True, True)[1].t()   # an error under numpy 2.4: the same sum, .item()
        correct = pred.eq(target.view(1, -1).expand_as(pred))
        return [correct[:k].reshape(-1).float().sum().item() / len(target) for k in topk]
    monkeypatch.setattr(cb_cls, "accuracy", accuracy)

    def clip_benchmark(name, task, *more):
        out = tmp_path / f"{name}.json"
        monkeypatch.setattr(sys, "argv", ["clip_benchmark", "eval", "--model", f"local-dir:{oc}", "--pretrained", "",
                                          "--dataset", f"wds/{name}", "--dataset_root", str(tmp_path / "eval" / name),
                                          "--task", task, "--output", str(out), "--no_amp", "--num_workers", "0",
                                          "--batch_size", "8", *more])
        cb.main()
        return json.loads(out.read_text())["metrics"]

    got = clip_benchmark("colour", "zeroshot_classification")
    want = ours["zero_shot"]["colour"]
    assert got["acc1"] == pytest.approx(want["top1"], abs=1e-6) and got["acc5"] == pytest.approx(want["top5"], abs=1e-6)
    got = clip_benchmark("pairs", "zeroshot_retrieval", "--recall_k", "1", "5")
    for k in (1, 5):
        assert got[f"image_retrieval_recall@{k}"] == pytest.approx(ours["retrieval"]["text_to_image"][f"R@{k}"], abs=1e-6)
        assert got[f"text_retrieval_recall@{k}"] == pytest.approx(ours["retrieval"]["image_to_text"][f"R@{k}"], abs=1e-6)


def test_every_architecture_exports_to_hugging_face_with_its_own_code(step, tmp_path):
    """A conv stem, GrowCLIP's towers and a shared block (what CLIPModel cannot express), every tensor random:
    `--format hf` writes a folder with its own modeling code; AutoModel.from_pretrained(trust_remote_code=True)
    gives growclip_ds.load's unit-norm embeddings (1e-5) from the folder's tokenizer and image processor."""
    from transformers import AutoImageProcessor, AutoModel, AutoTokenizer

    from growclip_ds.config import replace
    import growclip_ds

    arch = replace(load_config("tiny").arch, shared_blocks=1)
    model = GrowCLIP(arch, seed=1)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=g))
    run = tmp_path / "run"
    write_model(run / "step1", model.state_dict(), arch)
    (run / "tokenizer").symlink_to(step[0].parent / "tokenizer")
    assert cli.main(["export", str(run / "step1"), "--format", "hf", "--out", str(tmp_path / "hf")]) == 0
    hf = AutoModel.from_pretrained(str(tmp_path / "hf"), trust_remote_code=True).eval()
    assert type(hf).__name__ == "GrowCLIPModel" and (tmp_path / "hf" / "modeling_growclip.py").exists()
    ours, transform, tok = growclip_ds.load(run / "step1")
    from PIL import Image

    pics = [Image.new("RGB", (40, 48), (30 * i, 200 - 40 * i, 90)) for i in range(3)]
    pixels = AutoImageProcessor.from_pretrained(str(tmp_path / "hf"))(pics, return_tensors="pt").pixel_values
    ids = _ids(tmp_path / "hf", arch)
    with torch.no_grad():
        torch.testing.assert_close(pixels, torch.stack([transform(p) for p in pics]), rtol=0, atol=1e-5)
        assert torch.equal(ids, tok(TEXTS))
        torch.testing.assert_close(F.normalize(hf.get_image_features(pixel_values=pixels), dim=-1),
                                   ours.encode_image(pixels), rtol=0, atol=1e-5)
        torch.testing.assert_close(F.normalize(hf.get_text_features(input_ids=ids), dim=-1),
                                   ours.encode_text(ids), rtol=0, atol=1e-5)
    card = (tmp_path / "hf" / "README.md").read_text()
    assert "trust_remote_code=True" in card and f"| parameters | {sum(v.numel() for v in model.state_dict().values()):,} |" in card
