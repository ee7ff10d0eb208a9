"""Figures of the toy evaluation: per subject count, one row per case with the references, then
the image of every condition and the route of (c). Small PNGs for docs/images."""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

CELL, GAP, HEAD = 128, 4, 16


def _label(draw: ImageDraw.ImageDraw, xy, text: str) -> None:
    draw.text(xy, text, fill=(30, 30, 30), font=ImageFont.load_default())


def case_row(images: list[Image.Image | None]) -> Image.Image:
    row = Image.new("RGB", (len(images) * (CELL + GAP) - GAP, CELL), (255, 255, 255))
    for i, im in enumerate(images):
        if im is not None:
            row.paste(im.convert("RGB").resize((CELL, CELL)), (i * (CELL + GAP), 0))
    return row


def grid(rows: list[Image.Image], header: list[str]) -> Image.Image:
    width = max(r.width for r in rows)
    out = Image.new("RGB", (width, HEAD + len(rows) * (CELL + GAP)), (255, 255, 255))
    draw = ImageDraw.Draw(out)
    for i, text in enumerate(header):
        _label(draw, (i * (CELL + GAP) + 2, 2), text)
    for j, r in enumerate(rows):
        out.paste(r, (0, HEAD + j * (CELL + GAP)))
    return out


def eval_figure(out: Path, cases: list[dict], conditions: list[str], n: int, count: int,
                reference) -> Path | None:
    """``reference(case, i)`` -> PIL image of subject i's reference. Returns the PNG path."""
    chosen = [c for c in cases if c["n"] == n and c["id"].endswith("seed0")][:count]
    rows, images = [], out / "images"
    for case in chosen:
        refs = [reference(case, i) for i in range(n)]
        gens = [_open(images / f"{case['id']}_{cond}.png") for cond in conditions]
        route = [_open(images / f"{case['id']}_c_route.png")] if "c" in conditions else []
        rows.append(case_row(refs + gens + route))
    if not rows:
        return None
    header = [f"ref {i + 1}" for i in range(n)] + [{"text": "text only"}.get(c, f"({c})") for c in conditions]
    path = out / "figures" / f"toy_eval_{n}_subjects.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    grid(rows, header + (["(c) route"] if "c" in conditions else [])).save(path, optimize=True)
    return path


def _open(path: Path) -> Image.Image | None:
    return Image.open(path) if path.is_file() else None
