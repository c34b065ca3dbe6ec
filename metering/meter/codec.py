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
import types
import typing
from collections import Counter
from enum import StrEnum
from functools import cache
from typing import Any, TypeVar, cast

from koto.errors import FieldError

T = TypeVar("T")


def encode(value: object) -> Any:
    """`value` as strings, integers, lists and string-keyed objects (see the module docstring)."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int | str):
        return str(value) if isinstance(value, StrEnum) else value
    if isinstance(value, float):
        return repr(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: encode(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {_key(k): encode(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [encode(v) for v in value]
    raise TypeError(f"cannot checkpoint a {type(value).__name__}: {value!r}")


def decode(cls: type[T], data: object, *, origin: str) -> T:
    """A `cls` from what `encode` made of one. `origin` names the checkpoint in errors."""
    return cast(T, _decode(cls, data, origin, ""))


def check_schema(cls: type) -> None:
    """Raise TypeError if a field of `cls` (recursively) has a type the codec does not understand."""
    _check(cls, cls.__name__)


def _key(k: object) -> str:
    if not isinstance(k, str):
        raise TypeError(f"checkpoint keys are strings, not {type(k).__name__}: {k!r}")
    return str(k)


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


def _check(tp: Any, where: str) -> None:
    inner = _optional(tp)
    if inner is not None:
        if inner is str:
            raise TypeError(f"{where}: str | None would be ambiguous in a checkpoint (None is stored as \"\")")
        _check(inner, where)
        return
    if tp in (bool, int, str, float) or (isinstance(tp, type) and issubclass(tp, StrEnum)):
        return
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        for name, field_tp in _hints(tp):
            _check(field_tp, f"{where}.{name}")
        return
    kind = typing.get_origin(tp)
    args = typing.get_args(tp)
    if kind is list and len(args) == 1:
        _check(args[0], f"{where}[]")
        return
    if kind in (dict, Counter) and args[0] is str:
        if kind is Counter:
            return
        _check(args[1], f"{where}{{}}")
        return
    raise TypeError(f"{where}: the checkpoint codec does not know {tp!r}")
