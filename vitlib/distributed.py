"""Past one GPU: one run trained by several processes, with PyTorch's DistributedDataParallel.

    torchrun --nproc_per_node=4 -m vitlib train --profile full --experiment finetune

torchrun starts the processes and tells each its place in environment variables (RANK,
WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT); the command line's `session()` joins them
in one process group (NCCL on CUDA, one GPU per LOCAL_RANK; gloo on the CPU). Library code
reads no environment: it asks torch.distributed whether a group is there, so a plain process
runs exactly as before (`world_size()` 1, `is_main()` True, `local_batch` the whole batch,
`objective` the bare loss, `batch_totals` the batch's own loss and hits).

The global batch stays TrainConfig.batch_size, whatever the number of processes N: every rank
walks the epoch's one order, rank r takes the r-th of N equal slices of each batch
(`local_batch`), each rank's loss is weighted by its share (`weighted`) so that DDP's averaged,
all-reduced gradient is the whole batch's mean, and the history's sums are added over ranks
(`batch_totals`). Augmentation draws from torch's RNG, image after image, so every rank
transforms the whole batch from one shared RNG state and keeps its slice: the draws are one
process's. Hence 1 and N processes take the same steps, up to float rounding. Rank 0 alone
writes (run folder, checkpoints, progress bars); each rank evaluates whole splits itself.
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import logging
import os
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn

from vitlib.errors import ExperimentError

__all__ = [
    "agree",
    "batch_totals",
    "check_batch_size",
    "init_from_env",
    "is_main",
    "launched_world_size",
    "local_batch",
    "main_first",
    "objective",
    "rank",
    "session",
    "share_rng",
    "weighted",
    "world_size",
]

log = logging.getLogger(__name__)

# How long a rank waits for the others at a collective: a first run decodes the data set on
# every rank before the first one, which can take long (a dead rank ends the job sooner: torchrun
# stops the others).
TIMEOUT = datetime.timedelta(minutes=60)
TORCHRUN = "torchrun --nproc_per_node=N -m vitlib train ..."


# --------------------------------------------------------------------------------------------
# Who we are
# --------------------------------------------------------------------------------------------


def active() -> bool:
    """Whether this process is one of several in an initialised process group."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    """The number of processes training together (1 for a plain process)."""
    return dist.get_world_size() if active() else 1


def rank() -> int:
    """This process's place among them, from 0 (0 for a plain process)."""
    return dist.get_rank() if active() else 0


def is_main() -> bool:
    """Whether this process writes: rank 0, or a plain process."""
    return rank() == 0


def launched_world_size() -> int:
    """WORLD_SIZE as torchrun sets it (1 when not launched by torchrun); for the CLI."""
    text = os.environ.get("WORLD_SIZE", "1")
    try:
        return int(text)
    except ValueError:
        raise ExperimentError(
            f"WORLD_SIZE={text!r} is not a number; start with {TORCHRUN}"
        ) from None


# --------------------------------------------------------------------------------------------
# Joining and leaving the group
# --------------------------------------------------------------------------------------------


