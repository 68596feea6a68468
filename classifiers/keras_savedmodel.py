"""Read a Keras/TensorFlow SavedModel's variables without TensorFlow, and convert LAION's
CLIP NSFW detector (``clip_autokeras_binary_nsfw.zip``) into UnsafeBench's PyTorch-port layout.

Why by hand: TensorFlow is a multi-GB dependency this package does not take, and the only thing
the detector needs from the SavedModel is a handful of float tensors. Those live in a
TensorFlow "tensor bundle" checkpoint:

* ``variables/variables.index``: a LevelDB-format SSTable (footer -> index block -> data blocks,
  prefix-compressed keys, varints) mapping each variable name to a ``BundleEntryProto``
  (dtype, shape, shard, offset, size, crc32c); the empty key holds a ``BundleHeaderProto``.
* ``variables/variables.data-NNNNN-of-MMMMM``: the raw tensor bytes, little-endian.

Nothing from the file is executed: the graph (``saved_model.pb``) is never read, there is no
pickle and no TensorFlow; only bytes are parsed, with bounds checks, into numpy arrays. Every
malformation is a :class:`SavedModelFormatError` naming what was wrong.

In LAION's zip the variables are (``/.ATTRIBUTES/VARIABLE_VALUE`` suffix omitted)
``layer_with_weights-1/{mean,variance,count}`` (the Normalization layer) and
``layer_with_weights-{2..5}/{kernel,bias}`` (the Dense layers 768->64->512->256->1), beside
autokeras' categorical-encoding lookup tables in ``layer_with_weights-0`` (unused here).
"""

from __future__ import annotations

import re
import struct
import zipfile
from pathlib import Path, PurePosixPath

import numpy as np

from ..errors import ClassifierLoadError

# Bump when the conversion's output could change (it is part of no fingerprint, but documents
# which converter wrote a cached .pth).
CONVERTER_VERSION = "keras-savedmodel-v1"

_TABLE_MAGIC = 0xDB4775248B80FB57      # LevelDB table magic, last 8 bytes of the file
_FOOTER_LEN = 48                       # two padded BlockHandles (40 bytes) + magic
_BLOCK_TRAILER = 5                     # compression type byte + masked crc32c
# TensorFlow DataType enum -> numpy little-endian dtype; other types (strings, resources) are
# skipped, they are never model weights here.
_DTYPES: dict[int, np.dtype] = {1: np.dtype("<f4"), 2: np.dtype("<f8"), 9: np.dtype("<i8")}
# Sanity caps so a hostile zip cannot make us allocate without bound (the genuine model is ~1 MB).
_MAX_INDEX_BYTES = 64 << 20
_MAX_SHARD_BYTES = 2 << 30
_VALUE_SUFFIX = "/.ATTRIBUTES/VARIABLE_VALUE"


class SavedModelFormatError(ClassifierLoadError):
    """A SavedModel zip or tensor-bundle checkpoint that cannot be read."""


# --------------------------------------------------------------------------- low-level bytes
def _varint(buf: bytes, pos: int, end: int, what: str) -> tuple[int, int]:
    """Protobuf/LevelDB base-128 varint at ``buf[pos:end]`` -> (value, next position)."""
    result = shift = 0
    while True:
        if pos >= end or shift > 63:
            raise SavedModelFormatError(f"truncated or malformed varint in {what}")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def _proto_fields(buf: bytes, what: str) -> list[tuple[int, int | bytes]]:
    """Flat protobuf decode: (field number, value) with varints/fixed as int and
    length-delimited as bytes. Enough for the three small messages we need."""
    fields: list[tuple[int, int | bytes]] = []
    pos, end = 0, len(buf)
    while pos < end:
        key, pos = _varint(buf, pos, end, what)
        field, wire = key >> 3, key & 7
        value: int | bytes
        if wire == 0:
            value, pos = _varint(buf, pos, end, what)
        elif wire in (1, 5):
            width = 8 if wire == 1 else 4
            if pos + width > end:
                raise SavedModelFormatError(f"truncated fixed field in {what}")
            value = int.from_bytes(buf[pos:pos + width], "little")
            pos += width
        elif wire == 2:
            length, pos = _varint(buf, pos, end, what)
            if pos + length > end:
                raise SavedModelFormatError(f"truncated length-delimited field in {what}")
            value = bytes(buf[pos:pos + length])
            pos += length
        else:
            raise SavedModelFormatError(f"unsupported protobuf wire type {wire} in {what}")
        fields.append((field, value))
    return fields


