"""Config loading: defaults, YAML, overrides, errors with suggestions, every shipped YAML.

    .venv/bin/python -m pytest tests/unit/test_config.py
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from csr_vlm.cli import main
from csr_vlm.config import ConfigError, RunConfig, field_docs, load_config, save_config, validate

CONFIGS = sorted(p for p in (Path(__file__).parents[2] / "configs").rglob("*.yaml") if p.parent.name != "accelerate")
"""Every run config (configs/accelerate/ holds accelerate's launch configs: test_scaling.py loads those)."""


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


def test_field_docstrings_say_what_values_and_default_in_at_most_three_lines():
    """A field's docstring is its reference (docs/config.md, --help), not its history (docs/toyworld-results.md)."""
    import ast

    long = []
    for path in sorted((Path(__file__).resolve().parents[2] / "src" / "csr_vlm" / "schema").glob("*.py")):
        for cls in (n for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.ClassDef)):
            for field, doc in zip(cls.body, cls.body[1:]):
                if isinstance(field, ast.AnnAssign) and isinstance(doc, ast.Expr) and isinstance(doc.value,
                                                                                                ast.Constant):
                    if doc.end_lineno - doc.lineno + 1 > 3:
                        long.append(f"{cls.name}.{field.target.id}")
    assert not long, f"field docstrings over three lines: {long}"


def test_every_config_the_project_ships_or_names_is_loaded_below():
    """The load test below covers every YAML config there is: those inside the package (the toy configs, linked
    from configs/) and every configs/<name>.yaml that the README or the docs tell people to run."""
    import re

    root = Path(__file__).resolve().parents[2]
    loaded = {p.resolve() for p in CONFIGS}
    packaged = set((root / "src" / "csr_vlm").rglob("*.yaml"))
    assert packaged and packaged <= loaded, f"not reachable from configs/: {sorted(packaged - loaded)}"
    texts = [root / "README.md", *sorted((root / "docs").glob("*.md"))]
    named = {m for t in texts for m in re.findall(r"configs/([\w.-]+\.yaml)", t.read_text())}
    shipped = {p.name for p in CONFIGS}
    assert named and named <= shipped, f"named but not shipped: {sorted(named - shipped)}"


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


# ---------------------------------------------------------------------------- allowed values and rules


def _enumerated(cls=RunConfig, prefix=""):
    """(dotted key, allowed values, is a list) of every field with a fixed set of values."""
    from csr_vlm.coerce import choices_of

    out = []
    for f in dataclasses.fields(cls):
        value = getattr(cls(), f.name)
        if dataclasses.is_dataclass(value):
            out += _enumerated(type(value), f"{prefix}{f.name}.")
        elif (allowed := choices_of(cls, f.name)) is not None:
            out.append((prefix + f.name, allowed, isinstance(value, list)))
    return out


ENUMERATED = _enumerated()


def test_the_enumerated_keys_are_the_ones_we_expect():
    keys = {k for k, _, _ in ENUMERATED}
    assert keys == {"model.dtype", "reward.self_score", "reward.normalize", "reward.tau_rule", "reward.end_reward",
                    "search.engine", "search.mode", "search.sampler", "search.filters", "search.boundary",
                    "curate.rejected", "curate.pair_level", "curate.pair_tokens",
                    "train.loss_type", "train.reference",
                    "train.lr_scheduler_type",
                    "eval.pope_splits", "eval.pope_parser"}  # eval.tasks: registry names, checked by validate


@pytest.mark.parametrize("key, allowed, is_list", ENUMERATED, ids=[k for k, _, _ in ENUMERATED])
def test_every_enumerated_key_rejects_a_misspelt_value_at_load_time(key, allowed, is_list):
    """The first allowed value with its last letter doubled ("paper" -> "paperr") is refused when the config is
    built, naming the key and suggesting the value it was meant to be; in the YAML file and in loop.dev too."""
    wrong = allowed[0] + allowed[0][-1]
    text = f"[{wrong}]" if is_list else wrong
    with pytest.raises(ConfigError, match=rf"^{key}(\[0\])?: unknown value '{wrong}'; did you mean '{allowed[0]}'"):
        load_config(None, [f"{key}={text}"])
    if key.startswith("eval."):
        with pytest.raises(ConfigError, match=rf"^loop\.dev\.{key[5:]}(\[0\])?: unknown value '{wrong}'"):
            load_config(None, [f"loop.dev={{{key[5:]}: {text}}}"])


