"""Reference readings for tests: a file seen through torch, safetensors and NumPy, and paramctl's view to compare."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import numpy as np

import paramctl
from paramctl import reader

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "fixtures"


def raw_bytes(values: np.ndarray) -> bytes:
    """Row-major bytes of an array of any dtype (bfloat16 and float8 included)."""
    return np.ascontiguousarray(values).tobytes()


def torch_bytes(tensor: Any) -> bytes:
    """Row-major bytes of a torch tensor of any dtype."""
    import torch

    flat = tensor.detach().reshape(-1).clone(memory_format=torch.contiguous_format)  # fresh strides for view()
    return flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b""


# How far a tensor that fixtures/generate_real.py recomputes by training may move on another CPU, relative to the
# tensor's largest magnitude. The generator trains in float64 and stores float32, so what differs between machines
# (vector-unit rounding in initialisation and kernels) stays near float32's precision (measured: 2e-7); 1e-5 keeps
# a 50x margin while a changed model, seed, step count or learning rate moves values by 1e-3 or more.
RETRAINED_TOLERANCE = 1e-5


def assert_retrained_equal(name: str, fresh: Any, committed: Any) -> None:
    """A regenerated trained tensor against the committed one: dtype and shape exactly, integer values exactly,
    floating values to RETRAINED_TOLERANCE of their scale (bit-identical on the machine that wrote them)."""
    import torch

    assert fresh.dtype == committed.dtype and fresh.shape == committed.shape, name
    if not committed.is_floating_point() or committed.numel() == 0:
        assert torch_bytes(fresh) == torch_bytes(committed), name
        return
    scale = committed.detach().double().abs().max().item()
    error = (fresh.detach().double() - committed.detach().double()).abs().max().item()
    assert error <= RETRAINED_TOLERANCE * scale, f"{name}: differs by {error:.3g} (scale {scale:.3g})"
    assert torch.equal(fresh.isfinite(), committed.isfinite()), name


def torch_dtype_name(tensor: Any) -> str:
    return str(tensor.dtype).removeprefix("torch.")


def paramctl_tensors(path: Path) -> dict[str, tuple[str, tuple[int, ...], bytes, int]]:
    """name -> (dtype, shape, bytes, storage identity) as paramctl reads the file."""
    tree = paramctl.open(path)
    return {name: (t.dtype.name, t.shape, raw_bytes(reader.array(t)), id(t.storage)) for name, t in tree.tensors()}


def reference_flatten(obj: Any, prefix: tuple[str, ...] = ()) -> dict[str, Any]:
    """The documented naming rule, written independently: dict keys split on '.', list indices; tensors and
    plain values (scalars, and lists/tuples of scalars) are leaves."""
    import torch

    out: dict[str, Any] = {}
    scalars = (int, float, str, bool, bytes, complex, type(None))
    if isinstance(obj, torch.Tensor):
        out[".".join(prefix)] = obj
    elif isinstance(obj, dict) and obj:
        for key, value in obj.items():
            out.update(reference_flatten(value, prefix + tuple(str(key).split("."))))
    elif isinstance(obj, (list, tuple)) and obj and not all(isinstance(x, scalars) for x in obj):
        for index, value in enumerate(obj):
            out.update(reference_flatten(value, (*prefix, str(index))))
    else:
        out[".".join(prefix)] = obj
    return out


def sharing_groups(identities: dict[str, Any]) -> set[frozenset[str]]:
    """Names grouped by a storage identity, keeping only groups of two or more."""
    groups: dict[Any, set[str]] = {}
    for name, identity in identities.items():
        groups.setdefault(identity, set()).add(name)
    return {frozenset(g) for g in groups.values() if len(g) > 1}


def safetensors_aliases(path: Path) -> dict[str, str]:
    """save_model's metadata: {dropped name: the stored name it is}."""
    from safetensors import safe_open

    with safe_open(path, "pt") as handle:
        stored = set(handle.keys())
        return {k: v for k, v in (handle.metadata() or {}).items() if k not in stored and v in stored}


def reference_values(path: Path, convert: Any) -> dict[str, np.ndarray]:
    """name -> values as the format's own library reads the file (torch tensors through `convert`)."""
    import torch
    from safetensors.torch import load_file

    if path.suffix == ".npz":
        with np.load(path) as archive:
            return {name: archive[name] for name in archive.files}
    if path.suffix == ".safetensors":
        loaded = load_file(path)
        loaded |= {alias: loaded[kept] for alias, kept in safetensors_aliases(path).items()}
        return {name: convert(t) for name, t in loaded.items()}
    flat = reference_flatten(torch.load(path, weights_only=True))
    return {name: convert(t) for name, t in flat.items() if isinstance(t, torch.Tensor)}


@functools.cache
def fixture_generator(stem: str) -> Any:
    """A `fixtures/<stem>.py` generator script as a module (registered in sys.modules, so its dataclasses resolve
    their annotations)."""
    import importlib.util
    import sys

    spec = importlib.util.spec_from_file_location(f"fixtures_{stem}", FIXTURES / f"{stem}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def torch_dtypes() -> list[Any]:
    """Every torch dtype the loaders and commands are tested with (torch imported only by tests that ask)."""
    import torch

    return [
        torch.float32,
        torch.float64,
        torch.float16,
        torch.bfloat16,
        torch.float8_e4m3fn,
        torch.float8_e5m2,
        torch.int8,
        torch.uint8,
        torch.int16,
        torch.int32,
        torch.int64,
        torch.bool,
        torch.complex64,
        torch.complex128,
    ]
