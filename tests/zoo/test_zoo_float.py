"""Float sanity test for the model zoo: every entry builds deterministically,
runs twice with identical results, and returns a finite float tensor.
"""

from __future__ import annotations

import pytest
import torch

from . import (
    LAYER_KINDS,
    REQUIRE_TRANSFORMERS_ENV_VAR,
    all_zoo,
    hf_zoo,
    hf_zoo_unavailable,
    scan_layer_kinds,
    torch_zoo,
    transformers_installed,
    transformers_required,
)

ZOO = all_zoo()


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models: intra-op threading only adds latency, and on a busy 2-core
    box every op can stall ~7 ms waiting for the second OpenMP thread."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_zoo_is_populated():
    names = [e.name for e in ZOO]
    assert len(names) == len(set(names)), "duplicate entry names"
    assert len(torch_zoo()) >= 40
    covered = set().union(*(e.layer_kinds for e in torch_zoo()))
    assert covered == LAYER_KINDS - {"hf_conv1d"}


def test_hugging_face_zoo_is_there():
    """The 37 HF entries must not vanish silently: missing transformers is a skip that says
    so; transformers installed but failing to import, or missing where CI requires it
    (QUANTCORE_REQUIRE_TRANSFORMERS=1), is a failure."""
    reason = hf_zoo_unavailable()
    if reason is not None:
        assert not transformers_installed(), f"transformers is installed but: {reason}"
        assert not transformers_required(), f"{REQUIRE_TRANSFORMERS_ENV_VAR} is set but: {reason}"
        pytest.skip(f"the Hugging Face zoo entries are not run: {reason}")
    hf = hf_zoo()
    assert len(hf) >= 22
    assert "hf_conv1d" in set().union(*(e.layer_kinds for e in hf))


@pytest.mark.parametrize("entry", ZOO, ids=[e.name for e in ZOO])
def test_entry_float(entry):
    m1 = entry.build()
    m2 = entry.build()
    assert not m1.training and not m2.training
    sd1, sd2 = m1.state_dict(), m2.state_dict()
    assert sd1.keys() == sd2.keys()
    for k in sd1:
        assert torch.equal(sd1[k], sd2[k]), f"build() not seeded: {k} differs"

    assert scan_layer_kinds(m1) == entry.layer_kinds, (
        f"declared {sorted(entry.layer_kinds)} vs found {sorted(scan_layer_kinds(m1))}"
    )

    out1 = entry.run(m1, entry.make_inputs())
    out2 = entry.run(m1, entry.make_inputs())
    out3 = entry.run(m2, entry.make_inputs())
    assert isinstance(out1, torch.Tensor)
    assert out1.dtype == torch.float32, out1.dtype
    assert out1.numel() > 0
    assert torch.isfinite(out1).all()
    assert out1.abs().max() > 0
    torch.testing.assert_close(out1, out2, rtol=0, atol=0)
    torch.testing.assert_close(out1, out3, rtol=0, atol=0)