def test_a_misspelt_value_in_yaml_is_refused_with_its_choices(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("reward:\n  normalize: centre\n")
    with pytest.raises(ConfigError, match=r"reward.normalize: unknown value 'centre'; did you mean 'center'\? "
                                          r"\(choose from none, center, zscore, rank\)"):
        load_config(f)


@pytest.mark.parametrize("overrides, message", [
    (["reward.normalize=center"], "reward.normalize=center needs reward.tau or reward.tau_calibration"),
    (["reward.lam=1.5"], "reward.lam must be between 0 and 1"),
    (["reward.scale=0"], "reward.scale must be > 0"),
    (["search.keep_top=0", "search.keep_bottom=0"], "keep at least one answer"),
    (["search.num_candidates=0"], "search.num_candidates must be > 0"),
    (["search.offer_end=true", "search.num_candidates=1"], "search.offer_end=true needs search.num_candidates >= 2"),
    (["search.top_p=0"], r"search.top_p must be in \(0, 1\]"),
    (["search.temperature=-1"], "search.temperature must be >= 0"),
    (["search.delimiters=[]"], "search.delimiters must be a non-empty list"),
    (["train.loss_type=[sigmoid,sft]", "train.loss_weights=[1.0]"], "1 weight\\(s\\) for 2 loss type\\(s\\)"),
    (["train.loss_type=[]"], "train.loss_type must name at least one"),
    (["eval.tasks=[]"], "eval.tasks and eval.lmms_tasks are empty"),
    (["eval.batch_size=0"], "eval.batch_size must be > 0"),
    (["data.max_prompts=0"], "data.max_prompts must be >= 1 or null"),
    (["data.max_mix_prompts=0"], "data.max_mix_prompts must be >= 1 or null"),
    (["model.device=gpu"], "model.device: 'gpu' is not a device"),
    (["loop.rounds=0"], "loop.rounds must be > 0"),
    (["loop.patience=2"], "loop.patience needs loop.select_on"),
    (["loop.select_on=chairi"], r"loop.select_on: 'chairi' is not a metric of the dev tasks.*did you mean 'chair_i'"),
    (["loop.select_on=chair_i", "loop.dev={tasks: [pope]}"], "'chair_i' is not a metric of the dev tasks \\(pope\\)"),
    (["loop.select_on=chair_i", "loop.guards={dup: 0.05}"], "loop.guards: 'dup' is not a metric.*'dup_rate'"),
    (["loop.select_on=chair_i", "loop.relative_guards={recall: 0}"], "loop.relative_guards.recall must be > 0"),
    (["seed=-1"], "seed must be >= 0"),
    (["curate.require_doubt=true"], "curate.require_doubt needs reward.normalize=center"),
    (["curate.require_doubt=true", "reward.normalize=center", "reward.tau=60", "reward.lam=0"],
     "curate.require_doubt judges answers by CLIP"),
    (["curate.rejected=hardest"], "curate.rejected=hardest needs reward.normalize=center"),
    (["curate.yes_no_anchor=true"], "curate.yes_no_anchor rows teach only through the SFT term"),
    (["curate.rejected=likeliest", "reward.normalize=center", "reward.tau=60", "reward.lam=0"],
     "curate.rejected=likeliest judges answers by CLIP"),
])
def test_rules_between_fields_are_checked_at_load_time(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)


def test_loop_only_rules(tmp_path):
    """train.merge=false is fine for one `csr train`, not for a loop whose round 2 needs a full checkpoint."""
    cfg = load_config(None, ["train.merge=false", "loop.evaluate=false"])
    with pytest.raises(ConfigError, match="train.merge=false keeps only the adapter"):
        cfg.validate_loop()
    with pytest.raises(ConfigError, match="eval.annotations is not set"):
        validate(load_config(None, []), loop=True)


def test_configs_are_frozen():
    """A stage cannot edit the config it is given; derived values go into new objects."""
    cfg = load_config()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.reward.tau = 20.0  # type: ignore[misc]
    assert dataclasses.replace(cfg.reward, tau=20.0).tau == 20.0 and cfg.reward.tau is None


@pytest.mark.slow
def test_csr_loop_with_a_bad_value_fails_before_torch_and_makes_no_directory(tmp_path):
    """The whole command in a fresh process: exit 2, one line naming the key, no output directory, and the
    error comes before torch is even imported (so it costs the import of the CLI only)."""
    import subprocess
    import sys

    out = tmp_path / "never"
    code = ("import sys; from csr_vlm.cli import main; rc = main(sys.argv[1:]); "
            "print('torch imported' if 'torch' in sys.modules else 'no torch'); sys.exit(rc)")
    proc = subprocess.run([sys.executable, "-c", code, "loop", "--config", "configs/tiny.yaml", f"out={out}",
                           "reward.normalize=centre"], capture_output=True, text=True, cwd=Path(__file__).parents[2])
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip() == ("csr loop: error: reward.normalize: unknown value 'centre'; did you mean "
                                   "'center'? (choose from none, center, zscore, rank)")
    assert proc.stdout.strip() == "no torch" and not out.exists()
