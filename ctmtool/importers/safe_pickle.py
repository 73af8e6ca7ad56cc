"""A pickle reader that runs no code from the file: every global becomes an inert stand-in.

Used by every importer that reads a pickle (NVIDIA's EDM network pickles; `load_foreign` in this package for
any `.pkl`). A plain `pickle.load` would call whatever globals the file names; `SafeUnpickler` resolves only a
short allowlist of tensor-rebuilding functions, each checking its arguments (storages are read with
`torch.load(..., weights_only=True)`), maps every other global to a `Stub` that records what it is given,
and refuses globals such as `os.system` outright. EDM's "persistent" objects
(`torch_utils.persistence._reconstruct_persistent_obj(meta)`, which would `exec` the network source stored in
`meta`) become `PersistentObj` records of `class_name` and `state`. `ctmtool.importers.pickle_tree` walks the
resulting stand-in tree.
"""

from __future__ import annotations

import builtins
import collections
import io
import pickle
import warnings
from typing import Any

import numpy as np
import torch

from ctmtool.errors import UserError

# Globals whose mere mention marks a pickle as hostile: refused before anything is built.
_HOSTILE_MODULES = {
    "os", "posix", "nt", "subprocess", "sys", "shutil", "socket", "importlib", "runpy", "pty", "code",
    "codeop", "pickle", "_pickle", "marshal", "ctypes", "operator", "functools", "types", "webbrowser", "io",
    "_io", "platform", "signal", "multiprocessing", "threading", "_thread", "inspect", "pdb", "timeit",
    "tempfile", "pathlib", "glob", "asyncio", "urllib", "http", "ftplib", "smtplib", "requests", "posixpath",
    "ntpath", "_posixsubprocess", "gc", "weakref", "cProfile", "profile", "trace", "dill", "cloudpickle",
    "joblib",
}
_SAFE_BUILTINS = {"set", "frozenset", "list", "dict", "tuple", "int", "float", "complex", "str", "bool",
                  "object"}


# --------------------------------------------------------------------------------------------------
# Inert stand-ins


class Stub:
    """An object of a class the importer does not trust: it records its arguments and state, nothing else."""

    stub_module = "?"
    stub_name = "?"

    def __new__(cls, *args, **kwargs):
        self = object.__new__(cls)
        self.__dict__["_stub_args"] = args
        self.__dict__["_stub_kwargs"] = kwargs
        self.__dict__["_stub_state"] = None
        self.__dict__["_stub_items"] = {}
        self.__dict__["_stub_list"] = []
        return self

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        self.__dict__["_stub_state"] = state

    def __setitem__(self, key, value):
        self._stub_items[key] = value

    def append(self, value):
        self._stub_list.append(value)

    def extend(self, values):
        self._stub_list.extend(values)

    def __repr__(self) -> str:
        return f"<stand-in for {self.stub_module}.{self.stub_name}>"


class EasyDictStub(dict):
    """Stand-in for `dnnlib.util.EasyDict`: a plain dict that ignores any pickled attribute state."""

    def __setstate__(self, state):
        pass


class PersistentObj:
    """Stand-in for an EDM persistent object: `meta` with `class_name`, `module_src` (never run) and
    `state`."""

    def __init__(self, meta):
        if not isinstance(meta, dict):
            raise UserError("damaged EDM pickle: a persistent object has no metadata dict")
        self.meta = meta
        self.class_name = str(meta.get("class_name", "?"))
        state = meta.get("state")
        self.state = state if isinstance(state, dict) else {}

    def __repr__(self) -> str:
        return f"<persistent {self.class_name}>"


def _reconstruct_persistent_obj(meta):
    return PersistentObj(meta)


# --------------------------------------------------------------------------------------------------
# The few real callables a tensor pickle needs, each checking its arguments


def _ints(v, what: str) -> tuple[int, ...]:
    if not isinstance(v, tuple | list | torch.Size) or not all(isinstance(i, int) for i in v):
        raise UserError(f"damaged or hostile pickle: tensor {what} is not a tuple of integers")
    return tuple(v)


def _load_from_bytes(b):
    if not isinstance(b, bytes | bytearray):
        raise UserError("damaged or hostile pickle: a tensor storage is not stored as bytes")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return torch.load(io.BytesIO(bytes(b)), map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001 - torch raises many kinds here
            raise UserError(f"a tensor storage in the pickle could not be read safely ({err})") from None


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None,
                       metadata=None):
    if not isinstance(storage, torch.storage.TypedStorage | torch.UntypedStorage):
        raise UserError("damaged or hostile pickle: a tensor is built from something that is not a storage")
    if not isinstance(storage_offset, int):
        raise UserError("damaged or hostile pickle: tensor offset is not an integer")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return torch._utils._rebuild_tensor_v2(storage, storage_offset, _ints(size, "size"),
                                                   _ints(stride, "stride"), False, collections.OrderedDict())
        except RuntimeError as err:
            raise UserError(f"damaged pickle: a tensor does not fit its storage ({err})") from None


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, state=None):
    if not isinstance(data, torch.Tensor):
        raise UserError("damaged or hostile pickle: a parameter holds no tensor")
    return data


def _rebuild_from_type_v2(func, new_type, args, state=None):
    if func not in (_rebuild_tensor_v2, _rebuild_parameter) or not isinstance(args, tuple):
        raise UserError("damaged or hostile pickle: unexpected tensor reconstruction")
    return func(*args)


def _np_dtype(spec, align=False, copy=True):
    if not isinstance(spec, str):
        raise UserError("damaged or hostile pickle: a NumPy dtype is not given by name")
    try:
        return np.dtype(spec)
    except TypeError:
        raise UserError(f"damaged pickle: unknown NumPy dtype {spec[:40]!r}") from None


