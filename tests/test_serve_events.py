"""A job's events from the engine thread to the event loop (serve.worker.Events): order, wake-ups, timeouts,
with a real producer thread and a real asyncio loop."""

from __future__ import annotations

import asyncio
import threading

import pytest

from medusa_trt.serve.worker import Events


def test_a_thread_s_events_arrive_in_order_whether_the_reader_waits_or_not() -> None:
    async def main() -> list[int]:
        events = Events(asyncio.get_running_loop())
        started = threading.Event()

        def produce() -> None:
            started.set()
            for i in range(2000):
                events.put(i)
                if i % 97 == 0:
                    threading.Event().wait(0.001)  # now and then the reader catches up and waits
            events.put(None)

        threading.Thread(target=produce, daemon=True).start()
        got: list[int] = []
        while True:
            try:
                item = events.get_nowait()
            except IndexError:
                item = await events.get(timeout=30)
            if item is None:
                return got
            got.append(item)

    assert asyncio.run(main()) == list(range(2000))


def test_get_times_out_when_nothing_comes_then_takes_a_later_event() -> None:
    async def main() -> object:
        loop = asyncio.get_running_loop()
        events = Events(loop)
        with pytest.raises(asyncio.TimeoutError):
            await events.get(timeout=0.01)
        assert events.empty()
        waiting = asyncio.ensure_future(events.get(timeout=30))
        await asyncio.sleep(0)  # the reader now waits on its future
        threading.Thread(target=events.put, args=("late",)).start()
        return await waiting

    assert asyncio.run(main()) == "late"


def test_a_cancelled_reader_leaves_the_event_for_the_next_get() -> None:
    async def main() -> object:
        events = Events(asyncio.get_running_loop())
        waiting = asyncio.ensure_future(events.get(timeout=30))
        await asyncio.sleep(0)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        events.put("kept")
        return await events.get(timeout=30)

    assert asyncio.run(main()) == "kept"


def test_a_timer_armed_for_an_earlier_wait_does_not_cut_a_later_one_short() -> None:
    """One timer serves successive waits: when it fires for a wait that already ended, the current wait
    (with its own, later deadline) goes on and gets its event."""

    async def main() -> object:
        loop = asyncio.get_running_loop()
        events = Events(loop)
        first = asyncio.ensure_future(events.get(timeout=0.02))
        await asyncio.sleep(0)
        events.put("first")
        assert await first == "first"
        second = asyncio.ensure_future(events.get(timeout=30))
        await asyncio.sleep(0.1)  # the first wait's timer has fired meanwhile
        assert not second.done()
        events.put("second")
        return await second

    assert asyncio.run(main()) == "second"


@pytest.mark.parametrize(
    ("tp", "cores", "torch_threads", "want"),
    [
        (1, 2, 2, 1),  # 2 cores: one for the engine, one for the event loop and a local client
        (1, 1, 1, 1),  # never below one
        (1, 16, 16, 15),
        (1, 16, 4, 4),  # OMP_NUM_THREADS (a profile's runtime_env) is the upper bound
        (2, 16, 8, None),  # tensor-parallel ranks already split the cores
    ],
)
def test_engine_threads_leave_a_core_to_the_event_loop(
    tp: int, cores: int, torch_threads: int, want: int | None
) -> None:
    from medusa_trt.serve.worker import engine_threads

    assert engine_threads(tp, cores, torch_threads) == want
