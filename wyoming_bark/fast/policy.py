"""The scheduler's policy, apart from its mechanism (``batch.py`` executes what this decides):
which waiting sentence gets the next row, whose requests a step answers, which sentence gives
its row up. Pure functions of the jobs' fields, so the rules are unit-tested with fake jobs.

A job here needs: ``now`` (an Event: set when a listener waits for it now), ``client`` (whose:
``sentences.Client``, or any object), ``op`` (its pending model request or None), ``restart``,
``released``, ``admitted`` and ``answered`` (the step that last answered it).

Turns go round **addresses** first, then round the **connections** of an address: 16 connections
from one address, or a stream's many small sentences, get the turns of one client, not of 16.
On a CPU a row costs compute, so rows are also shared by address while a listener waits: an
address holding more than its share gives a row up (restarted later exactly) to a waited-for
sentence from an address that holds none, and while listeners of several addresses wait, each
step answers as many rows of each address as the one with fewest has (its rows in turn).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

MAX_REMEMBERED = 256  # addresses and connections whose last turn is remembered


def address_of(job: Any) -> object:
    """The address a job's turns are counted by (a client without one is its own address)."""
    address = getattr(job.client, "address", None)
    return address if address is not None else id(job.client)


def connection_of(job: Any) -> int:
    return id(job.client)


class Turns:
    """Remembers when each address and connection last got a row (a round-robin's memory)."""

    def __init__(self) -> None:
        self.admissions = 0
        self._address: dict[object, int] = {}
        self._connection: dict[int, int] = {}

    def pick(self, waiting: Sequence[Any]) -> Any:
        """The job to admit: waited-for before made-ahead; among equals the address served
        longest ago, then its connection served longest ago, then the oldest."""
        pool = [job for job in waiting if job.now.is_set()] or list(waiting)
        return min(
            pool,
            key=lambda job: (
                self._address.get(address_of(job), -1),
                self._connection.get(connection_of(job), -1),
            ),
        )

    def served(self, job: Any, present: Sequence[Any]) -> None:
        """``job`` got a row; ``present``: every job queued or running (to forget the rest)."""
        self.admissions += 1
        self._address[address_of(job)] = self.admissions
        self._connection[connection_of(job)] = self.admissions
        if len(self._address) + len(self._connection) > MAX_REMEMBERED:
            # only the order among those present matters
            addresses = {address_of(other) for other in present}
            connections = {connection_of(other) for other in present}
            self._address = {key: n for key, n in self._address.items() if key in addresses}
            self._connection = {key: n for key, n in self._connection.items() if key in connections}


def to_answer(running: Sequence[Any], compute_bound: bool) -> list[Any]:
    """The running jobs whose requests this iteration answers. On a CPU every row costs compute,
    so while somebody waits for a sentence now, sentences other connections make ahead pause (a
    connection's own look-ahead goes on beside its own waited-for sentence: ``--lookahead``'s
    trade-off). On a GPU a step costs about the same for 1 row or 8, and all go."""
    asking = [job for job in running if job.op is not None]
    if not compute_bound:
        return asking
    waited_for = {connection_of(job) for job in asking if job.now.is_set()}
    going = [job for job in asking if job.now.is_set() or not waited_for - {connection_of(job)}]
    return _shared_by_address(going) if waited_for else going


def _shared_by_address(going: list[Any]) -> list[Any]:
    """Each address's rows cut to the fewest any address with a listener has, the ones answered
    longest ago first: one address's 16 sentences cost a step no more than another's one does."""
    by_address: dict[object, list[Any]] = {}
    for job in going:
        by_address.setdefault(address_of(job), []).append(job)
    if len(by_address) < 2:
        return going
    share = min(len(rows) for rows in by_address.values())
    chosen = {id(job) for rows in by_address.values() for job in sorted(rows, key=_last_answered)[:share]}
    return [job for job in going if id(job) in chosen]


def _last_answered(job: Any) -> int:
    return job.answered


def _movable(job: Any) -> bool:
    """Can start again unheard: it has released no audio, and knows how to start anew."""
    return job.restart is not None and not job.released


def to_preempt(waiting: Sequence[Any], running: Sequence[Any], compute_bound: bool) -> Any | None:
    """The running job to give its row up for a waited-for one, when every row is taken; None.

    First a sentence made ahead (the latest admitted). Then, on a CPU only, a waited-for sentence
    of the address holding the most rows, when a waited-for sentence waits from an address that
    holds none and that address holds more than one row: one address's many connections cannot
    keep another's listener waiting for a row to end."""
    urgent = [job for job in waiting if job.now.is_set()]
    if not urgent:
        return None
    ahead = [job for job in running if not job.now.is_set() and _movable(job)]
    if ahead:
        return max(ahead, key=lambda job: job.admitted)
    if not compute_bound:
        return None
    rows: dict[object, int] = {}
    for job in running:
        rows[address_of(job)] = rows.get(address_of(job), 0) + 1
    if not any(address_of(job) not in rows for job in urgent):
        return None
    crowded = max(rows, key=rows.get, default=None)
    if crowded is None or rows[crowded] < 2:
        return None
    movable = [job for job in running if address_of(job) == crowded and _movable(job)]
    return max(movable, key=lambda job: job.admitted, default=None)
