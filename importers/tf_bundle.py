"""A reader of TensorFlow's V2 checkpoints (the "tensor bundle"), with numpy only: no TensorFlow.

A checkpoint `PREFIX` is `PREFIX.index` plus the shards `PREFIX.data-00000-of-0000N`.

`PREFIX.index` is a LevelDB-style SSTable. Its last 48 bytes are the footer: the metaindex and the
index BlockHandles (each two varints: offset, size), zero padding to 40 bytes, then the magic
0xdb4775248b80fb57 (fixed64, little-endian). A block is `size` bytes of entries followed by a
5-byte trailer (compression type: TF writes 0 = none; masked crc32c of contents + type). Entries
are prefix-compressed: varint shared, varint non_shared, varint value_length, the key's
non-shared bytes, the value; the block ends with uint32 restart offsets and their uint32 count.
The index block maps the last key of each data block to that block's BlockHandle.

Key "" holds a BundleHeaderProto: 1 num_shards, 2 endianness (0 little, 1 big), 3 version.
Every other key is a variable name holding a BundleEntryProto: 1 dtype (DataType enum),
2 shape (TensorShapeProto: 2 repeated dim {1 size}, 3 unknown_rank), 3 shard_id, 4 offset,
5 size, 6 crc32c, 7 repeated slices (set only for partitioned variables, whose pieces are stored
under binary keys starting with b"\\x00"). The tensor's bytes are `size` bytes at `offset` of shard
`shard_id`, C order, little-endian.

The index blocks' checksums are verified (they are small). The tensors' crc32c is not: a pure
Python crc32c over a ~170 MB checkpoint takes minutes; every offset, size and shape is checked
instead (ranges inside their shard, never overlapping), so corrupt input fails with `ImportFailed`,
never with a read larger than the data files.
"""
from __future__ import annotations

import os
import re
import struct
from pathlib import Path

import numpy as np

from .common import ImportFailed

MAGIC = 0xDB4775248B80FB57
MAX_INDEX_BYTES = 16 << 20  # an index takes ~100 bytes per variable
MAX_RANK = 32
# DataType enum -> (name, numpy dtype as stored or None when not read).
DTYPES = {1: ("float32", "<f4"), 2: ("float64", "<f8"), 3: ("int32", "<i4"), 4: ("uint8", "u1"),
          5: ("int16", "<i2"), 6: ("int8", "i1"), 7: ("string", None), 9: ("int64", "<i8"),
          10: ("bool", "?"), 14: ("bfloat16", "<u2"), 17: ("uint16", "<u2"), 19: ("float16", "<f2"),
          20: ("resource", None), 21: ("variant", None), 22: ("uint32", "<u4"), 23: ("uint64", "<u8")}


def _crc32c_table() -> list[int]:
    table = []
    for n in range(256):
        for _ in range(8):
            n = (n >> 1) ^ 0x82F63B78 if n & 1 else n >> 1
        table.append(n)
    return table


_CRC_TABLE = _crc32c_table()


def _masked_crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _CRC_TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    crc ^= 0xFFFFFFFF
    return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + 0xA282EAD8) & 0xFFFFFFFF


def _varint(buf: bytes, pos: int, what: str) -> tuple[int, int]:
    value = 0
    for shift in range(0, 70, 7):
        if pos >= len(buf):
            raise ImportFailed(f"{what}: truncated varint")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
    raise ImportFailed(f"{what}: varint longer than 10 bytes")


def _proto_fields(buf: bytes, what: str) -> dict[int, list]:
    """Protobuf wire format -> {field number: [values]} (varints as int, the rest as bytes)."""
    fields: dict[int, list] = {}
    pos = 0
    while pos < len(buf):
        tag, pos = _varint(buf, pos, what)
        number, wire = tag >> 3, tag & 7
        if wire == 0:
            value, pos = _varint(buf, pos, what)
        elif wire in (1, 5):
            width = 8 if wire == 1 else 4
            value, pos = buf[pos:pos + width], pos + width
        elif wire == 2:
            length, pos = _varint(buf, pos, what)
            value, pos = buf[pos:pos + length], pos + length
        else:
            raise ImportFailed(f"{what}: unsupported protobuf wire type {wire}")
        if pos > len(buf):
            raise ImportFailed(f"{what}: truncated protobuf message")
        fields.setdefault(number, []).append(value)
    return fields


def _field(fields: dict[int, list], number: int, default, what: str):
    """The last value of a field (as protobuf reads it), checked to be of the default's type."""
    value = fields.get(number, [default])[-1]
    if type(value) is not type(default):
        raise ImportFailed(f"{what}: protobuf field {number} has the wrong wire type")
    return value


