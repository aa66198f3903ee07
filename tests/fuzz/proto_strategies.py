"""Hypothesis strategies built from protobuf descriptors: any request message of any RPC, with the
values callers get wrong (empty, huge, negative, NaN, unknown enum numbers, deep or long
repetition), and wire-level damage (invalid UTF-8 in a string field, a field of the wrong wire
type, truncation) that no message object can hold."""

from __future__ import annotations

import functools

from google.protobuf import descriptor as d
from google.protobuf import message_factory
from hypothesis import strategies as st

INT_RANGES = {
    d.FieldDescriptor.TYPE_INT32: (-(2**31), 2**31 - 1),
    d.FieldDescriptor.TYPE_SINT32: (-(2**31), 2**31 - 1),
    d.FieldDescriptor.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    d.FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1),
    d.FieldDescriptor.TYPE_FIXED32: (0, 2**32 - 1),
    d.FieldDescriptor.TYPE_INT64: (-(2**63), 2**63 - 1),
    d.FieldDescriptor.TYPE_SINT64: (-(2**63), 2**63 - 1),
    d.FieldDescriptor.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    d.FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1),
    d.FieldDescriptor.TYPE_FIXED64: (0, 2**64 - 1),
}
AWKWARD_TEXT = ["", " ", "default", "\x00", "a" * 65, "../../etc/passwd", "ünï©ødé ✓", "\u202e\u200b", "🙂" * 10]
MAX_DEPTH = 3
LIST_BYTES = 8 * 1024 * 1024
# Strategies are built once per field, message type and depth, not at every draw: hypothesis
# validates each new strategy object, which cost most of a request's generation time.
_COUNTS = st.integers(0, 3)
_REPEATS = st.one_of(st.integers(0, 4), st.sampled_from([100, 2_000]))


def _key(hints) -> tuple:
    """`hints` as a key of the strategy caches."""
    return tuple(sorted((name, tuple(values)) for name, values in hints.items())) if hints else ()


@functools.cache
def _huge_text() -> st.SearchStrategy[str]:
    return st.builds(lambda char, n: char * n, st.sampled_from(["x", "é", "🙂", " "]), st.integers(1_000, 300_000))


@functools.cache
def _text() -> st.SearchStrategy[str]:
    return st.one_of(st.sampled_from(AWKWARD_TEXT), st.text(max_size=40), _huge_text())


@functools.cache
def _int(kind: int) -> st.SearchStrategy[int]:
    low, high = INT_RANGES[kind]
    edges = sorted({low, high, 0, 1, -1 if low < 0 else 2, 4096, 4097, 2**31 - 1 if high >= 2**31 - 1 else high})
    return st.one_of(st.sampled_from([e for e in edges if low <= e <= high]), st.integers(low, high))


def _scalar(field: d.FieldDescriptor, hints=None) -> st.SearchStrategy:
    return _scalar_of(field, _key(hints))


@functools.cache
def _scalar_of(field: d.FieldDescriptor, hints: tuple) -> st.SearchStrategy:
    t = field.type
    if t == d.FieldDescriptor.TYPE_STRING:
        hinted = dict(hints).get(field.name)
        if hinted:
            # Half the time a value that passes validation, so the checks behind it are reached too.
            return st.one_of(st.sampled_from(hinted), _text())
        return _text()
    if t == d.FieldDescriptor.TYPE_BYTES:
        return st.one_of(st.binary(max_size=64), st.builds(lambda n: b"\xff" * n, st.integers(1_000, 100_000)))
    if t == d.FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if t == d.FieldDescriptor.TYPE_FLOAT:
        return st.floats(width=32)
    if t == d.FieldDescriptor.TYPE_DOUBLE:
        return st.floats()
    if t == d.FieldDescriptor.TYPE_ENUM:
        known = [v.number for v in field.enum_type.values]
        return st.one_of(st.sampled_from(known), st.integers(-3, 1_000))
    return _int(t)


def _is_map(field: d.FieldDescriptor) -> bool:
    return field.type == d.FieldDescriptor.TYPE_MESSAGE and field.message_type.GetOptions().map_entry


