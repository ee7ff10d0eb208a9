"""Figures of the toy experiments: labelled grids of 128 px panels, upscaled with nearest-neighbour
so the 8 px cells stay sharp. Small PNGs for docs/images."""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

PANEL, GAP, HEAD = 128, 4, 16


def grid(rows: list[list[Image.Image | None]], header: list[str], scale: int = 1) -> Image.Image:
    """One row per list of images (None leaves a blank), a text header above the columns."""
    side, gap, head = PANEL * scale, GAP * scale, HEAD * scale
    width = max(len(r) for r in rows) * (side + gap) - gap
    out = Image.new("RGB", (width, head + len(rows) * (side + gap)), (255, 255, 255))
    draw = ImageDraw.Draw(out)
    font = ImageFont.load_default(size=11 * scale) if scale > 1 else ImageFont.load_default()
    for i, text in enumerate(header):
        draw.text((i * (side + gap) + 2, 2), text, fill=(30, 30, 30), font=font)
    for j, row in enumerate(rows):
        for i, im in enumerate(row):
            if im is not None:
                tile = im.convert("RGB").resize((side, side), Image.NEAREST)
                out.paste(tile, (i * (side + gap), head + j * (side + gap)))
    return out


def eval_figure(out: Path, cases: list[dict], conditions: list[str], n: int, count: int, reference) -> Path | None:
    """Per case: the references (and B''s), each condition's image, (c) after the swap and the route
    of (c). ``reference(case, i)`` -> PIL image (i = -1: B''s reference). Returns the PNG path."""
    chosen = [c for c in cases if c["n"] == n][:count]
    images = out / "images"
    rows = []
    for case in chosen:
        row = [reference(case, i) for i in range(n)] + [reference(case, -1)]
        row += [_open(images / f"{case['id']}_{cond}_main.png") for cond in conditions]
        if "c" in conditions:
            row += [_open(images / f"{case['id']}_c_swap.png"), _open(images / f"{case['id']}_c_main_route.png")]
        rows.append(row)
    if not rows:
        return None
    header = [f"ref {i + 1}" for i in range(n)] + ["ref B'"] + [{"text": "text", "oracle": "oracle", "a2": "(a')"}
                                                              .get(c, f"({c})") for c in conditions]
    header += ["(c) B->B'", "(c) route"] if "c" in conditions else []
    path = out / "figures" / f"toy_eval_{n}_subjects.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    grid(rows, header).save(path, optimize=True)
    return path


def _open(path: Path) -> Image.Image | None:
    return Image.open(path) if path.is_file() else None
