"""pyglue: a plain-SQL-first Postgres toolkit with a thin Python layer."""

__version__ = "0.1.0"