@st.composite
def _fill(draw, cls, depth: int, hints):
    message = cls()
    if not cls.DESCRIPTOR.fields:
        return message
    # Most fields most of the time, so valid-looking requests get past the first check too.
    chosen = draw(_field_lists(cls.DESCRIPTOR))
    for field in chosen:
        _set(draw, message, field, depth, hints)
    return message


@functools.cache
def _field_lists(descriptor: d.Descriptor) -> st.SearchStrategy:
    fields = list(descriptor.fields)
    return st.lists(st.sampled_from(fields), max_size=len(fields) + 2)


def _set(draw, message, field: d.FieldDescriptor, depth: int, hints) -> None:
    target = getattr(message, field.name)
    if _is_map(field):
        key_field, value_field = field.message_type.fields_by_name["key"], field.message_type.fields_by_name["value"]
        for _ in range(draw(_COUNTS)):
            key = draw(_scalar(key_field))
            if value_field.type == d.FieldDescriptor.TYPE_MESSAGE:
                target[key].CopyFrom(draw(_message(value_field.message_type, depth + 1, hints)))
            else:
                target[key] = draw(_scalar(value_field, hints))
        return
    repeated = field.label == d.FieldDescriptor.LABEL_REPEATED
    if field.type == d.FieldDescriptor.TYPE_MESSAGE:
        if depth >= MAX_DEPTH:
            return
        if repeated:
            count = draw(_REPEATS)
            one = draw(_message(field.message_type, depth + 1, hints))
            if count > 4:
                # Copies stop at LIST_BYTES: past the servers' 4 MiB limit a longer list tests nothing
                # more, and 2,000 copies of a list of 2,000 copies of a long text did not fit in memory.
                count = min(count, 4 + LIST_BYTES // max(1, one.ByteSize()))
            for i in range(count):
                # Long lists repeat one drawn element: generating thousands is slow and adds nothing.
                target.add().CopyFrom(one if i >= 4 else draw(_message(field.message_type, depth + 1, hints)))
        else:
            target.CopyFrom(draw(_message(field.message_type, depth + 1, hints)))
        return
    if repeated:
        target.extend(draw(st.lists(_scalar(field, hints), max_size=5)))
    else:
        setattr(message, field.name, draw(_scalar(field, hints)))


def _message(descriptor: d.Descriptor, depth: int = 0, hints=None):
    return _message_of(descriptor, depth, _key(hints))


@functools.cache
def _message_of(descriptor: d.Descriptor, depth: int, hints: tuple):
    return _fill(message_factory.GetMessageClass(descriptor), depth, dict(hints) or None)


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


@st.composite
def _damaged(draw, descriptor: d.Descriptor, payload: bytes) -> bytes:
    kind = draw(st.sampled_from(["invalid_utf8", "wrong_wire_type", "truncated", "garbage"]))
    strings = [f for f in list(descriptor.fields) if f.type == d.FieldDescriptor.TYPE_STRING]
    if kind == "invalid_utf8" and strings:
        field = draw(st.sampled_from(strings))
        bad = draw(st.sampled_from([b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"ok\x80"]))
        return payload + _varint(field.number << 3 | 2) + _varint(len(bad)) + bad
    if kind == "wrong_wire_type" and len(descriptor.fields):
        field = draw(st.sampled_from(list(descriptor.fields)))
        wire = 0 if field.type in (d.FieldDescriptor.TYPE_STRING, d.FieldDescriptor.TYPE_MESSAGE) else 2
        return payload + _varint(field.number << 3 | wire) + (_varint(3) + b"abc" if wire == 2 else _varint(7))
    if kind == "truncated" and payload:
        return payload[: draw(st.integers(0, len(payload) - 1))] + b"\x0a\x10"
    return draw(st.binary(min_size=1, max_size=64))


@st.composite
def request_bytes(draw, descriptor: d.Descriptor, hints: dict[str, list[str]] | None = None) -> tuple[str, bytes]:
    """(kind, serialized request): 'message' for a well-formed message, else the damage done.
    `hints` maps string field names to values that pass validation (a real tenant id, ...)."""
    message = draw(_message(descriptor, 0, hints))
    payload = message.SerializeToString()
    if draw(st.integers(0, 9)) < 2:
        return "damaged", draw(_damaged(descriptor, payload))
    return "message", payload
