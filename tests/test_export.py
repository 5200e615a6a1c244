"""Export to Hugging Face CLIPModel and open_clip: the other library, loading what we wrote, computes
our embeddings (1e-5) from the ids of the exported tokenizer, which equal the ids we train on."""
import pytest
import torch
import torch.nn.functional as F

from growclip_ds import cli
from growclip_ds.config import load_config
from growclip_ds.data.tokenizer import TextTokenizer, train_bpe
from growclip_ds.export import export
from growclip_ds.model import GrowCLIP
from growclip_ds.model_folder import write_model

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
    assert cli.main(["export", str(tmp_path / "run" / "step1"), "--format", "hf", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "arch.stem='conv'" in err and "arch.tower='growclip'" in err and not (tmp_path / "x").exists()
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    with pytest.raises(FileExistsError, match="not empty"):
        export(step_dir, "hf", mine)
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]
