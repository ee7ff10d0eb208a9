// Page-side helper (evaluated by tests/browser/test_frontend.py; not under web/, never loaded by
// ComfyUI): builds a small MUSAR graph on the tiny stand-ins with the real frontend's node
// classes and returns it serialized (UI workflow format), so loading it goes through
// app.loadGraphData exactly like a workflow file.
async () => {
  const { app } = window.comfyAPI.app;
  const LG = window.LiteGraph;
  const graph = new window.LGraph();
  const add = (type, pos, values = {}) => {
    const node = LG.createNode(type);
    if (!node) throw new Error(`cannot create ${type}`);
    node.pos = pos;
    graph.add(node);
    for (const [name, value] of Object.entries(values)) {
      const w = node.widgets.find((x) => x.name === name);
      if (!w) throw new Error(`${type} has no widget ${name}`);
      w.value = value;
    }
    return node;
  };
  const link = (a, outSlot, b, inName) => a.connect(outSlot, b, b.findInputSlot(inName));
  const loader = add("MUSAR_TinyFluxLoader", [20, 60]);
  const img0 = add("EmptyImage", [20, 300], { width: 64, height: 64, color: 0xe04030 });
  const img1 = add("EmptyImage", [20, 520], { width: 64, height: 64, color: 0x2090f0 });
  const s0 = add("MUSAR_Subject", [380, 60], { caption: "a red cube", reference_size: 64 });
  const s1 = add("MUSAR_Subject", [380, 360], { caption: "a blue ball", reference_size: 64 });
  const routing = add("MUSAR_ApplyRouting", [760, 60], { start_percent: 0.0 });
  const text = add("CLIPTextEncode", [760, 560], { text: "a red cube and a blue ball" });
  const latent = add("EmptySD3LatentImage", [1120, 560], { width: 64, height: 64 });
  const sampler = add("KSampler", [1120, 60], { steps: 3, cfg: 2.0, seed: 1 });
  const decode = add("VAEDecode", [1480, 60]);
  const preview = add("MUSAR_RoutingPreview", [1480, 200]);
  for (const s of [s0, s1]) {
    link(s === s0 ? img0 : img1, 0, s, "image");
    link(loader, 2, s, "vae");
    link(loader, 1, s, "clip");
  }
  link(s0, 0, s1, "subjects");
  link(loader, 0, routing, "model");
  link(s1, 0, routing, "subjects");
  link(loader, 1, text, "clip");
  link(routing, 0, sampler, "model");
  link(text, 0, sampler, "positive");
  link(text, 0, sampler, "negative");
  link(latent, 0, sampler, "latent_image");
  link(sampler, 0, decode, "samples");
  link(loader, 2, decode, "vae");
  link(routing, 1, preview, "routing");
  link(decode, 0, preview, "images");
  const sampled = sampler.widgets.find((w) => w.name === "control_after_generate");
  if (sampled) sampled.value = "fixed";
  return JSON.parse(JSON.stringify(graph.serialize()));
}
