from __future__ import annotations

import asyncio
import heapq

import pytest

from clasp.resilience.queue import QueueFull, QueueTimeout, RequestQueue


class VirtualTime:
    """Deterministic virtual clock: sleep() parks the task until drive() advances time.

    Time only moves when every task is parked, so concurrent sleepers wake in the
    order of their deadlines (ties: the order they went to sleep).
    """

    def __init__(self) -> None:
        self.now = 0.0
        self._timers: list = []
        self._seq = 0
        self.slept: list = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, delay: float) -> None:
        self.slept.append(delay)
        fut = asyncio.get_running_loop().create_future()
        heapq.heappush(self._timers, (self.now + delay, self._seq, fut))
        self._seq += 1
        await fut

    async def _settle(self) -> None:
        for _ in range(50):
            await asyncio.sleep(0)

    async def drive(self, tasks, limit: float = 1000.0) -> None:
        while not all(t.done() for t in tasks):
            await self._settle()
            if all(t.done() for t in tasks):
                break
            while self._timers and self._timers[0][2].done():
                heapq.heappop(self._timers)  # cancelled sleeper
            assert self._timers, "deadlock: tasks pending but nobody sleeping"
            when, _, fut = heapq.heappop(self._timers)
            assert when <= limit, "virtual time ran away"
            self.now = max(self.now, when)
            fut.set_result(None)


class Unavailable:
    def __init__(self, tag: str) -> None:
        self.tag = tag
        self.closed = False


def is_unavailable(outcome) -> bool:
    return isinstance(outcome, (Unavailable, ConnectionError))


def make_queue(vt: VirtualTime, **kw) -> RequestQueue:
    return RequestQueue(clock=vt.clock, sleep=vt.sleep, **kw)


def run(coro_factory):
    return asyncio.run(coro_factory())


def test_defaults_match_clasp():
    q = RequestQueue()
    assert (q.max_size, q.max_wait_s, q.retry_delay_s, q.max_retries) == (100, 30.0, 1.0, 3)
    assert q.depth() == 0


def test_entries_retry_in_arrival_order_each_round():
    vt = VirtualTime()
    q = make_queue(vt, max_retries=5)
    log = []

    def attempt_for(name, ok_round):
        rounds = {"n": 0}

        async def attempt():
            rounds["n"] += 1
            log.append((vt.now, name, rounds["n"]))
            return f"{name}-ok" if rounds["n"] >= ok_round else Unavailable(name)
        return attempt

    async def main():
        tasks = [asyncio.ensure_future(q.run(attempt_for(n, ok), is_unavailable))
                 for n, ok in (("A", 3), ("B", 2), ("C", 3))]
        await asyncio.sleep(0)
        assert q.depth() == 3
        await vt.drive(tasks)
        return [t.result() for t in tasks]

    assert run(main) == ["A-ok", "B-ok", "C-ok"]
    assert log == [
        (1.0, "A", 1), (1.0, "B", 1), (1.0, "C", 1),
        (2.0, "A", 2), (2.0, "B", 2), (2.0, "C", 2),
        (3.0, "A", 3), (3.0, "C", 3),
    ]
    assert q.depth() == 0
    assert q.stats == {"enqueued": 3, "served": 3, "exhausted": 0, "timeouts": 0,
                       "rejected_full": 0, "cancelled": 0}


def test_later_entry_does_not_overtake_a_slow_entry_ahead():
    vt = VirtualTime()
    q = make_queue(vt, max_retries=3, max_wait_s=60.0)
    log = []

    async def slow_a():
        log.append((vt.now, "A"))
        if len([x for x in log if x[1] == "A"]) == 1:
            await vt.sleep(5.0)  # first try hangs 5 s (e.g. connect timeout)
            return Unavailable("A")
        await vt.sleep(3.0)  # second try is slow but succeeds
        return "A-ok"

    async def quick_b():
        log.append((vt.now, "B"))
        return "B-ok" if len([x for x in log if x[1] == "B"]) >= 2 else Unavailable("B")

    async def main():
        ta = asyncio.ensure_future(q.run(slow_a, is_unavailable))
        await asyncio.sleep(0)
        tb = asyncio.ensure_future(q.run(quick_b, is_unavailable))
        await vt.drive([ta, tb])
        return ta.result(), tb.result()

    assert run(main) == ("A-ok", "B-ok")
    # B was ready for round 2 at t=2 but waited until A *started* its round 2 at t=7
    # (not until A's slow attempt ended at t=10).
    assert log == [(1.0, "A"), (1.0, "B"), (7.0, "A"), (7.0, "B")]


