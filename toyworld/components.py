"""Connected-component labelling and hole filling in numpy (run-length union-find, no scipy)."""

import numpy as np


def _runs(mask: np.ndarray):
    """Row-major runs of True: arrays (row, start, end) with ``end`` exclusive."""
    h, w = mask.shape
    padded = np.zeros((h, w + 2), np.int8)
    padded[:, 1:-1] = mask
    d = np.diff(padded, axis=1)
    rows, starts = np.nonzero(d == 1)
    _, ends = np.nonzero(d == -1)
    return rows, starts, ends


def _find(parent, i):
    root = i
    while parent[root] != root:
        root = parent[root]
    while parent[i] != root:
        parent[i], i = root, parent[i]
    return root


def label(mask: np.ndarray, connectivity: int = 4):
    """Label the True pixels of a 2-D bool array. Returns (labels int32 with 0 = background, count)."""
    if connectivity not in (4, 8):
        raise ValueError(f"connectivity must be 4 or 8, got {connectivity}")
    mask = np.asarray(mask, bool)
    rows, starts, ends = _runs(mask)
    n = len(rows)
    parent = list(range(n))
    slack = 1 if connectivity == 8 else 0
    row_first = np.searchsorted(rows, np.arange(mask.shape[0] + 1))
    for r in range(1, mask.shape[0]):
        a0, a1, b0, b1 = row_first[r - 1], row_first[r], row_first[r], row_first[r + 1]
        i = a0
        for j in range(b0, b1):
            while i < a1 and ends[i] + slack <= starts[j]:
                i += 1
            k = i
            while k < a1 and starts[k] < ends[j] + slack:
                ri, rj = _find(parent, k), _find(parent, j)
                if ri != rj:
                    parent[rj] = ri
                k += 1
    roots = [_find(parent, i) for i in range(n)]
    ids = {}
    labels = np.zeros(mask.shape, np.int32)
    for i, root in enumerate(roots):
        lab = ids.setdefault(root, len(ids) + 1)
        labels[rows[i], starts[i]:ends[i]] = lab
    return labels, len(ids)


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """``mask`` with every background region that does not touch the border set to True."""
    mask = np.asarray(mask, bool)
    padded = np.pad(~mask, 1, constant_values=True)
    labels, _ = label(padded, connectivity=4)
    outside = labels == labels[0, 0]
    return ~outside[1:-1, 1:-1]


def _shift_reduce(mask: np.ndarray, radius: int, axis: int, op) -> np.ndarray:
    n = mask.shape[axis]
    fill = op is np.logical_and
    padded = np.pad(mask, [(radius, radius) if a == axis else (0, 0) for a in range(2)], constant_values=fill)
    out = mask.copy()
    for k in range(2 * radius + 1):
        sl = [slice(None)] * 2
        sl[axis] = slice(k, k + n)
        out = op(out, padded[tuple(sl)])
    return out


def erode(mask: np.ndarray, radius: int = 1) -> np.ndarray:
    """Binary erosion with a (2r+1) square; outside the image counts as True (no border erosion)."""
    out = np.asarray(mask, bool)
    for axis in (0, 1):
        out = _shift_reduce(out, radius, axis, np.logical_and)
    return out


def dilate(mask: np.ndarray, radius: int = 1) -> np.ndarray:
    """Binary dilation with a (2r+1) square."""
    out = np.asarray(mask, bool)
    for axis in (0, 1):
        out = _shift_reduce(out, radius, axis, np.logical_or)
    return out


def opening(mask: np.ndarray, radius: int = 1) -> np.ndarray:
    """Erosion then dilation: drops specks and hairlines thinner than 2r+1 px."""
    return dilate(erode(mask, radius), radius)


def closing(mask: np.ndarray, radius: int = 1) -> np.ndarray:
    """Dilation then erosion: bridges gaps narrower than 2r+1 px."""
    return erode(dilate(mask, radius), radius)


def open_close(mask: np.ndarray, radius: int = 1) -> np.ndarray:
    """Opening followed by closing: no specks, no hairline gaps."""
    return closing(opening(mask, radius), radius) if radius > 0 else np.asarray(mask, bool)
