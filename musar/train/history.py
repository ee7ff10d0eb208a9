"""Loss history of a run (raw per-step loss and a smoothed curve) and its picture (PIL only)."""

from __future__ import annotations

import math

from PIL import Image, ImageDraw, ImageFont


class LossHistory:
    """Per-step loss (index 0 = optimizer step 1) and a bias-corrected exponential moving average
    (the curve TensorBoard calls "smoothed")."""

    def __init__(self, smoothing: float = 0.9, losses=()):
        self.smoothing = float(smoothing)
        self.raw: list[float] = [float(v) for v in losses]

    def __len__(self) -> int:
        return len(self.raw)

    def append(self, loss: float) -> None:
        self.raw.append(float(loss))

    def smoothed(self) -> list[float]:
        out, avg, weight = [], 0.0, 0.0
        for value in self.raw:
            avg = self.smoothing * avg + (1 - self.smoothing) * value
            weight = self.smoothing * weight + (1 - self.smoothing)
            out.append(avg / weight if weight else value)
        return out

    def window_mean(self, start: int, stop: int) -> float:
        part = self.raw[start:stop]
        return sum(part) / len(part) if part else math.nan

    def summary(self) -> dict:
        """Mean loss of the first and the last tenth of the run (at least one step each)."""
        n = len(self.raw)
        k = max(1, n // 10)
        return {"steps": n, "first": self.window_mean(0, k), "last": self.window_mean(n - k, n),
                "min": min(self.raw) if self.raw else math.nan}


def _ticks(low: float, high: float, count: int = 4) -> list[float]:
    return [low + (high - low) * i / count for i in range(count + 1)]


def render_loss_curve(history: LossHistory, width: int = 640, height: int = 320,
                      title: str = "MUSAR training loss") -> Image.Image:
    """Raw loss (light) and the smoothed curve (dark) against the step; RGB image."""
    image = Image.new("RGB", (width, height), (250, 250, 248))
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default()
    left, right, top, bottom = 64, width - 16, 28, height - 30
    draw.text((left, 8), title, fill=(30, 30, 30), font=font)
    draw.rectangle((left, top, right, bottom), outline=(120, 120, 120))
    raw = [v for v in history.raw if math.isfinite(v)]
    if not raw:
        draw.text((left + 10, (top + bottom) // 2), "no steps yet", fill=(90, 90, 90), font=font)
        return image
    low, high = min(raw), max(raw)
    if high - low < 1e-12:
        low, high = low - 0.5 * abs(low or 1), high + 0.5 * abs(high or 1)
    n = len(history.raw)

    def xy(i: int, v: float) -> tuple[float, float]:
        x = left + (right - left) * (i / max(1, n - 1))
        return x, bottom - (bottom - top) * (v - low) / (high - low)

    for v in _ticks(low, high):
        y = xy(0, v)[1]
        draw.line((left - 4, y, left, y), fill=(120, 120, 120))
        draw.text((4, y - 6), f"{v:.4g}", fill=(60, 60, 60), font=font)
    for i in sorted({0, n // 2, n - 1}):
        x = xy(i, low)[0]
        draw.text((x - 8, bottom + 6), str(i + 1), fill=(60, 60, 60), font=font)
    for series, colour in ((history.raw, (160, 190, 230)), (history.smoothed(), (20, 70, 170))):
        points = [xy(i, v) for i, v in enumerate(series) if math.isfinite(v)]
        if len(points) == 1:
            x, y = points[0]
            draw.ellipse((x - 2, y - 2, x + 2, y + 2), fill=colour)
        else:
            draw.line(points, fill=colour, width=2 if colour[0] < 100 else 1)
    label = f"step {n}  loss {history.raw[-1]:.4g}  smoothed {history.smoothed()[-1]:.4g}"
    draw.text((right - 7 * len(label) - 4, 8), label, fill=(20, 70, 170), font=font)
    return image


def placeholder_image(text: str, width: int = 256, height: int = 256) -> Image.Image:
    """A grey picture with a line of text (an IMAGE output when there is nothing to show)."""
    image = Image.new("RGB", (width, height), (64, 64, 64))
    ImageDraw.Draw(image).text((10, height // 2 - 6), text, fill=(220, 220, 220),
                               font=ImageFont.load_default())
    return image
