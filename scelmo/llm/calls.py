"""Paid calls to remote models: bounded concurrency, retries, usage and a cost limit.

Provider plugins implement one *async* call (one completion, one embedding batch);
this module runs many of them:

* :func:`run_calls` runs jobs with at most ``concurrency`` in flight on one
  background event loop (so it works the same from scripts, Jupyter and R), hands
  every result to ``on_result`` **as it arrives** (the caller commits it to the
  cache there: a crash loses nothing that was answered), and stops cleanly when the
  :class:`Budget` would be exceeded;
* :func:`with_retries` gives each attempt a total deadline (``timeout``: a server
  that keeps sending a byte now and then cannot hold a request open) and retries
  :class:`~scelmo.errors.TransientProviderError` with exponential backoff and full
  jitter, honouring a server's ``Retry-After``;
* :class:`Usage` adds up calls, tokens and cost (shown in the progress bar).

Why the retry loop is written here (measured by ``benchmarks/library_choices.py`` on a
loopback server; ``benchmarks/results/library_choices/``): litellm's own ``num_retries``
has no deadline for a whole request (a server dripping one byte per 0.1 s held a
``timeout=2`` request for 39.5 s), so scelmo calls litellm with ``num_retries=0`` and
retries itself. The same policy written with tenacity behaved identically (same
requests, same waits for ``Retry-After`` and 5xx, same give-up time), but needs the
deadline wrapper and the ``Retry-After`` wait function written out all the same, so
it would add a dependency without removing code; the ~30-line loop below was kept.
"""

from __future__ import annotations

import asyncio
import random
import threading
from collections.abc import Awaitable, Callable, Iterable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, TypeVar

from scelmo.errors import (
    BudgetExceededError,
    ProviderError,
    TransientProviderError,
    UnknownPriceError,
)

T = TypeVar("T")
J = TypeVar("J")


# --------------------------------------------------------------------------- usage / cost
@dataclass
class Usage:
    """Running totals of what the calls used (``cost`` in USD; ``None`` when unknown)."""

    calls: int = 0
    retries: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float | None = 0.0

    def add(self, *, prompt_tokens: int = 0, completion_tokens: int = 0, cost: float | None = 0.0) -> None:
        self.calls += 1
        self.prompt_tokens += int(prompt_tokens or 0)
        self.completion_tokens += int(completion_tokens or 0)
        if cost is None or self.cost is None:
            self.cost = None
        else:
            self.cost += float(cost)

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def postfix(self) -> dict[str, str]:
        """Short fields for a progress bar."""
        cost = "?" if self.cost is None else f"${self.cost:.4f}"
        return {"calls": str(self.calls), "tokens": f"{self.tokens:,}", "cost": cost}

    def as_dict(self) -> dict[str, int | float | str]:
        return {
            "calls": self.calls,
            "retries": self.retries,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "cost_usd": "unknown" if self.cost is None else round(self.cost, 6),
        }


@dataclass
class Estimate:
    """What a run would send before anything is spent (``--dry-run``)."""

    role: str
    model: str
    calls: int
    items: int
    cached: int
    prompt_tokens: int
    completion_tokens: int
    cost: float | None
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "role": self.role,
            "model": self.model,
            "items": self.items,
            "cached": self.cached,
            "calls": self.calls,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "cost_usd": None if self.cost is None else round(self.cost, 6),
            "notes": list(self.notes),
        }


