"""The committed fixtures in fixtures/ are exactly what fixtures/generate.py produces, and they have the
properties the other tests rely on (shared storage, recorded aliases, an exact SGD step)."""

import importlib.util
import pathlib
from fractions import Fraction

import numpy as np
import pytest
import safetensors
import torch

ROOT = pathlib.Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "fixtures"

EXPECTED_FILES = [
    "mlp.pt",
    "mlp.safetensors",
    "mlp.npz",
    "tied_mlp.pt",
    "tied_mlp.safetensors",
    "tied_mlp.npz",
    "tied_mlp_legacy.pt",
    "tiny_lm.pt",
    "tiny_lm.safetensors",
    "tiny_lm.npz",
    "autoencoder.pt",
    "autoencoder.npz",
    "autoencoder.safetensors",
    "train_ckpt.pt",
    "dtypes.pt",
    "dtypes.safetensors",
    "dtypes.npz",
    "mlp_step0.pt",
    "mlp_step1.pt",
    "mlp_grads.pt",
    "tied_mlp_step0.pt",
    "tied_mlp_step1.pt",
    "tied_mlp_grads.pt",
    "mlp_step1.safetensors",
]


def load_generator():
    spec = importlib.util.spec_from_file_location("fixtures_generate", FIXTURES / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def regenerated(tmp_path_factory) -> dict[str, pathlib.Path]:
    outdir = tmp_path_factory.mktemp("fixtures")
    paths = load_generator().generate(outdir)
    return {path.name: path for path in paths}


def load_pt(path: pathlib.Path):
    return torch.load(path, weights_only=True)


def load_safetensors(path: pathlib.Path) -> dict:
    """Tensors and header metadata. The metadata is a hash map whose order varies between runs, so sort it."""
    with safetensors.safe_open(path, "pt") as f:
        metadata, names = f.metadata(), f.keys()
        return {
            "tensors": {name: f.get_tensor(name) for name in names},
            "metadata": None if metadata is None else dict(sorted(metadata.items())),
        }


def load_npz(path: pathlib.Path) -> dict[str, np.ndarray]:
    with np.load(path) as npz:
        return {name: npz[name] for name in npz.files}


def load_any(path: pathlib.Path):
    loaders = {".pt": load_pt, ".safetensors": load_safetensors, ".npz": load_npz}
    return loaders[path.suffix](path)


def flatten(obj, prefix: str = "") -> dict[str, object]:
    """Nested dicts/lists -> {'a/b/0': leaf}, keeping the order of the containers."""
    if isinstance(obj, dict):
        items = obj.items()
    elif isinstance(obj, (list, tuple)):
        items = enumerate(obj)
    else:
        return {prefix: obj}
    flat = {}
    for key, value in items:
        flat.update(flatten(value, f"{prefix}/{key!r}" if prefix else repr(key)))
    return flat


def tensor_bytes(tensor: torch.Tensor) -> bytes:
    return tensor.detach().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def storage_groups(flat: dict[str, object]) -> list[list[str]]:
    """Which tensors share one storage, as sorted lists of names (only groups of 2 or more)."""
    groups: dict[int, list[str]] = {}
    for name, value in flat.items():
        if isinstance(value, torch.Tensor) and value.numel() > 0:
            groups.setdefault(value.untyped_storage().data_ptr(), []).append(name)
    return sorted(sorted(names) for names in groups.values() if len(names) > 1)


def assert_same_leaf(name: str, committed, fresh) -> None:
    assert type(committed) is type(fresh), name
    if isinstance(committed, torch.Tensor):
        assert committed.dtype == fresh.dtype, name
        assert committed.shape == fresh.shape, name
        assert committed.stride() == fresh.stride(), name
        assert committed.storage_offset() == fresh.storage_offset(), name
        assert tensor_bytes(committed) == tensor_bytes(fresh), name
    elif isinstance(committed, np.ndarray):
        assert committed.dtype == fresh.dtype, name
        assert committed.shape == fresh.shape, name
        assert committed.tobytes() == fresh.tobytes(), name
    else:
        assert committed == fresh, name


def test_generator_writes_exactly_the_expected_files(regenerated):
    assert sorted(regenerated) == sorted(EXPECTED_FILES)
    for path in regenerated.values():
        assert path.stat().st_size < 16_000, path.name


@pytest.mark.parametrize("name", EXPECTED_FILES)
def test_committed_fixture_matches_regenerated(name, regenerated):
    committed = flatten(load_any(FIXTURES / name))
    fresh = flatten(load_any(regenerated[name]))
    assert list(committed) == list(fresh)
    for key in committed:
        assert_same_leaf(f"{name}:{key}", committed[key], fresh[key])
    assert storage_groups(committed) == storage_groups(fresh)


def data_ptr_of_storage(tensor: torch.Tensor) -> int:
    return tensor.untyped_storage().data_ptr()


@pytest.mark.parametrize("name", ["tied_mlp.pt", "tied_mlp_legacy.pt", "tied_mlp_step0.pt", "tied_mlp_step1.pt"])
def test_tied_mlp_shares_storage(name):
    state = load_pt(FIXTURES / name)
    assert data_ptr_of_storage(state["2.weight"]) == data_ptr_of_storage(state["4.weight"])
    assert data_ptr_of_storage(state["2.bias"]) == data_ptr_of_storage(state["4.bias"])
    assert data_ptr_of_storage(state["0.weight"]) != data_ptr_of_storage(state["2.weight"])


def test_tied_mlp_grads_are_one_tensor_for_both_names():
    grads = load_pt(FIXTURES / "tied_mlp_grads.pt")["grads"]
    assert data_ptr_of_storage(grads["2.weight"]) == data_ptr_of_storage(grads["4.weight"])
    assert data_ptr_of_storage(grads["2.bias"]) == data_ptr_of_storage(grads["4.bias"])


def test_tiny_lm_shares_embedding_and_head():
    state = load_pt(FIXTURES / "tiny_lm.pt")
    assert data_ptr_of_storage(state["embed.weight"]) == data_ptr_of_storage(state["lm_head.weight"])
    assert data_ptr_of_storage(state["hidden.weight"]) != data_ptr_of_storage(state["embed.weight"])


def test_autoencoder_decoder_weight_is_transposed_view():
    state = load_pt(FIXTURES / "autoencoder.pt")
    encoder, decoder = state["encoder.weight"], state["decoder.weight"]
    assert data_ptr_of_storage(decoder) == data_ptr_of_storage(encoder)
    assert decoder.data_ptr() == encoder.data_ptr()
    assert decoder.shape == (6, 3) and decoder.stride() == (1, 6)
    assert not decoder.is_contiguous()
    assert torch.equal(decoder, encoder.t())


def test_dtypes_strided_is_view_of_base():
    state = load_pt(FIXTURES / "dtypes.pt")
    assert data_ptr_of_storage(state["strided"]) == data_ptr_of_storage(state["base"])
    assert not state["strided"].is_contiguous()
    assert torch.equal(state["strided"], state["base"][:, ::2])


@pytest.mark.parametrize(
    ("model", "aliases"),
    [
        ("tied_mlp", {"4.weight": "2.weight", "4.bias": "2.bias"}),
        ("tiny_lm", {"lm_head.weight": "embed.weight"}),
    ],
)
def test_safetensors_records_dropped_aliases(model, aliases):
    stored = load_safetensors(FIXTURES / f"{model}.safetensors")
    assert stored["metadata"] == aliases
    state = load_pt(FIXTURES / f"{model}.pt")
    assert sorted(stored["tensors"]) == sorted(name for name in state if name not in aliases)
    for removed, kept in aliases.items():
        assert torch.equal(stored["tensors"][kept], state[removed])


@pytest.mark.parametrize("model", ["mlp", "tied_mlp", "tiny_lm", "autoencoder", "dtypes"])
def test_formats_agree(model):
    """Every tensor of the .pt file appears, bit for bit, in .safetensors (directly or through a recorded
    alias, as a contiguous copy) and in .npz (unless numpy has no such dtype)."""
    state = load_pt(FIXTURES / f"{model}.pt")
    stored = load_safetensors(FIXTURES / f"{model}.safetensors")
    aliases = stored["metadata"] or {}
    arrays = load_npz(FIXTURES / f"{model}.npz")
    no_numpy_dtype = {torch.bfloat16, torch.float8_e4m3fn, torch.float8_e5m2}
    for name, tensor in state.items():
        from_safetensors = stored["tensors"][aliases.get(name, name)]
        assert from_safetensors.dtype == tensor.dtype and from_safetensors.shape == tensor.shape, name
        assert tensor_bytes(from_safetensors) == tensor_bytes(tensor), name
        if tensor.dtype in no_numpy_dtype:
            assert name not in arrays
        else:
            assert arrays[name].shape == tuple(tensor.shape), name
            assert arrays[name].tobytes() == tensor_bytes(tensor), name
    assert set(arrays) <= set(state)


def test_mlp_step1_safetensors_matches_pt():
    state = load_pt(FIXTURES / "mlp_step1.pt")
    stored = load_safetensors(FIXTURES / "mlp_step1.safetensors")
    assert sorted(stored["tensors"]) == sorted(state)
    for name, tensor in state.items():
        assert tensor_bytes(stored["tensors"][name]) == tensor_bytes(tensor), name


def is_nearest_float32(value: np.float32, exact: Fraction) -> bool:
    """True if no float32 is closer to exact than value (ties count as nearest)."""
    below = np.nextafter(value, np.float32(-np.inf))
    above = np.nextafter(value, np.float32(np.inf))
    low = (Fraction(float(below)) + Fraction(float(value))) / 2
    high = (Fraction(float(value)) + Fraction(float(above))) / 2
    return low <= exact <= high


@pytest.mark.parametrize("model", ["mlp", "tied_mlp"])
def test_step1_is_one_sgd_step_from_step0(model):
    """torch's CPU SGD does param.add_(grad, alpha=-lr) with lr cast to float32 and a fused multiply-add, so
    step1 is step0 - float32(lr) * grad rounded ONCE to float32. (The two-rounding float32 expression
    step0 - lr * grad is NOT bit-exact, nor within 1 ulp: where step0 and lr * grad nearly cancel it is up
    to 5 ulps off in mlp's 0.weight.) The first two checks look only at the committed numbers; the third
    also needs this machine's add kernel to use FMA (true on AVX2/AVX512, not with ATEN_CPU_CAPABILITY=default)."""
    step0 = load_pt(FIXTURES / f"{model}_step0.pt")
    step1 = load_pt(FIXTURES / f"{model}_step1.pt")
    saved = load_pt(FIXTURES / f"{model}_grads.pt")
    lr, grads = saved["lr"], saved["grads"]
    assert lr == 0.1
    assert list(grads) == list(step0) == list(step1)
    lr32 = float(np.float32(lr))
    for name in step0:
        before, after, grad = step0[name], step1[name], grads[name]
        assert not torch.equal(before, after), name
        # float32 * float32 is exact in float64, so this rounds once in float64 and once to float32.
        in_float64 = (before.double() - lr32 * grad.double()).float()
        assert tensor_bytes(in_float64) == tensor_bytes(after), name
        # The same, proved with exact rationals: no float32 is nearer to the exact result.
        for b, a, g in zip(before.flatten().numpy(), after.flatten().numpy(), grad.flatten().numpy()):
            exact = Fraction(float(b)) - Fraction(lr32) * Fraction(float(g))
            assert is_nearest_float32(a, exact), (name, b, g, a)
        # What SGD itself calls, recomputed on this machine.
        assert tensor_bytes(torch.add(before, grad, alpha=-lr)) == tensor_bytes(after), name
