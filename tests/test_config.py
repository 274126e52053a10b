"""Config loading: defaults, YAML, overrides, errors with suggestions, every shipped YAML.

    .venv/bin/python -m pytest tests/test_config.py
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from csr_vlm.cli import main
from csr_vlm.config import ConfigError, RunConfig, field_docs, load_config, save_config

CONFIGS = sorted((Path(__file__).parent.parent / "configs").rglob("*.yaml"))


def test_defaults_are_the_papers():
    cfg = load_config()
    assert cfg.reward.lam == 0.9
    assert cfg.train.beta == 0.1 and cfg.train.lora_r == 128 and cfg.train.lora_alpha == 256
    assert cfg.train.learning_rate == 1e-7 and cfg.search.mode == "paper"


def test_round_trip(tmp_path):
    cfg = load_config(None, ["search.num_candidates=6", "train.lora_target_modules=[q_proj,v_proj]", "seed=3"])
    path = save_config(cfg, tmp_path / "config.yaml")
    again = load_config(path)
    assert again == cfg
    assert again.train.lora_target_modules == ["q_proj", "v_proj"]


def test_overrides_parse_as_yaml_and_beat_the_file(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("reward:\n  lam: 0.5\nsearch:\n  keep_top: 1\n")
    cfg = load_config(f, ["reward.lam=0.25", "overwrite=true", "train.learning_rate=1e-4", "reward.tau=null"])
    assert cfg.reward.lam == 0.25 and cfg.search.keep_top == 1 and cfg.overwrite is True
    assert cfg.train.learning_rate == pytest.approx(1e-4) and cfg.reward.tau is None


def test_unknown_key_suggests_nearest():
    with pytest.raises(ConfigError, match=r"unknown config key 'search.num_candidate'.*'search.num_candidates'"):
        load_config(None, ["search.num_candidate=3"])
    with pytest.raises(ConfigError, match="did you mean 'reward'"):
        load_config(None, ["rewrd.lam=3"])


def test_unknown_key_in_yaml(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("train:\n  betta: 0.2\n")
    with pytest.raises(ConfigError, match="train.beta"):
        load_config(f)


@pytest.mark.parametrize("item, expected", [
    ("search.num_candidates=many", "search.num_candidates: expected int"),
    ("overwrite=3", "overwrite: expected bool"),
    ("search.delimiters=.", "search.delimiters: expected a list"),
    ("reward.lam=[1]", "reward.lam: expected float"),
])
def test_wrong_type_names_key_and_type(item, expected):
    with pytest.raises(ConfigError, match=expected.replace("[", r"\[")):
        load_config(None, [item])


def test_cli_reports_config_errors_in_one_line(capsys):
    assert main(["generate", "search.num_candidate=3"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "did you mean 'search.num_candidates'" in err[0]


def test_every_field_has_a_docstring():
    def walk(cls):
        docs = field_docs(cls)
        for f in dataclasses.fields(cls):
            assert docs.get(f.name), f"{cls.__name__}.{f.name} has no docstring"
            if dataclasses.is_dataclass(f.type) or (isinstance(f.type, str) and f.type.endswith("Config")):
                walk(type(getattr(RunConfig(), f.name)))
    walk(RunConfig)


def test_shipped_configs_exist():
    assert CONFIGS, "configs/ has no YAML files"


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_shipped_yaml_loads(path):
    load_config(path)


def test_help_is_fast_and_lists_commands(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in ("generate", "train", "loop", "eval", "score", "report", "toyworld", "demo", "models"):
        assert name in out


def test_finished_stage_with_another_config_is_not_reused(tmp_path):
    """A stage dir saved with model.path=A refuses to be reused for model.path=B; same config passes."""
    from csr_vlm.config import check_reusable

    cfg = load_config(None, ["model.path=A", "eval.num_images=5"])
    save_config(cfg, tmp_path / "config.yaml")
    check_reusable(tmp_path, cfg, ("seed", "model.path", "eval"))
    with pytest.raises(ConfigError, match=r"model.path differ"):
        check_reusable(tmp_path, load_config(None, ["model.path=B", "eval.num_images=5"]), ("model.path", "eval"))
    with pytest.raises(ConfigError, match=r"\(eval differ"):
        check_reusable(tmp_path, load_config(None, ["model.path=A"]), ("model.path", "eval"))
