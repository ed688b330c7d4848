"""``optim.impl``: every torch AdamW variant makes the update of the plain per-parameter AdamW
(several steps, groups with their own lr and weight decay); CUDA-only and apex variants refuse
CPU / a missing apex with a clear error."""
from __future__ import annotations

import pytest
import torch

from xfm.model.norms import ApexUnavailableError, apex_available, layer_norm
from xfm.runtime.optimizers import OPTIM_IMPLS, make_adamw, resolve_impl

HYPER = dict(lr=1e-2, betas=(0.9, 0.98), eps=1e-8, weight_decay=0.05)


def _params(seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(s, generator=g)) for s in ((7, 5), (5,), (3, 4, 2), ())]


def _groups(params):
    return [{"params": params[:2], "weight_decay": 0.05},
            {"params": params[2:], "weight_decay": 0.0, "lr": 3e-2}]


def _train(make, steps=4):
    params = _params()
    opt = make(_groups(params))
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        for p in params:
            p.grad = torch.randn(p.shape, generator=g)
        opt.step()
    return params, opt


def _plain(groups):
    return torch.optim.AdamW(groups, foreach=False, fused=False, **HYPER)


def _cpu_fused_supported() -> bool:
    try:
        torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))], fused=True).step()
        return True
    except (RuntimeError, ValueError):
        return False


VARIANTS = {
    "impl=torch": lambda gr: make_adamw(gr, "torch", device="cpu", **HYPER),
    "impl=auto": lambda gr: make_adamw(gr, "auto", **HYPER),
    "impl=torch foreach": lambda gr: torch.optim.AdamW(gr, foreach=True, **HYPER),
    "impl=torch_fused": pytest.param(lambda gr: make_adamw(gr, "torch_fused", device="cpu", **HYPER),
                                     marks=pytest.mark.skipif(not _cpu_fused_supported(),
                                                              reason="this torch has no fused AdamW on CPU")),
}


@pytest.mark.parametrize("make", list(VARIANTS.values()), ids=list(VARIANTS))
def test_variant_makes_the_plain_adamw_update(make):
    ref, ref_opt = _train(_plain)
    got, opt = _train(make)
    for p, r in zip(got, ref):
        torch.testing.assert_close(p, r, rtol=1e-6, atol=1e-7)
        st, rst = opt.state[p], ref_opt.state[r]
        torch.testing.assert_close(st["exp_avg_sq"], rst["exp_avg_sq"], rtol=1e-6, atol=1e-9)


def test_control_other_hyperparameters_differ():
    ref, _ = _train(_plain)
    other, _ = _train(lambda gr: torch.optim.AdamW(gr, foreach=False, **dict(HYPER, eps=1e-3)))
    assert not torch.allclose(other[0], ref[0], rtol=1e-6, atol=1e-7)


def test_auto_means_plain_torch_on_cpu_and_fused_on_cuda():
    assert resolve_impl("auto", "cpu") == "torch"
    assert resolve_impl("auto", "cuda") == "torch_fused"
    opt = make_adamw([torch.nn.Parameter(torch.zeros(3))], "auto")
    assert type(opt) is torch.optim.AdamW and not opt.defaults.get("fused")


def test_bad_and_unavailable_impls_are_clear_errors():
    with pytest.raises(ValueError, match="optim.impl must be one of"):
        resolve_impl("adam8bit", "cpu")
    for impl in ("deepspeed_fused", "apex_fused"):
        with pytest.raises(ValueError, match=f"optim.impl={impl} is a CUDA kernel"):
            resolve_impl(impl, "cpu")
    assert set(OPTIM_IMPLS) == {"auto", "torch", "torch_fused", "deepspeed_fused", "apex_fused"}


@pytest.mark.skipif(apex_available(), reason="apex is installed here")
def test_apex_absent_errors_say_how_to_install():
    with pytest.raises(ApexUnavailableError, match="github.com/NVIDIA/apex"):
        resolve_impl("apex_fused", "cuda")
    with pytest.raises(ApexUnavailableError, match="model.norm_impl=apex.*github.com/NVIDIA/apex"):
        layer_norm(8, 1e-5, "apex")
    from xfm.model import XFM
    from xfm.model_config import model_config

    with pytest.raises(ApexUnavailableError, match="not installed"):
        XFM(model_config("tiny", norm_impl="apex"))
    with pytest.raises(ValueError, match="norm_impl"):
        model_config("tiny", norm_impl="fused")


def test_base_mixin_runs_in_front_of_the_implementation():
    calls = []

    class Counting:
        def step(self, closure=None):
            calls.append(1)
            return super().step(closure)

    p = torch.nn.Parameter(torch.ones(2))
    opt = make_adamw([p], "torch", device="cpu", base=Counting, **HYPER)
    p.grad = torch.ones(2)
    opt.step()
    assert calls == [1] and isinstance(opt, torch.optim.AdamW) and not torch.equal(p, torch.ones(2))
