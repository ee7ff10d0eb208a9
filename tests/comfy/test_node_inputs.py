"""Widget inputs of MUSAR Apply Routing, MUSAR Subject and MUSAR Routing Preview in real graphs
(validate_prompt + PromptExecutor): linked from ComfyUI's core primitive nodes they validate and
run like literal values, and bad linked values are refused when the node runs with a MusarError;
literal values outside the schema's range, non-finite numbers and unknown combo options are
refused at validation. (Combo inputs cannot be linked from a core primitive: ComfyUI refuses a
STRING output on a COMBO input, so only literal combo values are tested.)"""

import math

import pytest
import torch
from musar_helpers import routing_graph

PRIMITIVE = {bool: "PrimitiveBoolean", int: "PrimitiveInt", float: "PrimitiveFloat", str: "PrimitiveString"}
ROUTING_WIDGETS = ["static_routing", "dynamic_routing", "start_percent", "end_percent", "routing_blocks",
                   "threshold", "smoothing", "symmetric", "strength", "condition_cache"]
SUBJECT_WIDGETS = ["caption", "reference_size"]
PREVIEW_WIDGETS = ["step", "opacity"]


@pytest.fixture(scope="module")
def run_prompt(module_executor):
    return module_executor


def _graph(**routing):
    """Two subjects, three steps (so a route exists), and a routing preview ("14")."""
    g = routing_graph(**routing)
    g["4"]["inputs"]["steps"] = 3
    g["14"] = {"class_type": "MUSAR_RoutingPreview", "inputs": {
        "routing": ["20", 1], "images": ["5", 0], "step": -1, "opacity": 0.5, "samples": ["4", 0]}}
    return g


def _link(g, node, name, value=None):
    """Drive input ``name`` of ``node`` from a core primitive node holding ``value`` (default:
    the literal value the input has)."""
    value = g[node]["inputs"][name] if value is None else value
    source = f"{node}_{name}"
    g[source] = {"class_type": PRIMITIVE[type(value)], "inputs": {"value": value}}
    g[node]["inputs"][name] = [source, 0]
    return g


def _linked_everywhere():
    g = _graph()
    for node, names in (("20", ROUTING_WIDGETS), ("100", SUBJECT_WIDGETS), ("101", SUBJECT_WIDGETS),
                        ("14", PREVIEW_WIDGETS)):
        for name in names:
            _link(g, node, name)
    return g


def test_every_widget_input_linked_from_a_primitive_runs_like_its_literal(run_prompt, validate_prompt):
    linked = _linked_everywhere()
    valid, error, _, node_errors = validate_prompt(linked)
    assert valid, (error, node_errors)
    a, b = run_prompt(_graph()), run_prompt(linked)
    a.raise_for_error()
    b.raise_for_error()
    assert torch.equal(a.output("4")[0]["samples"], b.output("4")[0]["samples"])
    for out_a, out_b in zip(a.output("14"), b.output("14")):
        assert torch.equal(out_a, out_b)


def _refused_when_run(result, node, match):
    assert not result.ok and result.error is not None and not result.node_errors, result.node_errors
    err = result.error
    assert err["node_id"] == node, err
    assert err["exception_type"].rsplit(".", 2)[-2:] in (["errors", "RoutingError"], ["errors", "LayoutError"]), err
    assert ".musar.errors." in err["exception_type"], err
    assert match in err["exception_message"], err["exception_message"]
    return [d for e, d in result.messages if e == "execution_error"][0]["executed"]


@pytest.mark.parametrize("node,name,value,match", [
    ("20", "strength", math.nan, "strength: expected a finite number"),
    ("20", "start_percent", math.nan, "start_percent: expected a finite number"),
    ("20", "end_percent", math.nan, "end_percent: expected a finite number"),  # inf: PrimitiveFloat max
    ("20", "threshold", math.nan, "threshold: expected a finite number"),
    ("20", "threshold", 1.5, "threshold: expected a number from 0.0 to 1.0"),
    ("20", "smoothing", 10001, "smoothing: expected a whole number from 1 to 15"),
    ("20", "smoothing", 4, "expected an odd whole number"),
    ("20", "routing_blocks", "d99", "2 double blocks"),
    ("20", "routing_blocks", "middle", "not understood"),
    ("20", "start_percent", 0.9, "start_percent (0.9) is after end_percent"),
    ("20", "condition_cache", True, "conflict"),  # symmetric is set literally below
    ("100", "reference_size", 72, "multiple of 16"),
    ("100", "reference_size", 4096, "reference_size: expected a whole number from 64 to 2048"),
    ("100", "caption", "   ", "caption is empty"),
])
def test_bad_linked_values_are_refused_before_sampling(run_prompt, node, name, value, match):
    g = _link(_graph(), node, name, value)
    if name == "start_percent" and value == 0.9:
        g["20"]["inputs"]["end_percent"] = 0.5
    if name == "condition_cache":
        g["20"]["inputs"]["symmetric"] = True
    executed = _refused_when_run(run_prompt(g), node, match)
    assert "4" not in executed  # the sampler never ran


