"""Save a row-sharded and a column-sharded DTensor from two gloo ranks with torch.distributed.checkpoint, as a
model trained with sharded tables is saved. Run by tests/test_checkpoints.py: python dcp_sharded_save.py DIR"""

import os
import socket
import sys

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp


def save(rank: int, path: str, port: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    mesh = init_device_mesh("cpu", (2,))
    full = torch.arange(1001 * 8, dtype=torch.float32).reshape(1001, 8)
    state = {"rows": distribute_tensor(full, mesh, [Shard(0)]), "cols": distribute_tensor(full * 2, mesh, [Shard(1)])}
    dcp.save(state, checkpoint_id=path)
    dist.destroy_process_group()


if __name__ == "__main__":
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        free = s.getsockname()[1]
    torch.multiprocessing.spawn(save, args=(sys.argv[1], free), nprocs=2)
