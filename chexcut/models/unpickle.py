"""Tensors out of a whole pickled PyTorch model (``torch.save(model)``) without running any of its code.

Some pretraining sources are published as pickled modules, not state dicts (torchxrayvision's DenseNets). A
pickle names classes and functions that loading would import and call; here every class the file names is
replaced by :class:`Recorded`, which only keeps the state it is given, and the only functions called are
PyTorch's own tensor and storage rebuilders. The tensors are then read off the recorded modules' ``_parameters``
and ``_buffers``. Nothing the file names is imported, and a pickle that asks for anything else (``os.system``,
``eval``, a constructor with arguments) fails to load instead.

Both of PyTorch's formats are read: the zip archive (since PyTorch 1.6) through ``torch.load(weights_only=True)``
with the file's classes stood in for, and the legacy format (PyTorch 1.5 and older, which torchxrayvision's
2020 weights use) through :class:`_LegacyUnpickler`, a restricted copy of the few steps of PyTorch's legacy
reader.
"""

from __future__ import annotations

import pickle
import zipfile
from collections import OrderedDict
from pathlib import Path

import torch

from chexcut.errors import ChexcutError

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C  # the first object of a legacy torch.save file


class Recorded:
    """Stands in for any class a pickled model names: it keeps the state it is given and runs nothing."""

    def __setstate__(self, state) -> None:
        self.__dict__["recorded"] = state


def _stand_in(qualname: str) -> type:
    return type(qualname.rsplit(".", 1)[-1], (Recorded,), {"__module__": "chexcut.models.unpickle.stand_in",
                                                          "pickled_as": qualname})


def tensors_of(obj, prefix: str = "") -> dict[str, torch.Tensor]:
    """A state dict from what was unpickled: a dict of tensors as it is, a recorded module's parameters and
    buffers by their dotted names (as ``module.state_dict()`` names them)."""
    if isinstance(obj, dict) and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return {prefix + k: v for k, v in obj.items()}
    if isinstance(obj, Recorded):
        state = obj.__dict__.get("recorded")
        if not isinstance(state, dict):
            return {}
        out: dict[str, torch.Tensor] = {}
        for part in ("_parameters", "_buffers"):
            for k, v in (state.get(part) or {}).items():
                if isinstance(v, torch.Tensor):
                    out[prefix + k] = v.detach() if isinstance(v, torch.nn.Parameter) else v
        for k, child in (state.get("_modules") or {}).items():
            out.update(tensors_of(child, f"{prefix}{k}."))
        return out
    raise ChexcutError("the file holds neither a state dict of tensors nor a pickled model")


def read_pickled_model(path: Path) -> dict[str, torch.Tensor]:
    """The state dict of a pickled module or state dict in either PyTorch format, no code from the file run."""
    path = Path(path)
    try:
        if zipfile.is_zipfile(path):
            unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
            with torch.serialization.safe_globals([(_stand_in(name), name) for name in unsafe]):
                obj = torch.load(str(path), map_location="cpu", weights_only=True)
        else:
            obj = _legacy_load(path)
    except ChexcutError:
        raise
    except Exception as e:  # pickle's and torch's own errors: a damaged file, or one that asks to run code
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ChexcutError(f"{path}: cannot be read without running code it names, or is damaged ({first[:120]})") from None
    state = tensors_of(obj)
    if not state:
        raise ChexcutError(f"{path}: the pickled model holds no tensors")
    return state


# ----------------------------------------------------------------------------- the legacy format

#: What a legacy file may call: PyTorch's tensor rebuilders and storage types, and the containers of a state.
_ALLOWED = {("torch._utils", "_rebuild_tensor_v2"), ("torch._utils", "_rebuild_tensor"),
            ("torch._utils", "_rebuild_parameter"), ("torch._utils", "_rebuild_parameter_with_state"),
            ("collections", "OrderedDict"), ("builtins", "set"), ("__builtin__", "set"), ("torch", "Size")}
_STORAGES = {name for name in dir(torch) if name.endswith("Storage") and name != "UntypedStorage"}


