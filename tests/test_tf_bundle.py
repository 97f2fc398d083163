"""The TF tensor-bundle reader (importers/tf_bundle.py) against checkpoints written by TensorFlow
(tests/fixtures/sact_tf, see its README) and against corrupt or hostile files: every failure is
an ImportFailed, never another exception, an over-sized read or a hang."""
from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest

from ponderscope.importers.common import ImportFailed
from ponderscope.importers.tf_bundle import list_variables, read_bundle, resolve_prefix
from tests.tf_bundle_writer import entry, field, header, masked_crc32c, varint, write_bundle

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "sact_tf"
MODELS = ["cifar_sact", "cifar_act", "cifar_vanilla", "imagenet_sact", "imagenet_act", "imagenet_vanilla"]
FLOATS = {"float32", "float64", "float16", "bfloat16"}


def listing(folder: str) -> dict:
    return json.loads((FIXTURES / folder / "variables.json").read_text())


def copy_fixture(folder: str, tmp_path: Path) -> Path:
    dest = tmp_path / folder
    shutil.copytree(FIXTURES / folder, dest)
    return dest / "model.ckpt-0"


# --- agreement with TensorFlow -------------------------------------------------------------------

@pytest.mark.parametrize("folder", MODELS + ["bundle_dtypes"])
def test_every_variable_equals_what_tensorflow_reads(folder):
    expected = np.load(FIXTURES / folder / "variables.npz")
    dtypes = {name: dtype for name, (dtype, _) in listing(folder).items()}
    got = read_bundle(FIXTURES / folder / "model.ckpt-0")
    assert sorted(got) == sorted(name for name in expected.files if dtypes[name] != "string")
    for name, value in got.items():
        want = expected[name]
        if dtypes[name] in FLOATS:  # every float dtype arrives as float32
            want = want.astype(np.float32)
        assert value.dtype == want.dtype, name
        assert value.shape == want.shape, name
        assert np.array_equal(value, want), name


@pytest.mark.parametrize("folder", MODELS + ["bundle_dtypes", "bundle_partitioned"])
def test_list_variables_equals_tensorflows_listing(folder):
    got = list_variables(FIXTURES / folder / "model.ckpt-0")
    assert {name: [dtype, list(shape)] for name, (dtype, shape) in got.items()} == listing(folder)


def test_dtypes_and_training_state():
    got = read_bundle(FIXTURES / "bundle_dtypes")  # two shards
    assert got["dtypes/int64"].dtype == np.int64 and got["dtypes/int64"] == 2**40 + 3
    assert got["dtypes/bool"].tolist() == [True, False, True]
    assert got["dtypes/bfloat16"][:3].tolist() == [1.0, -2.5, 3.140625]
    assert abs(got["dtypes/bfloat16"][3] / 1e30 - 1) < 2**-8  # 1e30 rounded to bfloat16
    assert got["dtypes/empty"].shape == (0, 3) and got["dtypes/scalar"].shape == ()
    sact = read_bundle(FIXTURES / "cifar_sact")
    assert sact["global_step"].dtype == np.int64
    assert sum(name.endswith("/Momentum") for name in sact) == 2


def test_partitioned_variable_is_refused_by_name():
    with pytest.raises(ImportFailed, match="'partitioned'.*partitioned"):
        read_bundle(FIXTURES / "bundle_partitioned" / "model.ckpt-0")


# --- resolve_prefix ------------------------------------------------------------------------------

def test_resolve_prefix_accepts_prefix_files_and_directories(tmp_path):
    folder = FIXTURES / "cifar_act"
    prefix = folder / "model.ckpt-0"
    for given in [prefix, f"{prefix}.index", f"{prefix}.data-00000-of-00001", f"{prefix}.meta", folder]:
        assert resolve_prefix(given) == prefix, given
    copy = copy_fixture("cifar_act", tmp_path)
    (copy.parent / "checkpoint").unlink()  # no state file: the one *.index
    assert resolve_prefix(copy.parent) == copy


def test_resolve_prefix_follows_the_checkpoint_state_file(tmp_path):
    copy = copy_fixture("cifar_act", tmp_path)
    state = copy.parent / "checkpoint"
    state.write_text(f'model_checkpoint_path: "{copy}"\nall_model_checkpoint_paths: "{copy}"\n')
    assert resolve_prefix(copy.parent) == copy
    # An absolute path from the machine that trained it: the file of that name here.
    state.write_text('model_checkpoint_path: "/train/run7/model.ckpt-0"\n')
    assert resolve_prefix(copy.parent) == copy
    state.write_text('model_checkpoint_path: "model.ckpt-999"\n')
    with pytest.raises(ImportFailed, match="model.ckpt-999"):
        resolve_prefix(copy.parent)
    state.write_text("garbage\n")
    with pytest.raises(ImportFailed, match="model_checkpoint_path"):
        resolve_prefix(copy.parent)