class Budget:
    """A cost limit shared by every call of a run (``max_cost`` in USD; ``None``: none).

    Before each call, :meth:`reserve` books its estimated cost; the call is refused
    (:class:`~scelmo.errors.BudgetExceededError`) when spent + booked + estimate would
    exceed the limit. :meth:`settle` replaces the booking by the actual cost.
    """

    def __init__(self, max_cost: float | None) -> None:
        if max_cost is not None and max_cost < 0:
            raise ValueError("max_cost must be >= 0")
        self.max_cost = max_cost
        self.spent = 0.0
        self.booked = 0.0
        self.in_flight = 0  # calls booked and not settled (booked USD alone leaves rounding dust)
        self.held = 0  # of those, bookings whose callers wait in reserve_holding (they cannot settle meanwhile)
        self._lock = threading.Lock()

    def reserve(self, estimate: float | None, component: Any = None, *, wait_for_in_flight: bool = False,
                credit: float = 0.0) -> float | None:
        """Book ``estimate`` USD for the next call of ``component`` (named when its price is unknown).

        With ``wait_for_in_flight``, a call that does not fit while other calls are booked
        returns ``None`` instead of stopping the run: the caller waits for those calls to
        settle (their actual cost is usually far below the worst case booked) and asks
        again. The run stops only when the call does not fit with nothing in flight.
        Bookings held by callers waiting in :meth:`reserve_holding` are not waited for (they
        cannot settle while their holders wait). ``credit``: booked USD known to be unspent (a
        finished call still booked at its worst case), left out of the check.
        """
        if self.max_cost is None:
            return 0.0
        if estimate is None:
            raise UnknownPriceError(f"A cost limit is set, but {no_price(component)}; or run without --max-cost.")
        with self._lock:
            if self.spent + self.booked - max(0.0, credit) + estimate > self.max_cost + 1e-12:
                if wait_for_in_flight and self.in_flight - self.held > 0:
                    return None
                stop = BudgetExceededError(self.stop_message(estimate))
                stop.limit_reached = True  # (not an unknown price: run_calls restates what was spent)
                raise stop
            self.booked += estimate
            self.in_flight += 1
        return estimate

    async def reserve_holding(self, estimate: float | None, component: Any = None, *,
                              credit: float = 0.0) -> float | None:
        """:meth:`reserve` for a caller that itself holds a booking (a call re-asked inside its
        own booking): waits while other calls that can settle are in flight, and stops
        (:class:`~scelmo.errors.BudgetExceededError`) when none can. Two such callers never
        wait for each other."""
        with self._lock:
            self.held += 1
        try:
            while True:
                booked = self.reserve(estimate, component, wait_for_in_flight=True, credit=credit)
                if booked is not None:
                    return booked
                await asyncio.sleep(0.01)
        finally:
            with self._lock:
                self.held -= 1

    def stop_message(self, next_estimate: float | None = None) -> str:
        """Why the run stopped, with what was spent (read once the calls in flight settled)."""
        why = (f" The next call was booked at ${next_estimate:.4f} (its longest possible answer) on top of "
               f"${self.booked:.4f} booked by calls still in flight." if next_estimate is not None and self.booked
               else "")
        return (f"Stopping before the cost limit of ${self.max_cost:.4f}: ${self.spent:.4f} spent.{why} Everything "
                "answered is cached; run again with a higher --max-cost to continue where this run stopped.")

    def settle(self, booked: float, actual: float | None) -> None:
        with self._lock:
            self.in_flight = max(0, self.in_flight - 1)
            # (nothing in flight: nothing booked, whatever rounding left of the bookings)
            self.booked = max(0.0, self.booked - booked) if self.in_flight else 0.0
            self.spent += float(actual if actual is not None else booked)


def priced_by_options(component: Any) -> bool:
    """Whether ``component`` takes its price from options (``input_cost_per_token``, as litellm's do)."""
    return "input_cost_per_token" in (getattr(type(getattr(component, "options", None)), "model_fields", None) or {})


def no_price(component: Any = None) -> str:
    """Why ``component`` has no price and how it can get one (the start of a sentence).

    Components whose options take ``input_cost_per_token`` (litellm's) are priced by
    setting it; any other provider or embedder is priced by its ``price()`` method, which
    only its author can add.

    Parameters
    ----------
    component
        The provider or embedder whose ``price()`` returned ``None``; ``None`` when the
        caller does not know it.

    Returns
    -------
    A clause such as ``"the LLM provider 'toyllm' (toyllm/tiny) has no price: its author
    can implement `Provider.price()`"``, to be completed by the caller.
    """
    if component is None:
        return ("this model's price is unknown: for a litellm model set the role's `options.input_cost_per_token` "
                "/ `options.output_cost_per_token`; a plugin's component is priced by its `price()` method")
    name = getattr(component, "name", "") or type(component).__name__
    model_id = getattr(component, "model_id", name)
    if priced_by_options(component):
        return (f"the price is unknown to litellm for {model_id!r}: set the role's "
                "`options.input_cost_per_token` / `options.output_cost_per_token` (USD per token)")
    kind = getattr(component, "kind", "component")
    # the scelmo base class it implements (Provider, TextEmbedder), named as the author knows it
    base = next((c.__name__ for c in type(component).__mro__ if c.__module__ == "scelmo.plugin.components"),
                type(component).__name__)
    which = f" ({model_id})" if model_id != name else ""
    return (f"the {kind} {name!r}{which} has no price: its author can implement `{base}.price()` "
            "(USD for a number of tokens; 0.0 for a free model)")


