"""The request scheduler: one background thread drives the engine's continuous batch.

Contract:
- `Scheduler(engine, max_batch_size)` starts a daemon worker thread; `submit(seq, on_event)`
  queues a validated `Sequence` and returns at once. `on_event(event)` is called from the
  worker thread for every token event of that sequence, the last one with `finished=True`.
- Requests that arrive while others are decoding join the running batch at the next step
  (continuous batching), up to `max_batch_size` rows; the rest wait in arrival order.
- Setting `seq.cancelled = True` (e.g. when a client disconnects) frees its row before the next
  step, or drops it from the queue if it never started; either way its callback gets a last
  event with `finished=True` and finish_reason "cancelled", so no one waits for it forever.
- `close()` stops the worker and finishes every sequence it still held as "cancelled" (a
  shutdown never leaves a request hanging). The thread owns the engine's runner: nothing else
  touches it.
- `max_batch_size` must be >= 1 (`UserError` otherwise): 0 would queue every request forever.
"""

from __future__ import annotations

import collections
import queue
import threading
from typing import Callable

from ..errors import UserError
from ..infer import Engine, Event, Sequence


class Scheduler:
    def __init__(self, engine: Engine, max_batch_size: int | None = None) -> None:
        if max_batch_size is not None and (isinstance(max_batch_size, bool) or not isinstance(max_batch_size, int)
                                           or max_batch_size < 1):
            raise UserError(f"max_batch_size must be an integer >= 1, got {max_batch_size!r}")
        self.engine = engine
        self.runner = engine.runner(max_batch_size or engine.max_batch_size)
        self.inbox: queue.Queue = queue.Queue()
        self.waiting: collections.deque = collections.deque()
        self.callbacks: dict[int, Callable[[Event], None]] = {}
        self.stopped = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._loop, name="minimind-scheduler", daemon=True)
        self.thread.start()

    @property
    def running(self) -> int:
        return len(self.runner.seqs)

    @property
    def queued(self) -> int:
        return len(self.waiting) + self.inbox.qsize()

    def submit(self, seq: Sequence, on_event: Callable[[Event], None]) -> None:
        if self.error is not None:
            raise RuntimeError(f"the generation worker died: {self.error!r}")
        self.inbox.put((seq, on_event))

    def close(self) -> None:
        self.stopped.set()
        self.inbox.put(None)
        self.thread.join(timeout=10)

    def _take_arrivals(self, block: bool) -> None:
        try:
            item = self.inbox.get(timeout=0.5) if block else self.inbox.get_nowait()
            while True:
                if item is not None:
                    seq, cb = item
                    self.callbacks[seq.id] = cb
                    self.waiting.append(seq)
                item = self.inbox.get_nowait()
        except queue.Empty:
            pass

    def _dispatch(self, events: list[Event]) -> None:
        for ev in events:
            cb = self.callbacks.get(ev.seq.id)
            if ev.finished:
                self.callbacks.pop(ev.seq.id, None)
            if cb is not None:
                try:
                    cb(ev)
                except RuntimeError:  # the client's event loop is gone (shutdown): drop its events
                    ev.seq.cancelled = True

    def _loop(self) -> None:
        try:
            while not self.stopped.is_set():
                idle = not self.runner.seqs and not self.waiting
                self._take_arrivals(block=idle)
                # Drop requests cancelled while they were still waiting.
                for seq in [s for s in self.waiting if s.cancelled]:
                    self.waiting.remove(seq)
                    self._end(seq, "cancelled")
                batch: list[Sequence] = []
                while (self.waiting and len(self.runner.seqs) + len(batch) < self.runner.capacity
                       and self.runner.room_for(max([len(self.waiting[0].prompt_ids)]
                                                    + [len(s.prompt_ids) for s in batch]))):
                    batch.append(self.waiting.popleft())
                events = self.runner.admit(batch) if batch else []
                if self.runner.seqs:
                    events += self.runner.step()
                self._dispatch(events)
        except BaseException as err:  # report to every waiting client instead of hanging them
            self.error = err
            self._end_all("error")
            raise
        self._take_arrivals(block=False)
        self._end_all("cancelled")  # closed: nothing may wait for a worker that is gone

    def _end(self, seq: Sequence, reason: str) -> None:
        """Finish a sequence outside the runner and tell its client."""
        seq.finish_reason = reason
        cb = self.callbacks.pop(seq.id, None)
        if cb is not None:
            try:
                cb(Event(seq, None, "", True))
            except RuntimeError:  # the client's event loop is gone already
                pass

    def _end_all(self, reason: str) -> None:
        for seq in list(self.runner.seqs) + list(self.waiting):
            if not seq.finished:
                self._end(seq, reason)
        self.waiting.clear()
