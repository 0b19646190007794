-- The next transaction id (every transaction that wrote or locked a row took one below it).
-- Reading it takes none.
select pg_snapshot_xmax(pg_current_snapshot())::text::bigint as next_xid
