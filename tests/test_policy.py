"""The scheduler's policy with fake jobs, no model: turns by address then connection, look-ahead
pausing on a CPU, and which row gives way."""

from __future__ import annotations

import threading
from types import SimpleNamespace

from wyoming_bark.fast import policy
from wyoming_bark.sentences import Client


def job(client, now=True, admitted=0, op="step", released=False, answered=0):
    event = threading.Event()
    if now:
        event.set()
    return SimpleNamespace(
        client=client,
        now=event,
        admitted=admitted,
        op=op,
        released=released,
        restart=lambda: None,
        answered=answered,
    )


def admit_all(turns, waiting):
    order = []
    waiting = list(waiting)
    while waiting:
        chosen = turns.pick(waiting)
        waiting.remove(chosen)
        turns.served(chosen, waiting)
        order.append(chosen)
    return order


def test_turns_go_round_addresses_before_connections():
    """16 connections from one address queued first; a newcomer's sentence is admitted second."""
    crowd = [Client("10.0.0.2") for _ in range(16)]
    victim = Client("10.0.0.9")
    waiting = [job(client) for client in crowd] + [job(victim)]
    order = admit_all(policy.Turns(), waiting)
    assert order[1].client is victim


def test_within_an_address_connections_take_turns():
    home = [Client("10.0.0.2"), Client("10.0.0.2")]
    waiting = [job(home[0]), job(home[0]), job(home[0]), job(home[1])]
    order = admit_all(policy.Turns(), waiting)
    assert [j.client for j in order[:2]] == home, "the second connection before the first's next"


def test_waited_for_sentences_come_before_those_made_ahead():
    ahead, now = job(Client("10.0.0.2"), now=False), job(Client("10.0.0.3"))
    assert policy.Turns().pick([ahead, now]) is now


def test_on_a_cpu_other_connections_look_ahead_pauses_while_somebody_waits():
    waiting_client, other = Client("10.0.0.2"), Client("10.0.0.3")
    mine, my_ahead = job(waiting_client), job(waiting_client, now=False)
    theirs_ahead = job(other, now=False)
    running = [mine, my_ahead, theirs_ahead]
    assert policy.to_answer(running, compute_bound=True) == [mine, my_ahead]
    assert policy.to_answer(running, compute_bound=False) == running, "on a GPU all go"


def test_on_a_cpu_a_crowded_address_gets_as_many_rows_a_step_as_a_lone_listener_in_turn():
    crowd = [job(Client("10.0.0.2"), answered=n) for n in (5, 2, 7, 2)]
    victim = job(Client("10.0.0.9"), answered=7)
    running = [*crowd, victim]
    assert policy.to_answer(running, compute_bound=True) == [crowd[1], victim], "the one answered longest ago"
    assert policy.to_answer(running, compute_bound=False) == running, "on a GPU all go"
    alone = [job(Client("10.0.0.2")) for _ in range(4)]
    assert policy.to_answer(alone, compute_bound=True) == alone, "one address: all its rows go"
    ahead = [job(Client("10.0.0.2"), now=False), job(Client("10.0.0.3"), now=False)]
    assert policy.to_answer(ahead, compute_bound=True) == ahead, "nobody waits: nothing is held back"


def test_a_look_ahead_row_gives_way_first_then_the_crowded_address_on_a_cpu():
    crowd = Client("10.0.0.2")
    running = [job(crowd, admitted=n) for n in range(7)] + [job(crowd, now=False, admitted=3)]
    victim = [job(Client("10.0.0.9"))]
    assert policy.to_preempt(victim, running, compute_bound=True) is running[-1], "made ahead first"
    running = running[:-1]
    assert policy.to_preempt(victim, running, compute_bound=True) is running[6], "the latest admitted"
    assert policy.to_preempt(victim, running, compute_bound=False) is None, "a GPU row costs little"
    released = [job(crowd, admitted=n, released=True) for n in range(7)]
    assert policy.to_preempt(victim, released, compute_bound=True) is None, "audio heard: it cannot restart"
    own = [job(Client("10.0.0.9"))]
    assert policy.to_preempt(own, [*running, *own], compute_bound=True) is None, "holds a row already"


def test_turns_forget_clients_that_left():
    turns = policy.Turns()
    for _ in range(policy.MAX_REMEMBERED * 2):
        turns.served(job(Client()), [])
    assert len(turns._address) + len(turns._connection) <= policy.MAX_REMEMBERED + 2
