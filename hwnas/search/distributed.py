"""Data-parallel search: the process group of a run launched by `torchrun`, and the few
collectives the search needs, in one place.

A search launched by `torchrun --nproc-per-node N ...` joins the process group torchrun
describes in its environment (NCCL for CUDA devices, gloo for the CPU), unless the caller has
already initialised one. Every rank then holds the same supernet, draws the same branch
configurations (per-step seeds), and trains on its shard of every global batch; DDP averages
the weight gradients, `average_gradients` the fitness indicators', and batch norms use the
statistics of the global batch (`hwnas.supernet.global_bn`).

A world of one process is the plain run: every collective here returns its input unchanged,
so the search has one code path.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
from torch import nn

from hwnas.errors import HwnasError

T = TypeVar("T")

# torch.distributed.nn.functional binds the default process group into its functions' default
# arguments when it is first imported, and torch imports it lazily: torch._dynamo does, on the
# first call of any torch.library custom op (the fused layer's kernels). First imported while a
# group exists, it keeps that group alive past destroy_process_group(): the group's gloo threads
# then run until the interpreter exits, where the process can abort ("terminate called without
# an active exception", SIGABRT). Imported here, before any group, it binds None.
if torch.distributed.is_available():
    import torch.distributed.nn.functional  # noqa: F401


@dataclass
class Group:
    """This process's place in the run: rank, world size, device; `owned` when the search
    initialised the process group (and so destroys it at the end)."""

    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")
    owned: bool = False

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def parallel(self) -> bool:
        return self.world > 1

    # -- collectives (identities in a world of one) ------------------------------------------------

    def from_main(self, decide: Callable[[], T]) -> T:
        """`decide()` on rank 0, its result on every rank. When it raises there, every rank raises
        (an HwnasError with rank 0's message) instead of waiting for a result that never comes."""
        if not self.parallel:
            return decide()
        box: list[Any] = [None]
        failure: Exception | None = None
        if self.main:
            try:
                box[0] = ("ok", decide())
            except HwnasError as exc:  # a refusal: the same one-line message on every rank
                box[0], failure = ("refused", str(exc)), exc
            except Exception as exc:  # noqa: BLE001 - handed to every rank, then raised as it was
                box[0], failure = ("failed", f"{type(exc).__name__}: {exc}"), exc
        torch.distributed.broadcast_object_list(box, src=0, device=self._object_device)
        if failure is not None:
            raise failure
        kind, value = box[0]
        if kind == "refused":
            raise HwnasError(value)
        if kind == "failed":
            raise HwnasError(f"rank {self.rank}: rank 0 failed ({value}); its own message says more")
        return value  # type: ignore[no-any-return]

    def gather(self, mine: Sequence[T]) -> list[T]:
        """Every rank's items in rank order, on every rank (each rank's list as `share` cut it)."""
        if not self.parallel:
            return list(mine)
        parts: list[Any] = [None] * self.world
        torch.distributed.all_gather_object(parts, list(mine))
        return [item for part in parts for item in part]

    def share(self, items: Sequence[T]) -> list[T]:
        """This rank's contiguous slice of `items` (ranks' slices differ in size by one at most)."""
        per, extra = divmod(len(items), self.world)
        start = self.rank * per + min(self.rank, extra)
        return list(items[start:start + per + (self.rank < extra)])

    def mean(self, value: float) -> float:
        """The mean of a number over the ranks (a logged loss: the global batch's)."""
        if not self.parallel:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=self._tensor_device)
        torch.distributed.all_reduce(t)
        return float(t) / self.world

    def average_gradients(self, params: Iterable[nn.Parameter]) -> None:
        """Each gradient becomes its mean over the ranks (the parameters outside DDP)."""
        if not self.parallel:
            return
        grads = [p.grad for p in params if p.grad is not None]
        if not grads:
            return
        flat = torch.cat([g.reshape(-1) for g in grads]).to(self._tensor_device)
        torch.distributed.all_reduce(flat)
        flat /= self.world
        for g, part in zip(grads, flat.split([g.numel() for g in grads])):
            g.copy_(part.view_as(g))

    def wrap(self, net: nn.Module, sync_buffers: bool = False) -> nn.Module:
        """The module that trains the weights: DDP around `net` (sampled subnets leave branches
        unused; buffers, i.e. batch norm statistics, sent from rank 0 before every forward only
        with `sync_buffers`: global batch norms keep them equal), or `net` itself in a world of one."""
        if not self.parallel:
            return net
        from torch.nn.parallel import DistributedDataParallel

        # newer torch renamed broadcast_buffers (syncing at construction is harmless: ranks start equal)
        name = ("forward_sync_buffers" if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
                else "broadcast_buffers")
        options: dict[str, Any] = {name: sync_buffers}
        # device_ids stays None: DDP would copy every input to the GPU, the configurations' bool
        # tensors included, and reading them back (which branches are on) would sync every cell
        return DistributedDataParallel(net, device_ids=None, find_unused_parameters=True, **options)

    def barrier(self) -> None:
        if self.parallel:
            torch.distributed.barrier()

    def close(self) -> None:
        if self.owned and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
            self.owned = False

    @property
    def _tensor_device(self) -> torch.device:
        """NCCL communicates device tensors; gloo host ones."""
        return self.device if self._backend == "nccl" else torch.device("cpu")

    @property
    def _object_device(self) -> torch.device | None:
        return self.device if self._backend == "nccl" else None

    @property
    def _backend(self) -> str:
        return str(torch.distributed.get_backend()) if self.parallel else ""