def _np_scalar(dtype, data=None):
    if isinstance(dtype, np.dtype) and dtype.kind in "biufc" and isinstance(data, bytes) \
            and len(data) == dtype.itemsize:
        return np.frombuffer(data, dtype=dtype)[0].item()
    return Stub.__new__(_stub_class("numpy", "scalar"), dtype, data)


def _torch_device(*args):
    if not all(isinstance(a, str | int) for a in args):
        raise UserError("damaged or hostile pickle: a torch.device has odd arguments")
    return torch.device(*args)


def _codecs_encode(text, encoding="latin1"):
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise UserError("damaged or hostile pickle: unexpected _codecs.encode")
    return text.encode("latin1")


def _copyreg_reconstructor(cls, base, state):
    if isinstance(cls, type) and issubclass(cls, EasyDictStub):
        return cls(state or {})
    if isinstance(cls, type) and issubclass(cls, Stub):
        obj = cls.__new__(cls)
        obj.__dict__["_stub_args"] = (state,)
        return obj
    raise UserError("damaged or hostile pickle: copyreg._reconstructor with an unexpected class")


def _copyreg_newobj(cls, *args, **kwargs):
    if isinstance(cls, type) and issubclass(cls, Stub | EasyDictStub):
        return cls.__new__(cls, *args)
    raise UserError("damaged or hostile pickle: copyreg.__newobj__ with an unexpected class")


_ALLOWED: dict[tuple[str, str], Any] = {
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): _reconstruct_persistent_obj,
    ("dnnlib.util", "EasyDict"): EasyDictStub,
    ("dnnlib", "EasyDict"): EasyDictStub,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type_v2,
    ("torch.storage", "_load_from_bytes"): _load_from_bytes,
    ("torch", "device"): _torch_device,
    ("numpy", "dtype"): _np_dtype,
    ("numpy.core.multiarray", "scalar"): _np_scalar,
    ("numpy._core.multiarray", "scalar"): _np_scalar,
    ("_codecs", "encode"): _codecs_encode,
    ("copyreg", "_reconstructor"): _copyreg_reconstructor,
    ("copyreg", "__newobj__"): _copyreg_newobj,
    ("copyreg", "__newobj_ex__"): _copyreg_newobj,
}
_STUBS: dict[tuple[str, str], type] = {}


def _stub_class(module: str, name: str) -> type:
    key = (module, name)
    if key not in _STUBS:
        _STUBS[key] = type(f"Stub_{name}", (Stub,), {"stub_module": module, "stub_name": name})
    return _STUBS[key]


MAX_OPS = 5_000_000     # pickle opcodes in one file (a published EDM pickle has about 10^5)
MAX_MEMO = 1_000_000    # memoised objects
MAX_DEPTH = 1_000       # nested MARKs (lists, tuples, dicts being built inside one another)
MAX_STACK = 1_000_000   # objects on the unpickler's stack at once


def _bounded(dispatch: dict) -> dict:
    """The pure-Python unpickler's opcode table with every opcode counted and the memo, stack and nesting
    checked: a 4 kB pickle of shared references or nested lists is refused in milliseconds instead of burning
    minutes."""
    def wrap(op):
        def counted(self):
            self._ops += 1
            if self._ops > MAX_OPS or len(self.memo) > MAX_MEMO or len(self.metastack) > MAX_DEPTH \
                    or len(self.stack) > MAX_STACK:
                raise UserError("refusing this pickle: it asks for more work than any network pickle needs "
                                f"(at most {MAX_OPS} operations, {MAX_MEMO} memo entries, nesting "
                                f"{MAX_DEPTH}); the file may be malicious; nothing was run")
            return op(self)

        return counted

    return {key: wrap(op) for key, op in dispatch.items()}


class SafeUnpickler(pickle._Unpickler):  # the pure-Python unpickler: its opcodes can be counted
    """Unpickler that resolves no global to real code except the tensor-rebuilding allowlist above, and does a
    bounded amount of work (`MAX_OPS`, `MAX_MEMO`, `MAX_DEPTH`, `MAX_STACK`)."""

    dispatch = _bounded(pickle._Unpickler.dispatch)

    def __init__(self, f, **kwargs):
        super().__init__(f, **kwargs)
        self._ops = 0

    def find_class(self, module: str, name: str):
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        if module == "builtins" and name in _SAFE_BUILTINS:
            return getattr(builtins, name)
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        if module in ("builtins", "__builtin__") or module.split(".")[0] in _HOSTILE_MODULES:
            raise UserError(f"refusing to load this pickle: it calls {module}.{name}, which an EDM network "
                            "pickle never does (the file may be malicious); nothing was run")
        return _stub_class(module, name)

    def persistent_load(self, pid):
        raise UserError("this is not an EDM pickle: it uses persistent ids (a torch.save file?); "
                        "load it with torch.load, or convert EDM .pkl files only")


def safe_load(f) -> Any:
    """Unpickle a file object with `SafeUnpickler`; errors become UserErrors."""
    try:
        return SafeUnpickler(f).load()
    except UserError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError,
            RecursionError, MemoryError, UnicodeDecodeError, OverflowError, RuntimeError) as err:
        raise UserError(f"damaged or unsupported pickle ({type(err).__name__}: {str(err)[:200]})") from None


__all__ = ["MAX_DEPTH", "MAX_MEMO", "MAX_OPS", "MAX_STACK", "EasyDictStub", "PersistentObj", "SafeUnpickler",
           "Stub", "safe_load"]
