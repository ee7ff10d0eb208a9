// MUSAR Train Dual LoRA: a live loss chart inside the node.
// The training node sends websocket events
//   musar.train.progress {node, step, total, loss, lr, elapsed}
//   musar.train.done     {node, step, checkpoint}
// where `node` is the executing node id ("12", or "5:12" inside a subgraph). The chart is a
// canvas-drawn widget that is never serialized (not in widgets_values, not in the API prompt).
import { api } from "../../scripts/api.js";
import { app } from "../../scripts/app.js";
import { formatDuration, formatNumber, LineChart } from "./lib/chart.js";

export const TRAIN_TYPES = new Set(["MUSAR_TrainDualLoRA"]);
const WIDGET = "$$musar_loss_chart";
const CHART_HEIGHT = 160;

function chartWidget() {
  return {
    name: WIDGET,
    type: "musar_loss_chart",
    value: null,
    serialize: false,
    options: { serialize: false },
    state: { chart: new LineChart({ label: "loss" }), total: 0, step: 0, lr: null, elapsed: 0,
             done: null },
    computeSize(width) {
      return [width, CHART_HEIGHT];
    },
    draw(ctx, node, width, y) {
      const s = this.state;
      s.chart.draw(ctx, 10, y + 2, width - 20, CHART_HEIGHT - 6, {
        status: statusLine(s),
        empty: "loss chart: starts with the training run",
      });
    },
  };
}

function statusLine(s) {
  if (!s.chart.length && !s.done) return "";
  const parts = [`step ${s.step}${s.total ? "/" + s.total : ""}`];
  const last = s.chart.last;
  if (last) parts.push(`loss ${formatNumber(last[1])}`);
  if (s.lr != null) parts.push(`lr ${formatNumber(s.lr)}`);
  if (s.elapsed) {
    let t = formatDuration(s.elapsed);
    if (!s.done && s.total > s.step && s.step > 0) {
      t += ` (eta ${formatDuration((s.elapsed / s.step) * (s.total - s.step))})`;
    }
    parts.push(t);
  }
  if (s.done) parts.push(s.done.checkpoint ? `saved ${s.done.checkpoint}` : "done");
  return parts.join("  ·  ");
}

/** The node for an execution id: "12" in the root graph, "5:12" = node 12 in subgraph node 5. */
export function nodeForExecutionId(id) {
  let graph = app.rootGraph ?? app.graph;
  const parts = String(id).split(":");
  let node = null;
  for (const [i, part] of parts.entries()) {
    node = graph?.getNodeById?.(part) ?? graph?.getNodeById?.(Number(part)) ?? null;
    if (i < parts.length - 1) graph = node?.subgraph;
  }
  return node;
}

/** The chart state of a training node (adds the chart widget if the node has none yet). */
export function chartState(node) {
  if (!node || !TRAIN_TYPES.has(node.comfyClass ?? node.type)) return null;
  let widget = node.widgets?.find((w) => w.name === WIDGET);
  if (!widget) {
    widget = node.addCustomWidget(chartWidget());
    node.setSize?.([Math.max(node.size[0], 320), Math.max(node.size[1], node.computeSize()[1])]);
  }
  node.musarTraining = widget.state;
  return widget.state;
}

export function onProgress(d) {
  const s = chartState(nodeForExecutionId(d?.node));
  if (!s) return;
  const step = Number(d.step);
  if (s.done || step < s.step) {
    s.chart.clear(); // a new run on the same node
    s.done = null;
  }
  s.chart.push(step, Number(d.loss));
  Object.assign(s, { step, total: Number(d.total) || s.total, lr: d.lr ?? s.lr,
                     elapsed: Number(d.elapsed) || 0 });
  s.chart.xMax = s.total || null;
  app.graph?.setDirtyCanvas?.(true, false);
}

export function onDone(d) {
  const s = chartState(nodeForExecutionId(d?.node));
  if (!s) return;
  s.done = { checkpoint: d.checkpoint ?? null };
  if (Number.isFinite(Number(d.step))) s.step = Number(d.step);
  app.graph?.setDirtyCanvas?.(true, false);
}

app.registerExtension({
  name: "musar.trainingChart",
  setup() {
    api.addEventListener("musar.train.progress", ({ detail }) => onProgress(detail));
    api.addEventListener("musar.train.done", ({ detail }) => onDone(detail));
  },
  nodeCreated(node) {
    if (TRAIN_TYPES.has(node.comfyClass)) chartState(node);
  },
});
