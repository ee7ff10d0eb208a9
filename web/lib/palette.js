// Subject colours of the routing overlay: index = position of the subject in the chain of
// MUSAR Subject nodes (first node = 0). Same table as musar/subjects.py PALETTE (RGB 0..1);
// tests/browser/test_web_static.py keeps the two in sync.
export const PALETTE = [
  [0.93, 0.26, 0.21], [0.13, 0.59, 0.95], [0.30, 0.69, 0.31], [1.00, 0.76, 0.03],
  [0.61, 0.15, 0.69], [0.00, 0.74, 0.83], [1.00, 0.34, 0.13], [0.47, 0.33, 0.28],
  [0.91, 0.12, 0.39], [0.40, 0.23, 0.72], [0.55, 0.76, 0.29], [0.38, 0.49, 0.55],
  [0.80, 0.86, 0.22], [0.25, 0.32, 0.71], [0.96, 0.56, 0.69], [0.00, 0.59, 0.53],
];

export const UNKNOWN_COLOR = "#8a8a8a";

/** "#rrggbb" of an [r, g, b] colour given in 0..1 (or 0..255 when any channel is above 1). */
export function cssColor(rgb) {
  const scale = rgb.slice(0, 3).every((v) => v <= 1) ? 255 : 1;
  return "#" + rgb.slice(0, 3).map((c) => Math.round(c * scale).toString(16).padStart(2, "0")).join("");
}

/** CSS colour of subject `index` ("#rrggbb"); grey when the index is unknown. */
export function subjectColor(index) {
  if (!Number.isInteger(index) || index < 0) return UNKNOWN_COLOR;
  return cssColor(PALETTE[index % PALETTE.length]);
}
