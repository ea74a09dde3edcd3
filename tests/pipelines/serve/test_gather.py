import asyncio

import pytest

from pipelines.serve.gather import Gatherer


class Recorder:
    """A send that records its calls and answers each request with its double; held while `hold` is clear."""

    def __init__(self, fail_on=None):
        self.calls, self.hold, self.fail_on = [], asyncio.Event(), fail_on

    async def __call__(self, requests):
        self.calls.append(list(requests))
        await self.hold.wait()
        if self.fail_on in requests:
            raise RuntimeError(f"replica lost with {self.fail_on}")
        return [2 * r for r in requests]


async def started(*coroutines):
    tasks = [asyncio.ensure_future(c) for c in coroutines]
    for _ in range(5):
        await asyncio.sleep(0)
    return tasks


def test_requests_that_arrive_while_calls_are_out_go_in_one_call():
    async def main():
        send = Recorder()
        gatherer = Gatherer(send, in_flight=2, max_items=100)
        first = await started(gatherer.submit(0), gatherer.submit(1))
        assert send.calls == [[0, 1]]  # both arrived before the loop ran the dispatcher
        second = await started(gatherer.submit(2))
        later = await started(*(gatherer.submit(k) for k in range(3, 8)))
        assert send.calls == [[0, 1], [2]]  # both slots taken: 3..7 wait
        send.hold.set()
        answers = await asyncio.gather(*first, *second, *later)
        assert send.calls == [[0, 1], [2], [3, 4, 5, 6, 7]]
        assert answers == [0, 2, 4, 6, 8, 10, 12, 14]

    asyncio.run(main())


def test_a_call_holds_at_most_max_items_but_always_one_request():
    async def main():
        send = Recorder()
        send.hold.set()
        gatherer = Gatherer(send, in_flight=1, max_items=7, items=lambda r: r)
        answers = await asyncio.gather(*(gatherer.submit(r) for r in (3, 3, 3, 9, 1)))
        assert send.calls == [[3, 3], [3], [9], [1]]
        assert answers == [6, 6, 6, 18, 2]

    asyncio.run(main())


def test_a_failed_call_fails_its_own_requests_only_and_a_cancelled_one_leaves_the_rest():
    async def main():
        send = Recorder(fail_on=1)
        gatherer = Gatherer(send, in_flight=1, max_items=2)
        tasks = await started(*(gatherer.submit(k) for k in range(5)))
        tasks[3].cancel()  # its client went away while it waited
        send.hold.set()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        assert send.calls == [[0, 1], [2, 3], [4]]
        assert [type(r).__name__ for r in results[:2]] == ["RuntimeError"] * 2 and "with 1" in str(results[0])
        assert results[2] == 4 and isinstance(results[3], asyncio.CancelledError) and results[4] == 8

    asyncio.run(main())


def test_a_mismatched_answer_fails_the_call_instead_of_answering_the_wrong_request():
    async def short(requests):
        return requests[:-1]

    async def main():
        gatherer = Gatherer(short, in_flight=1, max_items=10)
        with pytest.raises(ValueError):
            await asyncio.gather(gatherer.submit(1), gatherer.submit(2))

    asyncio.run(main())
