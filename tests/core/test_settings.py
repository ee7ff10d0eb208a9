"""The settings of the MUSAR nodes: one check per settings object, the same rules whether a
value is checked at validation (literal, None = linked) or at execute time (every value)."""

import dataclasses
import math
import re

import pytest

from musar.checks import FLAG, TEXT, Limit, input_names, number, rules_of, verdict
from musar.errors import DatasetError, LayoutError, MusarError, RoutingError, TrainingError
from musar.settings import (
    APPLY,
    REFERENCES,
    LabelSettings,
    LoRASettings,
    PreviewSettings,
    RegionSettings,
    RoutingSettings,
    SubjectSettings,
    check_label,
    check_lora_settings,
    check_preview,
    check_routing,
    check_subject,
)
from musar.train import TrainConfig
from musar.train.config import RULES
from musar.train.settings import DatasetSettings, SaveSettings, TrainingSettings

SETTINGS = (RoutingSettings, PreviewSettings, SubjectSettings, RegionSettings, LabelSettings,
            LoRASettings, DatasetSettings, TrainingSettings, SaveSettings)

ROUTING_FLOATS = ["start_percent", "end_percent", "threshold", "strength"]


def test_defaults_are_valid_and_named_like_the_node_inputs():
    assert RoutingSettings().routing_blocks == "double" and RoutingSettings().smoothing == 3
    assert PreviewSettings().step == -1 and SubjectSettings().crop == "center crop"
    with pytest.raises(TypeError):
        RoutingSettings(True)  # keyword-only: positional settings cannot be swapped silently


@pytest.mark.parametrize("name", ROUTING_FLOATS)
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_routing_numbers_are_refused_naming_the_input(name, bad):
    with pytest.raises(RoutingError, match=f"^{name}: expected a finite number"):
        RoutingSettings(**{name: bad})
    assert verdict(check_routing, {name: bad}).startswith(f"{name}: expected a finite number")


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_non_finite_preview_opacity_is_refused(bad):
    with pytest.raises(RoutingError, match="^opacity: expected a finite number"):
        PreviewSettings(opacity=bad)


@pytest.mark.parametrize("values,match", [
    ({"smoothing": 10001}, "smoothing: expected a whole number from 1 to 15"),
    ({"smoothing": 4}, "expected an odd whole number"),
    ({"smoothing": 2.5}, "whole number"),
    ({"strength": 2.5}, "strength: expected a number from 0.0 to 2.0"),
    ({"threshold": -0.1}, "threshold"),
    ({"static_routing": "yes"}, "static_routing: expected true or false"),
    ({"routing_blocks": 3}, "routing_blocks: expected text"),
    ({"routing_blocks": "middle"}, "not understood"),
    ({"positions": "sideways"}, "positions: unknown option 'sideways', expected one of 'shared'"),
    ({"start_percent": 0.8, "end_percent": 0.5}, "start_percent"),
    ({"symmetric": True, "dynamic_routing": False}, "needs dynamic"),
    ({"symmetric": True, "condition_cache": True}, "conflict"),
])
def test_bad_routing_settings_are_explained(values, match):
    with pytest.raises(RoutingError, match=match):
        RoutingSettings(**values)
    assert match in verdict(check_routing, values)  # the node's validate_inputs says the same


def test_unknown_values_skip_only_the_rules_that_need_them():
    """validate_inputs passes None for inputs linked from another node."""
    assert check_routing(dict.fromkeys(RoutingSettings.__dataclass_fields__)) is None
    assert check_routing({"start_percent": None, "end_percent": 0.1}) is None
    assert check_routing({"symmetric": True, "dynamic_routing": None}) is None
    with pytest.raises(RoutingError, match="needs dynamic"):
        check_routing({"symmetric": True, "dynamic_routing": False, "smoothing": None})
    assert check_preview({"step": None, "opacity": None}) is None
    assert check_subject({"caption": None, "crop": None, "reference_size": None}) is None


def test_unknown_setting_names_are_refused():
    with pytest.raises(MusarError, match="unknown setting"):
        check_routing({"smothing": 3})