# --------------------------------------------------------------------------- retries
@dataclass(frozen=True)
class RetryPolicy:
    """``retries`` extra attempts; delay ``min(max_delay, base_delay * 2**attempt)`` x jitter;
    each attempt abandoned after ``timeout`` seconds in all (``None``: no deadline)."""

    retries: int = 5
    base_delay: float = 0.5
    max_delay: float = 30.0
    timeout: float | None = None


async def _attempt(call: Callable[[], Awaitable[T]], timeout: float | None, label: str | None) -> T:
    """One attempt under a total deadline (a timeout is transient: retried)."""
    if timeout is None:
        return await call()
    try:
        return await asyncio.wait_for(call(), timeout)
    except asyncio.TimeoutError:  # = TimeoutError from 3.11 on
        who = f"{label!r}" if label else "The provider"
        raise TransientProviderError(
            f"{who} sent no complete answer within {timeout:g} s (the role's `options.timeout`, a "
            "deadline for the whole request). Raise `options.timeout` if answers are long or slow."
        ) from None


async def with_retries(
    call: Callable[[], Awaitable[T]],
    policy: RetryPolicy,
    *,
    usage: Usage | None = None,
    rng: random.Random | None = None,
    label: str | None = None,
) -> T:
    """Await ``call()`` (within ``policy.timeout``); on :class:`TransientProviderError` wait and try again.

    Waits ``retry_after`` when the server sent one (capped at ``max_delay``), else a
    full-jitter exponential backoff. Other exceptions propagate at once. ``label``
    names the model in a timeout's message.
    """
    rng = rng or random.Random()
    attempt = 0
    while True:
        try:
            return await _attempt(call, policy.timeout, label)
        except TransientProviderError as exc:
            if attempt >= policy.retries:
                said = str(exc).rstrip()
                said += "" if said.endswith((".", "!", "?")) else "."  # "HTTP 429" -> "HTTP 429. Gave up ..."
                raise ProviderError(
                    f"{said} Gave up after {attempt + 1} attempts. Lower the role's "
                    "`options.concurrency`, raise `options.retries` / `options.timeout`, "
                    "or try again later; answers received so far are cached."
                ) from None
            if exc.retry_after is not None:
                delay = min(policy.max_delay, max(0.0, exc.retry_after))
            else:
                delay = rng.uniform(0, min(policy.max_delay, policy.base_delay * 2**attempt))
            attempt += 1
            if usage is not None:
                usage.retries += 1
            await asyncio.sleep(delay)


# --------------------------------------------------------------------------- event loop
class _LoopThread:
    """One daemon thread running an event loop for the whole process."""

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock = threading.Lock()

    def loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None or self._loop.is_closed():
                loop = asyncio.new_event_loop()
                thread = threading.Thread(target=loop.run_forever, name="scelmo-calls", daemon=True)
                thread.start()
                self._loop = loop
            return self._loop

    def run(self, coro: Awaitable[T]) -> T:
        fut: Future[T] = asyncio.run_coroutine_threadsafe(coro, self.loop())  # type: ignore[arg-type]
        try:
            return fut.result()
        except (KeyboardInterrupt, SystemExit):  # Ctrl-C, or the CLI's SIGINT/SIGTERM exit: no new calls
            fut.cancel()
            raise


_LOOP = _LoopThread()


def run_sync(coro: Awaitable[T]) -> T:
    """Run a coroutine on scelmo's background loop and wait for it (any thread, any notebook)."""
    return _LOOP.run(coro)


