"""Binary caffemodel reading and writing, by field number, for every dialect.

Weights need only each layer's name, type and blobs, and those sit at the same field numbers in upstream
Caffe and both DeepLab forks: NetParameter.layer = 100 (LayerParameter: name 1, type 2 as a string, blobs 7)
and the legacy NetParameter.layers = 2 (V1-style: name 4, type 5 as an enum, blobs 6). BlobProto is shape 7
(BlobShape.dim 1), data 5, double_data 8, and legacy num/channels/height/width 1-4. The clashing parameter
fields (DeepLab's 143-151, v1's 42-59, hole 17-19) are skipped, never decoded.

The reader walks the wire format itself over a memory map: float data become numpy views of the mapped file,
so a 170 MB model costs about its size once, not the several copies protobuf's Python API makes, and files
over protobuf's 64 MB default limit are no problem. Hostile files cannot make it allocate more than their own
size: every length is checked against the bytes that remain, blob shapes against Caffe's limits (32 axes,
INT_MAX elements) and the data they hold, and the number of layers and blobs is bounded.
"""

from __future__ import annotations

import mmap
import os
import struct
from array import array as flat_array
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from caffe2torch import limits
from caffe2torch.errors import CaffeModelError, Location
from caffe2torch.paths import describe_content, require_file
from caffe2torch.upgrade import V1_LAYER_TYPES
from caffe2torch.util import atomic_output
from caffe2torch.wire import FIXED32, FIXED64, LENGTH_DELIMITED, VARINT
from caffe2torch.wire import key as _key
from caffe2torch.wire import len_field as _len_field
from caffe2torch.wire import string_field as _string_field
from caffe2torch.wire import varint as _varint

_WIRE_VARINT, _WIRE_64, _WIRE_LEN, _WIRE_32 = VARINT, FIXED64, LENGTH_DELIMITED, FIXED32
# V1 LayerType values: stock BVLC and DeepLab v1 share them except 39 (DECONVOLUTION vs IMAGE_SEG_DATA).
_V1_ENUM_BY_NAME = {
    "NONE": 0, "ACCURACY": 1, "BNLL": 2, "CONCAT": 3, "CONVOLUTION": 4, "DATA": 5, "DROPOUT": 6,
    "EUCLIDEAN_LOSS": 7, "FLATTEN": 8, "HDF5_DATA": 9, "HDF5_OUTPUT": 10, "IM2COL": 11, "IMAGE_DATA": 12,
    "INFOGAIN_LOSS": 13, "INNER_PRODUCT": 14, "LRN": 15, "MULTINOMIAL_LOGISTIC_LOSS": 16, "POOLING": 17,
    "RELU": 18, "SIGMOID": 19, "SOFTMAX": 20, "SOFTMAX_LOSS": 21, "SPLIT": 22, "TANH": 23, "WINDOW_DATA": 24,
    "ELTWISE": 25, "POWER": 26, "SIGMOID_CROSS_ENTROPY_LOSS": 27, "HINGE_LOSS": 28, "MEMORY_DATA": 29,
    "ARGMAX": 30, "THRESHOLD": 31, "DUMMY_DATA": 32, "SLICE": 33, "MVN": 34, "ABSVAL": 35, "SILENCE": 36,
    "CONTRASTIVE_LOSS": 37, "EXP": 38, "IMAGE_SEG_DATA": 39, "SEG_ACCURACY": 40, "INTERP": 41, "PADDING": 42,
    "MAT_WRITE": 43, "MAT_READ": 44, "DENSE_CRF": 45, "DOMINANT_CHANNEL": 46, "BIAS_CHANNEL": 47,
    "UNIQUE_LABEL": 48, "CENSOR_LABEL": 49, "ADAPTIVE_BIAS_CHANNEL": 50, "CHANNEL_AGGREGATOR": 51,
    "IGNORE_OVERLAY": 52, "HISTOGRAM": 53, "RELATIVE_ERROR": 54, "GAIN_CHANNEL": 55, "ONEHOT": 56,
}
_V1_NAME_BY_ENUM = {v: k for k, v in _V1_ENUM_BY_NAME.items()}
_V1_ENUM_BY_TYPE = {V1_LAYER_TYPES[name]: value for name, value in _V1_ENUM_BY_NAME.items() if name != "NONE"}
# No Caffe net comes near these (ResNet-101 MSC: 1,359 layers, ~1,000 blobs); they bound the objects a file
# of empty entries could make us create.
MAX_LAYERS = 100_000
MAX_BLOBS = 200_000