@pytest.mark.parametrize("values,match", [
    ({"caption": "   "}, "caption is empty"),
    ({"crop": "zoom"}, "crop: unknown option 'zoom'"),
    ({"reference_size": 72}, "multiple of 16"),
    ({"reference_size": 4096}, "reference_size: expected a whole number from 64 to 2048"),
    ({"reference_size": math.nan}, "reference_size"),
])
def test_bad_subject_settings_are_layout_errors(values, match):
    with pytest.raises(LayoutError, match=match):
        SubjectSettings(**values)


@pytest.mark.parametrize("values,match", [({"step": 10001}, "step"), ({"step": 1.5}, "whole number"),
                                          ({"opacity": 1.5}, "opacity")])
def test_bad_preview_settings_are_routing_errors(values, match):
    with pytest.raises(RoutingError, match=match):
        PreviewSettings(**values)


def test_rules_give_the_node_schema_its_bounds():
    assert rules_of(RoutingSettings)["smoothing"].schema() == {"min": 1, "max": 15, "step": 2}
    numbers = {name for cls in (RoutingSettings, PreviewSettings, SubjectSettings)
               for name, rule in rules_of(cls).items() if isinstance(rule, Limit)}
    assert numbers >= {*ROUTING_FLOATS, "smoothing", "step", "opacity", "reference_size"}


def test_each_routing_node_shows_its_own_settings_in_widget_order():
    assert input_names(RoutingSettings, APPLY) == [
        "static_routing", "dynamic_routing", "start_percent", "end_percent", "routing_blocks",
        "threshold", "smoothing", "symmetric", "strength", "condition_cache", "positions",
        "isolate"]
    assert input_names(RoutingSettings, REFERENCES) == [
        "static_routing", "block_prompt_references", "dynamic_routing", "start_percent",
        "end_percent", "routing_blocks", "threshold", "smoothing", "symmetric", "strength",
        "condition_cache", "isolate"]


# ---- the primitives (musar/checks.py) and the settings of the LoRA and training nodes ----------
def test_a_limit_says_its_range_and_normalises_the_number():
    assert Limit(0.0, 2.0).span() == "from 0.0 to 2.0" and Limit(1, math.inf).span() == ">= 1"
    assert Limit(0.0, 10.0, above=True).span() == "> 0.0 and <= 10.0"
    assert number(MusarError, "n", 3.0, Limit(1, 15, integer=True)) == 3
    assert isinstance(number(MusarError, "n", 1, Limit(0.0, 2.0)), float)
    with pytest.raises(MusarError, match=r"^n: expected a number > 0\.0 and <= 10\.0, got 0"):
        number(MusarError, "n", 0, Limit(0.0, 10.0, above=True))


@pytest.mark.parametrize("cls,error", [(RoutingSettings, RoutingError), (SubjectSettings, LayoutError),
                                       (LoRASettings, MusarError), (TrainingSettings, TrainingError)])
def test_a_value_that_arrived_empty_is_refused_when_the_node_runs(cls, error):
    name = "lora_name" if cls is LoRASettings else [f.name for f in dataclasses.fields(cls)][0]
    with pytest.raises(error, match=f"^{name} arrived empty"):
        cls(**{**({"lora_name": "a.safetensors"} if cls is LoRASettings else {}), name: None})


@pytest.mark.parametrize("values,match", [
    ({"strength_noisy": math.nan}, "strength_noisy: expected a finite number from -2.0 to 2.0"),
    ({"strength_subject": 2.5}, "strength_subject: expected a number from -2.0 to 2.0, got 2.5"),
    ({"lora_name": 3}, "lora_name: expected text"),
])
def test_bad_lora_settings_name_the_input(values, match):
    with pytest.raises(MusarError, match=match):
        LoRASettings(**{"lora_name": "a.safetensors", **values})
    assert match in verdict(check_lora_settings, values)


