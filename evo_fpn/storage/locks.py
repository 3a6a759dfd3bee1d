"""The budget lock: "count the finished trials, then ask a new one" by one worker at a time.

That exclusion is what makes a study's budget exact across workers. Each backend supplies its
own (:meth:`evo_fpn.storage.backends.Backend.mutex`): PostgreSQL a session-level advisory lock
keyed by the study name, on a connection of its own (a SIGKILLed worker's lock dies with its
connection); a storage server a lease, renewed while held and expiring when its worker dies
(the server takes the same advisory lock, so direct and served workers exclude each other);
SQLite, one process, nothing beyond the thread lock here.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from evo_fpn.storage.backends import backend_for


class BudgetLock:
    """Mutual exclusion of "count the finished trials, then ask a new one" across workers.

    Re-entrant release is a no-op, so the objective may release early. A lost database
    connection is waited out.
    """

    def __init__(self, url: str, study_name: str, *, log: Callable[[str], None] | None = None) -> None:
        self._thread_lock = threading.Lock()
        self._held = False
        self._mutex = backend_for(url).mutex(study_name, log=log)

    def acquire(self) -> None:
        self._thread_lock.acquire()
        try:
            self._mutex.acquire()
        except BaseException:
            self._thread_lock.release()
            raise
        self._held = True

    def release(self) -> None:
        if not self._held:
            return
        self._held = False
        try:
            self._mutex.release()
        finally:
            self._thread_lock.release()

    def close(self) -> None:
        self.release()
        self._mutex.close()

    def __enter__(self) -> BudgetLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
