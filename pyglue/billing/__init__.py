"""Billing state from Python: batch drivers of the SQL jobs (jobs), Stripe sync (stripe)."""
