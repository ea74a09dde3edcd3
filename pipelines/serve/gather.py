"""Requests sent on together: what arrives while calls are in flight goes out as one call.

The ingress answers each HTTP request on its own, but a Ray call per request to the generator costs as much CPU
as a small batch of the Tiny network on a CPU node. `Gatherer` keeps at most `in_flight` calls out; requests that
come in meanwhile wait, and the next free slot takes all of them (up to `max_items` images) in one call.
"""

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable


class Gatherer:
    """`await gatherer.submit(request)` -> the answer to it from `send(list of requests) -> list of answers`."""

    def __init__(self, send: Callable[[list], Awaitable[list]], in_flight: int, max_items: int,
                 items: Callable[[object], int] = lambda request: 1):
        self.send, self.max_items, self.items = send, max_items, items
        self.slots, self.waiting, self.dispatching = asyncio.Semaphore(in_flight), deque(), False
        self.tasks = set()  # the loop keeps only weak references to tasks

    async def submit(self, request):
        answer = asyncio.get_running_loop().create_future()
        self.waiting.append((request, answer))
        if not self.dispatching:
            self.dispatching = True
            self._start(self._dispatch())
        return await answer

    def _start(self, coroutine):
        task = asyncio.get_running_loop().create_task(coroutine)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _dispatch(self):
        try:
            while self.waiting:
                await self.slots.acquire()
                group, items = [], 0
                while self.waiting:
                    size = self.items(self.waiting[0][0])
                    if group and items + size > self.max_items:
                        break
                    group.append(self.waiting.popleft())
                    items += size
                self._start(self._send(group))
        finally:
            self.dispatching = False

    async def _send(self, group: list):
        try:
            answers = await self.send([request for request, _ in group])
            for (_, answer), result in zip(group, answers, strict=True):
                if not answer.done():  # done: its client went away (cancelled)
                    answer.set_result(result)
        except Exception as err:  # noqa: BLE001 - every request of the call gets its error
            for _, answer in group:
                if not answer.done():
                    answer.set_exception(err)
        finally:
            self.slots.release()
