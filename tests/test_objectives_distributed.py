"""gather_with_grad over a real 2-process gloo group: every rank sees all features, the gradient
flows back only through the local slice, and ITC over the gathered features equals ITC computed
on the concatenated batch in one process - with equal row counts (pairs) and with a different
row count per rank (region rows vary with the pictures: nothing may be dropped or padded in)."""
import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from xfm.distributed import gather_no_grad, gather_with_grad
from xfm.kernels import contrastive_loss_reference

CASES = {"equal": (3, 3), "unequal": (2, 5)}  # rows on rank 0, rank 1


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _features(seed, rows):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(rows, 8, generator=g), dim=-1), F.normalize(torch.randn(rows, 8, generator=g), dim=-1)


def _ids(rank, rows):
    return torch.tensor([10 * rank + i for i in range(rows - 1)] + [7])  # id 7 repeats across ranks


def _worker(rank, port, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        out = {}
        for case, sizes in CASES.items():
            img, txt = _features(rank, sizes[rank])
            img.requires_grad_(True)
            txt.requires_grad_(True)
            all_img = gather_with_grad(img, None, 2, rank)
            all_txt = gather_with_grad(txt, None, 2, rank)
            all_ids = gather_no_grad(_ids(rank, sizes[rank]), None, 2)
            loss = contrastive_loss_reference(all_img, all_txt, torch.tensor(0.1), all_ids)
            loss.backward()
            out[case] = {"loss": loss.detach(), "img_grad": img.grad, "txt_grad": txt.grad, "all_ids": all_ids,
                         "all_img": all_img.detach(), "all_txt": all_txt.detach()}
        try:  # a wrong rank would silently misplace the local slice: refused (both ranks)
            gather_with_grad(img, None, 2, 1 - rank)
            out["wrong_rank_error"] = ""
        except ValueError as e:
            out["wrong_rank_error"] = str(e)
        try:  # rows may differ, widths may not: an error on every rank, no hang
            gather_no_grad(torch.zeros(2, 4 + rank), None, 2)
            out["width_error"] = ""
        except ValueError as e:
            out["width_error"] = str(e)
        # a rank with no row at all still joins and contributes nothing
        out["empty"] = gather_no_grad(torch.arange(3 * rank, dtype=torch.long), None, 2)
        torch.save(out, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_gather_with_grad_two_ranks(tmp_path):
    mp.start_processes(_worker, args=(_free_port(), str(tmp_path)), nprocs=2, start_method="spawn")
    r = [torch.load(tmp_path / f"rank{i}.pt") for i in range(2)]
    for case, sizes in CASES.items():
        feats = [_features(i, sizes[i]) for i in range(2)]
        img = torch.cat([f[0] for f in feats]).requires_grad_(True)
        txt = torch.cat([f[1] for f in feats]).requires_grad_(True)
        ids = torch.cat([_ids(i, sizes[i]) for i in range(2)])
        got = [x[case] for x in r]
        assert got[0]["all_img"].shape[0] == sum(sizes), (case, got[0]["all_img"].shape)  # no row dropped
        for g in got:
            assert torch.equal(g["all_ids"], ids), case
            torch.testing.assert_close(g["all_img"], img.detach(), msg=case)
            torch.testing.assert_close(g["all_txt"], txt.detach(), msg=case)
        loss = contrastive_loss_reference(img, txt, torch.tensor(0.1), ids)
        torch.testing.assert_close(got[0]["loss"], loss.detach(), msg=case)
        torch.testing.assert_close(got[1]["loss"], loss.detach(), msg=case)
        loss.backward()
        # each rank's local slice gets exactly the single-process gradient of its rows
        n0 = sizes[0]
        torch.testing.assert_close(got[0]["img_grad"], img.grad[:n0], msg=case)
        torch.testing.assert_close(got[1]["img_grad"], img.grad[n0:], msg=case)
        torch.testing.assert_close(got[0]["txt_grad"], txt.grad[:n0], msg=case)
        torch.testing.assert_close(got[1]["txt_grad"], txt.grad[n0:], msg=case)
    assert all("LossContext.rank" in x["wrong_rank_error"] for x in r)
    assert all("differ beyond the first dimension" in x["width_error"] for x in r)
    assert all(torch.equal(x["empty"], torch.arange(3)) for x in r)
