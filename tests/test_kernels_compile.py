"""The kernels compile for a real GPU (sm_90) with the launch configs the wrappers use, and fit
in shared memory, checked without a GPU: Triton's compiler and its bundled ptxas run on CPU.

The interpreter tests check the numbers; this checks what the interpreter cannot: that the
compiled path type-checks (constexpr branches, tl.dot shapes and dtypes) and that the fixed tiles
are not too large for the hardware. Runs in a subprocess without TRITON_INTERPRET (in this
process the kernels were imported as interpreted functions).
"""
import json
import os
import subprocess
import sys
import textwrap

import pytest

# sm_80 allows 163 KB of dynamic shared memory per block, sm_90 227 KB: stay under the smaller.
SHARED_LIMIT = 166912

SCRIPT = textwrap.dedent(
    """
    import json, sys, torch, triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from xfm.kernels import attention_triton as A, contrastive_triton as C

    assert not A.INTERPRETED
    target = GPUTarget("cuda", 90, 32)
    PTR = {torch.bfloat16: "*bf16", torch.float16: "*fp16", torch.float32: "*fp32"}
    FP32_BUFFERS = {"LSE", "DELTA", "DS", "POS", "CNT", "LSE_A", "LSE_B", "CNT_A", "CNT_B", "DA", "GS", "TEMP"}

    def compile_one(fn, dtype, cfg, extra_constexprs=()):
        opts = {"num_warps": cfg["num_warps"], "num_stages": cfg["num_stages"]}
        consts = {k: v for k, v in cfg.items() if k not in opts}
        consts.update(extra_constexprs)
        sig = {}
        for name in fn.arg_names:
            if name in consts:
                sig[name] = "constexpr"
            elif name in FP32_BUFFERS:
                sig[name] = "*fp32"
            elif name in ("IDA", "IDB"):
                sig[name] = "*i64"
            elif name == "KEEP":
                sig[name] = "*i8"
            elif name.isupper() and name not in ("H", "N", "D"):
                sig[name] = PTR[dtype]
            elif name in ("scale", "dropout_p", "dropout_scale"):
                sig[name] = "fp32"
            else:
                sig[name] = "i32"
        kernel = triton.compile(ASTSource(fn, sig, constexprs=consts), target=target, options=opts)
        return {"kernel": fn.__name__, "dtype": str(dtype), "blocks": [cfg.get("BLOCK_M"), cfg.get("BLOCK_N"), cfg.get("BLOCK_D")],
                "shared": kernel.metadata.shared}

    out = []
    cases = [(torch.bfloat16, 30, 197, 64), (torch.bfloat16, 197, 197, 64), (torch.float32, 197, 197, 64)]
    if "--full" in sys.argv:
        cases += [(torch.float16, 30, 30, 128), (torch.float32, 30, 197, 128)]
    for i, (dtype, lq, lk, d) in enumerate(cases):
        cfg = A.launch_config(dtype, lq, lk, d)
        flags = {"HAS_MASK": True, "DROPOUT": i % 2 == 0}  # Philox dropout in every other case
        out.append(compile_one(A._attn_fwd, dtype, cfg, flags))
        out.append(compile_one(A._attn_bwd_dkdv, dtype, cfg, flags))
        out.append(compile_one(A._attn_bwd_dq, dtype, cfg, dict(flags, STORE_DS=True)))
    out.append(compile_one(A._dropout_mask_kernel, torch.float32,
                           {"BLOCK_M": 32, "BLOCK_N": 32, "num_warps": 4, "num_stages": 1}))
    for dtype, d in [(torch.bfloat16, 256), (torch.float32, 256)] + ([(torch.bfloat16, 512)] if "--full" in sys.argv else []):
        cfg = C.launch_config(dtype, 65536, d)
        out.append(compile_one(C._row_lse_pos, dtype, cfg))
        out.append(compile_one(C._row_grad, dtype, cfg))
    print(json.dumps(out))
    """
)


@pytest.mark.slow
def test_kernels_compile_for_sm90_within_shared_memory():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    args = [sys.executable, "-c", SCRIPT] + (["--full"] if os.environ.get("XFM_FULL_COMPILE_TEST") else [])
    res = subprocess.run(args, env=env, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    results = json.loads(res.stdout.strip().splitlines()[-1])
    assert len(results) >= 13
    too_big = [r for r in results if r["shared"] > SHARED_LIMIT]
    assert not too_big, f"kernels over {SHARED_LIMIT} bytes of shared memory: {too_big}"
