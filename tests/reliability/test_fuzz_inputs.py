"""Fuzzed inputs to quantize(), load() and the CLI: random objects, state dicts with odd shapes,
dtypes and keys, zero-size and large dimensions, non-contiguous and meta tensors, truncated and
corrupted checkpoint files. Every case must end in a success or a ``QuantcoreError`` (the CLI: exit
code 0, 1 or 2), never another exception or a hang, and the caller's object must be unchanged."""

from __future__ import annotations

import contextlib
import hashlib
import io
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hypothesis.strategies as st
import pytest
import torch
from hypothesis import given
from torch import nn

import quantcore
from quantcore.cli import main as cli_main
from reliability.helpers import Tally, Uncounted, fast_settings, slow_settings

CASE_SECONDS = 20  # a single case running longer than this counts as a hang


@contextlib.contextmanager
def no_hang(seconds: int = CASE_SECONDS) -> Iterator[None]:
    """Turn a hang into a test failure (SIGALRM; the fuzzers run in the main thread)."""

    def alarm(*_: object) -> None:
        raise TimeoutError(f"case ran longer than {seconds}s")

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def digest(obj: object) -> object:
    """A deep snapshot of what the caller passed, to prove it unchanged."""
    if isinstance(obj, nn.Module):  # conftest.fingerprint, extended to meta tensors
        named = [
            *obj.named_parameters(remove_duplicate=False),
            *obj.named_buffers(remove_duplicate=False),
        ]
        return (
            [(n, id(t), type(t).__name__, t.device, digest(t)) for n, t in named],
            [
                (n, type(m).__name__, m.training)
                for n, m in obj.named_modules(remove_duplicate=False)
            ],
        )
    if isinstance(obj, torch.Tensor):
        if obj.is_meta:
            return ("meta", obj.dtype, tuple(obj.shape), tuple(obj.stride()))
        fresh = torch.empty(obj.shape, dtype=obj.dtype).copy_(obj.detach())  # plain strides
        data = fresh.view(-1).view(torch.uint8) if obj.numel() else obj
        return (
            obj.dtype,
            tuple(obj.shape),
            tuple(obj.stride()),
            obj.requires_grad,
            hashlib.sha256(data.numpy().tobytes() if obj.numel() else b"").hexdigest(),
        )
    if isinstance(obj, dict):
        return {k: digest(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [digest(v) for v in obj]
    return repr(obj)


def run_quantize(obj: object, **kwargs: Any) -> quantcore.QuantizationResult | None:
    """quantize() must succeed or raise a QuantcoreError, and leave ``obj`` as it was."""
    before = digest(obj)
    result = None
    with no_hang(), contextlib.suppress(quantcore.QuantcoreError):
        result = quantcore.quantize(obj, **kwargs)
    assert digest(obj) == before, "the caller's object was modified"
    return result


# -- strategies ----------------------------------------------------------------------------------
DTYPES = [
    torch.float32,
    torch.float16,
    torch.bfloat16,
    torch.float64,
    torch.int8,
    torch.int64,
    torch.bool,
    torch.complex64,
    torch.uint8,
]
KEYS = st.sampled_from(
    [
        "weight",
        "bias",
        "fc.weight",
        "fc.bias",
        "a.b.weight",
        "embed.weight",
        "module.x.weight",
        "",
        ".",
        "..",
        "w..weight",
        "0.weight",
        "0.bias",
        "layer.0.weight",
        "\x00.weight",
    ]
) | st.text(min_size=0, max_size=12)


@st.composite
def tensors(draw: st.DrawFn) -> torch.Tensor:
    dtype = draw(st.sampled_from(DTYPES))
    ndim = draw(st.integers(0, 4))
    shape = [draw(st.sampled_from([0, 1, 2, 3, 5, 8])) for _ in range(ndim)]
    if ndim and draw(st.integers(0, 9)) == 0:  # one large dimension (a few MB at most)
        shape[draw(st.integers(0, ndim - 1))] = 1 << 18
        shape = [min(s, 2) if i else s for i, s in enumerate(shape)]
    kind = draw(st.sampled_from(["plain", "plain", "meta", "transposed", "strided", "special"]))
    if kind == "meta":
        return torch.empty(shape, dtype=dtype, device="meta")
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
    base = torch.randn(shape, generator=gen, dtype=torch.float64) * draw(
        st.sampled_from([0.0, 1e-40, 1.0, 1e4, 1e30])
    )
    if kind == "special" and base.numel():
        flat = base.view(-1)
        flat[draw(st.integers(0, flat.numel() - 1))] = draw(
            st.sampled_from([float("nan"), float("inf"), -float("inf"), 1e300])
        )
    t = (
        base.to(dtype)
        if dtype.is_complex or dtype.is_floating_point
        else base.to(torch.int64).to(dtype)
    )
    if kind == "transposed" and t.dim() >= 2:
        t = t.transpose(0, 1)
    elif kind == "strided" and t.dim() >= 1 and t.shape[0] > 1:
        t = t[::2]
    return t


state_dicts = st.dictionaries(KEYS, tensors(), min_size=0, max_size=5)
scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=20)
    | st.binary(max_size=20)
)
objects = st.recursive(
    scalars | tensors(),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.text(max_size=8) | st.integers(), inner, max_size=3)
        | st.tuples(inner, inner)
    ),
    max_leaves=8,
)


