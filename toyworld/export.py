"""Write toy-world datasets as parquet files.

``export_pairs`` uses the Subjects200K layout so the real dataset reader is exercised unchanged:
  image               struct<bytes: binary, path: string>  (Hugging Face Image feature; PNG bytes
                      of one picture holding two square panels side by side, 8 px white padding
                      around and between them: width 2*panel + 3*pad, height panel + 2*pad)
  collection          string ("toy_world")
  quality_assessment  struct<compositeStructure, objectConsistency, imageQuality: int64> (all 5)
  description         struct<item, description_0, description_1, category: string>
The two panels show the same subject in two scenes (different backgrounds, positions and scales);
``item`` is "red striped star", ``description_0/1`` the two scene captions, ``category`` the shape.

``export_text_to_image`` writes single-subject scenes for base-model pre-training: columns
``image`` (same struct), ``caption``, ``item``, ``category``, ``background``.
"""

import io
import json
import logging
import random
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from .errors import ToyWorldError

logger = logging.getLogger(__name__)

PAD = 8
COLLECTION = "toy_world"
_IMAGE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
PAIR_SCHEMA = pa.schema([
    ("image", _IMAGE),
    ("collection", pa.string()),
    ("quality_assessment", pa.struct([("compositeStructure", pa.int64()), ("objectConsistency", pa.int64()),
                                      ("imageQuality", pa.int64())])),
    ("description", pa.struct([("item", pa.string()), ("description_0", pa.string()),
                               ("description_1", pa.string()), ("category", pa.string())])),
])
T2I_SCHEMA = pa.schema([("image", _IMAGE), ("caption", pa.string()), ("item", pa.string()),
                        ("category", pa.string()), ("background", pa.string())])


def _value(dtype="string"):
    return {"dtype": dtype, "_type": "Value"}


_HF_FEATURES = {
    "pairs": {"image": {"_type": "Image"}, "collection": _value(),
              "quality_assessment": {k: _value("int64") for k in
                                     ("compositeStructure", "objectConsistency", "imageQuality")},
              "description": {k: _value() for k in ("item", "description_0", "description_1", "category")}},
    "t2i": {"image": {"_type": "Image"}, **{k: _value() for k in ("caption", "item", "category", "background")}},
}


def row_seed(seed: int, index: int) -> int:
    """Independent 32-bit seed of row ``index`` of an export seeded with ``seed``."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


def png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def diptych(left: Image.Image, right: Image.Image, pad: int = PAD) -> Image.Image:
    """Two square panels side by side on white: (2*panel + 3*pad) x (panel + 2*pad)."""
    p = left.size[0]
    canvas = Image.new("RGB", (2 * p + 3 * pad, p + 2 * pad), (255, 255, 255))
    canvas.paste(left, (pad, pad))
    canvas.paste(right, (p + 2 * pad, pad))
    return canvas


def make_pair(world, subject, rng_seed: int):
    """The same subject in two scenes on two different backgrounds.
    Returns (diptych image, caption_0, caption_1, (truth_0, truth_1))."""
    rnd = random.Random(rng_seed)
    bg0, bg1 = rnd.sample(list(world.backgrounds), 2)
    im0, t0 = world.render_scene([subject], bg0, None, row_seed(rng_seed, 0))
    im1, t1 = world.render_scene([subject], bg1, None, row_seed(rng_seed, 1))
    return diptych(im0, im1), t0.caption, t1.caption, (t0, t1)


def subject_stream(world, split: str, n: int, seed: int):
    """``n`` subjects of ``split``: seeded shuffles of the whole split back to back (balanced)."""
    subjects = list(world.split_subjects(split))
    if not subjects:
        raise ToyWorldError(f"split {split!r} has no subjects")
    rnd, out = random.Random(seed), []
    while len(out) < n:
        order = subjects[:]
        rnd.shuffle(order)
        out += order
    return out[:n]


def _write(rows: dict, schema: pa.Schema, features: dict, path: Path, row_group_size: int) -> Path:
    table = pa.Table.from_pydict(rows, schema=schema)
    meta = {b"huggingface": json.dumps({"info": {"features": features}}).encode()}
    table = table.replace_schema_metadata(meta)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path, row_group_size=row_group_size)
    logger.info("wrote %d rows to %s", table.num_rows, path)
    return path


def export_pairs(world, out_dir, n_pairs: int, seed: int, split: str = "train",
                 filename=None, row_group_size: int = 256) -> Path:
    """Write ``n_pairs`` Subjects200K-layout rows of ``split`` subjects; returns the parquet path
    (default ``out_dir/toy_pairs_<split>.parquet``)."""
    if n_pairs < 1:
        raise ToyWorldError(f"n_pairs must be >= 1, got {n_pairs}")
    rows = {"image": [], "collection": [], "quality_assessment": [], "description": []}
    for i, subject in enumerate(subject_stream(world, split, n_pairs, seed)):
        img, cap0, cap1, _ = make_pair(world, subject, row_seed(seed, i))
        rows["image"].append({"bytes": png_bytes(img), "path": None})
        rows["collection"].append(COLLECTION)
        rows["quality_assessment"].append({"compositeStructure": 5, "objectConsistency": 5, "imageQuality": 5})
        rows["description"].append({"item": subject.item, "description_0": cap0, "description_1": cap1,
                                    "category": subject.shape})
    path = Path(out_dir) / (filename or f"toy_pairs_{split}.parquet")
    return _write(rows, PAIR_SCHEMA, _HF_FEATURES["pairs"], path, row_group_size)


def export_text_to_image(world, out_dir, n_images: int, seed: int, split: str = "train",
                         filename=None, row_group_size: int = 256) -> Path:
    """Write ``n_images`` single-subject scenes with captions; returns the parquet path
    (default ``out_dir/toy_t2i_<split>.parquet``)."""
    if n_images < 1:
        raise ToyWorldError(f"n_images must be >= 1, got {n_images}")
    rows = {k: [] for k in T2I_SCHEMA.names}
    for i, subject in enumerate(subject_stream(world, split, n_images, seed)):
        rs = row_seed(seed, i)
        background = random.Random(rs).choice(world.backgrounds)
        img, truth = world.render_scene([subject], background, None, rs)
        rows["image"].append({"bytes": png_bytes(img), "path": None})
        rows["caption"].append(truth.caption)
        rows["item"].append(subject.item)
        rows["category"].append(subject.shape)
        rows["background"].append(background)
    path = Path(out_dir) / (filename or f"toy_t2i_{split}.parquet")
    return _write(rows, T2I_SCHEMA, _HF_FEATURES["t2i"], path, row_group_size)


def decode_image(cell: dict) -> Image.Image:
    """The PIL image of one ``image`` struct cell (as read back with pyarrow ``to_pylist``)."""
    return Image.open(io.BytesIO(cell["bytes"])).convert("RGB")