def test_full_queue_rejects_immediately():
    vt = VirtualTime()
    q = make_queue(vt, max_size=2, max_retries=2)

    async def down():
        return Unavailable("x")

    async def main():
        parked = [asyncio.ensure_future(q.run(down, is_unavailable)) for _ in range(2)]
        await asyncio.sleep(0)
        assert q.depth() == 2
        with pytest.raises(QueueFull):
            await q.run(down, is_unavailable)
        assert vt.slept == [1.0, 1.0]  # the rejected request never waited
        await vt.drive(parked)
        # room again once the parked entries left
        third = asyncio.ensure_future(q.run(down, is_unavailable))
        await vt.drive([third])

    run(main)
    assert q.depth() == 0
    stats = q.stats
    assert stats["rejected_full"] == 1 and stats["enqueued"] == 3 and stats["exhausted"] == 3


def test_wait_expiry_raises_queue_timeout_without_exceeding_max_wait():
    vt = VirtualTime()
    q = make_queue(vt, max_wait_s=2.5, retry_delay_s=1.0, max_retries=10)
    times = []
    discarded = []

    async def down():
        times.append(vt.now)
        return Unavailable(str(len(times)))

    async def main():
        task = asyncio.ensure_future(q.run(down, is_unavailable, on_discard=discarded.append))
        await vt.drive([task])
        return task.exception()

    exc = run(main)
    assert isinstance(exc, QueueTimeout)
    # the last sleep is cut to the time left, then one last try at the deadline
    assert vt.slept == [1.0, 1.0, 0.5]
    assert times == [1.0, 2.0, 2.5]
    assert vt.now == 2.5
    assert exc.attempts == 3 and exc.waited_s == 2.5
    assert exc.last.tag == "3"                         # handed to the caller, not discarded
    assert [d.tag for d in discarded] == ["1", "2"]
    assert q.depth() == 0 and q.stats["timeouts"] == 1


def test_timeout_while_waiting_for_turn_behind_a_hung_entry():
    vt = VirtualTime()
    q = make_queue(vt, max_wait_s=5.0, retry_delay_s=1.0, max_retries=3)

    async def hung():
        await vt.sleep(100.0)
        return "late"

    async def down():
        return Unavailable("b")

    async def main():
        ta = asyncio.ensure_future(q.run(hung, is_unavailable))
        await asyncio.sleep(0)
        tb = asyncio.ensure_future(q.run(down, is_unavailable))
        await vt.drive([tb])
        assert vt.now == 5.0  # B gave up at its own deadline, not when A finished
        ta.cancel()
        await asyncio.sleep(0)
        return tb.exception()

    exc = run(main)
    assert isinstance(exc, QueueTimeout) and exc.attempts == 1
    assert q.depth() == 0
    assert q.stats["timeouts"] == 1 and q.stats["cancelled"] == 1


def test_cancelled_entry_leaves_and_does_not_block_later_entries():
    vt = VirtualTime()
    q = make_queue(vt, max_retries=3)
    log = []

    discarded = []

    def attempt_for(name):
        async def attempt():
            log.append((vt.now, name))
            return f"{name}-ok" if vt.now >= 2.0 else Unavailable(name)
        return attempt

    async def main():
        tasks = {}
        for name in "ABC":
            tasks[name] = asyncio.ensure_future(
                q.run(attempt_for(name), is_unavailable, on_discard=discarded.append))
            await asyncio.sleep(0)

        async def client_leaves():
            await vt.sleep(1.5)
            assert q.depth() == 3
            tasks["B"].cancel()  # B disconnects while sleeping between retries

        killer = asyncio.ensure_future(client_leaves())
        await vt.drive([tasks["A"], tasks["C"], killer])
        await asyncio.sleep(0)
        assert tasks["B"].cancelled()
        return tasks["A"].result(), tasks["C"].result()

    assert run(main) == ("A-ok", "C-ok")
    assert log == [(1.0, "A"), (1.0, "B"), (1.0, "C"), (2.0, "A"), (2.0, "C")]
    # every superseded outcome is released, including the one B held when it left
    assert sorted(d.tag for d in discarded) == ["A", "B", "C"]
    assert q.depth() == 0
    assert q.stats["cancelled"] == 1 and q.stats["served"] == 2


