-- Until the transaction ends, app._analyze_if_stale does nothing (0028's key joins alone).
create or replace function app._analyze_if_stale(p_rows bigint, p_tables regclass[])
returns void language sql as 'select'