@st.composite
def modules(draw: st.DrawFn) -> nn.Module:
    layers: list[nn.Module] = []
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["linear", "linear", "norm", "relu", "embedding", "conv"]))
        size_in, size_out = draw(st.sampled_from([0, 1, 3, 8])), draw(st.sampled_from([0, 1, 4]))
        if kind == "linear":
            layers.append(nn.Linear(size_in, size_out, bias=draw(st.booleans())))
        elif kind == "norm":
            layers.append(nn.LayerNorm(max(size_in, 1)))
        elif kind == "embedding":
            layers.append(nn.Embedding(max(size_in, 1), max(size_out, 1)))
        elif kind == "conv":
            layers.append(nn.Conv1d(max(size_in, 1), max(size_out, 1), 1))
        else:
            layers.append(nn.ReLU())
    model = nn.Sequential(*layers)
    dtype = draw(st.sampled_from([torch.float32, torch.float16, torch.bfloat16, torch.float64]))
    model = model.to(dtype)
    twist = draw(
        st.sampled_from(["none", "meta", "non_contiguous", "nan", "inf", "frozen", "train"])
    )
    params = [p for p in model.parameters() if p.dim() == 2 and p.numel()]
    if twist == "meta":
        model = model.to("meta")
    elif twist == "non_contiguous" and params:
        with torch.no_grad():
            p = params[0]
            p.set_(p.detach().t().contiguous().t().clone().t().contiguous().t())  # strides (1, n)
    elif twist in ("nan", "inf") and params:
        with torch.no_grad():
            params[0].view(-1)[0] = float("nan") if twist == "nan" else float("inf")
    elif twist == "frozen":
        model.requires_grad_(False)
    elif twist == "train":
        model.train()
    return model


# -- quantize() ----------------------------------------------------------------------------------
@fast_settings(80)
@given(obj=objects, dtype=st.sampled_from([None, "int8", "fp16"]))
def test_random_objects(obj: object, dtype: str | None, tally: Tally) -> None:
    tally.add("fuzz cases: quantize(random object)")
    run_quantize(obj, dtype=dtype)


def _check_result(result: quantcore.QuantizationResult | None) -> None:
    if result is None:
        return
    for layer in result.report.quantized:  # quantized tensors never hold NaN/Inf
        prefix = f"{layer.name}." if layer.name else ""
        for key, t in result.state_dict.items():
            if (
                key.startswith(prefix)
                and t.is_floating_point()
                and key.endswith(("weight", "scale"))
            ):
                assert bool(torch.isfinite(t).all()), key


@fast_settings(80)
@given(state_dict=state_dicts, dtype=st.sampled_from(["int8", "fp16"]))
def test_state_dicts(state_dict: dict[str, torch.Tensor], dtype: str, tally: Tally) -> None:
    tally.add("fuzz cases: quantize(state dict)")
    _check_result(run_quantize(state_dict, dtype=dtype))


