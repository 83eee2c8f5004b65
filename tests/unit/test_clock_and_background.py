"""The injected clock's waits (``ManualClock``) and ``Background``, the task group every
long-running part of a peer keeps its loops and one-off tasks in."""

from __future__ import annotations

import asyncio

import pytest

from mesh.clock import SYSTEM, Clock
from mesh.rpc.tasks import Background
from mesh.testing.clock import ManualClock


def test_both_clocks_are_clocks():
    assert isinstance(SYSTEM, Clock) and isinstance(ManualClock(), Clock)


def test_a_manual_sleep_ends_only_when_the_clock_is_advanced_past_it():
    async def main():
        clock = ManualClock(start=100.0)
        woke: list[float] = []

        async def sleeper(s):
            await clock.sleep(s)
            woke.append(clock())

        tasks = [asyncio.create_task(sleeper(s)) for s in (5, 1, 3)]
        await asyncio.sleep(0.05)  # real time passes: nobody wakes
        assert woke == [] and clock.sleepers == 3
        clock.advance(2)
        await asyncio.sleep(0)
        assert woke == [102.0]
        clock.advance(10)
        await asyncio.gather(*tasks)
        assert woke == [102.0, 112.0, 112.0] and clock.sleepers == 0
        with pytest.raises(ValueError):
            clock.advance(-1)

    asyncio.run(main())


def test_a_manual_wait_ends_on_the_event_or_on_virtual_timeout():
    async def main():
        clock = ManualClock()
        event = asyncio.Event()
        waiting = asyncio.create_task(clock.wait(event, 10))
        await asyncio.sleep(0.02)
        event.set()
        assert await waiting is True
        event.clear()
        waiting = asyncio.create_task(clock.wait(event, 10))
        await asyncio.sleep(0.02)
        assert not waiting.done()
        await clock.run(10.5, step_s=1)
        assert await waiting is False
        assert clock.sleepers == 0  # the losing side of each wait was cancelled

    asyncio.run(main())


def test_background_holds_loops_and_spawned_work_until_close():
    async def main():
        bg = Background("part")
        ticks = 0
        spawned_ran = asyncio.Event()

        async def loop():
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.01)

        async def one_off():
            spawned_ran.set()
            await asyncio.sleep(60)

        assert bg.spawn(one_off()) is None  # before start: refused, not leaked
        await bg.start(loop=loop)
        task = bg.spawn(one_off())
        await asyncio.wait_for(spawned_ran.wait(), 1)
        assert bg.running and ticks >= 1
        await bg.close()
        assert task.cancelled() and bg.loops["loop"].cancelled() and not bg.running
        assert bg.spawn(one_off()) is None  # after close: refused

    asyncio.run(main())


def test_a_failing_one_off_is_counted_and_the_part_runs_on():
    async def main():
        bg = Background("part")
        await bg.start(loop=lambda: asyncio.sleep(60))

        async def boom():
            raise OSError("send failed")

        await bg.spawn(boom())
        assert bg.spawn_errors == 1 and bg.running and bg.failed is None
        await bg.close()

    asyncio.run(main())


def test_a_loop_that_dies_takes_the_part_down_visibly():
    async def main():
        bg = Background("part")

        async def dies():
            await asyncio.sleep(0.01)
            raise RuntimeError("bug")

        await bg.start(dies=dies, other=lambda: asyncio.sleep(60))
        other = bg.loops["other"]
        for _ in range(100):
            if bg.failed is not None:
                break
            await asyncio.sleep(0.01)
        assert isinstance(bg.failed, BaseExceptionGroup) and not bg.running
        assert other.cancelled()  # its sibling did not run on alone
        await bg.close()

    asyncio.run(main())