def _crc32c_table() -> list[int]:
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_CRC_TABLE = _crc32c_table()


def _masked_crc32c(data: bytes) -> int:
    """TensorFlow/LevelDB store crc32c "masked" (rotated + constant) so that a CRC of data
    containing CRCs stays well distributed; pure Python, run once per conversion."""
    crc, table = 0xFFFFFFFF, _CRC_TABLE
    for b in data:
        crc = table[(crc ^ b) & 0xFF] ^ (crc >> 8)
    crc ^= 0xFFFFFFFF
    return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + 0xA282EAD8) & 0xFFFFFFFF


# --------------------------------------------------------------------------- SSTable
def _block(table: bytes, handle: bytes, what: str) -> bytes:
    """Contents of the block a BlockHandle (varint offset, varint size) points at; only
    uncompressed blocks are supported (TensorFlow writes bundles without compression)."""
    offset, pos = _varint(handle, 0, len(handle), what)
    size, _ = _varint(handle, pos, len(handle), what)
    if offset + size + _BLOCK_TRAILER > len(table):
        raise SavedModelFormatError(f"{what} points past the end of variables.index (truncated?)")
    kind = table[offset + size]
    if kind != 0:
        raise SavedModelFormatError(
            f"{what} uses compression type {kind}; only uncompressed (0) blocks are supported")
    return table[offset:offset + size]


def _block_entries(block: bytes, what: str) -> list[tuple[bytes, bytes]]:
    """(key, value) pairs of one block, undoing LevelDB's key prefix compression; the restart
    array only speeds up seeks, so a sequential read just skips it."""
    if len(block) < 4:
        raise SavedModelFormatError(f"{what} is too short to hold its restart count")
    restarts = struct.unpack_from("<I", block, len(block) - 4)[0]
    end = len(block) - 4 - 4 * restarts
    if end < 0:
        raise SavedModelFormatError(f"{what} has a restart array larger than the block")
    entries: list[tuple[bytes, bytes]] = []
    pos, key = 0, b""
    while pos < end:
        shared, pos = _varint(block, pos, end, what)
        unshared, pos = _varint(block, pos, end, what)
        vlen, pos = _varint(block, pos, end, what)
        if shared > len(key) or pos + unshared + vlen > end:
            raise SavedModelFormatError(f"malformed entry in {what}")
        key = key[:shared] + block[pos:pos + unshared]
        pos += unshared
        entries.append((key, block[pos:pos + vlen]))
        pos += vlen
    return entries


def read_sstable(table: bytes) -> list[tuple[bytes, bytes]]:
    """All (key, value) pairs of a LevelDB-format table, in key order."""
    if len(table) < _FOOTER_LEN or \
            struct.unpack_from("<Q", table, len(table) - 8)[0] != _TABLE_MAGIC:
        raise SavedModelFormatError(
            "variables.index is truncated or not a TensorFlow checkpoint index "
            f"(no table footer magic in its last 8 bytes; {len(table)} bytes)")
    footer = table[-_FOOTER_LEN:]
    # Footer: metaindex handle then index handle, varint-encoded; the metaindex (filters) is
    # irrelevant to a full scan, so skip its two varints.
    _, pos = _varint(footer, 0, 40, "table footer")
    _, pos = _varint(footer, pos, 40, "table footer")
    index = _block(table, footer[pos:40], "index block handle")
    out: list[tuple[bytes, bytes]] = []
    for i, (_, handle) in enumerate(_block_entries(index, "index block")):
        out.extend(_block_entries(_block(table, handle, f"data block {i}"), f"data block {i}"))
    return out


