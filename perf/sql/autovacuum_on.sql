-- Autovacuum back on for a measurement that runs as production does (the steady state).
alter table {table} reset (autovacuum_enabled)
