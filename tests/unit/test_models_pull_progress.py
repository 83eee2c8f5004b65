"""What a pull's caller hears while it runs: the newest progress at most every
PROGRESS_EVERY_S of the service's clock (each update is a signed frame to the CLI), and
always the last one. Pure: the pull itself is replaced by a script of updates."""

import asyncio

from mesh.identity.keys import Identity
from mesh.models.puller import PullProgress
from mesh.models.service import PROGRESS_EVERY_S, ModelService
from mesh.models.store import ModelStore
from mesh.rpc.server import CallContext, Final
from mesh.testing.clock import ManualClock

PIECES = 40


class Done:  # stands for the PullResult: the handler only sends its to_wire()
    def to_wire(self) -> dict:
        return {"done": True}


def _pull(tmp_path, *, caller_steps: int = 0) -> list:
    """What the caller of ``models.pull`` hears while a scripted pull reports a piece
    every 30 ms of the clock, each update on its own (not as a burst). The caller lets
    the loop run ``caller_steps`` times over each frame before taking the next."""
    clock = ManualClock()
    service = ModelService(store=ModelStore(tmp_path / "store"), identity=Identity.generate(), members=None,
                           pool=None, is_local=lambda _: True, clock=clock)

    async def scripted_fetch(ref, *, rate=None, pin=False, on_progress):
        progress = PullProgress(sha="ab" * 32, name="m", size=PIECES, pieces=PIECES, pieces_done=0,
                                bytes_done=0, resumed_pieces=0)
        for _ in range(PIECES):
            clock.advance(0.03)
            progress.pieces_done += 1
            on_progress(progress)
            await asyncio.sleep(0)  # the handler sees each update alone
        return Done()

    service.fetch = scripted_fetch

    async def main():
        seen = []
        async for item in service.pull({"model": "m"}, CallContext(sender=b"me", call_id=b"c")):
            seen.append(item)
            for _ in range(caller_steps):
                await asyncio.sleep(0)
        return seen

    return asyncio.run(main())


def test_progress_is_sent_at_most_every_tenth_of_a_second_and_the_last_always(tmp_path):
    seen = _pull(tmp_path)
    updates = [s["p"]["pieces_done"] for s in seen if isinstance(s, dict)]
    assert isinstance(seen[-1], Final) and seen[-1].data == {"done": True}
    assert updates[-1] == PIECES  # the last one always
    assert updates[0] == 1  # the first one at once
    gaps = [b - a for a, b in zip(updates, updates[1:-1])]
    assert all(g * 0.03 >= PROGRESS_EVERY_S - 1e-9 for g in gaps), updates
    assert len(updates) < PIECES / 2, updates  # not one per piece


def test_the_last_progress_reaches_a_slow_caller_when_the_pull_ends_meanwhile(tmp_path):
    """While the handler waits on its caller (a slow link: the yield does not return at
    once), the last updates and the end of the pull queue up together: the caller still
    hears the last update, and it says every piece."""
    seen = _pull(tmp_path, caller_steps=100)  # the caller takes its time over each frame (the pull ends meanwhile)
    updates = [s["p"]["pieces_done"] for s in seen if isinstance(s, dict)]
    assert isinstance(seen[-1], Final)
    assert updates and updates[-1] == PIECES, updates