# --------------------------------------------------------------------------- tensor bundle
def _shape(raw: bytes) -> tuple[int, ...]:
    dims = []
    for field, dim in _proto_fields(raw, "TensorShapeProto"):
        if field == 3 and dim:
            raise SavedModelFormatError("a tensor has unknown rank")
        if field == 2 and isinstance(dim, bytes):
            size = next((v for f, v in _proto_fields(dim, "TensorShapeProto.Dim")
                         if f == 1 and isinstance(v, int)), 0)
            if size >= 1 << 63:  # int64 -1 (unknown) encodes as a huge varint
                raise SavedModelFormatError("a tensor has an unknown dimension")
            dims.append(size)
    return tuple(dims)


def read_bundle(index: bytes, shards: list[bytes]) -> dict[str, np.ndarray]:
    """Tensor-bundle checkpoint -> {variable name: array} for float32/float64/int64 entries.

    ``index`` is ``variables.index``; ``shards[i]`` is ``variables.data-<i>-of-<n>``. Entries of
    other types (the ``_CHECKPOINTABLE_OBJECT_GRAPH`` string, lookup-table strings) and sliced
    (partitioned) variables are skipped. Each tensor's crc32c is checked.
    """
    tensors: dict[str, np.ndarray] = {}
    for raw_key, value in read_sstable(index):
        if raw_key == b"":  # BundleHeaderProto: num_shards=1, endianness=2 (0 = little)
            header = dict(_proto_fields(value, "BundleHeaderProto"))
            if header.get(2, 0) != 0:
                raise SavedModelFormatError("big-endian checkpoints are not supported")
            if header.get(1, 1) != len(shards):
                raise SavedModelFormatError(
                    f"the index names {header.get(1)!r} data shard(s) but {len(shards)} were given")
            continue
        name = raw_key.decode("utf-8", "replace")
        entry: dict[int, int | bytes] = {}
        for field, v in _proto_fields(value, f"BundleEntryProto {name!r}"):
            entry.setdefault(field, v)  # slices (7) may repeat; we skip those entries anyway
        dtype = _DTYPES.get(int(entry.get(1, 0)))
        if dtype is None or 7 in entry:
            continue
        shape = _shape(entry.get(2, b""))  # type: ignore[arg-type]
        shard, offset, size = (int(entry.get(k, 0)) for k in (3, 4, 5))
        count = int(np.prod(shape, dtype=np.int64)) if shape else 1
        if shard >= len(shards) or size != count * dtype.itemsize \
                or offset + size > len(shards[shard]):
            raise SavedModelFormatError(
                f"variable {name!r}: shape {shape} x {dtype} does not fit its recorded "
                f"location (shard {shard}, offset {offset}, size {size}); data file truncated?")
        data = shards[shard][offset:offset + size]
        if 6 in entry and _masked_crc32c(data) != entry[6]:
            raise SavedModelFormatError(f"variable {name!r}: crc32c mismatch (corrupt data file)")
        tensors[name] = np.frombuffer(data, dtype=dtype).reshape(shape).astype(
            dtype.newbyteorder("="))
    return tensors


def _safe_member(name: str) -> bool:
    parts = name.replace("\\", "/").split("/")
    return not (name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name) or ".." in parts)