@pytest.mark.parametrize("values,match", [
    ({"layout": "webdataset"}, "layout: unknown option 'webdataset', expected one of 'auto'"),
    ({"min_quality": 11}, "min_quality: expected a whole number from 0 to 10, got 11"),
    ({"target_width": 136}, "target_width: expected a multiple of 16"),
    ({"prompt_dropout": math.nan}, "prompt_dropout: expected a finite number"),
    ({"prompt_template": "{desc_c}"}, "unknown placeholder"),
])
def test_bad_dataset_settings_are_dataset_errors(values, match):
    with pytest.raises(DatasetError, match=re.escape(match)):
        DatasetSettings(**{"path": "pairs", **values})


@pytest.mark.parametrize("values,match", [
    ({"steps": 0}, "steps: expected a whole number from 1 to 1000000, got 0"),
    ({"subject_rank": 5000}, "subject_rank: expected a whole number from 0 to 4096"),
    ({"optimizer": "sgd"}, "optimizer: unknown option 'sgd', expected one of 'adamw', 'prodigy'"),
    ({"resume": "/etc/passwd"}, "resume: unknown option '/etc/passwd', expected one of 'none', 'latest'"),
    ({"gradient_checkpointing": "yes"}, "gradient_checkpointing: expected true or false"),
])
def test_bad_training_settings_are_training_errors(values, match):
    with pytest.raises(TrainingError, match=re.escape(match)):
        TrainingSettings(**values)


def test_training_settings_build_the_trainers_config_under_its_names():
    config = TrainingSettings(grad_accumulation=4, validation_every=7, learning_rate=1).config()
    assert (config.grad_accumulation, config.validation_every, config.learning_rate) == (4, 7, 1.0)
    shared = set(input_names(TrainingSettings)) & set(TrainConfig.__dataclass_fields__)
    assert shared == set(input_names(TrainingSettings)) - {"output_name", "resume"}
    assert TrainConfig(steps=3.0).steps == 3 and type(TrainConfig(steps=3.0).steps) is int
    with pytest.raises(TrainingError, match="nothing would be trained"):  # the trainer's own rule
        TrainingSettings(noisy_rank=0, subject_rank=0).config()


def test_every_setting_has_one_rule_and_the_training_node_uses_the_trainers_table():
    """Every field of a node's settings is declared once, with a rule and a tooltip; a training
    setting's rule is the trainer's own (one table: the node's widget ranges are what the
    trainer accepts)."""
    for cls in SETTINGS:
        fields = dataclasses.fields(cls)
        assert [f.name for f in fields] == input_names(cls), cls.__name__
        for f in fields:
            rule = f.metadata["rule"]
            assert isinstance(rule, (Limit, tuple)) or rule in (FLAG, TEXT), (cls.__name__, f.name)
            assert f.metadata["tooltip"], (cls.__name__, f.name)
    for name, rule in rules_of(TrainingSettings).items():
        if name in RULES:
            assert rule is RULES[name], name


def test_the_yaml_config_uses_the_nodes_names():
    """The CLI's dataset section has exactly the node's inputs; old names are refused naming the
    new ones; TrainConfig's renamed settings too."""
    from musar_train import config as yaml_config

    assert list(yaml_config.DATASET_KEYS) == input_names(DatasetSettings)
    with pytest.raises(TrainingError, match="grad_accum -> grad_accumulation"):
        TrainConfig.from_mapping({"grad_accum": 2})


def test_validate_inputs_answer_runs_the_node_lookups_on_known_values_only():
    def lookup(name):
        raise MusarError(f"{name} is not in the folder")

    assert verdict(check_lora_settings, {"lora_name": None}, lora_name=lookup) is True
    assert verdict(check_lora_settings, {"lora_name": "x"}, lora_name=lookup) == "x is not in the folder"
    assert verdict(None, {"image": "y"}, image=lookup) == "y is not in the folder"


@pytest.mark.parametrize("bad", [math.nan, -0.1, 1.5, "x"])
def test_a_reference_strength_outside_0_to_1_or_not_finite_is_refused(bad):
    with pytest.raises(LayoutError, match="strength"):
        LabelSettings(strength=bad)
    assert "strength" in verdict(check_label, {"strength": bad})
