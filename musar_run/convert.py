"""UI-format workflows (what the ComfyUI frontend saves) → API-format prompts (what /prompt runs).

ComfyUI has no Python converter; the frontend does this in ``graphToPrompt``. This module does
the same job from the node definitions of ``/object_info`` (the dict the server returns, or
:func:`object_info_in_process` for a runtime without a server):

- ``widgets_values`` are mapped onto the node's widget inputs in ``input_order`` (required, then
  optional). The frontend stores extra values next to some widgets and so does the mapping here:
  the "control after generate" value after INT inputs that have ``control_after_generate`` (or
  that are named ``seed`` / ``noise_seed`` and do not say otherwise), control + filter after a
  COMBO with ``control_after_generate``, and the upload button after ``image_upload`` combos.
- Note / MarkdownNote nodes are dropped, Reroute chains are followed, PrimitiveNode values are
  inlined into the inputs they feed.
- Muted nodes (mode 2) are removed together with the links that leave them; bypassed nodes
  (mode 4) are removed and each consumer receives the bypassed node's input of the same type
  (the output's own slot first, then the inputs in order — the frontend's rule).
- A node type missing from ``object_info`` raises ``ConversionError("node type X is not
  installed ...")``.

Not handled (raise or pass through unchanged): subgraphs and legacy group nodes (raise), the
frontend's dynamic-prompt syntax ``{a|b}`` in text widgets (kept verbatim).
"""

from __future__ import annotations

import json
import logging
import types

logger = logging.getLogger(__name__)

NOTE_TYPES = frozenset({"Note", "MarkdownNote"})
REROUTE, PRIMITIVE = "Reroute", "PrimitiveNode"
VIRTUAL_TYPES = NOTE_TYPES | {REROUTE, PRIMITIVE}
MODE_MUTED, MODE_BYPASSED = 2, 4
WIDGET_TYPES = frozenset({"INT", "FLOAT", "BOOLEAN", "STRING", "COMBO", "MARKDOWN", "COLOR",
                          "TEXTAREA"})
UPLOAD_FLAGS = ("image_upload", "animated_image_upload", "video_upload")
SEED_NAMES = ("seed", "noise_seed")


class ConversionError(ValueError):
    """The UI workflow cannot be turned into an API prompt; the message says why and what to do."""


def is_api_prompt(data) -> bool:
    return isinstance(data, dict) and bool(data) and all(
        isinstance(v, dict) and "class_type" in v for v in data.values())


def is_ui_workflow(data) -> bool:
    return isinstance(data, dict) and isinstance(data.get("nodes"), list)


def _input_specs(info: dict):
    """(name, type, options) of every visible input in the frontend's order."""
    order = info.get("input_order") or {k: list(v) for k, v in info.get("input", {}).items()}
    for section in ("required", "optional"):
        specs = info.get("input", {}).get(section, {})
        for name in order.get(section, []):
            spec = specs.get(name)
            if spec is None:
                continue
            kind = spec[0]
            options = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
            yield name, ("COMBO" if isinstance(kind, list) else kind), options


def widget_slots(info: dict) -> list[str | None]:
    """The ``widgets_values`` layout of a node: input names, ``None`` for frontend-only values."""
    slots: list[str | None] = []
    for name, kind, options in _input_specs(info):
        if kind not in WIDGET_TYPES or options.get("forceInput"):
            continue
        slots.append(name)
        control = options.get("control_after_generate")
        if kind == "INT" and (control if control is not None else name in SEED_NAMES):
            slots.append(None)
        elif kind == "COMBO" and control:
            slots += [None, None]
        if kind == "COMBO" and any(options.get(flag) for flag in UPLOAD_FLAGS):
            slots.append(None)
    return slots


def widget_inputs(node: dict, info: dict) -> dict:
    """Widget values of one UI node by input name."""
    values = node.get("widgets_values")
    if values is None:
        return {}
    if isinstance(values, dict):  # some custom nodes save widgets by name
        return {k: v for k, v in values.items() if k in {n for n, _, _ in _input_specs(info)}}
    slots = widget_slots(info)
    if len(values) > len(slots):
        logger.warning("node %s (%s): %d widget values for %d widget slots; ignoring the extra "
                       "values (the node's definition changed since the workflow was saved?)",
                       node.get("id"), node.get("type"), len(values), len(slots))
    return {name: value for name, value in zip(slots, values) if name is not None}


