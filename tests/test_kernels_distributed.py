"""The fused contrastive loss on features gathered from two real gloo ranks with
``xfm.distributed.gather_with_grad`` (the model's ITC path): each rank's loss, its local feature
gradients and the temperature gradient equal the reference on the concatenated batch in one process.

The Triton kernels run in the interpreter in both ranks (spawned processes inherit
TRITON_INTERPRET=1 from conftest.py). A repeated image id spans the two ranks, so the soft targets
cross the rank boundary.
"""
import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

N_LOCAL, DIM = 19, 16  # 38 gathered rows: not a multiple of any tile


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _local(rank):
    g = torch.Generator().manual_seed(100 + rank)
    img = F.normalize(torch.randn(N_LOCAL, DIM, generator=g), dim=-1)
    txt = F.normalize(torch.randn(N_LOCAL, DIM, generator=g), dim=-1)
    ids = torch.randint(0, 12, (N_LOCAL,), generator=g)  # ids repeat within and across ranks
    return img, txt, ids


def _worker(rank, port, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        import xfm.kernels as K
        from xfm.distributed import gather_no_grad, gather_with_grad

        img, txt, ids = _local(rank)
        img.requires_grad_(True)
        txt.requires_grad_(True)
        temp = torch.tensor(0.07, requires_grad=True)
        loss = K.contrastive_loss(gather_with_grad(img, None, 2, rank), gather_with_grad(txt, None, 2, rank),
                                  temp, gather_no_grad(ids, None, 2), backend="triton")
        fused = type(loss.grad_fn).__name__ == "_TritonContrastiveBackward"
        loss.backward()
        torch.save({"loss": loss.detach(), "fused": fused, "img_grad": img.grad, "txt_grad": txt.grad,
                    "temp_grad": temp.grad}, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_fused_contrastive_on_features_gathered_with_grad(tmp_path):
    from xfm.kernels import contrastive_loss_reference

    # fork: the children reuse this process's imports (spawn re-imports torch and triton: ~10 s more
    # on 2 busy cores); spawn only where this process already holds a default group a fork would copy
    method = "spawn" if dist.is_initialized() else "fork"
    mp.start_processes(_worker, args=(_free_port(), str(tmp_path)), nprocs=2, start_method=method)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    parts = [_local(r) for r in range(2)]
    img = torch.cat([p[0] for p in parts]).requires_grad_(True)
    txt = torch.cat([p[1] for p in parts]).requires_grad_(True)
    ids = torch.cat([p[2] for p in parts])
    assert set(ids[:N_LOCAL].tolist()) & set(ids[N_LOCAL:].tolist()), "want an id shared across ranks"
    temp = torch.tensor(0.07, requires_grad=True)
    ref = contrastive_loss_reference(img, txt, temp, ids)
    ref.backward()
    for r, got in enumerate(ranks):
        assert got["fused"], "the Triton path was not taken"
        rows = slice(r * N_LOCAL, (r + 1) * N_LOCAL)
        torch.testing.assert_close(got["loss"], ref.detach(), atol=1e-6, rtol=1e-5)
        # the gradient of the local slice is that slice's rows of the full-batch gradient
        torch.testing.assert_close(got["img_grad"], img.grad[rows], atol=1e-7, rtol=1e-4)
        torch.testing.assert_close(got["txt_grad"], txt.grad[rows], atol=1e-7, rtol=1e-4)
        torch.testing.assert_close(got["temp_grad"], temp.grad, atol=1e-6, rtol=1e-4)
