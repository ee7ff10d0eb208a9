"""Figures of the toy experiments: labelled grids of 128 px panels, upscaled with nearest-neighbour
so the 8 px cells stay sharp. Small PNGs for docs/images."""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

PANEL, GAP, HEAD = 128, 4, 16


def grid(rows: list[list[Image.Image | None]], header: list[str], scale: int = 1,
         notes: list[list[str | None]] | None = None, title: str | None = None,
         footer: list[str] = ()) -> Image.Image:
    """One row per list of images (None leaves a blank), a text header above the columns;
    optionally a title line above, a note under each image (``notes``, shaped like ``rows``) and
    lines of text under the grid (``footer``)."""
    side, gap, head = PANEL * scale, GAP * scale, HEAD * scale
    note_h = head if notes else 0
    top = head if title else 0
    width = max(len(r) for r in rows) * (side + gap) - gap
    height = top + head + len(rows) * (side + note_h + gap) + len(footer) * head
    out = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(out)
    font = ImageFont.load_default(size=11 * scale) if scale > 1 else ImageFont.load_default()
    if title:
        draw.text((2, 2), title, fill=(0, 0, 0), font=font)
    for i, text in enumerate(header):
        draw.text((i * (side + gap) + 2, top + 2), text, fill=(30, 30, 30), font=font)
    for j, row in enumerate(rows):
        y = top + head + j * (side + note_h + gap)
        for i, im in enumerate(row):
            if im is not None:
                tile = im.convert("RGB").resize((side, side), Image.NEAREST)
                out.paste(tile, (i * (side + gap), y))
            note = notes[j][i] if notes and i < len(notes[j]) else None
            if note:
                draw.text((i * (side + gap) + 2, y + side + 1), note, fill=(30, 30, 30), font=font)
    y = top + head + len(rows) * (side + note_h + gap)
    for k, line in enumerate(footer):
        draw.text((2, y + k * head), line, fill=(0, 0, 0), font=font)
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