class _Graph:
    def __init__(self, workflow: dict):
        self.nodes = {str(n["id"]): n for n in workflow["nodes"]}
        self.links: dict[int, tuple] = {}
        for link in workflow.get("links") or []:
            if isinstance(link, dict):
                link = [link["id"], link["origin_id"], link["origin_slot"], link["target_id"],
                        link["target_slot"], link.get("type")]
            self.links[int(link[0])] = (str(link[1]), int(link[2]), str(link[3]), int(link[4]),
                                        link[5])

    def resolve(self, link_id, want_type):
        """Follow a link through reroutes and bypassed nodes. Returns ``("link", [id, slot])``,
        ``("value", v)`` for a primitive, or ``None`` when nothing (muted / unconnected) feeds it."""
        for _ in range(len(self.nodes) + 1):
            if link_id is None or int(link_id) not in self.links:
                return None
            origin, slot, _, _, link_type = self.links[int(link_id)]
            want = want_type if want_type not in (None, "*") else link_type
            node = self.nodes.get(origin)
            if node is None or node.get("mode", 0) == MODE_MUTED or node["type"] in NOTE_TYPES:
                return None
            if node["type"] == REROUTE:
                link_id = (node.get("inputs") or [{}])[0].get("link")
            elif node["type"] == PRIMITIVE:
                values = node.get("widgets_values") or []
                return ("value", values[0]) if values else None
            elif node.get("mode", 0) == MODE_BYPASSED:
                link_id = self._bypass_source(node, slot, want)
            else:
                return "link", [origin, slot]
        raise ConversionError("the workflow's links form a loop through reroutes or bypassed nodes")

    @staticmethod
    def _bypass_source(node: dict, slot: int, want_type):
        inputs = node.get("inputs") or []
        for index in [slot, *range(len(inputs))]:
            if index < len(inputs) and inputs[index].get("type") == want_type:
                return inputs[index].get("link")
        return None


def _check_supported(workflow: dict, graph: _Graph, object_info: dict) -> None:
    subgraphs = {s.get("id") for s in (workflow.get("definitions") or {}).get("subgraphs") or []}
    for node in graph.nodes.values():
        kind = node.get("type")
        if kind in subgraphs:
            raise ConversionError(f"node {node['id']} is a subgraph; the converter does not expand "
                                  "subgraphs - unpack it in ComfyUI (right click > Unpack "
                                  "Subgraph) and save the workflow again")
        if kind in VIRTUAL_TYPES or node.get("mode", 0) in (MODE_MUTED, MODE_BYPASSED):
            continue
        if isinstance(kind, str) and kind.startswith(("workflow>", "workflow/")):
            raise ConversionError(f"node {node['id']} is a legacy group node ({kind}); convert it "
                                  "to nodes in ComfyUI and save the workflow again")
        if kind not in object_info:
            raise ConversionError(
                f"node type {kind!r} (node {node['id']}) is not installed in this ComfyUI: install "
                "the custom node pack that provides it, or remove the node from the workflow")


def ui_to_api(workflow: dict, object_info: dict) -> dict:
    """Convert a UI-format workflow to an API-format prompt (node ids stay the same)."""
    if not is_ui_workflow(workflow):
        raise ConversionError("not a UI-format workflow: expected a JSON object with a 'nodes' list")
    graph = _Graph(workflow)
    _check_supported(workflow, graph, object_info)
    prompt = {}
    for node_id in sorted(graph.nodes, key=lambda k: (len(k), k)):
        node = graph.nodes[node_id]
        if node["type"] in VIRTUAL_TYPES or node.get("mode", 0) in (MODE_MUTED, MODE_BYPASSED):
            continue
        info = object_info[node["type"]]
        inputs = widget_inputs(node, info)
        for inp in node.get("inputs") or []:
            if inp.get("link") is None:
                continue
            source = graph.resolve(inp["link"], inp.get("type"))
            if source is not None:
                inputs[inp["name"]] = source[1]
            elif "widget" not in inp:
                inputs.pop(inp["name"], None)
        title = node.get("title") or info.get("display_name") or node["type"]
        prompt[node_id] = {"inputs": inputs, "class_type": node["type"], "_meta": {"title": title}}
    return prompt


def load_workflow(path) -> dict:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def to_api(data: dict, object_info: dict) -> dict:
    """An API prompt from either format (API prompts are returned as they are)."""
    if is_api_prompt(data):
        return data
    if is_ui_workflow(data):
        return ui_to_api(data, object_info)
    raise ConversionError("neither a UI workflow (a 'nodes' list) nor an API prompt (node id -> "
                          "{class_type, inputs})")


def _server_node_info():
    """The server's own ``node_info`` (a closure inside ``PromptServer.__init__``), rebuilt from its
    code object so no server has to be started. It only reads module globals of ``server``."""
    import server

    code = next((c for c in server.PromptServer.__init__.__code__.co_consts
                 if isinstance(c, types.CodeType) and c.co_name == "node_info"), None)
    if code is None or code.co_freevars:
        return None
    return types.FunctionType(code, vars(server), "node_info")


def object_info_in_process() -> dict:
    """``GET /object_info`` of the loaded runtime, built by the server's own function (needs a
    bootstrapped ComfyUI with nodes loaded); JSON round-tripped like the HTTP answer."""
    import folder_paths

    import nodes

    node_info = _server_node_info()
    if node_info is None:  # a ComfyUI whose server builds node_info differently: ask a server object
        raise RuntimeError("this ComfyUI's server.py has no node_info function to reuse; pass "
                           "/object_info from a running server instead")
    out = {}
    with folder_paths.cache_helper:
        for name in nodes.NODE_CLASS_MAPPINGS:
            try:
                out[name] = node_info(name)
            except Exception:  # the server skips such nodes the same way
                logger.exception("object_info failed for node %s", name)
    return json.loads(json.dumps(out))
