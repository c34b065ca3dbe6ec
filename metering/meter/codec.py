"""Dataclass values to checkpoint data and back, from the fields' declared types alone.

Checkpoints are canonical JSON: strings and integers only. So a float is stored as its `repr` (which reads back to
the same float), a bool as 0/1, `None` as "" (an optional value is never a string, so "" cannot be ambiguous), an
enum as its value, a dataclass as an object of all its fields, recursively. Because both directions walk the same
field declarations, a new field is one edit: it cannot be forgotten by the snapshot or by the restore. Decoding is
strict — every field present, nothing unknown, each value of its declared type — and a problem is a `FieldError`
naming the checkpoint and the dotted key, never a half-restored value.

Types understood: int, bool, float, str, StrEnum subclasses, dataclasses, `X | None` (X not str), `list[X]`,
`dict[str, X]` and `Counter[str]`. `check_schema` refuses anything else up front, so an unsupported field fails
the first test that builds the schema, not a restore in the field.
"""

from __future__ import annotations

import dataclasses
import operator
import types
import typing
from collections import Counter
from collections.abc import Callable
from enum import StrEnum
from functools import cache
from typing import Any, TypeVar, cast

from koto.errors import FieldError

T = TypeVar("T")


def encode(value: object) -> Any:
    """A dataclass value as strings, integers, lists and string-keyed objects (see the module docstring), encoded
    by the declared types of its fields, as `decode` reads it back."""
    tp: Any = type(value)
    return _encoder(tp)(value)


def decode(cls: type[T], data: object, *, origin: str) -> T:
    """A `cls` from what `encode` made of one. `origin` names the checkpoint in errors."""
    return cast(T, _decode(cls, data, origin, ""))


def check_schema(cls: type) -> None:
    """Raise TypeError if a field of `cls` (recursively) has a type the codec does not understand."""
    _encoder(cls)


@cache
def _hints(cls: type) -> tuple[tuple[str, Any], ...]:
    hints = typing.get_type_hints(cls)
    return tuple((f.name, hints[f.name]) for f in dataclasses.fields(cls))


def _optional(tp: Any) -> Any:
    """X for `X | None`, else None."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(tp)) == 2:
            return args[0]
    return None


def _fail(origin: str, key: str, problem: str) -> FieldError:
    return FieldError(origin, key or "(top)", problem)


def _decode(tp: Any, data: object, origin: str, key: str) -> object:
    inner = _optional(tp)
    if inner is not None:
        return None if data == "" else _decode(inner, data, origin, key)
    if tp is bool:
        if data not in (0, 1) or type(data) is not int:
            raise _fail(origin, key, f"expected 0 or 1, got {data!r}")
        return bool(data)
    if tp is int:
        if type(data) is not int:
            raise _fail(origin, key, f"expected an integer, got {data!r}")
        return data
    if tp is str:
        if type(data) is not str:
            raise _fail(origin, key, f"expected a string, got {data!r}")
        return data
    if tp is float:
        if type(data) is str:
            try:
                return float(data)
            except ValueError:
                pass
        raise _fail(origin, key, f"expected a number as a string, got {data!r}")
    if isinstance(tp, type) and issubclass(tp, StrEnum):
        if type(data) is str:
            try:
                return tp(data)
            except ValueError:
                pass
        raise _fail(origin, key, f"expected one of {', '.join(m.value for m in tp)}, got {data!r}")
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return _decode_dataclass(tp, data, origin, key)
    kind = typing.get_origin(tp)
    if kind is list:
        if type(data) is not list:
            raise _fail(origin, key, f"expected a list, got {data!r}")
        (item,) = typing.get_args(tp)
        return [_decode(item, v, origin, f"{key}[{i}]") for i, v in enumerate(data)]
    if kind in (dict, Counter):
        if type(data) is not dict:
            raise _fail(origin, key, f"expected an object, got {data!r}")
        value_tp = int if kind is Counter else typing.get_args(tp)[1]
        items = {k: _decode(value_tp, v, origin, f"{key}.{k}" if key else k) for k, v in data.items()}
        return Counter(items) if kind is Counter else items
    raise TypeError(f"{origin}: {key}: the checkpoint codec does not know {tp!r}")


def _decode_dataclass(cls: type, data: object, origin: str, key: str) -> object:
    if type(data) is not dict:
        raise _fail(origin, key, f"expected an object, got {data!r}")
    hints = _hints(cls)
    names = {name for name, _ in hints}
    unknown = sorted(set(data) - names)
    if unknown:
        raise _fail(origin, f"{key}.{unknown[0]}" if key else unknown[0], "unknown key")
    kw: dict[str, object] = {}
    for name, tp in hints:
        sub = f"{key}.{name}" if key else name
        if name not in data:
            raise _fail(origin, sub, "missing")
        kw[name] = _decode(tp, data[name], origin, sub)
    return cls(**kw)


def _same(v: Any) -> Any:
    return v


@cache
def _encoder(tp: Any) -> Callable[[Any], Any]:
    """The encoding function for values of the declared type `tp`, built once per type (walking the declarations
    for every value made a snapshot ten times as slow as the hand-written one; built once, it is about three)."""
    inner = _optional(tp)
    if inner is not None:
        if inner is str:
            raise TypeError(f"{tp}: str | None would be ambiguous in a checkpoint (None is stored as \"\")")
        enc = _encoder(inner)
        return lambda v: "" if v is None else enc(v)
    if tp is bool:
        return int
    if tp is int:
        return _same
    if tp is float:
        return repr
    if isinstance(tp, type) and issubclass(tp, str):  # str, StrEnum: the plain value
        return str
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return _dataclass_encoder(tp)
    kind = typing.get_origin(tp)
    args = typing.get_args(tp)
    if kind is list and len(args) == 1:
        enc = _encoder(args[0])
        return lambda v: [enc(x) for x in v]
    if kind is Counter and args == (str,):
        return dict
    if kind is dict and len(args) == 2 and args[0] is str:
        enc = _encoder(args[1])
        return lambda v: {k: enc(x) for k, x in v.items()}
    raise TypeError(f"the checkpoint codec does not know {tp!r}")


def _dataclass_encoder(cls: type) -> Callable[[Any], dict[str, Any]]:
    # Integers and plain strings are stored as they are: read together, they cost one call for all of them.
    hints = _hints(cls)
    direct = tuple(name for name, tp in hints if tp is int or tp is str)
    read = operator.attrgetter(*direct) if len(direct) > 1 else None
    converted = tuple((name, _encoder(tp)) for name, tp in hints if not (tp is int or tp is str))

    def enc(v: Any) -> dict[str, Any]:
        d: dict[str, Any] = dict(zip(direct, read(v), strict=True)) if read is not None else {
            name: getattr(v, name) for name in direct}
        for name, e in converted:
            d[name] = e(getattr(v, name))
        return d

    return enc
