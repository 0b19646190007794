-- Keep autovacuum out of the timings: each measurement vacuums explicitly before it starts.
alter table {table} set (autovacuum_enabled = false)