def _signed64(value: int) -> int:
    """A varint read as unsigned → the int64/int32 it encodes (negative values take ten bytes)."""
    return value - (1 << 64) if value >= 1 << 63 else value


@dataclass
class CaffeModelLayer:
    name: str
    type: str
    blobs: list[np.ndarray] = field(default_factory=list)
    # True where a blob gave its shape as legacy num/channels/height/width (always 4-D, padded with 1s).
    legacy_shape: list[bool] = field(default_factory=list)


@dataclass
class CaffeModel:
    name: str
    layers: list[CaffeModelLayer]
    source: str | None = None
    dialect_hint: str = "layer"  # "layer" (field 100) or "layers" (legacy field 2)
    mapping: mmap.mmap | None = field(default=None, repr=False, compare=False)

    def release(self, arrays: list[np.ndarray]) -> None:
        """Tell the kernel that the mapped pages under these blobs are no longer needed (after they were
        copied into a net), so a large model never sits in memory twice. The mapping is read-only and
        file-backed: a later read of the same blobs simply reads the file again."""
        if self.mapping is None or not hasattr(self.mapping, "madvise") or not hasattr(mmap, "MADV_DONTNEED"):
            return
        base = np.frombuffer(self.mapping, dtype=np.uint8).ctypes.data
        page = mmap.PAGESIZE
        for array in arrays:
            start = array.ctypes.data - base
            if not 0 <= start < len(self.mapping) or array.nbytes == 0:
                continue  # not a view of the mapping (a converted copy)
            first = -(-start // page) * page  # only pages wholly inside the blob
            last = (start + array.nbytes) // page * page
            if last > first:
                self.mapping.madvise(mmap.MADV_DONTNEED, first, last - first)

    def by_name(self) -> dict[str, CaffeModelLayer]:
        return {layer.name: layer for layer in self.layers}

    def with_blobs(self) -> list[CaffeModelLayer]:
        return [layer for layer in self.layers if layer.blobs]


class _Reader:
    """Protobuf wire-format walker over a buffer, with bounds checks that name what was being read."""

    def __init__(self, buf: memoryview, source: str | None):
        self.buf = buf
        self.source = source

    def fail(self, what: str, offset: int) -> CaffeModelError:
        return CaffeModelError(
            f"truncated or corrupt caffemodel: {what} at byte {offset} of {len(self.buf)}",
            Location(self.source),
        )

    def varint(self, pos: int, end: int, what: str) -> tuple[int, int]:
        result, shift, buf = 0, 0, self.buf
        while True:
            if pos >= end or shift > 63:
                raise self.fail(f"bad varint in {what}", pos)
            byte = buf[pos]
            pos += 1
            result |= (byte & 0x7F) << shift
            if byte < 0x80:
                return result, pos
            shift += 7

    def fields(self, start: int, end: int, what: str) -> Iterator[tuple[int, int, int, int]]:
        """Yield (field number, wire type, value or payload start, payload end) for a message's fields."""
        pos = start
        while pos < end:
            key, pos = self.varint(pos, end, what)
            number, wire = key >> 3, key & 7
            if number == 0:
                raise self.fail(f"field number 0 in {what}", pos)
            if wire == _WIRE_VARINT:
                value, pos = self.varint(pos, end, what)
                yield number, wire, value, pos
            elif wire == _WIRE_64:
                if pos + 8 > end:
                    raise self.fail(f"64-bit field {number} of {what} runs past the end", pos)
                yield number, wire, pos, pos + 8
                pos += 8
            elif wire == _WIRE_LEN:
                length, pos = self.varint(pos, end, what)
                if pos + length > end:
                    raise self.fail(f"field {number} of {what} ({length} bytes) runs past the end", pos)
                yield number, wire, pos, pos + length
                pos += length
            elif wire == _WIRE_32:
                if pos + 4 > end:
                    raise self.fail(f"32-bit field {number} of {what} runs past the end", pos)
                yield number, wire, pos, pos + 4
                pos += 4
            else:
                raise self.fail(f"unknown wire type {wire} (field {number}) in {what}", pos)

    def text(self, start: int, end: int) -> str:
        return bytes(self.buf[start:end]).decode("utf-8", errors="replace")

    def blob(self, start: int, end: int, what: str) -> tuple[np.ndarray, bool]:
        shape: list[int] | None = None
        legacy = [0, 0, 0, 0]
        legacy_set = False
        # Byte ranges of packed float and double data, and unpacked floats: flat arrays, so that a file of many
        # tiny entries cannot make many Python objects.
        float_ranges, double_ranges = flat_array("q"), flat_array("q")
        singles = flat_array("f")
        for number, wire, a, b in self.fields(start, end, what):
            if number == 7 and wire == _WIRE_LEN:  # shape: BlobShape
                shape = []
                for n2, w2, a2, b2 in self.fields(a, b, what + " shape"):
                    if n2 == 1 and w2 == _WIRE_LEN:  # packed int64 dims
                        pos = a2
                        while pos < b2:
                            dim, pos = self.varint(pos, b2, what + " shape")
                            shape.append(_signed64(dim))
                            if len(shape) > limits.MAX_BLOB_AXES:
                                break
                    elif n2 == 1 and w2 == _WIRE_VARINT:
                        shape.append(_signed64(a2))
                    if len(shape) > limits.MAX_BLOB_AXES:
                        raise CaffeModelError(f"{what}: a shape of more than {limits.MAX_BLOB_AXES} axes (Caffe's "
                                              "limit); the file is corrupt", Location(self.source))
            elif number in (1, 2, 3, 4) and wire == _WIRE_VARINT:
                legacy[number - 1] = _signed64(a)
                legacy_set = True
            elif number == 5 and wire == _WIRE_LEN:  # packed float data
                if (b - a) % 4:
                    raise self.fail(f"float data of {what} is not a whole number of floats", a)
                if b > a:
                    float_ranges.extend((a, b))
            elif number == 5 and wire == _WIRE_32:  # unpacked float (very old writers)
                singles.append(struct.unpack_from("<f", self.buf, a)[0])
            elif number == 8 and wire == _WIRE_LEN:  # double_data
                if (b - a) % 8:
                    raise self.fail(f"double data of {what} is not a whole number of doubles", a)
                if b > a:
                    double_ranges.extend((a, b))
        # Blob::FromProto's rules: double_data, when there is any, is the data (float data beside it is
        # ignored), and legacy num/channels/height/width, when any is set, are the shape (over `shape`).
        if double_ranges:
            float_ranges, singles = flat_array("q"), flat_array("f")
        data = self._blob_data(float_ranges, singles, double_ranges)
        is_legacy = legacy_set or shape is None
        if legacy_set:
            shape = legacy
        elif shape is None:
            shape = [data.size]
        problem = limits.blob_problem(shape)
        if problem:
            raise CaffeModelError(f"{what}: shape {tuple(shape)} would hold {problem}; the file is corrupt",
                                  Location(self.source))
        expected = limits.element_count(shape)
        if expected != data.size:
            raise CaffeModelError(
                f"{what}: shape {tuple(shape)} needs {expected} values but the blob holds {data.size}",
                Location(self.source),
            )
        return data.reshape(shape), is_legacy

    def _blob_data(self, float_ranges: flat_array, singles: flat_array, double_ranges: flat_array) -> np.ndarray:
        """The blob's values: a zero-copy view of the file when they are one packed run (every writer we know),
        else one float32 array filled from the runs in order (floats, unpacked floats, then doubles)."""
        if len(float_ranges) == 2 and not singles and not double_ranges:
            return np.frombuffer(self.buf[float_ranges[0] : float_ranges[1]], dtype="<f4")
        total = sum((b - a) // 4 for a, b in zip(float_ranges[::2], float_ranges[1::2]))
        total += sum((b - a) // 8 for a, b in zip(double_ranges[::2], double_ranges[1::2]))
        data = np.empty(total + len(singles), np.float32)
        pos = 0
        for a, b in zip(float_ranges[::2], float_ranges[1::2]):
            n = (b - a) // 4
            data[pos : pos + n] = np.frombuffer(self.buf[a:b], dtype="<f4")
            pos += n
        data[pos : pos + len(singles)] = np.frombuffer(singles, dtype=np.float32)
        pos += len(singles)
        with np.errstate(over="ignore"):  # doubles beyond float32 become inf, reported as non-finite weights
            for a, b in zip(double_ranges[::2], double_ranges[1::2]):
                n = (b - a) // 8
                data[pos : pos + n] = np.frombuffer(self.buf[a:b], dtype="<f8")
                pos += n
        return data


def read_caffemodel_bytes(buf: memoryview | bytes, source: str | None = None) -> CaffeModel:
    """Read a caffemodel from memory; CaffeModelError (naming what and where) for anything else."""
    try:
        return _read_net_parameter(_Reader(memoryview(buf), source))
    except CaffeModelError:
        kind = describe_content(bytes(memoryview(buf)[:64]))
        if kind is None:
            raise
        hint = " (the prototxt goes in the PROTOTXT argument)" if kind.startswith("a text file") else ""
        raise CaffeModelError(f"not a caffemodel: it looks like {kind}{hint}", Location(source)) from None


def _read_net_parameter(reader: _Reader) -> CaffeModel:
    source = reader.source
    name = ""
    layers: list[CaffeModelLayer] = []
    hint = "layer"
    blob_count = 0
    for number, wire, a, b in reader.fields(0, len(reader.buf), "NetParameter"):
        if number == 1 and wire == _WIRE_LEN:
            name = reader.text(a, b)
        elif number in (100, 2) and wire == _WIRE_LEN:
            v1 = number == 2
            hint = "layers" if v1 else hint
            layer = CaffeModelLayer(name="", type="")
            index = len(layers)
            blob_ranges = []
            if index >= MAX_LAYERS:
                raise CaffeModelError(f"more than {MAX_LAYERS:,} layers: not a caffemodel Caffe wrote",
                                      Location(source))
            for n2, w2, a2, b2 in reader.fields(a, b, f"layer #{index}"):
                if w2 == _WIRE_LEN and n2 == (4 if v1 else 1):
                    layer.name = reader.text(a2, b2)
                elif not v1 and n2 == 2 and w2 == _WIRE_LEN:
                    layer.type = reader.text(a2, b2)
                elif v1 and n2 == 5 and w2 == _WIRE_VARINT:
                    enum_name = _V1_NAME_BY_ENUM.get(a2, f"V1_TYPE_{a2}")
                    layer.type = V1_LAYER_TYPES.get(enum_name, enum_name)
                elif w2 == _WIRE_LEN and n2 == (6 if v1 else 7):
                    blob_ranges.append((a2, b2))
                    blob_count += 1
                    if blob_count > MAX_BLOBS:
                        raise CaffeModelError(f"more than {MAX_BLOBS:,} blobs: not a caffemodel Caffe wrote",
                                              Location(source))
            for i, (a2, b2) in enumerate(blob_ranges):
                blob, legacy = reader.blob(a2, b2, f"layer '{layer.name}' blob {i}")
                layer.blobs.append(blob)
                layer.legacy_shape.append(legacy)
            layers.append(layer)
    if not layers:
        raise CaffeModelError("not a caffemodel: it holds no layers", Location(source))
    return CaffeModel(name, layers, source, hint)


def read_caffemodel(path: str | Path) -> CaffeModel:
    """Read a binary caffemodel of any dialect. Blob arrays are read-only views of a memory map of the file."""
    path = require_file(path, "a caffemodel", CaffeModelError)
    try:
        with open(path, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            if size == 0:
                raise CaffeModelError("empty file, not a caffemodel", Location(str(path)))
            mapped = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
    except FileNotFoundError:
        raise CaffeModelError("no such file", Location(str(path))) from None
    except IsADirectoryError:
        raise CaffeModelError("is a folder, not a caffemodel", Location(str(path))) from None
    except (OSError, ValueError) as exc:
        raise CaffeModelError(f"cannot read: {getattr(exc, 'strerror', None) or exc}", Location(str(path))) from None
    model = read_caffemodel_bytes(memoryview(mapped), str(path))
    model.mapping = mapped
    return model


# ---------------------------------------------------------------------------------------------------------
# Writers
# ---------------------------------------------------------------------------------------------------------


def _blob_header(array: np.ndarray, legacy: bool) -> tuple[bytes, int]:
    """BlobProto without its data: shape (or legacy n/c/h/w), then the key and length of packed data."""
    if legacy:
        dims = list(array.shape)
        if len(dims) > 4:
            raise ValueError("legacy blobs are at most 4-D")
        dims = [1] * (4 - len(dims)) + dims
        head = b"".join(_key(i + 1, _WIRE_VARINT) + _varint(d) for i, d in enumerate(dims))
    else:
        packed = b"".join(_varint(d) for d in array.shape)
        head = _len_field(7, _len_field(1, packed))
    nbytes = array.size * 4
    head += _key(5, _WIRE_LEN) + _varint(nbytes)
    return head, nbytes


def _layer_chunks(
    name: str, kind: str, blobs: list[np.ndarray], bottoms: list[str], tops: list[str], v1: bool
) -> Iterator[bytes]:
    """Encoded chunks of one layer entry, float payloads last, without concatenating big arrays."""
    if v1:
        enum = _V1_ENUM_BY_TYPE.get(kind)
        if enum is None:
            raise ValueError(f"layer type '{kind}' has no DeepLab v1 enum value")
        head = b"".join(_string_field(2, b) for b in bottoms) + b"".join(_string_field(3, t) for t in tops)
        head += _string_field(4, name) + _key(5, _WIRE_VARINT) + _varint(enum)
        blob_field = 6
    else:
        head = _string_field(1, name) + _string_field(2, kind)
        head += b"".join(_string_field(3, b) for b in bottoms) + b"".join(_string_field(4, t) for t in tops)
        blob_field = 7
    arrays = [np.ascontiguousarray(b, dtype="<f4") for b in blobs]
    encoded = []
    for array in arrays:
        blob_head, nbytes = _blob_header(array, legacy=v1)
        encoded.append((_key(blob_field, _WIRE_LEN) + _varint(len(blob_head) + nbytes) + blob_head, array))
    body_len = len(head) + sum(len(h) + a.nbytes for h, a in encoded)
    yield _key(2 if v1 else 100, _WIRE_LEN) + _varint(body_len) + head
    for blob_head, array in encoded:
        yield blob_head
        yield memoryview(array).cast("B")  # type: ignore[misc]


@dataclass
class WeightsLayer:
    """One layer to write: name, type string, blobs (numpy), and optionally its bottoms and tops."""

    name: str
    type: str
    blobs: list[np.ndarray] = field(default_factory=list)
    bottoms: list[str] = field(default_factory=list)
    tops: list[str] = field(default_factory=list)


def write_caffemodel(path: str | Path, layers: list[WeightsLayer], name: str = "", dialect: str = "v2") -> None:
    """Write a binary caffemodel atomically.

    `dialect="v2"` writes `layer` (field 100) entries with string types and `shape` blobs, as upstream Caffe and
    DeepLab v2 save them; `dialect="v1"` writes DeepLab v1 `layers` (field 2) with enum types and legacy
    num/channels/height/width blobs (4-D weights as is, vectors as 1x1x1xN).
    """
    if dialect not in ("v1", "v2"):
        raise ValueError("dialect must be 'v1' or 'v2'")
    with atomic_output(path) as handle:
        if name:
            handle.write(_string_field(1, name))
        for layer in layers:
            for chunk in _layer_chunks(layer.name, layer.type, layer.blobs, layer.bottoms, layer.tops,
                                       dialect == "v1"):
                handle.write(chunk)
