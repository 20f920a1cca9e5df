"""The demo's workload: the plan's mix, as a seeded stream of arrivals.

Pure: no clock, no database. ``Workload(rate, seed).arrivals()`` yields
``Arrival(at_s, tasks)`` in time order, ``at_s`` counted from the start; the
demo sleeps until each one and enqueues its tasks in one statement. The same
seed gives the same stream, so the mix can be tested without running it.

The mix (shares of all tasks, over time):

* **conversations** (``chat_reply``, 60%): priority = the conversation's
  importance, 1-10 with a mean of about 8.6 (the plan's); 25% emotional
  (+2 by the default boost rules), 10% saying "urgent" (+3), 35% questions
  (the text ends with "?", +1);
* **routine learning analysis** (``learning_analysis``, 27%): priority 1-3,
  batched by the workers. It arrives in bursts, one every
  ``BURST_EVERY_S``, as a nightly job would: the queue depth jumps past the
  supervisor's scale-up threshold and the pool grows, then shrinks again;
* **memory updates** (``update_memory``, 10%, priority 6): about 3 in 10
  fail (one attempt only), so about 3% of all tasks end ``failed`` and the
  dashboard's failures panel has content;
* **reports** (``daily_report``, 3%, priority 5): slow, about a second each.

The bursts are part of ``rate``, not on top of it: the steady stream runs at
``rate × (1 − LEARNING_SHARE)`` and each burst carries the learning share of
the interval, so the mean over a burst interval is ``rate``.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

QUEUE = "demo"

# Shares of all tasks.
CHAT_SHARE = 0.60
LEARNING_SHARE = 0.27
MEMORY_SHARE = 0.10
REPORT_SHARE = 0.03

# Learning analysis arrives this often, in one burst; the first one early,
# so a short run shows the low tier too.
BURST_EVERY_S = 60.0
FIRST_BURST_S = 5.0

# A conversation's importance (its priority): weights for 10 down to 1.
# Mean 8.60: 10×.38 + 9×.30 + 8×.14 + 7×.07 + 6×.04 + 5×.03 + (4+3+2+1)×.01.
IMPORTANCE_WEIGHTS = {10: 0.38, 9: 0.30, 8: 0.14, 7: 0.07, 6: 0.04, 5: 0.03, 4: 0.01, 3: 0.01, 2: 0.01, 1: 0.01}
EMOTIONAL_SHARE = 0.25
URGENT_SHARE = 0.10
QUESTION_SHARE = 0.35

# The share of update_memory attempts that fail (the handler decides, per attempt).
MEMORY_FAILURE_RATE = 0.3

_TOPICS = ("my sister's wedding", "the job interview tomorrow", "a book you recommended", "my sleep lately",
           "the trip to Lisbon", "learning Spanish", "my dog's vet visit", "the project deadline",
           "what we talked about yesterday", "my running plan", "a recipe for dinner", "the move next month")
_STATEMENTS = ("I keep thinking about {topic}.", "Just wanted to tell you about {topic}.",
               "Let's talk about {topic}.", "Remind me about {topic} later.")
_QUESTIONS = ("Can you help me with {topic}?", "What do you think about {topic}?",
              "Do you remember {topic}?", "How should I handle {topic}?")
_FEELINGS = ("I'm really anxious. ", "I feel so happy today! ", "Honestly I'm a bit sad. ", "I'm overwhelmed. ")
_URGENT = ("Urgent: ", "This is urgent. ", "URGENT ")


@dataclass(frozen=True)
class Arrival:
    """Tasks to enqueue together, ``at_s`` seconds after the start."""

    at_s: float
    tasks: tuple[dict[str, Any], ...]   # Client.enqueue_many items: kind, payload, priority


class Workload:
    """The plan's mix at ``rate`` tasks a second on average (see the module doc)."""

    def __init__(self, rate: float, seed: int | None = None):
        if not rate > 0:
            raise ValueError(f"rate must be positive (got {rate!r})")
        self.rate = rate
        self.rng = random.Random(seed)
        self._serial = 0
        self.burst_size = max(1, round(rate * LEARNING_SHARE * BURST_EVERY_S))

    def arrivals(self) -> Iterator[Arrival]:
        """Endless, in time order: steady single tasks (Poisson arrivals) and learning bursts."""
        steady_rate = self.rate * (1 - LEARNING_SHARE)
        now = 0.0
        next_burst = FIRST_BURST_S
        next_steady = self.rng.expovariate(steady_rate)
        while True:
            if next_burst <= next_steady:
                now = next_burst
                yield Arrival(now, tuple(self.learning() for _ in range(self.burst_size)))
                next_burst += BURST_EVERY_S
            else:
                now = next_steady
                yield Arrival(now, (self.steady(),))
                next_steady += self.rng.expovariate(steady_rate)

    def sample(self, n: int) -> list[dict[str, Any]]:
        """The first ``n`` tasks of the stream (for tests and a look at the mix)."""
        out: list[dict[str, Any]] = []
        for arrival in self.arrivals():
            out.extend(arrival.tasks)
            if len(out) >= n:
                return out[:n]
        raise AssertionError("unreachable: the stream is endless")

    def steady(self) -> dict[str, Any]:
        """One task of the steady stream: a conversation, a memory update or a report."""
        steady_total = CHAT_SHARE + MEMORY_SHARE + REPORT_SHARE
        pick = self.rng.random() * steady_total
        if pick < CHAT_SHARE:
            return self.conversation()
        if pick < CHAT_SHARE + MEMORY_SHARE:
            return {"kind": "update_memory", "payload": {"user": self._user(), "facts": self.rng.randint(1, 5)},
                    "priority": 6}
        return {"kind": "daily_report", "payload": {"user": self._user()}, "priority": 5}

    def conversation(self) -> dict[str, Any]:
        rng = self.rng
        importance = rng.choices(list(IMPORTANCE_WEIGHTS), weights=list(IMPORTANCE_WEIGHTS.values()))[0]
        emotional = rng.random() < EMOTIONAL_SHARE
        urgent = rng.random() < URGENT_SHARE
        question = rng.random() < QUESTION_SHARE
        topic = rng.choice(_TOPICS)
        text = rng.choice(_QUESTIONS if question else _STATEMENTS).format(topic=topic)
        if emotional:
            text = rng.choice(_FEELINGS) + text
        if urgent:
            text = rng.choice(_URGENT) + text
        return {"kind": "chat_reply", "priority": importance,
                "payload": {"text": text, "emotional": emotional, "question": question, "user": self._user()}}

    def learning(self) -> dict[str, Any]:
        self._serial += 1
        return {"kind": "learning_analysis", "priority": self.rng.randint(1, 3),
                "payload": {"conversation": self._serial, "topic": self.rng.choice(_TOPICS)}}

    def _user(self) -> int:
        return self.rng.randint(1, 40)
