"""The schemas Hydra checks the configs against: made from the signatures, named by every group's files."""

import dataclasses
from collections.abc import Sequence
from typing import Any, List, Optional

import pytest
import torch
from hydra.utils import get_object
from omegaconf import OmegaConf
from omegaconf.errors import ValidationError

from addernet.data import CIFAR10DataModule
from addernet.errors import ConfigError
from addernet.experiments.config_schema import check_keys, config_type, signature_schema
from hydra_helpers import CONF, compose_config

SCHEMA_GROUPS = ["model", "data", "trainer", "optimizer", "scheduler", "adalr", "distill"]


@pytest.mark.parametrize("annotation, expected", [
    (int, int), (int | None, Optional[int]), (float | torch.Tensor, float), (int | float, Any),
    (Sequence[str] | None, Optional[List[str]]), (tuple[float, ...], List[float]), (torch.nn.Module, Any),
])
def test_a_setting_is_checked_as_annotated_where_omegaconf_can(annotation, expected):
    assert config_type(annotation) == expected


def test_a_schema_follows_keyword_arguments_to_the_base_class():
    schema = OmegaConf.structured(signature_schema(CIFAR10DataModule))
    assert schema.root == "data" and schema.batch_size == 256 and schema.augment is True  # the last two: the base
    with pytest.raises(ValidationError):
        schema.batch_size = "many"


@pytest.mark.parametrize("group, choice", [(g, p.stem) for g in SCHEMA_GROUPS
                                           for p in sorted((CONF / g).glob("*.yaml"))])
def test_every_choice_of_a_group_has_the_schema_of_what_it_builds(group, choice):
    cfg = compose_config([f"{group}={choice}"] + (["scheduler=cosine"] if group != "scheduler" else []))
    node = cfg[group]
    schema = OmegaConf.get_type(node)
    assert dataclasses.is_dataclass(schema), f"conf/{group}/{choice}.yaml names no schema in its defaults"
    if group == "model":
        assert schema.__name__ == ("AdderModelConfig" if choice.startswith("adder_") else "ModelConfig"), choice
    if "_target_" in schema.__dataclass_fields__:
        assert get_object(node._target_) is get_object(schema.__dataclass_fields__["_target_"].default), \
            f"conf/{group}/{choice}.yaml builds {node._target_} with the schema of another target"


def test_a_required_setting_left_unset_is_named():
    with pytest.raises(ConfigError, match=r"^ckpt_path is required: add ckpt_path=\.\.\. to the command$"):
        check_keys(compose_config(["data=synthetic"], name="eval"))
    with pytest.raises(ConfigError, match="distill.teacher_ckpt is required"):
        check_keys(compose_config(["experiment=cifar10_resnet20_kd"]))


def test_a_key_added_to_a_node_with_a_schema_is_refused():
    cfg = compose_config(["+optimizer.lrr=0.1"])
    with pytest.raises(ConfigError, match=r"optimizer.lrr is not a setting of SGDConfig"):
        check_keys(cfg)
    check_keys(compose_config(["+callbacks.extra.x=1"]))  # callbacks are free-form
