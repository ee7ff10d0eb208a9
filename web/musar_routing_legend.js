// MUSAR Routing Preview: a colour -> caption legend over the overlay image after a run.
// ComfyUI's frontend draws the preview images itself (ui.PreviewImage); this only adds the
// legend. Captions come from the node's executed message when the server sends them
// (`captions`, a list of strings, optional `colors`), otherwise from the caption widgets of the
// Subject chain wired into the routing (same order, same colours). No captions, no legend.
import { app } from "../../scripts/app.js";
import { PALETTE, cssColor, subjectColor } from "./lib/palette.js";
import { routedCaptions } from "./lib/subjects.js";

const PREVIEW_TYPE = "MUSAR_RoutingPreview";
const WIDGET = "$$musar_legend";
const ROW = 20;
const FONT = "12px sans-serif";
let measureCtx = null;

function textWidth(text) {
  measureCtx ??= document.createElement("canvas").getContext("2d");
  measureCtx.font = FONT;
  return measureCtx.measureText(text).width;
}

function toColor(c, i) {
  if (typeof c === "string") return c;
  if (Array.isArray(c) && c.length >= 3) return cssColor(c);
  return subjectColor(i);
}

/** Legend entries [{color, text}] from an executed message (null when it carries none). */
export function captionsFromMessage(msg) {
  const caps = msg?.captions ?? msg?.musar_captions ?? msg?.subject_captions;
  if (!Array.isArray(caps) || !caps.length) return null;
  const colors = Array.isArray(msg.colors) ? msg.colors : [];
  return caps.map((c, i) => ({ color: toColor(colors[i], i), text: String(c?.caption ?? c) }));
}

/** Flow layout of the legend chips for a node of width `width`: [{x, row, entry}]. */
function layout(entries, width) {
  const items = [];
  let x = 10;
  let row = 0;
  for (const entry of entries) {
    const w = 18 + Math.min(textWidth(entry.text), width - 40) + 14;
    if (x + w > width - 10 && x > 10) {
      row += 1;
      x = 10;
    }
    items.push({ x, row, w, entry });
    x += w;
  }
  return { items, rows: row + 1 };
}

function legendWidget(node) {
  return {
    name: WIDGET,
    type: "musar_legend",
    value: null,
    serialize: false,
    options: { serialize: false },
    entries: [],
    computeSize(width) {
      return [width, this.entries.length ? layout(this.entries, width).rows * ROW + 6 : 0];
    },
    draw(ctx, n, width, y) {
      if (!this.entries.length) return;
      ctx.save();
      ctx.font = FONT;
      ctx.textBaseline = "middle";
      ctx.textAlign = "left";
      for (const { x, row, w, entry } of layout(this.entries, width).items) {
        const cy = y + 3 + row * ROW + ROW / 2;
        ctx.fillStyle = entry.color;
        ctx.fillRect(x, cy - 6, 12, 12);
        ctx.fillStyle = "#ddd";
        ctx.fillText(entry.text, x + 18, cy, w - 30);
      }
      ctx.restore();
    },
  };
}

export function setLegend(node, entries) {
  let widget = node.widgets?.find((w) => w.name === WIDGET);
  if (!entries?.length) {
    if (widget) widget.entries = [];
  } else {
    widget ??= node.addCustomWidget(legendWidget(node));
    widget.entries = entries;
  }
  node.musarLegend = entries ?? [];
  node.setSize?.([node.size[0], Math.max(node.size[1], node.computeSize()[1])]);
  node.setDirtyCanvas?.(true, true);
}

app.registerExtension({
  name: "musar.routingLegend",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (nodeData?.name !== PREVIEW_TYPE) return;
    const onExecuted = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (message) {
      const r = onExecuted?.apply(this, arguments);
      try {
        let entries = captionsFromMessage(message);
        if (!entries) {
          const caps = routedCaptions(this);
          entries = caps?.map((text, i) => ({ color: subjectColor(i % PALETTE.length), text }));
        }
        setLegend(this, entries ?? []);
      } catch (e) {
        console.warn("[MUSAR] routing legend:", e);
      }
      return r;
    };
  },
});