def test_entry_cancelled_while_waiting_for_turn_unblocks_those_behind():
    vt = VirtualTime()
    q = make_queue(vt, max_retries=3, max_wait_s=60.0)
    log = []
    a_tries = []

    async def slow_a():
        a_tries.append(vt.now)
        if len(a_tries) == 1:
            await vt.sleep(10.0)
            return Unavailable("A")
        return "A-ok"

    def quick(name):
        async def attempt():
            log.append((vt.now, name))
            return f"{name}-ok" if len([x for x in log if x[1] == name]) >= 2 else Unavailable(name)
        return attempt

    async def main():
        ta = asyncio.ensure_future(q.run(slow_a, is_unavailable))
        await asyncio.sleep(0)
        tb = asyncio.ensure_future(q.run(quick("B"), is_unavailable))
        await asyncio.sleep(0)
        tc = asyncio.ensure_future(q.run(quick("C"), is_unavailable))

        async def b_leaves():
            await vt.sleep(3.0)  # B and C are both waiting behind A's round 2
            tb.cancel()

        killer = asyncio.ensure_future(b_leaves())
        await vt.drive([ta, tc, killer])
        return ta.result(), tc.result()

    assert run(main) == ("A-ok", "C-ok")
    assert a_tries == [1.0, 12.0]
    # C's round 2 follows A's right away; the departed B does not hold it back
    assert log == [(1.0, "B"), (1.0, "C"), (12.0, "C")]
    assert q.depth() == 0 and q.stats["cancelled"] == 1


def test_max_retries_exhaustion_returns_last_result():
    vt = VirtualTime()
    q = make_queue(vt, max_retries=3)
    made = []
    discarded = []

    async def down():
        made.append(Unavailable(str(len(made) + 1)))
        return made[-1]

    async def main():
        task = asyncio.ensure_future(q.run(down, is_unavailable, on_discard=discarded.append))
        await vt.drive([task])
        return task.result()

    last = run(main)
    assert last.tag == "3" and len(made) == 3
    assert [d.tag for d in discarded] == ["1", "2"]
    assert q.stats["exhausted"] == 1 and q.depth() == 0


def test_max_retries_exhaustion_raises_last_exception():
    vt = VirtualTime()
    q = make_queue(vt, max_retries=2)
    calls = []

    async def refused():
        calls.append(vt.now)
        raise ConnectionError(f"refused {len(calls)}")

    async def main():
        task = asyncio.ensure_future(q.run(refused, is_unavailable))
        await vt.drive([task])
        return task.exception()

    exc = run(main)
    assert isinstance(exc, ConnectionError) and str(exc) == "refused 2"
    assert calls == [1.0, 2.0]


def test_other_errors_pass_through_at_once():
    vt = VirtualTime()
    q = make_queue(vt)

    async def bad_request():
        raise ValueError("400 from upstream")

    async def main():
        task = asyncio.ensure_future(q.run(bad_request, is_unavailable))
        await vt.drive([task])
        return task.exception()

    exc = run(main)
    assert isinstance(exc, ValueError)
    assert vt.slept == [1.0]
    assert q.stats["served"] == 1 and q.depth() == 0


def test_real_clock_gives_up_by_the_deadline():
    # Real time, tiny values: the loop must end with QueueTimeout long before
    # max_retries would be reached.
    q = RequestQueue(max_wait_s=0.05, retry_delay_s=0.01, max_retries=1000)
    calls = []

    async def down():
        calls.append(1)
        return Unavailable("x")

    with pytest.raises(QueueTimeout):
        asyncio.run(q.run(down, is_unavailable))
    assert 1 <= len(calls) < 1000
    assert q.depth() == 0


def test_invalid_configuration_rejected():
    with pytest.raises(ValueError):
        RequestQueue(max_size=0)
    with pytest.raises(ValueError):
        RequestQueue(max_retries=0)
