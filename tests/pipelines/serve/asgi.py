"""Requests to an ASGI app in this process (the FastAPI app of `imf serve` without Ray or a socket)."""

import asyncio
import json


def asgi_call(app, method: str, path: str, body=b"", headers: dict | None = None, root_path: str = ""):
    """(status, headers as a dict, body bytes) of one request."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    scope = {"type": "http", "http_version": "1.1", "method": method, "scheme": "http", "path": root_path + path,
             "raw_path": (root_path + path).encode(), "root_path": root_path, "query_string": b"",
             "headers": [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()],
             "server": ("127.0.0.1", 8000), "client": ("127.0.0.1", 50000)}
    answer = {"body": b""}

    async def receive():
        return {"type": "http.request", "body": data, "more_body": False}

    async def send(message):
        if message["type"] == "http.response.start":
            answer["status"] = message["status"]
            answer["headers"] = {k.decode().lower(): v.decode() for k, v in message["headers"]}
        else:
            answer["body"] += message.get("body", b"")

    asyncio.run(app(scope, receive, send))
    return answer["status"], answer["headers"], answer["body"]
