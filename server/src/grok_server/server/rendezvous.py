"""The rendezvous store of a replica spread over hosts listens on the leader's address only.

Across nodes, vLLM's ranks meet through torch's `tcp://MASTER_ADDR:MASTER_PORT` rendezvous, whose rank 0
(a process of the leader) starts a TCPStore server. torch binds that server to every interface of the host,
whatever MASTER_ADDR says. The ranks only ever reach it at MASTER_ADDR, so that is where it should listen:
a store open on all interfaces is reachable from networks the replica never meant to serve (a node's
host network, a second interface), and pods that share one host's network (the simulated cluster: one
loopback address per pod) could not each run a group on the same --master-port.

`install()` (called by the vLLM plugin in every vLLM process, active only where grok-server or
grok-server-worker asked for it through the environment, as their engine processes inherit it) makes rank
0's store listen on a socket bound to MASTER_ADDR, handed to torch as `master_listen_fd`. Where MASTER_ADDR
is not an address of this host (a name resolving elsewhere), it keeps torch's own behaviour and says so.
"""

from __future__ import annotations

import datetime
import importlib
import logging
import os
import socket
from typing import Any

log = logging.getLogger(__name__)

# Set (to "1") by grok-server and grok-server-worker when a replica spans hosts; read in vLLM's processes.
BIND_ENV = "GROK_RENDEZVOUS_BIND_MASTER_ADDR"
_BACKLOG = 1024


def request_bound_store() -> None:
    """Asks every vLLM process started from here on to bind the rendezvous store to MASTER_ADDR."""
    os.environ[BIND_ENV] = "1"


def listen_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket bound to `host`:`port` (the first address `host` resolves to); OSError when
    that is not an address of this host or the port is taken."""
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as torch's own server does
        sock.bind(address)
        sock.listen(_BACKLOG)
    except OSError:
        sock.close()
        raise
    return sock


def install() -> None:
    if os.environ.get(BIND_ENV) != "1":
        return
    # `torch.distributed.rendezvous` the attribute is a function; the module is in sys.modules.
    module = importlib.import_module("torch.distributed.rendezvous")
    original = module._create_c10d_store
    if getattr(original, "grok_bound_to_master_addr", False):
        return

    def create_store(hostname: str, port: int, rank: int, world_size: int, timeout: datetime.timedelta,
                     use_libuv: bool = True) -> Any:
        if rank != 0 or port == 0 or module._torchelastic_use_agent_store():
            return original(hostname, port, rank, world_size, timeout, use_libuv)
        try:
            listener = listen_socket(hostname, port)
        except OSError as e:
            log.warning("the rendezvous store cannot listen at %s:%d only (%s): it listens on every "
                        "interface of this host", hostname, port, e)
            return original(hostname, port, rank, world_size, timeout, use_libuv)
        fd = listener.detach()
        try:
            return module.TCPStore(host_name=hostname, port=port, world_size=world_size, is_master=True,
                                   timeout=timeout, multi_tenant=True, use_libuv=use_libuv,
                                   master_listen_fd=fd)
        except Exception:
            socket.close(fd)
            raise

    create_store.grok_bound_to_master_addr = True  # type: ignore[attr-defined]
    module._create_c10d_store = create_store