class _LegacyUnpickler(pickle.Unpickler):
    """Finds only the allowed callables and storage types; any other name becomes a :class:`Recorded` class,
    and a ``('module', ...)`` persistent id (a legacy file's module class with its source) one as well."""

    def __init__(self, file, storages: dict | None = None, budget: int = 0):
        super().__init__(file)
        self.storages, self.budget = storages, budget  # budget: the bytes the file can fill (its size)

    def find_class(self, module: str, name: str):
        if (module, name) in _ALLOWED:
            if name == "set":
                return set
            if name in ("_rebuild_tensor", "_rebuild_tensor_v2"):
                return _checked_rebuild(getattr(torch._utils, name))
            return {"collections": OrderedDict, "torch": torch.Size}.get(module) or getattr(torch._utils, name)
        if module == "torch" and name in _STORAGES:
            return getattr(torch, name)
        return _stand_in(f"{module}.{name}")

    def persistent_load(self, saved_id):
        if not isinstance(saved_id, tuple) or not saved_id or self.storages is None:
            raise pickle.UnpicklingError("an unexpected persistent id")
        if saved_id[0] == "module":  # (module, its class: already a stand-in, its source file, its source)
            return saved_id[1] if isinstance(saved_id[1], type) and issubclass(saved_id[1], Recorded) else \
                _stand_in("module")
        if saved_id[0] != "storage" or len(saved_id) != 6:
            raise pickle.UnpicklingError(f"an unexpected persistent id {saved_id[0]!r}")
        _, storage_type, key, _location, numel, view = saved_id
        dtype = getattr(storage_type, "dtype", None)
        if not isinstance(dtype, torch.dtype) or not isinstance(numel, int) or numel < 0:
            raise pickle.UnpicklingError("a damaged storage record")
        element = torch._utils._element_size(dtype)
        if key not in self.storages:
            self.budget -= numel * element
            if self.budget < 0:  # every storage's bytes are in the file: more than its size is a lie
                raise pickle.UnpicklingError("its storages hold more bytes than the file")
            untyped = torch.zeros(numel * element, dtype=torch.uint8).untyped_storage()
            self.storages[key] = torch.storage.TypedStorage(wrap_storage=untyped, dtype=dtype, _internal=True)
        storage = self.storages[key]
        if view is not None:  # (view key, offset, size): a slice of the root storage, by its bytes
            _, offset, size = view
            offset, size = int(offset), int(size)
            if offset < 0 or size < 0 or offset + size > storage.size():
                raise pickle.UnpicklingError("a storage view outside its storage")
            part = storage.untyped()[offset * element:(offset + size) * element]
            return torch.storage.TypedStorage(wrap_storage=part, dtype=dtype, _internal=True)
        return storage


def _checked_rebuild(rebuild):
    """PyTorch's tensor rebuilder, called only for a tensor that lies inside its storage (``set_`` would otherwise
    grow the storage to whatever size the file names)."""

    def checked(storage, offset, size, stride, *rest):
        sizes, strides = tuple(int(s) for s in size), tuple(int(s) for s in stride)
        if int(offset) < 0 or len(sizes) != len(strides) or any(s < 0 for s in sizes + strides):
            raise pickle.UnpicklingError("a damaged tensor record")
        extent = 0 if 0 in sizes else int(offset) + sum((n - 1) * st for n, st in zip(sizes, strides)) + 1
        if extent > storage.size():
            raise pickle.UnpicklingError("a tensor reaching past its storage")
        return rebuild(storage, offset, size, stride, *rest)

    return checked


def _legacy_load(path: Path):
    import warnings

    storages: dict = OrderedDict()
    with open(path, "rb") as f, warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # TypedStorage's deprecation: the legacy format is typed
        if _LegacyUnpickler(f).load() != LEGACY_MAGIC:
            raise ChexcutError(f"{path}: not a PyTorch file (neither a zip archive nor the legacy format)")
        _LegacyUnpickler(f).load()  # the protocol version
        _LegacyUnpickler(f).load()  # the system's byte order and type sizes
        result = _LegacyUnpickler(f, storages, budget=path.stat().st_size).load()
        keys = _LegacyUnpickler(f).load()
        if not isinstance(keys, list) or set(keys) != set(storages):  # every storage filled from the file, once
            raise ChexcutError(f"{path}: its storages and their data do not match (a damaged file)")
        for key in keys:  # each storage's bytes: an element count (int64), then the data
            storage = storages[key]
            count = int.from_bytes(f.read(8), "little", signed=True)
            size = storage.element_size() * count
            data = f.read(size)
            if count != storage.size() or len(data) != size:
                raise ChexcutError(f"{path}: a tensor's data is cut short (a truncated file)")
            storage.untyped().copy_(torch.UntypedStorage.from_buffer(data, dtype=torch.uint8))
    return result
