"""A pure-Python reference model of the item ledger's fold (../shared/DESIGN.md "Item ledger").

Written from the design's rules, not from billing._item_points, and kept deliberately naive:
every grant is its own lot (nothing is merged), every instant is replayed from the start,
and nothing is cached. Times are anything ordered (the tests use integer milliseconds).

The rules, in time order; at one instant:
  1. all grants, soonest-expiring first (never-expiring last): each pays off debt first, and
     what is left becomes a lot with its expiry; a grant that expires at or before its own
     time is never granted (it does not pay debt either);
  2. all removals: each takes from live lots, soonest expiry first, never-expiring last, the
     older grant first on ties; what cannot be covered becomes debt;
  3. expiries: a lot expiring at this instant loses what is left of it, so it can still be
     used by the removals of that instant.
`balance(changes, at)` is the state after everything that happens at `at`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Change:
    """A manual change: a grant (delta > 0, expiring at expires_at or never) or a removal."""

    at: Any
    delta: int
    expires_at: Any = None  # None: never

    def __post_init__(self):
        assert self.delta != 0 and (self.delta > 0 or self.expires_at is None), self


@dataclass
class Lot:
    granted_at: Any
    expires_at: Any  # None: never
    remaining: int
    order: int  # ties between lots of one instant and expiry; never changes a balance


@dataclass
class State:
    lots: list[Lot] = field(default_factory=list)
    debt: int = 0

    @property
    def balance(self) -> int:
        return sum(lot.remaining for lot in self.lots) - self.debt

    def lots_by_expiry(self) -> dict:
        """{expiry (None = never): quantity} of the non-empty lots, as the SQL stores them."""
        merged: dict = {}
        for lot in self.lots:
            if lot.remaining:
                merged[lot.expires_at] = merged.get(lot.expires_at, 0) + lot.remaining
        return merged


def _expiry_key(expires_at) -> tuple:
    return (expires_at is None, expires_at)  # never-expiring last


def _instants(changes: list[Change]) -> list:
    times = {c.at for c in changes} | {c.expires_at for c in changes if c.expires_at is not None}
    return sorted(times)


def state(changes: list[Change], at) -> State:
    """The lots and debt after everything that happens at `at`."""
    s = State()
    order = 0
    for t in _instants(changes):
        if t > at:
            break
        grants = [c for c in changes if c.at == t and c.delta > 0
                  and (c.expires_at is None or c.expires_at > t)]
        for g in sorted(grants, key=lambda c: _expiry_key(c.expires_at)):
            paid = min(s.debt, g.delta)
            s.debt -= paid
            if g.delta - paid:
                s.lots.append(Lot(t, g.expires_at, g.delta - paid, order))
                order += 1
        for r in (c for c in changes if c.at == t and c.delta < 0):
            wanted = -r.delta
            for lot in sorted(s.lots, key=lambda lot: (_expiry_key(lot.expires_at), lot.granted_at, lot.order)):
                taken = min(wanted, lot.remaining)
                lot.remaining -= taken
                wanted -= taken
            s.debt += wanted
        s.lots = [lot for lot in s.lots if lot.remaining and not (lot.expires_at is not None and lot.expires_at <= t)]
    return s


def balance(changes: list[Change], at) -> int:
    return state(changes, at).balance
