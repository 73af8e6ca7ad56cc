"""Walking the stand-in tree `ctmtool.importers.safe_pickle` builds: a pickled torch module's parameters and
buffers named as `state_dict()` names them, and its recorded constructor arguments as plain values.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ctmtool.errors import UserError
from ctmtool.importers.safe_pickle import PersistentObj, Stub

# objects visited when the unpickled tree is walked (shared references count each time)
MAX_NODES = 1_000_000



def _state_of(node: Any) -> dict:
    """The `__dict__` a module was pickled with (persistent objects and plain torch modules alike)."""
    if isinstance(node, PersistentObj):
        return node.state
    if isinstance(node, Stub):
        st = node._stub_state
        if isinstance(st, tuple) and st and isinstance(st[0], dict):
            st = st[0]
        if isinstance(st, dict):
            return st
    raise UserError(f"damaged EDM pickle: expected a network module, found {_kind(node)}")


def _kind(v: Any) -> str:
    """What an untrusted object is, for a message: its type and size, never its repr (which may be huge)."""
    if isinstance(v, Stub | PersistentObj):
        return repr(v)
    n = len(v) if isinstance(v, list | tuple | dict | set | frozenset | str | bytes) else None
    size = "" if n is None else f" of {n} item{'' if n == 1 else 's'}"
    return f"a {type(v).__name__}{size}"


def _visit(budget: list[int]) -> None:
    budget[0] += 1
    if budget[0] > MAX_NODES:
        raise UserError(f"refusing this pickle: its object tree has more than {MAX_NODES} nodes (shared "
                        "references repeated many times); the file may be malicious")


def collect_state(node: Any, prefix: str = "", out: dict | None = None, _parents: tuple = (),
                  _budget: list[int] | None = None) -> dict[str, torch.Tensor]:
    """Parameters and persistent buffers of a pickled module tree, named as `state_dict()` would name them."""
    out = {} if out is None else out
    _budget = [0] if _budget is None else _budget
    _visit(_budget)
    if id(node) in _parents or len(_parents) > 64:
        raise UserError("damaged or hostile pickle: the module tree loops back on itself at "
                        f"{prefix or 'the top'}")
    st = _state_of(node)
    skip = st.get("_non_persistent_buffers_set") or set()
    for group in ("_parameters", "_buffers"):
        items = st.get(group) or {}
        if not isinstance(items, dict):
            raise UserError(f"damaged EDM pickle: {prefix or 'the network'} has no {group} table")
        for name, t in items.items():
            if t is None or (group == "_buffers" and name in skip):
                continue
            if not isinstance(t, torch.Tensor):
                raise UserError(f"damaged EDM pickle: {prefix}{name} is not a tensor")
            out[f"{prefix}{name}"] = t.detach()
    children = st.get("_modules") or {}
    if not isinstance(children, dict):
        raise UserError(f"damaged EDM pickle: {prefix or 'the network'} has no _modules table")
    for name, child in children.items():
        if child is not None:
            collect_state(child, f"{prefix}{name}.", out, (*_parents, id(node)), _budget)
    return out


def _plain(v: Any, depth: int = 0, budget: list[int] | None = None) -> Any:
    """Constructor arguments as plain JSON-able Python values (at most `MAX_NODES` visited, shared ones
    included)."""
    budget = [0] if budget is None else budget
    _visit(budget)
    if depth > 16:
        raise UserError("damaged or hostile pickle: constructor arguments nest too deeply")
    if isinstance(v, dict):
        return {_short(k): _plain(x, depth + 1, budget) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_plain(x, depth + 1, budget) for x in v]
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, bool | float | str) or v is None:
        return v
    if isinstance(v, int):
        return v if v.bit_length() <= 64 else _kind(v)
    return _kind(v)


def _short(k: Any) -> str:
    return k[:200] if isinstance(k, str) else _kind(k)


def _init_kwargs(obj: PersistentObj) -> dict:
    kw = obj.state.get("_init_kwargs")
    return _plain(kw) if isinstance(kw, dict) else {}


def _attr(obj: PersistentObj, kwargs: dict, name: str, default: Any) -> Any:
    v = obj.state.get(name, kwargs.get(name, default))
    return _plain(v)


__all__ = ["collect_state"]
