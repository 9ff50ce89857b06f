"""Read the weights out of a TorchScript archive (OpenAI's `ViT-B-16.pt`, ...) without running it.

`torch.jit.load` executes the archive's code and its pickles may run arbitrary code; `torch.load`
with `weights_only=True` refuses TorchScript. This reader unpickles `data.pkl` with a restricted
unpickler: every `__torch__.*` module class becomes an inert record of its attributes, and the only
callables it will build are tensors from the archive's own storages. Nothing else resolves.

`read_training_checkpoint` does the same for a `torch.save` file whose pickle also holds Python objects
beside its tensors (a Dassl checkpoint's LR scheduler, which `weights_only=True` refuses): every class it
names becomes an inert record, so the tensors come out and no code of the file runs.
"""

from __future__ import annotations

import pickle
import zipfile
from collections import OrderedDict
from typing import Any

import torch

STORAGE_DTYPES = {
    "HalfStorage": torch.float16, "FloatStorage": torch.float32, "DoubleStorage": torch.float64,
    "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8, "BoolStorage": torch.bool,
}


class ForbiddenObject(pickle.UnpicklingError):
    """The archive names a Python object beyond module records, tensors and storages: refused, never built."""


class ScriptModuleRecord:
    """Stands in for a pickled TorchScript module: keeps its attributes, runs nothing."""

    def __setstate__(self, state: Any) -> None:
        self.state = state if isinstance(state, dict) else {}


def _rebuild_tensor(storage: torch.Tensor, offset: int, size: tuple, stride: tuple, *_: Any) -> torch.Tensor:
    return torch.as_strided(storage, size, stride, offset).clone()


def pickle_root(archive: zipfile.ZipFile) -> str:
    """The folder of a torch zip archive that holds its data.pkl."""
    return next(n for n in archive.namelist() if n.endswith("/data.pkl")).rsplit("/", 1)[0]


def is_torchscript_zip(names: list[str]) -> bool:
    return any(n.endswith("/data.pkl") for n in names) and any("/code/__torch__" in n for n in names)


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, archive: zipfile.ZipFile, root: str) -> None:
        super().__init__(archive.open(f"{root}/data.pkl"))
        self.archive, self.root = archive, root
        self.class_names: set[str] = set()

    def find_class(self, module: str, name: str) -> Any:
        if module.startswith("__torch__"):
            self.class_names.add(name)
            return type(name, (ScriptModuleRecord,), {})
        if (module, name) in {("torch._utils", "_rebuild_tensor_v2"), ("torch._utils", "_rebuild_tensor")}:
            return _rebuild_tensor
        if module == "torch" and name in STORAGE_DTYPES:
            return STORAGE_DTYPES[name]
        if (module, name) == ("collections", "OrderedDict"):
            return OrderedDict
        raise ForbiddenObject(f"refusing to load {module}.{name} from a TorchScript archive")

    def persistent_load(self, pid: Any) -> torch.Tensor:
        kind, dtype, key, _location, _numel = pid
        if kind != "storage" or not isinstance(dtype, torch.dtype):
            raise pickle.UnpicklingError(f"unexpected persistent id {pid!r}")
        data = bytearray(self.archive.read(f"{self.root}/data/{key}"))
        return torch.frombuffer(data, dtype=dtype) if data else torch.empty(0, dtype=dtype)


class InertObject:
    """Stands in for any object a training checkpoint pickles beside its tensors: built from nothing, runs
    nothing, keeps what it was given."""

    def __new__(cls, *args: Any, **kwargs: Any) -> InertObject:
        return super().__new__(cls)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args, self.items = args, []

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __setitem__(self, key: Any, value: Any) -> None:  # a pickled mapping's items
        self.items.append((key, value))

    def append(self, value: Any) -> None:  # a pickled sequence's items
        self.items.append(value)

    def extend(self, values: Any) -> None:
        self.items.extend(values)


class _InertUnpickler(_RestrictedUnpickler):
    def find_class(self, module: str, name: str) -> Any:
        if module == "torch._utils" and name in ("_rebuild_parameter", "_rebuild_parameter_with_state"):
            return lambda data, *_: data
        try:
            return super().find_class(module, name)
        except ForbiddenObject:
            return type(name, (InertObject,), {"__module__": f"inert.{module}"})


def read_training_checkpoint(path: str) -> Any:
    """What a `torch.save` zip holds, every tensor real and every other object an `InertObject`."""
    with zipfile.ZipFile(path) as archive:
        return _InertUnpickler(archive, pickle_root(archive)).load()


def _collect(record: ScriptModuleRecord, prefix: str, out: dict[str, torch.Tensor]) -> None:
    for name, value in record.state.items():
        if isinstance(value, torch.Tensor):
            out[prefix + name] = value
        elif isinstance(value, ScriptModuleRecord):
            _collect(value, f"{prefix}{name}.", out)


def read_torchscript(archive: zipfile.ZipFile) -> tuple[dict[str, torch.Tensor], set[str]]:
    """The archive's parameters and buffers by dotted name, and the class names of its modules."""
    unpickler = _RestrictedUnpickler(archive, pickle_root(archive))
    top = unpickler.load()
    if not isinstance(top, ScriptModuleRecord):
        raise pickle.UnpicklingError("data.pkl does not hold a TorchScript module")
    tensors: dict[str, torch.Tensor] = {}
    _collect(top, "", tensors)
    return tensors, unpickler.class_names