def lost_peer(exc: BaseException) -> bool:
    """Whether a collective failed because another rank went away (killed, crashed, or stopped by
    its own error): the connection to it was lost. Other errors of gloo or NCCL are this rank's own."""
    if isinstance(exc, getattr(torch.distributed, "DistNetworkError", ())):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and any(m in text for m in ("Connection reset by peer",
                                                                     "Connection closed by peer", "Broken pipe"))


def launched_world() -> int:
    """The world size torchrun (or another launcher of torch.distributed) set, 1 if none."""
    raw = os.environ.get("WORLD_SIZE", "1").strip() or "1"
    try:
        return int(raw)
    except ValueError:
        raise HwnasError(f"WORLD_SIZE={raw!r} is not a number: launch data-parallel runs with torchrun") from None


def join(device: str | torch.device | None) -> Group:
    """This process's Group. Under torchrun (WORLD_SIZE > 1) it joins the process group (NCCL
    when the run trains on CUDA devices, gloo otherwise), taking device cuda:LOCAL_RANK unless
    `device` names one; an already initialised group is used as it is."""
    dist = torch.distributed
    cuda = torch.cuda.is_available() if device is None else torch.device(device).type == "cuda"
    if not (dist.is_available() and (dist.is_initialized() or launched_world() > 1)):
        chosen = torch.device(device) if device is not None else torch.device("cuda" if cuda else "cpu")
        return Group(device=chosen)
    owned = not dist.is_initialized()
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if cuda:
        chosen = torch.device(device) if device is not None else torch.device("cuda")
        per_node = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
        if owned and chosen.index is not None and per_node > 1:  # NCCL takes one GPU per process
            raise HwnasError(f"--device {device} would put all {per_node} processes of this node on one GPU: give "
                             f"--device cuda (each process takes cuda:LOCAL_RANK; choose the GPUs with "
                             f"CUDA_VISIBLE_DEVICES)")
        if chosen.index is None:
            chosen = torch.device("cuda", local)
        if chosen.index >= torch.cuda.device_count():
            raise HwnasError(f"local rank {local} has no GPU (torch sees {torch.cuda.device_count()} on this node): "
                             f"start as many processes per node as there are GPUs (torchrun --nproc-per-node)")
        torch.cuda.set_device(chosen)
    else:
        chosen = torch.device(device) if device is not None else torch.device("cpu")
    if owned:
        try:
            dist.init_process_group("nccl" if cuda else "gloo", device_id=chosen if cuda else None)
        except (ValueError, RuntimeError) as exc:
            raise HwnasError(f"cannot join the data-parallel run described by torchrun's environment "
                             f"(MASTER_ADDR, MASTER_PORT, RANK, WORLD_SIZE): {exc}; launch with torchrun, or unset "
                             f"WORLD_SIZE to run as one process") from None
    return Group(dist.get_rank(), dist.get_world_size(), chosen, owned)
