"""Tenant sync: mappings, the engine that applies them to targets, the worker, status."""
