"""ZeRO-3 rule of docs/INTERFACES.md: a parameter is read only while a module that owns it
(directly) is inside its ``__call__`` - that is where ZeRO-3 gathers it. Checked by watching every
torch function call of all four streams' objectives: a Parameter argument must belong to a module
on the current call stack."""
import pytest
import torch
from torch.overrides import TorchFunctionMode

from fixtures_model import make_stream_batch
from xfm.model import XFM
from xfm.model_config import model_config
from xfm.objectives import LossContext, STREAM_LOSSES


class ParameterReadAudit(TorchFunctionMode):
    def __init__(self, model):
        super().__init__()
        self.stack = []
        self.violations = set()
        self.names = {id(p): n for n, p in model.named_parameters(remove_duplicate=False)}
        self.handles = []
        for module in model.modules():
            self.handles.append(module.register_forward_pre_hook(self._enter))
            self.handles.append(module.register_forward_hook(self._leave))

    def _enter(self, module, args):
        self.stack.append(module)

    def _leave(self, module, args, out):
        assert self.stack.pop() is module

    def _owned(self, p) -> bool:
        return any(any(q is p for q in m._parameters.values()) for m in self.stack)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        for a in list(args) + list(kwargs.values()):
            for t in (a if isinstance(a, (list, tuple)) else (a,)):
                if isinstance(t, torch.nn.Parameter) and not self._owned(t):
                    self.violations.add((self.names.get(id(t), "?"), getattr(func, "__name__", str(func))))
        return func(*args, **kwargs)

    def remove(self):
        for h in self.handles:
            h.remove()


@pytest.mark.parametrize("stream", sorted(STREAM_LOSSES))
def test_every_parameter_is_read_inside_its_own_module(stream):
    torch.manual_seed(0)
    cfg = model_config("tiny")
    model = XFM(cfg).train()
    batch = make_stream_batch(stream, cfg)
    audit = ParameterReadAudit(model)
    try:
        with audit:
            losses = STREAM_LOSSES[stream](model, batch, LossContext(generator=torch.Generator().manual_seed(0)))
    finally:
        audit.remove()
    assert losses
    assert not audit.violations, f"parameters read outside their module's __call__: {sorted(audit.violations)}"


def test_audit_catches_a_read_outside_the_owner():
    model = XFM(model_config("tiny"))
    audit = ParameterReadAudit(model)
    try:
        with audit:
            model.heads.temp.temp * 2  # reading the raw parameter, not calling heads.temp()
            model.heads.temp()
    finally:
        audit.remove()
    assert {n for n, _ in audit.violations} == {"heads.temp.temp"}
