// A small, dependency-free line chart drawn on a 2D canvas context (a node's canvas or any
// <canvas>). Keeps at most `maxPoints` points by halving the series when full, so a long run
// costs constant memory and draw time. Draws the raw series faintly and an exponential moving
// average on top.

export class LineChart {
  constructor({ maxPoints = 1024, smoothing = 0.9, color = "#4fc3f7", label = "loss" } = {}) {
    Object.assign(this, { maxPoints, smoothing, color, label });
    this.clear();
  }

  clear() {
    this.points = []; // [x, y]
    this.smooth = []; // [x, ema(y)]
    this._ema = null;
    this.xMax = null; // fixed right end of the x axis (e.g. total steps), or null = last x
  }

  get length() {
    return this.points.length;
  }

  get last() {
    return this.points.length ? this.points[this.points.length - 1] : null;
  }

  push(x, y) {
    if (!Number.isFinite(x) || !Number.isFinite(y)) return false;
    this._ema = this._ema === null ? y : this.smoothing * this._ema + (1 - this.smoothing) * y;
    this.points.push([x, y]);
    this.smooth.push([x, this._ema]);
    if (this.points.length > this.maxPoints) {
      this.points = this.points.filter((_, i) => i % 2 === 0);
      this.smooth = this.smooth.filter((_, i) => i % 2 === 0);
    }
    return true;
  }

  /** Bounds of the data: {x0, x1, y0, y1} with a little y headroom; null when empty. */
  bounds() {
    if (!this.points.length) return null;
    let y0 = Infinity;
    let y1 = -Infinity;
    for (const [, y] of this.points) {
      y0 = Math.min(y0, y);
      y1 = Math.max(y1, y);
    }
    const pad = (y1 - y0) * 0.05 || Math.abs(y1) * 0.05 || 1;
    const x0 = this.points[0][0];
    const x1 = Math.max(this.xMax ?? this.last[0], x0 + 1);
    return { x0, x1, y0: y0 - pad, y1: y1 + pad };
  }

  /** Draw into the box (x, y, w, h) of `ctx`; `status` is a line of text under the plot. */
  draw(ctx, x, y, w, h, { status = "", empty = "waiting for data" } = {}) {
    ctx.save();
    ctx.beginPath();
    ctx.roundRect ? ctx.roundRect(x, y, w, h, 6) : ctx.rect(x, y, w, h);
    ctx.fillStyle = "rgba(0, 0, 0, 0.35)";
    ctx.fill();
    ctx.clip();
    ctx.font = "11px sans-serif";
    ctx.textBaseline = "middle";
    const pad = { l: 52, r: 8, t: 8, b: status ? 22 : 8 };
    const px = x + pad.l;
    const py = y + pad.t;
    const pw = Math.max(1, w - pad.l - pad.r);
    const ph = Math.max(1, h - pad.t - pad.b);
    const b = this.bounds();
    if (!b) {
      ctx.fillStyle = "#999";
      ctx.textAlign = "center";
      ctx.fillText(empty, x + w / 2, y + h / 2);
    } else {
      const sx = (v) => px + ((v - b.x0) / (b.x1 - b.x0)) * pw;
      const sy = (v) => py + ph - ((v - b.y0) / (b.y1 - b.y0)) * ph;
      ctx.strokeStyle = "rgba(255, 255, 255, 0.12)";
      ctx.lineWidth = 1;
      ctx.fillStyle = "#aaa";
      ctx.textAlign = "right";
      for (const f of [0, 0.5, 1]) {
        const v = b.y0 + f * (b.y1 - b.y0);
        ctx.beginPath();
        ctx.moveTo(px, sy(v));
        ctx.lineTo(px + pw, sy(v));
        ctx.stroke();
        ctx.fillText(formatNumber(v), px - 4, sy(v));
      }
      this._line(ctx, this.points, sx, sy, this.color, 0.35, 1);
      this._line(ctx, this.smooth, sx, sy, this.color, 1, 2);
    }
    if (status) {
      ctx.fillStyle = "#ddd";
      ctx.textAlign = "left";
      ctx.fillText(status, x + 8, y + h - 11, w - 16);
    }
    ctx.restore();
  }

  _line(ctx, pts, sx, sy, color, alpha, width) {
    if (!pts.length) return;
    ctx.globalAlpha = alpha;
    ctx.strokeStyle = color;
    ctx.lineWidth = width;
    ctx.beginPath();
    pts.forEach(([a, v], i) => (i ? ctx.lineTo(sx(a), sy(v)) : ctx.moveTo(sx(a), sy(v))));
    if (pts.length === 1) ctx.lineTo(sx(pts[0][0]) + 2, sy(pts[0][1]));
    ctx.stroke();
    ctx.globalAlpha = 1;
  }
}

export function formatNumber(v) {
  if (!Number.isFinite(v)) return String(v);
  const a = Math.abs(v);
  if (a !== 0 && (a < 1e-3 || a >= 1e4)) return v.toExponential(1);
  return a >= 100 ? v.toFixed(0) : a >= 1 ? v.toFixed(2) : v.toFixed(4);
}

export function formatDuration(seconds) {
  if (!Number.isFinite(seconds) || seconds < 0) return "";
  const s = Math.round(seconds);
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  const pad = (n) => String(n).padStart(2, "0");
  return h ? `${h}:${pad(m)}:${pad(s % 60)}` : `${m}:${pad(s % 60)}`;
}
