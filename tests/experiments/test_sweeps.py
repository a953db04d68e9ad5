from pathlib import Path

import pytest
import yaml

from addernet.experiments.sweep import load_sweep
from hydra_helpers import ROOT, compose_config

SWEEPS = sorted((ROOT / "sweeps").glob("*.yaml"))


def test_the_paper_sweeps_exist():
    assert {p.stem for p in SWEEPS} >= {"ablation", "eta", "adder_vs_cnn"}
    assert load_sweep(ROOT / "sweeps" / "ablation.yaml") == {
        "model.weight_grad": ["full", "sign"], "adalr": ["on", "off", "ilr"], "sweep_name": ["ablation"]}


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.stem)
def test_every_sweep_value_is_a_valid_training_override(path: Path, tmp_path):
    """The W&B form and the Hydra form are the same file: each value must compose with the training config."""
    for key, values in load_sweep(path).items():
        for value in values:
            cfg = compose_config([f"{key}={value}"], tmp_path)  # the default model is an adder one
            node = cfg
            for part in key.split("."):
                node = node[part]
            assert str(node.mode if key == "adalr" else node.name if key == "model" else node) == str(value)


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.stem)
def test_sweep_files_are_runnable_by_wandb_agents(path: Path, tmp_path):
    spec = yaml.safe_load(path.read_text())
    assert spec["program"] == "src/train.py" and spec["method"] == "grid"
    assert "${args_no_hyphens}" in spec["command"]  # W&B passes Hydra overrides, key=value
    cfg = compose_config([f"sweep={path.stem}"], tmp_path)
    assert cfg is not None  # the Hydra side composes as well


def test_unknown_sweep_file_names_the_known_ones(tmp_path):
    with pytest.raises(FileNotFoundError, match="known sweeps: .*ablation"):
        load_sweep(ROOT / "sweeps" / "nope.yaml")