def init_from_env() -> None:
    """Join the process group torchrun's environment describes: NCCL with GPU LOCAL_RANK when
    CUDA is there, gloo on the CPU. Nothing to do for a world of one."""
    if launched_world_size() <= 1 or active():
        return
    missing = [k for k in ("RANK", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing:
        raise ExperimentError(
            f"WORLD_SIZE={os.environ['WORLD_SIZE']} but {', '.join(missing)} not set: start "
            f"the processes with {TORCHRUN}"
        )
    backend = "gloo"
    if torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if local >= torch.cuda.device_count():
            raise ExperimentError(
                f"LOCAL_RANK {local} but this node sees {torch.cuda.device_count()} GPU(s): "
                "start at most one process per GPU (--nproc_per_node)"
            )
        torch.cuda.set_device(local)  # "cuda" means this rank's GPU from here on
        backend = "nccl"
    dist.init_process_group(backend, timeout=TIMEOUT)  # env://: MASTER_ADDR, RANK, WORLD_SIZE
    log.info("rank %d of %d joined (%s)", rank(), world_size(), backend)


@contextlib.contextmanager
def session() -> Iterator[int]:
    """Be one of torchrun's processes while the block runs (`init_from_env`), and leave the
    group after it; yields the world size. A plain process gets 1 and no group."""
    if launched_world_size() <= 1 or active():
        yield world_size()
        return
    init_from_env()
    try:
        yield world_size()
    finally:
        dist.destroy_process_group()


@contextlib.contextmanager
def main_first() -> Iterator[None]:
    """Run the block on rank 0 first and on the others once it has finished (a download, a
    check that writes): they then find its work done. Plain processes just run it."""
    if active() and not is_main():
        _barrier()
    yield
    if active() and is_main():
        _barrier()  # not on failure: rank 0 ends and torchrun stops the others


def _barrier() -> None:
    if dist.get_backend() == "nccl":
        dist.barrier(device_ids=[torch.cuda.current_device()])
    else:
        dist.barrier()


# --------------------------------------------------------------------------------------------
# One global batch, split among the ranks
# --------------------------------------------------------------------------------------------


def check_batch_size(batch_size: int, key: str) -> None:
    """ExperimentError unless the global batch `batch_size` (setting `key`) splits evenly
    among the processes: each takes batch_size / world_size of every batch."""
    n = world_size()
    if batch_size % n:
        fits = [k for k in range(n, 0, -1) if batch_size % k == 0][0]
        raise ExperimentError(
            f"{key} = {batch_size} cannot be split among {n} processes: the global batch stays "
            f"{key} and each process takes an equal share of it. Use a multiple of {n} "
            f"(--set {key}={(batch_size // n + 1) * n}) or run {fits} process"
            f"{'es' if fits > 1 else ''} (--nproc_per_node)"
        )


def local_batch(split: Any, idx: np.ndarray, *, whole: bool) -> tuple[Tensor, Tensor, int]:
    """This rank's part of the global batch `idx` of `split` (any object with `batch(idx) ->
    (x (B, ...), y (B,))`): (x, y, n), n the number of its own items (`np.array_split` shares:
    equal for a full batch). With `whole` (the split augments from torch's RNG, whose draw for
    an image depends on every draw before it), each rank reads and transforms the whole batch
    and keeps its slice, so the draws are a single process's. A rank whose share is empty (a
    last batch smaller than the world) gets the batch's first item with n = 0, which `weighted`
    weights by 0: DDP needs every rank in every step. A plain process gets the whole batch."""
    if not active():
        return (*split.batch(idx), len(idx))
    n_all, r, n_ranks = len(idx), rank(), world_size()
    start, stop = (r * n_all) // n_ranks, ((r + 1) * n_all) // n_ranks
    if whole:
        x, y = split.batch(idx)
        part = slice(start, stop) if stop > start else slice(0, 1)
        return x[part], y[part], stop - start
    return (*split.batch(idx[start:stop] if stop > start else idx[:1]), stop - start)


class _Objective(nn.Module):
    """loss_fn(net, x, y) as a module, so DDP's forward runs it: a distilled ViT's loss calls
    `forward_distilled`, which a DDP around the net alone would not see."""

    def __init__(self, net: nn.Module, loss_fn: Callable[..., tuple[Tensor, Tensor]]) -> None:
        super().__init__()
        self.net, self.loss_fn = net, loss_fn

    def forward(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        return self.loss_fn(self.net, x, y)


def objective(
    net: nn.Module, loss_fn: Callable[..., tuple[Tensor, Tensor]], device: torch.device
) -> Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]:
    """(x, y) -> (loss, logits) of `net` under `loss_fn`; among several processes, inside a
    DistributedDataParallel, whose backward all-reduces (averages) the gradients and whose
    start copies rank 0's weights to all. BatchNorm (a conv stem, a CNN) becomes SyncBatchNorm
    on CUDA, so its statistics are the global batch's; gloo has no SyncBatchNorm, so on the
    CPU each rank normalises by its own share (a result that depends on the world size)."""
    if not active():
        return functools.partial(loss_fn, net)
    module: nn.Module = _Objective(net, loss_fn)
    has_bn = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in net.modules())
    if has_bn and device.type == "cuda":
        module = nn.SyncBatchNorm.convert_sync_batchnorm(module)  # in place, below the root
    elif has_bn and is_main():
        log.warning(
            "BatchNorm on the CPU: each of the %d processes normalises by its own share of "
            "the batch, so the result depends on the number of processes", world_size()
        )  # fmt: skip
    if device.type != "cuda":
        return nn.parallel.DistributedDataParallel(module)
    index = device.index if device.index is not None else torch.cuda.current_device()
    return nn.parallel.DistributedDataParallel(module, device_ids=[index])


def weighted(loss: Tensor, n: int, batch: int) -> Tensor:
    """The loss to back-propagate: the mean over this rank's `n` items of a `batch`-item global
    batch, weighted by n * world_size / batch, so DDP's average over ranks is the global mean
    (the weight is 1 for equal shares). A plain process's loss as it is."""
    return loss * (n * world_size() / batch) if active() else loss


def batch_totals(loss: Tensor, correct: Tensor, batch: int) -> tuple[float, int]:
    """(the global batch's mean loss, its number of right answers) from this rank's mean
    `loss` and `correct` (n,) bools over its own n items, added over ranks: the same numbers on
    every rank (so a non-finite loss stops them all at once) and a single process's."""
    if not active():
        return loss.item(), int(correct.sum())
    totals = torch.stack([loss.detach().double() * len(correct), correct.sum().double()])
    dist.all_reduce(totals)
    loss_sum, hits = totals.tolist()
    return loss_sum / batch, round(hits)


# --------------------------------------------------------------------------------------------
# Keeping the ranks in step
# --------------------------------------------------------------------------------------------


def share_rng() -> None:
    """Give every rank rank 0's torch RNG state (augmentation draws from it), as a resume
    gives every rank the checkpoint's."""
    if active():
        state = [torch.get_rng_state()]
        dist.broadcast_object_list(state, src=0)
        torch.set_rng_state(state[0])


def agree(value: Any, what: str) -> None:
    """ExperimentError unless every rank has the same `value` (e.g. the epoch a resume starts
    from: a rank on another node that cannot see the checkpoint would start over)."""
    if not active():
        return
    values: list[Any] = [None] * world_size()
    dist.all_gather_object(values, value)
    if any(v != values[0] for v in values):
        raise ExperimentError(
            f"the processes disagree on {what}: {values} (by rank). A resumed multi-node run "
            "needs run_root on a file system every node sees (--set run_root=...)"
        )
