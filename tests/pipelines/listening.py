"""The TCP sockets that a process and everything it started listen on (a local run's driver starts its own
Ray instance: GCS, raylet, and through the raylet every worker)."""

import psutil

LOOPBACK = ("127.0.0.1", "::1", "::ffff:127.0.0.1")


def listening(root_pid: int) -> list[tuple[str, int, str]]:
    """(address, port, process name) of every listening TCP socket of root_pid and its descendants."""
    root = psutil.Process(root_pid)
    procs = {p.pid: p for p in [root, *root.children(recursive=True)]}
    found = []
    for conn in psutil.net_connections(kind="inet"):
        if conn.status == psutil.CONN_LISTEN and conn.pid in procs:
            try:
                name = procs[conn.pid].name()
            except psutil.NoSuchProcess:
                name = "?"
            found.append((conn.laddr.ip, conn.laddr.port, name))
    return found


def exposed(sockets) -> list:
    return [s for s in sockets if s[0] not in LOOPBACK]
