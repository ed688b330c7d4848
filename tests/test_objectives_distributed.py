"""gather_with_grad over a real 2-process gloo group: every rank sees all features, the gradient
flows back only through the local slice, and ITC over the gathered features equals ITC computed
on the concatenated batch in one process."""
import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from xfm.distributed import gather_no_grad, gather_with_grad
from xfm.kernels import contrastive_loss_reference


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _features(seed):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(3, 8, generator=g), dim=-1), F.normalize(torch.randn(3, 8, generator=g), dim=-1)


def _worker(rank, port, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        img, txt = _features(rank)
        img.requires_grad_(True)
        txt.requires_grad_(True)
        ids = torch.tensor([10 * rank, 10 * rank + 1, 7])  # id 7 repeats across ranks
        all_img = gather_with_grad(img, None, 2, rank)
        all_txt = gather_with_grad(txt, None, 2, rank)
        all_ids = gather_no_grad(ids, None, 2)
        loss = contrastive_loss_reference(all_img, all_txt, torch.tensor(0.1), all_ids)
        loss.backward()
        try:  # a wrong rank would silently misplace the local slice: refused (both ranks)
            gather_with_grad(img, None, 2, 1 - rank)
            wrong_rank_error = ""
        except ValueError as e:
            wrong_rank_error = str(e)
        torch.save({"loss": loss.detach(), "img_grad": img.grad, "all_ids": all_ids,
                    "wrong_rank_error": wrong_rank_error,
                    "all_img": all_img.detach()}, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_gather_with_grad_two_ranks(tmp_path):
    mp.start_processes(_worker, args=(_free_port(), str(tmp_path)), nprocs=2, start_method="spawn")
    r = [torch.load(tmp_path / f"rank{i}.pt") for i in range(2)]
    feats = [_features(i) for i in range(2)]
    img = torch.cat([f[0] for f in feats]).requires_grad_(True)
    txt = torch.cat([f[1] for f in feats])
    ids = torch.tensor([0, 1, 7, 10, 11, 7])
    assert all("LossContext.rank" in x["wrong_rank_error"] for x in r)
    assert torch.equal(r[0]["all_ids"], ids) and torch.equal(r[1]["all_ids"], ids)
    torch.testing.assert_close(r[0]["all_img"], img.detach())
    loss = contrastive_loss_reference(img, txt, torch.tensor(0.1), ids)
    torch.testing.assert_close(r[0]["loss"], loss.detach())
    torch.testing.assert_close(r[1]["loss"], loss.detach())
    loss.backward()
    # each rank's local slice gets exactly the single-process gradient of its rows
    torch.testing.assert_close(r[0]["img_grad"], img.grad[:3])
    torch.testing.assert_close(r[1]["img_grad"], img.grad[3:])