@fast_settings(60)
@given(model=modules(), dtype=st.sampled_from(["int8", "fp16"]))
def test_modules(model: nn.Module, dtype: str, tally: Tally) -> None:
    tally.add("fuzz cases: quantize(module)")
    result = run_quantize(model, dtype=dtype)
    _check_result(result)
    if result is None or result.module is None or any(p.is_meta for p in model.parameters()):
        return
    first = next((m for m in model.modules() if isinstance(m, (nn.Linear, nn.LayerNorm))), None)
    if first is None:
        return
    width = first.in_features if isinstance(first, nn.Linear) else first.normalized_shape[0]
    if not isinstance(model[0], (nn.Linear, nn.LayerNorm)):
        return
    x = torch.randn(2, width, dtype=next(model.parameters()).dtype)
    with no_hang(), torch.inference_mode():
        try:
            expected = model(x)
        except Exception:  # the float model itself cannot run (mismatched random sizes)
            return
        got = result.module(x)
    if bool(torch.isfinite(expected).all()):
        assert not bool(got.isnan().any()), "NaN from a model whose float output is finite"


# -- files ---------------------------------------------------------------------------------------
def _sources(tmp: Path) -> dict[str, Path]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 4))
    files = {"pt": tmp / "model.pt"}
    torch.save(model.state_dict(), files["pt"])
    torch.save({"state_dict": model.state_dict(), "epoch": 3}, tmp / "ckpt.pth")
    files["ckpt"] = tmp / "ckpt.pth"
    quantcore.save(quantcore.quantize(model), tmp / "quantized.pt")
    files["quantized"] = tmp / "quantized.pt"
    st_mod = pytest.importorskip("safetensors.torch")
    st_mod.save_file(
        {k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp / "m.safetensors")
    )
    files["safetensors"] = tmp / "m.safetensors"
    quantcore.save(quantcore.quantize(model), tmp / "quantized.safetensors")
    files["quantized_st"] = tmp / "quantized.safetensors"
    return files


