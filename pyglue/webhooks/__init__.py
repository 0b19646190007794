"""Webhooks: a tenancy's changes as signed HTTP POSTs, delivered by the worker (issue 16)."""