@pytest.mark.parametrize("name,value,match", [("opacity", math.nan, "opacity: expected a finite number"),
                                              ("opacity", -0.5, "opacity: expected a number"),
                                              ("step", 10001, "step: expected a whole number")])
def test_bad_linked_preview_values_are_refused(run_prompt, name, value, match):
    _refused_when_run(run_prompt(_link(_graph(), "14", name, value)), "14", match)


def _refused_at_validation(validate_prompt, g, node, match):
    _, _, outputs, node_errors = validate_prompt(g)  # other outputs may still validate
    assert node in node_errors and "14" not in outputs, node_errors
    assert match in str(node_errors[node]), node_errors[node]


@pytest.mark.parametrize("node,name,value,match", [
    ("20", "smoothing", 10001, "smoothing: expected a whole number from 1 to 15"),
    ("20", "strength", 3.0, "strength: expected a number from 0.0 to 2.0"),
    ("14", "opacity", 2.0, "opacity"),
    ("14", "step", 20000, "step"),
    ("100", "reference_size", 4096, "reference_size"),
    ("20", "positions", "sideways", "positions: unknown option 'sideways'"),
    ("100", "crop", "zoom", "crop: unknown option 'zoom'"),
])
def test_literal_values_outside_the_schema_are_refused_at_validation(validate_prompt, node, name, value, match):
    g = _graph()
    g[node]["inputs"][name] = value
    _refused_at_validation(validate_prompt, g, node, match)


@pytest.mark.parametrize("node,name", [("20", "start_percent"), ("20", "end_percent"), ("20", "threshold"),
                                       ("20", "strength"), ("14", "opacity")])
@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_non_finite_literal_numbers_are_refused_naming_the_input(validate_prompt, node, name, value):
    g = _graph()
    g[node]["inputs"][name] = value
    _refused_at_validation(validate_prompt, g, node, f"{name}: expected a finite number")


SETTINGS_OF = {  # node -> (settings module, class, node key): every widget a node has is a setting
    "MUSAR_ApplyRouting": ("musar.settings", "RoutingSettings", "apply_routing"),
    "MUSAR_RouteReferences": ("musar.settings", "RoutingSettings", "route_references"),
    "MUSAR_RoutingPreview": ("musar.settings", "PreviewSettings", None),
    "MUSAR_Subject": ("musar.settings", "SubjectSettings", None),
    "MUSAR_LayoutRegion": ("musar.settings", "RegionSettings", None),
    "MUSAR_ReferenceLabel": ("musar.settings", "LabelSettings", None),
    "MUSAR_LoadDualLoRA": ("musar.settings", "LoRASettings", None),
    "MUSAR_LoadDiptychDataset": ("musar.train.settings", "DatasetSettings", None),
    "MUSAR_TrainDualLoRA": ("musar.train.settings", "TrainingSettings", None),
    "MUSAR_SaveDualLoRA": ("musar.train.settings", "SaveSettings", None),
}
WIDGETS = ("INT", "FLOAT", "BOOLEAN", "STRING", "COMBO")


def test_every_settings_field_is_a_node_input_and_every_widget_a_settings_field(pack):
    """The settings class is the one place a node setting is written: the node's widgets are
    exactly its fields (names, order, defaults), a number's min / max / step are the field's
    rule (a widget never offers a value its own check refuses), a combo's options are the
    rule's options, and validate_inputs names those inputs, in order, except the plain
    whole-number ranges ComfyUI checks itself (no **kwargs)."""
    import inspect

    from comfy_api.latest import io
    from musar_helpers import pack_module

    import nodes

    checks = pack_module(pack, "musar.checks")
    product = {n for n, c in nodes.NODE_CLASS_MAPPINGS.items()
               if n.startswith("MUSAR_") and c.GET_SCHEMA().category != "MUSAR/testing"
               and n != "MUSAR_ExampleImage"}
    assert product == set(SETTINGS_OF)
    for node_id, (module, name, key) in SETTINGS_OF.items():
        cls = nodes.NODE_CLASS_MAPPINGS[node_id]
        settings = getattr(pack_module(pack, module), name)
        fields = {f.name: f for f in checks.declared(settings, key)}
        widgets = [i for i in cls.GET_SCHEMA().inputs if i.get_io_type() in WIDGETS]
        assert [w.id for w in widgets] == list(fields), node_id
        for w in widgets:
            f, rule = fields[w.id], fields[w.id].metadata["rule"]
            if f.default is not None and w.id not in ("lora_name",):
                assert w.default == checks.default_of(f, key), (node_id, w.id)
            if isinstance(rule, checks.Limit):
                assert (w.min, w.max, w.step) == (rule.low, rule.high, rule.step), (node_id, w.id)
                assert isinstance(w, io.Int.Input) == rule.integer, (node_id, w.id)
            elif isinstance(rule, tuple):
                assert list(w.options) == list(rule), (node_id, w.id)
        spec = inspect.getfullargspec(cls.validate_inputs)
        ours = [n for n, f in fields.items() if not (isinstance(f.metadata["rule"], checks.Limit)
                                                    and f.metadata["rule"].comfy_checks_it())]
        assert spec.varkw is None and spec.args[1:] == ours, node_id
        assert all(isinstance(w, io.Int.Input) for w in widgets if w.id not in ours), node_id
