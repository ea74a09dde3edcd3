"""The torch.distributed process group of the training workers, kept off the network when they share a machine.

Ray Train's default rendezvous (env://) starts a TCPStore on rank 0, and a TCPStore listens on every
interface; gloo and NCCL open their sockets on the interface the host name resolves to. When every worker
of a group runs on one node (a laptop, or one machine of a cluster), the group meets through a FileStore in
the temporary folder instead, and gloo and NCCL use the loopback interface: nothing listens beyond
127.0.0.1. Workers spread over nodes get Ray Train's own rendezvous. Decided at each start of the worker
group, so a group restarted after a failure chooses again.
"""

import os
import socket
import tempfile
import uuid

from ray.train.torch import TorchConfig

from ..ray_seams import torch_backend

_TorchBackend, _set_torch_distributed_env_vars, _setup_torch_process_group = torch_backend()


def _node_id() -> str:
    import ray

    return ray.get_runtime_context().get_node_id()


def loopback_interface() -> str:
    names = [name for _, name in socket.if_nameindex()]
    return next((n for n in names if n == "lo"), next((n for n in names if n.startswith("lo")), "lo"))


def _use_loopback():
    interface = loopback_interface()
    os.environ["GLOO_SOCKET_IFNAME"] = interface
    os.environ["NCCL_SOCKET_IFNAME"] = interface
    os.environ["MASTER_ADDR"] = "127.0.0.1"


class _OneMachineBackend(_TorchBackend):
    def on_start(self, worker_group, backend_config):
        if len(set(worker_group.execute(_node_id))) > 1:
            return super().on_start(worker_group, backend_config)
        import ray

        backend = backend_config.backend or (
            "nccl" if worker_group.get_resources_per_worker().get("GPU", 0) > 0 else "gloo")
        store = os.path.join(tempfile.gettempdir(), f"imf_pg_{uuid.uuid4().hex}")
        worker_group.execute(_use_loopback)
        worker_group.execute(_set_torch_distributed_env_vars)
        ray.get([worker_group.execute_single_async(rank, _setup_torch_process_group, backend=backend, world_rank=rank,
                                                   world_size=len(worker_group), init_method=f"file://{store}",
                                                   timeout_s=backend_config.timeout_s)
                 for rank in range(len(worker_group))])


class OneMachineTorchConfig(TorchConfig):
    """TorchConfig whose process group stays on loopback when all workers share a node (see above)."""

    @property
    def backend_cls(self):
        return _OneMachineBackend