def test_resolve_prefix_failures_say_what_was_expected(tmp_path):
    missing = tmp_path / "model.ckpt-100000"
    with pytest.raises(ImportFailed, match=r"no TF checkpoint at .*model.ckpt-100000: expected .*\.index and .*data-00000-of-0000N"):
        resolve_prefix(missing)
    with pytest.raises(ImportFailed, match="no \\*.index"):
        resolve_prefix(tmp_path)
    copy = copy_fixture("cifar_act", tmp_path)
    (copy.parent / "checkpoint").unlink()
    shutil.copy(f"{copy}.index", copy.parent / "model.ckpt-5.index")
    with pytest.raises(ImportFailed, match="model.ckpt-0.index, model.ckpt-5.index"):
        resolve_prefix(copy.parent)


# --- damaged files ---------------------------------------------------------------------------------

def read_or_fail(prefix):
    """read_bundle's result, or None when it raised ImportFailed (any other exception fails)."""
    try:
        return read_bundle(prefix)
    except ImportFailed as err:
        assert "\n" not in str(err)
        return None


@pytest.mark.parametrize("keep", [0, 1, 8, 47, 48, 100, 0.5, -1, -5, -48])
def test_truncated_index(tmp_path, keep):
    prefix = copy_fixture("cifar_sact", tmp_path)
    index = Path(f"{prefix}.index")
    data = index.read_bytes()
    cut = int(len(data) * keep) if isinstance(keep, float) else keep % len(data)
    index.write_bytes(data[:cut])
    with pytest.raises(ImportFailed, match="index"):
        read_bundle(prefix)


@pytest.mark.parametrize("keep", [0, 100, 0.5, -1])
def test_truncated_data(tmp_path, keep):
    prefix = copy_fixture("cifar_sact", tmp_path)
    shard = Path(f"{prefix}.data-00000-of-00001")
    data = shard.read_bytes()
    shard.write_bytes(data[: int(len(data) * keep) if isinstance(keep, float) else keep % len(data)])
    with pytest.raises(ImportFailed, match="past the end of .*data-00000-of-00001"):
        read_bundle(prefix)


def test_missing_data_shards(tmp_path):
    prefix = copy_fixture("cifar_sact", tmp_path)
    Path(f"{prefix}.data-00000-of-00001").unlink()
    with pytest.raises(ImportFailed, match="missing data file .*model.ckpt-0.data-00000-of-00001"):
        read_bundle(prefix)
    assert "global_step" in list_variables(prefix)  # the index alone still lists
    prefix = copy_fixture("bundle_dtypes", tmp_path)
    Path(f"{prefix}.data-00001-of-00002").unlink()
    with pytest.raises(ImportFailed, match="missing data file .*data-00001-of-00002"):
        read_bundle(prefix)


def test_garbage_files(tmp_path):
    rng = np.random.default_rng(0)
    prefix = copy_fixture("cifar_sact", tmp_path)
    index = Path(f"{prefix}.index")
    for size in [48, 4096, len(index.read_bytes())]:
        index.write_bytes(rng.integers(0, 256, size, dtype=np.uint8).tobytes())
        assert read_or_fail(prefix) is None
    # Garbage that keeps the footer's magic.
    index.write_bytes(rng.integers(0, 256, 200, dtype=np.uint8).tobytes() + struct.pack("<Q", 0xDB4775248B80FB57))
    assert read_or_fail(prefix) is None


def test_flipped_index_bytes_fail_cleanly(tmp_path):
    """Any flipped byte is caught (block checksums) or harmless (unused footer bytes)."""
    prefix = copy_fixture("cifar_sact", tmp_path)
    index = Path(f"{prefix}.index")
    original = index.read_bytes()
    expected = read_bundle(prefix)
    positions = list(np.random.default_rng(1).choice(len(original) - 48, 120, replace=False)) + list(range(len(original) - 48, len(original)))
    for pos in positions:
        damaged = bytearray(original)
        damaged[pos] ^= 0x5A
        index.write_bytes(bytes(damaged))
        got = read_or_fail(prefix)
        if got is not None:
            assert pos >= len(original) - 48, f"flipped byte {pos} went unnoticed"
            assert sorted(got) == sorted(expected) and all(np.array_equal(got[k], expected[k]) for k in got)


# --- hand-made bundles: tests/tf_bundle_writer.py, an SSTable writer independent of the reader ---

VALUES = np.arange(6, dtype="<f4").reshape(2, 3)


def test_hand_made_bundle_reads(tmp_path):
    prefix = write_bundle(tmp_path / "ok", [header(), (b"w", entry())], VALUES.tobytes())
    got = read_bundle(prefix)
    assert list(got) == ["w"] and np.array_equal(got["w"], VALUES)
    # Several data blocks, as a large checkpoint has.
    names = [f"v{i:03d}".encode() for i in range(40)]
    entries = [header()] + [(n, entry(dims=(), offset=4 * i, size=4)) for i, n in enumerate(names)]
    prefix = write_bundle(tmp_path / "blocks", entries, np.arange(40, dtype="<f4").tobytes(), split=5)
    assert read_bundle(prefix) == {n.decode(): np.float32(i) for i, n in enumerate(names)}


