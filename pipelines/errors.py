"""Bad input from the user, and the quick reachability check that turns an unreachable server into one."""

import socket
import time


class UserError(Exception):
    """Bad input from the user (path, value, cluster address): printed as one line, exit status 2."""


PROBE_TIMEOUT_S = 3.0


def probe_tcp(host: str, port: int, what: str, fix: str, timeout_s: float = PROBE_TIMEOUT_S) -> float:
    """Open (and close) a TCP connection to host:port, so that a dead server costs seconds, not a client
    library's minutes of retries. Returns the seconds it took; a UserError naming `what` and `fix` otherwise."""
    start = time.monotonic()
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return time.monotonic() - start
    except OSError as err:
        reason = "timed out" if isinstance(err, TimeoutError) else (err.strerror or err.__class__.__name__)
        raise UserError(f"cannot reach {what} at {host}:{port} ({reason} after "
                        f"{time.monotonic() - start:.1f} s). {fix}") from None


def host_port(address: str, default_port: int | None = None) -> tuple[str, int] | None:
    """(host, port) of `host:port`, `scheme://host[:port][/path]` or `[v6]:port`; None when it names none."""
    rest = address.split("://", 1)[-1].split("/", 1)[0].rsplit("@", 1)[-1]
    host, sep, port = rest.rpartition(":") if not rest.endswith("]") else (rest, "", "")
    if not sep:
        host, port = rest, ""
    host = host.strip("[]")
    if not host:
        return None
    if port.isdigit():
        return host, int(port)
    return (host, default_port) if default_port and not port else None