def _block(index: bytes, handle: bytes, path: Path, start: int = 0) -> tuple[bytes, int]:
    """The contents of the block at `handle` (which must not begin before `start`) and its end."""
    offset, pos = _varint(handle, 0, str(path))
    size, _ = _varint(handle, pos, str(path))
    if offset + size + 5 > len(index):
        raise ImportFailed(f"{path}: block at {offset}+{size} runs past the end of the file (truncated?)")
    if offset < start:  # data blocks follow one another: no block is read (and checksummed) twice
        raise ImportFailed(f"{path}: block at {offset} overlaps the block before it")
    contents, trailer = index[offset:offset + size], index[offset + size:offset + size + 5]
    if trailer[0] != 0:
        raise ImportFailed(f"{path}: compressed block (type {trailer[0]}); TF writes uncompressed indexes")
    if _masked_crc32c(contents + trailer[:1]) != struct.unpack("<I", trailer[1:])[0]:
        raise ImportFailed(f"{path}: block at offset {offset} fails its checksum (corrupt file)")
    return contents, offset + size + 5


def _block_entries(block: bytes, path: Path):
    if len(block) < 4:
        raise ImportFailed(f"{path}: block too short")
    (num_restarts,) = struct.unpack("<I", block[-4:])
    end = len(block) - 4 - 4 * num_restarts
    if end < 0:
        raise ImportFailed(f"{path}: bad restart count {num_restarts}")
    key, pos = b"", 0
    while pos < end:
        shared, pos = _varint(block, pos, str(path))
        unshared, pos = _varint(block, pos, str(path))
        length, pos = _varint(block, pos, str(path))
        if shared > len(key) or pos + unshared + length > end:
            raise ImportFailed(f"{path}: corrupt block entry")
        key = key[:shared] + block[pos:pos + unshared]
        pos += unshared
        yield key, block[pos:pos + length]
        pos += length


def resolve_prefix(path: str | os.PathLike) -> Path:
    """The checkpoint prefix for a prefix, its .index / .data-* / .meta file, or a directory."""
    path = Path(path)
    if path.is_dir():
        state = path / "checkpoint"
        if state.is_file():
            try:
                text = state.read_text(errors="replace")
            except OSError as err:
                raise ImportFailed(f"cannot read {state}: {err.strerror or err}") from None
            match = re.search(r'^model_checkpoint_path:\s*"((?:[^"\\]|\\.)*)"', text, re.M)
            if not match:
                raise ImportFailed(f"{state} names no model_checkpoint_path")
            named = Path(re.sub(r"\\(.)", r"\1", match.group(1)))
            prefix = named if named.is_absolute() else path / named
            if not Path(f"{prefix}.index").is_file():  # absolute path from the training machine
                prefix = path / named.name
            if not Path(f"{prefix}.index").is_file():
                raise ImportFailed(f"{state} names {named}, but there is no {prefix}.index")
            return prefix
        indexes = sorted(path.glob("*.index"))
        if len(indexes) != 1:
            found = ", ".join(p.name for p in indexes) if indexes else "no *.index file"
            raise ImportFailed(f"{path}: expected one TF checkpoint (a `checkpoint` file or one *.index), found {found}")
        return indexes[0].with_suffix("")
    name = re.sub(r"(\.index|\.meta|\.data-\d{5}-of-\d{5})$", "", path.name)
    prefix = path.with_name(name)
    if not Path(f"{prefix}.index").is_file():
        raise ImportFailed(f"no TF checkpoint at {prefix}: expected {prefix}.index and {prefix}.data-00000-of-0000N")
    return prefix


def _entries(prefix: Path) -> tuple[int, dict[str, dict[int, list]]]:
    """(num_shards, {variable name: BundleEntryProto fields}) from PREFIX.index."""
    path = Path(f"{prefix}.index")
    try:
        size = path.stat().st_size
        if size > MAX_INDEX_BYTES:
            raise ImportFailed(f"{path}: {size} bytes is too large for a checkpoint index")
        index = path.read_bytes()
    except OSError as err:
        raise ImportFailed(f"cannot read {path}: {err.strerror or err}") from None
    if len(index) < 48 or struct.unpack("<Q", index[-8:])[0] != MAGIC:
        raise ImportFailed(f"{path} is not a TF checkpoint index (no SSTable footer; truncated?)")
    footer = index[-48:-8]
    _block(index, footer, path)  # the metaindex block: unused, but checksummed like the others
    _, pos = _varint(footer, 0, str(path))
    _, pos = _varint(footer, pos, str(path))
    index_handle = footer[pos:]
    header, entries, start = None, {}, 0
    for _, handle in _block_entries(_block(index, index_handle, path)[0], path):
        contents, start = _block(index, handle, path, start)
        for key, value in _block_entries(contents, path):
            if key == b"":
                header = _proto_fields(value, f"{path}: header")
            elif not key.startswith(b"\x00"):  # b"\x00..." keys are slices of partitioned variables
                name = key.decode("utf-8", errors="replace")
                entries[name] = _proto_fields(value, f"{path}: entry {name!r}")
    if header is None:
        raise ImportFailed(f"{path} has no bundle header: not a TF V2 checkpoint")
    if _field(header, 2, 0, f"{path}: header") != 0:
        raise ImportFailed(f"{path}: big-endian checkpoints are not supported")
    return _field(header, 1, 1, f"{path}: header"), entries


