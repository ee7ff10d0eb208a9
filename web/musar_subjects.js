// MUSAR Subject nodes: a colour chip "subject N" in the title bar and a thin colour bar under
// it, in the colour the routing overlay uses for that subject (its position in the chain).
// The index is recomputed from the graph on every draw, so it follows any re-wiring, bypass or
// reordering at once; onConnectionsChange only asks for a redraw. UX only: nothing here is
// needed to run a graph.
import { app } from "../../scripts/app.js";
import { subjectColor } from "./lib/palette.js";
import { SUBJECT_TYPE, subjectIndex } from "./lib/subjects.js";

function titleHeight() {
  return globalThis.LiteGraph?.NODE_TITLE_HEIGHT ?? 30;
}

function drawChip(node, ctx) {
  if (node.flags?.collapsed) return;
  const { index, known } = subjectIndex(node);
  node.musarSubject = { index, known }; // read by tests and other extensions
  const color = subjectColor(known ? index : null);
  // index counts from 0 (the palette's order); people count from 1, as the node titles do
  const text = known ? `subject ${index + 1}` : node.mode === 4 ? "bypassed" : "subject ?";
  const th = titleHeight();
  ctx.save();
  ctx.font = `${globalThis.LiteGraph?.NODE_TEXT_SIZE ?? 14}px sans-serif`;
  const titleEnd = 30 + ctx.measureText(node.getTitle?.() ?? node.title ?? "").width;
  ctx.font = "bold 11px sans-serif";
  const chipH = 18;
  let label = text;
  let chipW = ctx.measureText(label).width + 24;
  if (node.size[0] - chipW - 8 < titleEnd) {
    label = known ? String(index + 1) : "?"; // narrow node: keep the title readable
    chipW = ctx.measureText(label).width + 24;
  }
  const x = node.size[0] - chipW - 8;
  const y = -th + (th - chipH) / 2;
  ctx.beginPath();
  ctx.roundRect ? ctx.roundRect(x, y, chipW, chipH, chipH / 2) : ctx.rect(x, y, chipW, chipH);
  ctx.fillStyle = "rgba(0, 0, 0, 0.45)";
  ctx.fill();
  ctx.beginPath();
  ctx.arc(x + 10, y + chipH / 2, 5, 0, Math.PI * 2);
  ctx.fillStyle = color;
  ctx.fill();
  ctx.fillStyle = "#fff";
  ctx.textAlign = "left";
  ctx.textBaseline = "middle";
  ctx.fillText(label, x + 19, y + chipH / 2 + 0.5);
  ctx.fillStyle = color; // the colour bar under the title
  ctx.fillRect(0, 0, node.size[0], 3);
  ctx.restore();
}

app.registerExtension({
  name: "musar.subjectColors",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (nodeData?.name !== SUBJECT_TYPE) return;
    const onDrawForeground = nodeType.prototype.onDrawForeground;
    nodeType.prototype.onDrawForeground = function (ctx, ...rest) {
      const r = onDrawForeground?.call(this, ctx, ...rest);
      try {
        drawChip(this, ctx);
      } catch (e) {
        console.warn("[MUSAR] subject chip:", e);
      }
      return r;
    };
    const onConnectionsChange = nodeType.prototype.onConnectionsChange;
    nodeType.prototype.onConnectionsChange = function (...args) {
      const r = onConnectionsChange?.apply(this, args);
      this.graph?.setDirtyCanvas?.(true, true); // every Subject downstream redraws its index
      return r;
    };
  },
});
