"""`pyglue billing`: the billing jobs (free-plan backfill, regen to latest) and Stripe sync."""

from __future__ import annotations

import click


@click.group()
def billing() -> None:
    """Billing jobs: free-plan backfill, regen to the latest version, Stripe sync."""