@pytest.mark.parametrize("name, entries, message", [
    ("past the end", [header(), (b"w", entry(offset=8))], "'w'.*past the end"),
    ("huge offset", [header(), (b"w", entry(offset=2**62))], "'w'.*past the end"),
    ("size and shape disagree", [header(), (b"w", entry(size=20))], "'w'.*20 bytes"),
    ("huge size", [header(), (b"w", entry(dims=(2**30, 2**30), size=2**62))], "'w'"),
    ("huge dim", [header(), (b"w", entry(dims=(2**62,), size=24))], "'w'.*impossible shape"),
    ("negative dim", [header(), (b"w", entry(dims=(-1, 3)))], "'w'.*impossible shape"),
    ("rank 40", [header(), (b"w", entry(dims=(1,) * 40, size=4))], "'w'.*impossible shape"),
    ("shard out of range", [header(), (b"w", entry(shard=3))], "'w'.*shard 3"),
    ("negative shard", [header(), (b"w", entry(shard=-1))], "'w'.*shard"),
    ("no header", [(b"w", entry())], "no bundle header"),
    ("big endian", [header(endianness=1), (b"w", entry())], "big-endian"),
    ("zero shards", [header(num_shards=0), (b"w", entry())], "shard count"),
    ("truncated varint", [header(), (b"w", entry() + b"\x28\xff")], "'w'.*varint"),
    ("overlong varint", [header(), (b"w", entry() + b"\x28" + b"\xff" * 11 + b"\x01")], "'w'.*varint"),
    ("wrong wire type", [header(), (b"w", field(1, b"float") + entry()[2:])], "'w'.*wire type"),
    ("group wire type", [header(), (b"w", entry() + b"\x0b")], "'w'.*wire type"),
    ("truncated message", [header(), (b"w", entry() + field(9, b"abc")[:-1])], "'w'.*truncated"),
    ("names sharing bytes", [header()] + [(f"w{i:03d}".encode(), entry()) for i in range(200)], "claim the same bytes"),
    ("empty but absurd", [header(), (b"w", entry(dims=(0, 2**39, 2**39), size=0))], "'w'.*impossible shape"),
])
def test_hostile_entries(tmp_path, name, entries, message):
    prefix = write_bundle(tmp_path / "bad", entries, VALUES.tobytes())
    with pytest.raises(ImportFailed, match=message):
        read_bundle(prefix)


def test_hostile_blocks(tmp_path):
    entries = [header(), (b"w", entry())]
    prefix = write_bundle(tmp_path / "snappy", entries, VALUES.tobytes(), compression=1)
    with pytest.raises(ImportFailed, match="compressed block"):
        read_bundle(prefix)
    # An index that lists the same data block over and over (quadratic work otherwise).
    prefix = write_bundle(tmp_path / "repeated", entries, VALUES.tobytes(), repeat=1000)
    with pytest.raises(ImportFailed, match="overlaps"):
        read_bundle(prefix)
    # A restart count that claims more bytes than the block has.
    prefix = write_bundle(tmp_path / "restarts", entries, VALUES.tobytes())
    index = bytearray(Path(f"{prefix}.index").read_bytes())
    body_end = index.index(struct.pack("<II", 0, 1)) + 8
    index[body_end - 4:body_end] = struct.pack("<I", 2**30)
    index[body_end + 1:body_end + 5] = struct.pack("<I", masked_crc32c(bytes(index[:body_end + 1])))
    Path(f"{prefix}.index").write_bytes(bytes(index))
    with pytest.raises(ImportFailed, match="restart"):
        read_bundle(prefix)
    # An index handle that points past the end of the file.
    index = bytearray(Path(f"{prefix}.index").read_bytes())
    meta_handle = varint(body_end + 5) + varint(8)
    index[-48:-8] = (meta_handle + varint(10**9) + varint(10)).ljust(40, b"\0")
    Path(f"{prefix}.index").write_bytes(bytes(index))
    with pytest.raises(ImportFailed, match="past the end"):
        read_bundle(prefix)


def test_strings_and_unknown_dtypes_are_skipped_but_listed(tmp_path):
    entries = [header(), (b"a_string", entry(dtype=7, dims=(), size=5)), (b"b_variant", entry(dtype=21, dims=(), size=3)),
               (b"c_unknown", entry(dtype=99, dims=(), size=4)), (b"w", entry())]
    prefix = write_bundle(tmp_path / "mixed", entries, VALUES.tobytes())
    assert list(read_bundle(prefix)) == ["w"]
    assert list_variables(prefix) == {"a_string": ("string", ()), "b_variant": ("variant", ()), "c_unknown": ("DT_99", ()),
                                      "w": ("float32", (2, 3))}