def _dtype_and_shape(name: str, entry: dict[int, list]) -> tuple[int, str, tuple[int, ...]]:
    what = f"variable {name!r}"
    code = _field(entry, 1, 0, what)
    dtype_name = DTYPES.get(code, (f"DT_{code}", None))[0]
    shape_fields = _proto_fields(_field(entry, 2, b"", what), f"{what}: shape")
    if _field(shape_fields, 3, 0, what):
        raise ImportFailed(f"{what} has an unknown rank")
    dims = []
    for dim in shape_fields.get(2, []):
        if not isinstance(dim, bytes):
            raise ImportFailed(f"{what}: corrupt shape")
        dims.append(_field(_proto_fields(dim, f"{what}: shape"), 1, 0, what))
    if len(dims) > MAX_RANK or any(d >= 1 << 40 for d in dims):  # a negative int64 reads as >= 2**63
        raise ImportFailed(f"variable {name!r} has an impossible shape {dims}")
    return code, dtype_name, tuple(dims)


def list_variables(prefix: str | os.PathLike) -> dict[str, tuple[str, tuple[int, ...]]]:
    """{name: (dtype name, shape)} of every variable, without reading the data files."""
    _, entries = _entries(resolve_prefix(prefix))
    return {name: _dtype_and_shape(name, entry)[1:] for name, entry in entries.items()}


def read_bundle(prefix: str | os.PathLike, wanted=None) -> dict[str, np.ndarray]:
    """Every numeric variable as a numpy array (floats as float32); string and other non-numeric
    tensors are skipped; a partitioned variable raises ImportFailed. `wanted(name)`, if given,
    picks the variables whose data is read (the others are still checked).

    Memory stays within the data files' size: every tensor's byte range must lie inside its shard
    and no two may overlap (a hostile index pointing many names at the same bytes is refused)."""
    prefix = resolve_prefix(prefix)
    num_shards, entries = _entries(prefix)
    if not 1 <= num_shards <= 100000:
        raise ImportFailed(f"{prefix}.index: impossible shard count {num_shards}")
    shards: dict[int, tuple[Path, int]] = {}
    layout = []  # (shard, offset, size, name, stored dtype, dtype name, shape)
    try:
        for name, entry in entries.items():
            code, dtype_name, shape = _dtype_and_shape(name, entry)
            if entry.get(7):
                raise ImportFailed(f"variable {name!r} is partitioned into slices; only whole variables are supported")
            stored = DTYPES.get(code, ("", None))[1]
            if stored is None:
                continue
            shard, offset, size = (_field(entry, k, 0, f"variable {name!r}") for k in (3, 4, 5))
            if shard >= num_shards:
                raise ImportFailed(f"variable {name!r} is in shard {shard}, but the checkpoint has {num_shards}")
            if shard not in shards:
                path = Path(f"{prefix}.data-{shard:05d}-of-{num_shards:05d}")
                if not path.is_file():
                    raise ImportFailed(f"missing data file {path} (needed for {name!r})")
                shards[shard] = (path, path.stat().st_size)
            path, file_size = shards[shard]
            itemsize = np.dtype(stored).itemsize
            if size != int(np.prod(shape, dtype=object)) * itemsize:
                raise ImportFailed(f"variable {name!r}: {size} bytes do not hold a {dtype_name} tensor of shape {list(shape)}")
            if offset + size > file_size:
                raise ImportFailed(f"variable {name!r}: bytes {offset}..{offset + size} lie past the end of {path} ({file_size} bytes; truncated?)")
            layout.append((shard, offset, size, name, stored, dtype_name, shape))
        layout.sort()
        for before, after in zip(layout, layout[1:]):
            if before[0] == after[0] and before[1] + before[2] > after[1]:
                raise ImportFailed(f"variables {before[3]!r} and {after[3]!r} claim the same bytes of shard {before[0]}: a corrupt index")
        out = {}
        for shard, offset, size, name, stored, dtype_name, shape in layout:
            if wanted is not None and not wanted(name):
                continue
            path = shards[shard][0]
            data = bytearray(size)
            with open(path, "rb") as f:
                f.seek(offset)
                if f.readinto(data) != size:
                    raise ImportFailed(f"variable {name!r}: short read from {path}")
            try:
                array = np.frombuffer(data, dtype=stored).reshape(shape)
            except ValueError as err:  # e.g. a zero-size tensor with absurd other dimensions
                raise ImportFailed(f"variable {name!r} has an impossible shape {list(shape)} ({err})") from None
            if dtype_name == "bfloat16":
                array = (array.astype(np.uint32) << 16).view(np.float32)
            elif dtype_name in ("float64", "float16"):
                array = array.astype(np.float32)
            out[name] = array
    except OSError as err:
        raise ImportFailed(f"cannot read the data of {prefix}: {err.strerror or err}") from None
    return out


def shard_files(prefix: str | os.PathLike) -> list[Path]:
    """The index and the data shards its header names (what an import reads)."""
    prefix = resolve_prefix(prefix)
    num_shards, _ = _entries(prefix)
    return [Path(f"{prefix}.index")] + [Path(f"{prefix}.data-{i:05d}-of-{num_shards:05d}") for i in range(num_shards)]
