"""Config validation names the bad field, before any process group starts."""
import json

import pytest
import torch.distributed as dist

from growclip_ds.config import ConfigError
from growclip_train.presets import load_config
from growclip_train.presets import PRESETS


@pytest.mark.parametrize("name", list(PRESETS))
def test_presets_validate(name):
    assert load_config(name).name == name


@pytest.mark.parametrize("override,field", [
    ("train.lr=-1", "train.lr"),
    ("train.zero_stage=5", "train.zero_stage"),
    ("train.micro_batch=7", "train.global_batch"),
    ("arch.patch_size=5", "arch.patch_size"),
    ("arch.img_heads=0", "arch.img_heads"),
    ("arch.stem=resnet", "arch.stem"),
    ("arch.tower=vit", "arch.tower"),
    ("arch.stem=patch", "arch.img_conv_layers"),
    ("arch.tower=clip", "growth.delta_shared_blocks"),   # growth would add shared blocks CLIP has not
    ("growth.inherit=preserve,arch.tower=clip,growth.delta_shared_blocks=0", "growth.inherit"),
    ("train.optimizer=sgd", "train.optimizer"),
    ("train.monitor=tensorboard;mlflow", "train.monitor"),
    ("train.precision=fp8", "train.precision"),
    ("data.num_workers=-1", "data.num_workers"),
    ("train.lr=fast", "train.lr"),
    ("train.nonsense=1", "train.nonsense"),
])
def test_bad_value_names_the_field(override, field):
    with pytest.raises(ConfigError) as e:
        load_config("tiny", override.split(","))
    assert str(e.value).startswith(field)


def test_clip_towers_with_growth_they_can_express():
    cfg = load_config("tiny", ["arch.tower=clip", "growth.delta_shared_blocks=0", "growth.inherit=preserve",
                               "growth.delta_img_heads=0", "growth.delta_txt_heads=0"])   # deepening only
    assert cfg.arch.tower == "clip" and PRESETS["vit-b-16"].arch.tower == "clip"


def test_json_file_with_preset_base(tmp_path):
    f = tmp_path / "run.json"
    f.write_text(json.dumps({"preset": "tiny", "train": {"lr": 0.5}}))
    cfg = load_config(str(f), ["arch.img_blocks=3"])
    assert cfg.train.lr == 0.5 and cfg.arch.img_blocks == 3 and cfg.arch.head_dim == PRESETS["tiny"].arch.head_dim


def test_batch_must_fit_world_size():
    cfg = load_config("tiny")
    assert cfg.train.grad_accum(1) == 2 and cfg.train.grad_accum(2) == 1
    with pytest.raises(ConfigError, match="train.global_batch"):
        cfg.train.grad_accum(3)


def test_launcher_rejects_bad_config_before_process_group(capsys, monkeypatch):
    import launchers.grow as grow

    monkeypatch.setenv("WORLD_SIZE", "2")
    rc = grow.main(["--step", "1", "--config", "tiny", "--set", "train.global_batch=48"])
    assert rc == 2
    assert "train.global_batch" in capsys.readouterr().err
    assert not dist.is_initialized()


def test_typo_in_a_preset_based_file_names_the_section(tmp_path):
    f = tmp_path / "run.json"
    f.write_text(json.dumps({"preset": "tiny", "trian": {"lr": 0.5}}))
    with pytest.raises(ConfigError, match=r"trian: unknown config section; known: arch, train, data"):
        load_config(str(f))
    f.write_text(json.dumps({"preset": "tiny", "train": {"lr": 0.5, "warmup_stpes": 3}}))
    with pytest.raises(ConfigError, match=r"train.warmup_stpes: unknown field"):
        load_config(str(f))


def test_paper_preset_takes_a_clip_sized_tokenizer(tmp_path):
    """CLIP's tokenizer has 49,408 ids; with the +1 padding shift the model needs 49,409 rows."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from growclip_ds.data.tokenizer import load_tokenizer

    vocab = {t: i for i, t in enumerate(["<|startoftext|>", "<|endoftext|>"] + [f"w{i}" for i in range(49406)])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<|endoftext|>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|startoftext|>", eos_token="<|endoftext|>").save_pretrained(
        tmp_path / "clip_sized")
    cfg = load_config("paper", [f"data.tokenizer={tmp_path / 'clip_sized'}"])
    t = load_tokenizer(cfg, cfg.arch)            # raised "arch.vocab_size=49408 is smaller" before
    assert t.vocab_size == cfg.arch.vocab_size == 49409
    ids = t(["w49405 w0"])
    assert ids.max().item() == 49408 and ids[0, 1].item() == 49408   # the last row of the embedding
    with pytest.raises(ValueError, match="arch.vocab_size=49408 is smaller"):
        load_tokenizer(load_config("paper", [f"data.tokenizer={tmp_path / 'clip_sized'}", "arch.vocab_size=49408"]),
                       load_config("paper", ["arch.vocab_size=49408"]).arch)


def test_one_accelerator_and_backend_decision():
    """What DeepSpeed will use decides both: DS_ACCELERATOR where set, else CUDA where visible. A GPU host
    under DS_ACCELERATOR=cpu (the tests' and local launches' setting) uses gloo and the CPU, not NCCL."""
    from growclip_train.accelerator import accelerator_env, accelerator_name, backend

    assert (accelerator_name({}, cuda=True), backend({}, cuda=True)) == ("cuda", "nccl")
    assert (accelerator_name({"DS_ACCELERATOR": "cpu"}, cuda=True), backend({"DS_ACCELERATOR": "cpu"}, cuda=True)) \
        == ("cpu", "gloo")
    assert (accelerator_name({}, cuda=False), backend({}, cuda=False)) == ("cpu", "gloo")
    assert "DS_ACCELERATOR" not in accelerator_env({}, cuda=True)                   # a GPU machine: DeepSpeed decides
    assert accelerator_env({"DS_ACCELERATOR": "cpu"}, cuda=True)["DS_ACCELERATOR"] == "cpu"   # explicit wins
    assert accelerator_env({}, cuda=False)["DS_ACCELERATOR"] == "cpu"
    with pytest.raises(ValueError, match="DS_ACCELERATOR=xpu"):
        backend({"DS_ACCELERATOR": "xpu"})


def test_zero2_copies_gradients_into_one_buffer_on_a_gpu_and_not_on_the_cpu(monkeypatch, tmp_path):
    from growclip_train.train.engine import DS_CONFIG_DIR, build_ds_config

    train = load_config("tiny", ["train.zero_stage=2"]).train
    assert json.loads((DS_CONFIG_DIR / "zero2.json").read_text())["zero_optimization"]["contiguous_gradients"] == "auto"
    for acc, want in (("cpu", False), ("cuda", True)):
        monkeypatch.setenv("DS_ACCELERATOR", acc)
        assert build_ds_config(train, 1)["zero_optimization"]["contiguous_gradients"] is want
    mine = tmp_path / "zero2.json"            # a user's explicit choice is kept on every accelerator
    mine.write_text(json.dumps({"zero_optimization": {"stage": 2, "contiguous_gradients": True}}))
    monkeypatch.setenv("DS_ACCELERATOR", "cpu")
    assert build_ds_config(train, 1, base=mine)["zero_optimization"]["contiguous_gradients"] is True
