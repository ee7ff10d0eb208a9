"""musar_run.convert gives the same API prompt as the real frontend's own ``app.graphToPrompt()``
for every shipped workflow and for small graphs with a reroute, a primitive, a bypassed and a
muted node (the graphs of tests/comfy/test_convert.py). Owner: the workflows / runner work."""

from __future__ import annotations

import importlib.util
import json
import sys

import pytest
import serverutil

sys.path.append(str(serverutil.ROOT))
from musar_run import convert  # noqa: E402

pytestmark = pytest.mark.timeout(240)
WORKFLOWS = sorted((serverutil.ROOT / "workflows").glob("*.json"))
GRAPH_TO_PROMPT = """async (wf) => {
  const { app } = window.comfyAPI.app;
  await app.loadGraphData(wf);
  await new Promise((r) => setTimeout(r, 300));
  return (await app.graphToPrompt()).output;
}"""


def _unit_graphs() -> dict:
    path = serverutil.ROOT / "tests" / "comfy" / "test_convert.py"
    spec = importlib.util.spec_from_file_location("musar_test_convert_graphs", path)
    t = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(t)
    lora = t.node(2, "MUSAR_LoadDualLoRA", ["x.safetensors", 1.0, 1.0], [("model", "MODEL", 1)],
                  [("MODEL", "MODEL", [2])], mode=4)
    return {
        "reroute+note": t.workflow(
            [t.unet_loader(1, [1]), t.node(2, "Reroute", None, [("", "*", 1)], [("", "MODEL", [2])]),
             t.node(3, "Reroute", None, [("", "*", 2)], [("", "MODEL", [3])]), t.ksampler(4, model=3),
             t.node(5, "Note", ["models go in models/"])],
            [[1, 1, 0, 2, 0, "MODEL"], [2, 2, 0, 3, 0, "*"], [3, 3, 0, 4, 0, "MODEL"]]),
        "primitive": t.workflow(
            [t.node(1, "PrimitiveNode", [99, "fixed"], [], [("INT", "INT", [1])]), t.ksampler(2, seed_link=1)],
            [[1, 1, 0, 2, 4, "INT"]]),
        "bypass": t.workflow([t.unet_loader(1, [1]), lora, t.ksampler(3, model=2)],
                             [[1, 1, 0, 2, 0, "MODEL"], [2, 2, 0, 3, 0, "MODEL"]]),
        "mute": t.workflow([t.unet_loader(1, [1], mode=2), t.ksampler(2, model=1)],
                           [[1, 1, 0, 2, 0, "MODEL"]]),
    }


GRAPHS = {**{p.stem: json.loads(p.read_text()) for p in WORKFLOWS}, **_unit_graphs()}


@pytest.mark.parametrize("name", list(GRAPHS))
def test_conversion_equals_the_frontends_graph_to_prompt(ui, name):
    for _ in range(3):  # dismiss what an earlier load left open
        ui.page.keyboard.press("Escape")
    frontend = ui.js(GRAPH_TO_PROMPT, GRAPHS[name])
    assert convert.ui_to_api(GRAPHS[name], ui.server.get_json("/object_info")) == frontend