@pytest.fixture(scope="session")
def sources(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Intact files of every kind, written once; fuzz cases damage copies of them."""
    return _sources(tmp_path_factory.mktemp("sources"))


SKELETON = lambda: nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 4))  # noqa: E731


@st.composite
def damage(draw: st.DrawFn) -> tuple[str, int, bytes]:
    how = draw(st.sampled_from(["truncate", "flip", "insert", "zero_tail"]))
    return how, draw(st.integers(0, 1 << 30)), draw(st.binary(min_size=1, max_size=16))


def _damaged(raw: bytes, how: str, position: int, junk: bytes) -> bytes:
    at = position % max(len(raw), 1)
    if how == "truncate":
        return raw[:at]
    if how == "flip":
        return raw[:at] + bytes(b ^ 0xFF for b in raw[at : at + len(junk)]) + raw[at + len(junk) :]
    if how == "insert":
        return raw[:at] + junk + raw[at:]
    return raw[:at] + bytes(len(raw) - at)


@fast_settings(50)
@given(
    source=st.sampled_from(["pt", "ckpt", "quantized", "safetensors", "quantized_st"]),
    harm=damage(),
)
def test_damaged_files(
    source: str,
    harm: tuple[str, int, bytes],
    sources: dict[str, Path],
    tmp_path_factory: pytest.TempPathFactory,
    tally: Tally,
) -> None:
    tally.add("fuzz cases: damaged files")
    tmp = tmp_path_factory.mktemp("damaged")
    original = sources[source]
    target = tmp / ("damaged" + "".join(original.suffixes))
    target.write_bytes(_damaged(original.read_bytes(), *harm))
    with no_hang():
        for action in (
            lambda: quantcore.quantize(target),
            lambda: quantcore.read_quantized(target),
            lambda: quantcore.load(target, SKELETON()),
        ):
            with contextlib.suppress(quantcore.QuantcoreError):
                result = action()
                if isinstance(result, nn.Module):  # a file that still loads must still run
                    with torch.inference_mode():
                        out = result(torch.randn(2, 8))
                    assert not bool(out.isnan().any())


# -- the CLI -------------------------------------------------------------------------------------
TOKENS = [
    "quantize",
    "inspect",
    "plugins",
    "config",
    "show",
    "--json",
    "-q",
    "--dtype",
    "int8",
    "fp16",
    "nope",
    "--include",
    "--exclude",
    "*",
    "re:(",
    "-o",
    "--config",
    "--help",
    "",
    "-",
    "--",
]


@fast_settings(40)
@given(data=st.data())
def test_cli_arguments(
    data: st.DataObject,
    sources: dict[str, Path],
    tmp_path_factory: pytest.TempPathFactory,
    tally: Tally,
) -> None:
    tally.add("fuzz cases: CLI (in-process)")
    tmp = tmp_path_factory.mktemp("cli")
    files = sources
    (tmp / "bad.toml").write_text("dtype = [1, 2\n")
    (tmp / "bin.toml").write_bytes(b"\xff\xfe\x00dtype")
    paths = [str(p) for p in files.values()] + [
        str(tmp / "out.pt"),
        str(tmp / "out.safetensors"),
        str(tmp),
        str(tmp / "missing.pt"),
        str(tmp / "bad.toml"),
        str(tmp / "bin.toml"),
        str(tmp / "model.pt" / "x.pt"),
        "x" * 4097,
    ]
    argv = data.draw(st.lists(st.sampled_from(TOKENS + paths) | st.text(max_size=10), max_size=7))
    if data.draw(st.booleans()):
        argv = [
            data.draw(st.sampled_from(["quantize", "inspect"])),
            data.draw(st.sampled_from(paths)),
            *argv,
        ]
    stdout, stderr = io.StringIO(), io.StringIO()
    with no_hang(), contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        try:
            code = cli_main(argv)
        except SystemExit as exc:  # argparse: usage errors and --help
            code = exc.code if isinstance(exc.code, int) else 2
    assert code in (0, 1, 2), (argv, code)
    if code == 1:
        assert "quantcore: error:" in stderr.getvalue()
    assert "Traceback" not in stderr.getvalue()


CLI_SUBPROCESS_CASES = [  # each costs a Python start and a torch import: two by default
    ["quantize", "{corrupt}", "-o", "{out}"],
    ["quantize", "{pt}", "--config", "{corrupt}", "-o", "{out}"],
    pytest.param(["quantize", "{missing}", "-o", "{out}"], marks=pytest.mark.slow),
    pytest.param(["inspect", "{corrupt}"], marks=pytest.mark.slow),
    # (an existing folder as -o is written into: docs/io.md; a path under a file cannot be)
    pytest.param(["quantize", "{pt}", "-o", "{pt}/sub/out.pt"], marks=pytest.mark.slow),
]


@pytest.mark.parametrize(
    "argv", CLI_SUBPROCESS_CASES, ids=["corrupt", "config", "missing", "inspect", "under-a-file"]
)
def test_cli_subprocess(
    argv: list[str], sources: dict[str, Path], tmp_path: Path, tally: Tally
) -> None:
    """A few cases through the real entry point: exit 1 or 2, a message, no traceback, no hang."""
    tally.add("fuzz cases: CLI (subprocess)")
    files = sources
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(files["pt"].read_bytes()[:200])
    names = {
        "missing": tmp_path / "missing.pt",
        "out": tmp_path / "out.pt",
        "corrupt": corrupt,
        "pt": files["pt"],
        "tmp": tmp_path,
    }
    args = [a.format(**names) for a in argv]
    proc = subprocess.run(
        [sys.executable, "-m", "quantcore", *args], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode in (1, 2), proc.stderr
    assert "quantcore: error:" in proc.stderr and "Traceback" not in proc.stderr


# -- the long runs -------------------------------------------------------------------------------
@pytest.mark.slow
@slow_settings(200)
@given(state_dict=state_dicts, dtype=st.sampled_from(["int8", "fp16"]))
def test_state_dicts_long_run(
    state_dict: dict[str, torch.Tensor], dtype: str, tally: Tally
) -> None:
    tally.add("fuzz cases: quantize(state dict) (slow)")
    _check_result(run_quantize(state_dict, dtype=dtype))


@pytest.mark.slow
@slow_settings(150)
@given(obj=objects | modules())
def test_objects_and_modules_long_run(obj: object, tally: Tally) -> None:
    tally.add("fuzz cases: quantize(object or module) (slow)")
    run_quantize(obj)


@pytest.mark.slow
@slow_settings(100)
@given(
    source=st.sampled_from(["pt", "ckpt", "quantized", "safetensors", "quantized_st"]),
    harm=damage(),
)
def test_damaged_files_long_run(
    source: str,
    harm: tuple[str, int, bytes],
    sources: dict[str, Path],
    tmp_path_factory: pytest.TempPathFactory,
    tally: Tally,
) -> None:
    tally.add("fuzz cases: damaged files (slow)")
    inner = test_damaged_files.hypothesis.inner_test  # type: ignore[attr-defined]
    inner(source, harm, sources, tmp_path_factory, Uncounted())