# --------------------------------------------------------------------------- bounded runner
async def _run_calls_async(
    jobs: Sequence[J],
    call: Callable[[J], Awaitable[T]],
    on_result: Callable[[J, T], None],
    concurrency: int,
    budget: Budget | None,
    estimate_cost: Callable[[J], float | None] | None,
    actual_cost: Callable[[T], float | None] | None,
    component: Any = None,
) -> list[BaseException]:
    queue: asyncio.Queue[J] = asyncio.Queue()
    for job in jobs:
        queue.put_nowait(job)
    errors: list[BaseException] = []
    stop = asyncio.Event()
    settled = asyncio.Event()  # set whenever a booked call settles (a waiting booking may then fit)
    if budget is not None and budget.max_cost is None:
        budget = None  # no limit: skip the per-call cost estimates (tokenising every prompt)

    async def book(job: J) -> float | None:
        """Book the job's estimate; while it does not fit beside calls in flight, wait for
        them to settle. ``None``: another call failed meanwhile, so the job is not called."""
        estimate = estimate_cost(job) if estimate_cost else 0.0
        while True:
            booked = budget.reserve(estimate, component, wait_for_in_flight=True)  # type: ignore[union-attr]
            if booked is not None:
                return booked
            settled.clear()
            await settled.wait()
            if stop.is_set():
                return None

    def settle(booked: float, actual: float | None) -> None:
        budget.settle(booked, actual)  # type: ignore[union-attr]
        settled.set()

    async def worker() -> None:
        while not stop.is_set():
            try:
                job = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            booked: float | None = None  # (set once the call is booked: only a booking is settled)
            try:
                if budget is not None:
                    booked = await book(job)
                    if booked is None:
                        return  # another call failed while this one waited for a booking
                result = await call(job)
            except BaseException as exc:  # noqa: BLE001 - collected, re-raised by the caller
                if booked is not None:
                    settle(booked, 0.0)
                errors.append(exc)
                stop.set()  # no new calls; the ones in flight finish and are kept
                settled.set()  # (wakes workers waiting for a booking, which then stop)
                return
            try:
                if booked is not None:
                    settle(booked, actual_cost(result) if actual_cost else booked)
                on_result(job, result)
            except BaseException as exc:  # noqa: BLE001 - e.g. the cache cannot be written
                errors.append(exc)
                stop.set()
                settled.set()
                return

    await asyncio.gather(*(worker() for _ in range(max(1, min(concurrency, len(jobs))))))
    return errors


def run_calls(
    jobs: Iterable[J],
    call: Callable[[J], Awaitable[T]],
    *,
    on_result: Callable[[J, T], None],
    concurrency: int = 8,
    budget: Budget | None = None,
    estimate_cost: Callable[[J], float | None] | None = None,
    actual_cost: Callable[[T], float | None] | None = None,
    component: Any = None,
) -> None:
    """Run ``call(job)`` for every job, at most ``concurrency`` at a time.

    ``on_result(job, result)`` runs for each success as it arrives (in the loop's
    thread, one at a time). On the first failure no new call starts, the calls in
    flight finish (their results still reach ``on_result``) and the failure is
    raised; a :class:`~scelmo.errors.BudgetExceededError` is preferred over others
    so a cost stop reads as one. ``component`` (the provider or embedder called) is
    warmed up first (:meth:`~scelmo.plugin.components.Component.warm_up`) and named when
    a cost limit is set and ``estimate_cost`` returns ``None``.
    """
    jobs = list(jobs)
    if not jobs:
        return
    warm_up = getattr(component, "warm_up", None)
    if callable(warm_up):  # (blocking set-up, before any request's deadline starts)
        warm_up()
    errors = run_sync(
        _run_calls_async(jobs, call, on_result, concurrency, budget, estimate_cost, actual_cost, component)
    )
    if errors:
        budget_errors = [e for e in errors if isinstance(e, BudgetExceededError)]
        if budget_errors and getattr(budget_errors[0], "limit_reached", False) and budget is not None \
                and budget.max_cost is not None:
            # the calls in flight have settled: say what the run spent in all
            raise BudgetExceededError(budget.stop_message()) from None
        raise (budget_errors or errors)[0]
