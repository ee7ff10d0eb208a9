"""The pack in the real ComfyUI frontend (1.32.9) in headless Chromium, against the real server.

Every shipped UI workflow (workflows/*.json) and a small graph built here on the tiny FLUX
stand-ins are loaded through ``app.loadGraphData``; the MUSAR extension's colour chips, routing
legend and loss chart are checked in the page, and screenshots go to test-artifacts/browser/.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import serverutil
from playwright.sync_api import Error as PlaywrightError

pytestmark = pytest.mark.timeout(240)

HERE = Path(__file__).resolve().parent
WORKFLOWS = sorted((serverutil.ROOT / "workflows").glob("*.json"))
BUILD_TINY_GRAPH = (HERE / "graph.js").read_text()
EXTENSIONS = ["musar.subjectColors", "musar.routingLegend", "musar.trainingChart"]
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
LIB = f"/extensions/{serverutil.PACK_NAME}/lib"

LOAD = """async (wf) => {
  const { app } = window.comfyAPI.app;
  await app.loadGraphData(wf);
  await new Promise((r) => setTimeout(r, 300));
  app.canvas.draw(true, true);
}"""

# Nodes of the current graph (subgraphs included) as plain data.
NODES = """() => {
  const { app } = window.comfyAPI.app;
  const graphs = [app.graph, ...(app.graph.subgraphs?.values?.() ?? [])];
  return graphs.flatMap((g) => g.nodes.map((n) => ({
    id: n.id, type: n.type, comfyClass: n.comfyClass ?? null,
    known: !!window.LiteGraph.registered_node_types[n.type], hasErrors: !!n.has_errors,
    widgets: (n.widgets ?? []).map((w) => w.name),
    values: (n.widgets ?? []).filter((w) => !w.name.startsWith("$$")).map((w) => w.value ?? null),
    subject: n.musarSubject ?? null, mode: n.mode,
  })));
}"""

# Text of the dialogs and toasts the frontend is showing.
VISIBLE_ALERTS = """() => [...document.querySelectorAll('.p-dialog, .p-toast-message, [role=dialog]')]
  .filter((e) => e.offsetParent !== null).map((e) => e.innerText.trim()).filter(Boolean)"""


def expected_widgets(info: dict) -> list[str]:
    """Widget names the frontend builds for an /object_info entry, in order."""
    names = []
    order = info.get("input_order") or {k: list(v) for k, v in info["input"].items()}
    for section in ("required", "optional"):
        for name in order.get(section, []):
            spec = info["input"][section][name]
            kind, opts = spec[0], (spec[1] if len(spec) > 1 else {})
            if (isinstance(kind, list) or kind in WIDGET_TYPES) and not opts.get("forceInput"):
                names.append(name)
                if opts.get("control_after_generate"):
                    names.append("control_after_generate")
    return names


@pytest.fixture(scope="module")
def object_info(ui):
    return ui.server.get_json("/object_info")


@pytest.fixture(scope="module")
def tiny_graph(ui):
    return ui.js(BUILD_TINY_GRAPH)


def close_dialogs(ui):
    """Dismiss what an earlier load left on screen (dialogs, toasts)."""
    for _ in range(3):
        ui.page.keyboard.press("Escape")
    # toast.removeAll in 1.32.9; newer frontends dropped it (their toasts are closed below)
    ui.js("() => window.comfyAPI.app.app.extensionManager.toast.removeAll?.()")
    for close in ui.page.locator(".p-toast-message .p-toast-close-button").all():
        try:  # a toast may time out and leave the DOM between the lookup and the click
            close.click(timeout=2_000)
        except PlaywrightError:
            pass  # gone already; the wait below says whether anything is still shown
    ui.page.wait_for_function(f"() => ({VISIBLE_ALERTS})().length === 0", timeout=5_000)


def test_musar_extensions_load_without_errors(ui):
    names = ui.js("() => window.comfyAPI.app.app.extensions.map((e) => e.name)")
    assert [n for n in EXTENSIONS if n not in names] == [], names
    loaded = {url.split(f"/extensions/{serverutil.PACK_NAME}/", 1)[1]: status
              for url, status in ui.console.responses}
    on_disk = {p.relative_to(serverutil.ROOT / "web").as_posix()
               for p in (serverutil.ROOT / "web").rglob("*.js")}
    assert on_disk <= set(loaded), f"scripts the frontend did not load: {on_disk - set(loaded)}"
    assert all(status in (200, 304) for status in loaded.values()), loaded
    assert ui.console.ours() == []


@pytest.mark.parametrize("workflow", ["tiny_graph"] + [p.name for p in WORKFLOWS])
def test_workflow_loads_with_every_node_known_and_schema_widgets(ui, object_info, tiny_graph, workflow):
    data = tiny_graph if workflow == "tiny_graph" else json.loads(
        (serverutil.ROOT / "workflows" / workflow).read_text())
    close_dialogs(ui)
    ui.js(LOAD, data)
    nodes = ui.js(NODES)
    alerts = ui.js(VISIBLE_ALERTS)
    shot = ui.screenshot(f"workflow-{Path(workflow).stem}")
    assert nodes, "the graph is empty after loading"
    bad = [a for a in alerts if "missing" in a.lower() or "invalid workflow" in a.lower()]
    assert not bad, (f"{workflow}: a user loading this file sees {bad} (the frontend validates "
                     "workflows with its zod schema: e.g. a top-level \"id\" must be a UUID string "
                     f"or absent, not null); screenshot {shot}")
    unknown = [f"{n['id']}:{n['type']}" for n in nodes if not n["known"] or n["hasErrors"]]
    assert not unknown, f"unknown node types {unknown} (screenshot {shot})"
    files = {n["id"]: n for n in data.get("nodes", [])}
    for node in nodes:
        if not node["type"].startswith("MUSAR_"):
            continue
        widgets = [w for w in node["widgets"] if not w.startswith("$$")]
        assert widgets == expected_widgets(object_info[node["type"]]), node
        saved = files.get(node["id"], {}).get("widgets_values")
        if isinstance(saved, list) and workflow != "tiny_graph":
            assert node["values"] == saved, f"{workflow} node {node['id']} {node['type']}: widget " \
                                             f"values {node['values']} differ from the file's {saved}"
    assert ui.console.ours() == []


def subject_state(ui):
    ui.js("() => window.comfyAPI.app.app.canvas.draw(true, true)")
    return {n["id"]: n["subject"] for n in ui.js(NODES) if n["type"] == "MUSAR_Subject"}


def test_subject_chips_follow_the_chain(ui, tiny_graph):
    close_dialogs(ui)
    ui.js(LOAD, tiny_graph)
    s0, s1 = sorted(subject_state(ui))
    assert subject_state(ui) == {s0: {"index": 0, "known": True}, s1: {"index": 1, "known": True}}
    # The chip is really drawn: the colour bar under the title has the subject's palette colour.
    colours = ui.js("""async ([ids, lib]) => {
      const { app } = window.comfyAPI.app;
      const pal = await import(lib + '/palette.js');
      app.canvas.ds.scale = 1; app.canvas.ds.offset = [40, 80];
      app.canvas.draw(true, true);
      const ctx = app.canvas.canvas.getContext('2d');
      const ratio = app.canvas.canvas.width / app.canvas.canvas.clientWidth;
      return ids.map((id, i) => {
        const n = app.graph.getNodeById(id);
        const [x, y] = app.canvas.ds.convertOffsetToCanvas([n.pos[0] + n.size[0] / 2, n.pos[1] + 1.5]);
        const px = [...ctx.getImageData(Math.round(x * ratio), Math.round(y * ratio), 1, 1).data];
        return { px, want: pal.PALETTE[i].map((c) => Math.round(c * 255)) };
      });
    }""", [[s0, s1], LIB])
    for c in colours:
        assert all(abs(a - b) <= 8 for a, b in zip(c["px"], c["want"])), colours
    # Rewiring: cut subject 0 -> subject 1; the second chain now starts at s1.
    ui.js("""(id) => { const n = window.comfyAPI.app.app.graph.getNodeById(id);
                      n.disconnectInput(n.findInputSlot('subjects')); }""", s1)
    assert subject_state(ui)[s1] == {"index": 0, "known": True}
    ui.js("""([a, b]) => { const g = window.comfyAPI.app.app.graph;
                           g.getNodeById(a).connect(0, g.getNodeById(b), g.getNodeById(b).findInputSlot('subjects')); }""",
          [s0, s1])
    assert subject_state(ui)[s1] == {"index": 1, "known": True}
    # A bypassed Subject passes its input through and is not counted.
    ui.js("(id) => { window.comfyAPI.app.app.graph.getNodeById(id).mode = 4; }", s0)
    state = subject_state(ui)
    assert state[s1] == {"index": 0, "known": True} and state[s0]["known"] is False
    ui.js("(id) => { window.comfyAPI.app.app.graph.getNodeById(id).mode = 0; }", s0)
    ui.screenshot("subject-chips")
    assert ui.console.ours() == []


def test_routing_preview_run_shows_overlay_and_legend(ui, tiny_graph):
    close_dialogs(ui)
    ui.js(LOAD, tiny_graph)
    preview = next(n["id"] for n in ui.js(NODES) if n["type"] == "MUSAR_RoutingPreview")
    # Queued by the frontend itself (graphToPrompt): our canvas widgets must not leak into it.
    prompt = ui.js("async () => (await window.comfyAPI.app.app.graphToPrompt()).output")
    assert not [k for node in prompt.values() for k in node["inputs"] if k.startswith("$$")]
    ui.js("async () => { await window.comfyAPI.app.app.queuePrompt(0, 1); }")
    ui.page.wait_for_function(
        """(id) => { const n = window.comfyAPI.app.app.graph.getNodeById(id);
                     return n?.imgs?.length > 0 && n?.musarLegend?.length > 0; }""",
        arg=preview, timeout=90_000)
    legend = ui.js("(id) => window.comfyAPI.app.app.graph.getNodeById(id).musarLegend", preview)
    assert [e["text"] for e in legend] == ["a red cube", "a blue ball"]
    palette = ui.js("async (lib) => { const p = await import(lib + '/palette.js');"
                    " return [0, 1].map((i) => p.subjectColor(i)); }", LIB)
    assert [e["color"] for e in legend] == palette
    ui.page.wait_for_timeout(500)
    ui.screenshot("routing-preview")
    # Captions sent by the server (ui "captions") take precedence over the graph's widgets.
    legend = ui.js("""(id) => { const n = window.comfyAPI.app.app.graph.getNodeById(id);
                               n.onExecuted({ images: [], captions: ['mug', 'cat', 'dog'] });
                               return n.musarLegend.map((e) => e.text); }""", preview)
    assert legend == ["mug", "cat", "dog"]
    assert ui.console.ours() == []


TRAIN_STANDIN_DEF = {
    "name": "MUSAR_TrainDualLoRA", "display_name": "MUSAR Train Dual LoRA (test stand-in)",
    "category": "MUSAR/training", "description": "", "python_module": "custom_nodes.ComfyUI-MUSAR",
    "input": {"required": {"steps": ["INT", {"default": 100, "min": 1, "max": 100000}]}},
    "input_order": {"required": ["steps"]}, "output": ["MUSAR_DUAL_LORA"], "output_name": ["lora"],
    "output_is_list": [False], "output_node": True,
}


def test_training_chart_draws_live_progress(ui, object_info):
    close_dialogs(ui)
    if "MUSAR_TrainDualLoRA" not in object_info:
        # The training node is not registered yet: register a stand-in definition through the
        # frontend's own registerNodeDef (runs beforeRegisterNodeDef / nodeCreated like a real one).
        ui.js("async (def) => { await window.comfyAPI.app.app.registerNodeDef(def.name, def); }",
              TRAIN_STANDIN_DEF)
    node_id = ui.js("""() => { const { app } = window.comfyAPI.app;
      app.graph.clear();
      const n = window.LiteGraph.createNode('MUSAR_TrainDualLoRA');
      n.pos = [100, 100]; app.graph.add(n); return n.id; }""")
    ui.js("""(id) => { const { api } = window.comfyAPI.api;
      for (let step = 1; step <= 60; step++) {
        api.dispatchCustomEvent('musar.train.progress', { node: String(id), step, total: 100,
          loss: 0.5 * Math.exp(-step / 25) + 0.05 * Math.sin(step), lr: 1e-4, elapsed: step * 0.5 });
      }
      api.dispatchCustomEvent('musar.train.done', { node: String(id), step: 60, checkpoint: 'musar/run_00001.safetensors' });
    }""", node_id)
    state = ui.js("""(id) => { const s = window.comfyAPI.app.app.graph.getNodeById(id).musarTraining;
                               return { n: s.chart.length, step: s.step, total: s.total, done: s.done }; }""",
                  node_id)
    assert state == {"n": 60, "step": 60, "total": 100,
                     "done": {"checkpoint": "musar/run_00001.safetensors"}}
    # Not serialized: neither in the workflow's widgets_values nor in the API prompt.
    saved = ui.js("""async (id) => { const { app } = window.comfyAPI.app;
      const n = app.graph.getNodeById(id);
      return { values: n.serialize().widgets_values,
               inputs: Object.keys((await app.graphToPrompt()).output[String(id)]?.inputs ?? {}) }; }""",
                  node_id)
    assert not any(k.startswith("$$") for k in saved["inputs"]), saved
    assert len(saved["values"]) == len(expected_widgets(object_info.get("MUSAR_TrainDualLoRA")
                                                         or TRAIN_STANDIN_DEF)), saved
    # The chart module draws the series: count pixels of the line colour on a fresh canvas.
    drawn = ui.js("""async (lib) => {
      const { LineChart } = await import(lib + '/chart.js');
      const c = document.createElement('canvas'); c.width = 300; c.height = 150;
      const ctx = c.getContext('2d'); const chart = new LineChart({ color: '#ff0000' });
      for (let i = 0; i < 50; i++) chart.push(i, Math.exp(-i / 10));
      chart.draw(ctx, 0, 0, 300, 150, { status: 'step 50' });
      const d = ctx.getImageData(0, 0, 300, 150).data; let red = 0;
      for (let i = 0; i < d.length; i += 4) if (d[i] > 200 && d[i + 1] < 60 && d[i + 2] < 60) red++;
      return red; }""", LIB)
    assert drawn > 100
    ui.screenshot("training-chart")
    assert ui.console.ours() == []