def read_savedmodel_zip(path: str | Path) -> dict[str, np.ndarray]:
    """Variables of the one SavedModel inside a zip, read in memory (nothing is extracted).
    Zips with absolute or ``..`` member names are refused outright, as hostile."""
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
            bad = [i.filename for i in infos if not _safe_member(i.filename)]
            if bad:
                raise SavedModelFormatError(
                    f"{path}: refusing a zip with absolute or '..' member paths: {bad[:3]}")
            by_name = {i.filename: i for i in infos}
            indexes = [n for n in by_name if PurePosixPath(n).as_posix().endswith(
                "variables/variables.index") and PurePosixPath(n).name == "variables.index"]
            if len(indexes) != 1:
                raise SavedModelFormatError(
                    f"{path}: expected one variables/variables.index in the zip, found "
                    f"{len(indexes)} (is this a TensorFlow SavedModel?)")
            prefix = indexes[0][: -len("variables.index")]

            def member(name: str, cap: int) -> bytes:
                info = by_name.get(name)
                if info is None:
                    raise SavedModelFormatError(f"{path}: {name} is missing from the zip")
                if info.file_size > cap:
                    raise SavedModelFormatError(f"{path}: {name} is implausibly large")
                return zf.read(info)

            index = member(indexes[0], _MAX_INDEX_BYTES)
            header = dict(_proto_fields(dict(read_sstable(index)).get(b"", b""),
                                        "BundleHeaderProto"))
            n = int(header.get(1, 1))
            if not 1 <= n <= 1024:
                raise SavedModelFormatError(f"{path}: implausible shard count {n}")
            shards = [member(f"{prefix}variables.data-{i:05d}-of-{n:05d}", _MAX_SHARD_BYTES)
                      for i in range(n)]
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError) as exc:
        raise SavedModelFormatError(f"{path}: not a readable zip: {exc}") from exc
    return read_bundle(index, shards)


# --------------------------------------------------------------------------- NSFW mapping
def _layer_index(name: str) -> int:
    m = re.search(r"layer_with_weights-(\d+)/", name)
    return int(m.group(1)) if m else -1


def nsfw_port_state(variables: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Map the Keras variables to UnsafeBench's port keys (float32 arrays):
    ``norm.mean``/``norm.variance`` and ``linear_1..4.{weight,bias}`` (kernel transposed to
    torch's [out, in]). Layers are found by name (``.../mean``, ``.../kernel``), ordered by
    their ``layer_with_weights-N`` index, and the widths must chain from the norm size to 1."""
    vals = {k[: -len(_VALUE_SUFFIX)] if k.endswith(_VALUE_SUFFIX) else k: v
            for k, v in variables.items() if v.dtype.kind == "f"}
    norms = [k[: -len("/mean")] for k, v in vals.items()
             if k.endswith("/mean") and v.ndim == 1 and f"{k[:-5]}/variance" in vals]
    if len(norms) != 1:
        raise SavedModelFormatError(
            f"expected one Normalization layer (mean + variance), found {norms or 'none'}; "
            f"variables: {sorted(vals)}")
    mean = vals[f"{norms[0]}/mean"].reshape(-1)
    variance = vals[f"{norms[0]}/variance"].reshape(-1)
    kernels = sorted((k[: -len("/kernel")] for k, v in vals.items()
                      if k.endswith("/kernel") and v.ndim == 2), key=_layer_index)
    if len(kernels) != 4:
        raise SavedModelFormatError(f"expected 4 Dense layers, found {len(kernels)}: {kernels}")
    state = {"norm.mean": mean, "norm.variance": variance}
    width = mean.shape[0]
    for k, layer in enumerate(kernels, 1):
        kernel, bias = vals[f"{layer}/kernel"], vals.get(f"{layer}/bias")
        if kernel.shape[0] != width or bias is None or bias.shape != (kernel.shape[1],):
            raise SavedModelFormatError(
                f"Dense layer {layer!r}: kernel {kernel.shape} / bias "
                f"{None if bias is None else bias.shape} do not follow width {width}")
        state[f"linear_{k}.weight"] = np.ascontiguousarray(kernel.T)
        state[f"linear_{k}.bias"] = bias
        width = kernel.shape[1]
    if width != 1 or variance.shape != mean.shape:
        raise SavedModelFormatError(f"the detector must end in one output, not {width}")
    return {k: v.astype(np.float32) for k, v in state.items()}


def convert_nsfw_zip(path: str | Path) -> dict[str, np.ndarray]:
    """LAION's ``clip_autokeras_binary_nsfw.zip`` -> the port's state dict as numpy arrays."""
    return nsfw_port_state(read_savedmodel_zip(path))
