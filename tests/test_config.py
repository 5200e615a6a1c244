"""Config validation names the bad field, before any process group starts."""
import json

import pytest
import torch.distributed as dist

from growclip_ds.config import PRESETS, ConfigError, load_config


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
    ("train.optimizer=sgd", "train.optimizer"),
    ("train.precision=fp8", "train.precision"),
    ("data.num_workers=-1", "data.num_workers"),
    ("train.lr=fast", "train.lr"),
    ("train.nonsense=1", "train.nonsense"),
])
def test_bad_value_names_the_field(override, field):
    with pytest.raises(ConfigError) as e:
        load_config("tiny", [override])
    assert str(e.value).startswith(field)


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
