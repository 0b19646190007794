-- Rows %(first)s..%(last)s of the synthetic change stream: row n is change k = n / customers
-- of customer %(prefix)s(n mod customers) at minute k: a grant of 5 (every 7th expiring 500
-- minutes later), or a removal of 2 every 3rd.
insert into {table} (tenancy_id, customer_type, customer_id, item_id, delta, expires_at, at)
select %(tenancy_id)s, 'custom', %(prefix)s || (n %% %(customers)s), 'credits',
       case when k %% 3 = 2 then -2 else 5 end,
       case when k %% 7 = 6 and k %% 3 <> 2 then timestamptz '2030-01-01' + (k + 500) * interval '1 minute' end,
       timestamptz '2030-01-01' + k * interval '1 minute'
from generate_series(%(first)s::bigint, %(last)s::bigint) n
cross join lateral (select n / %(customers)s as k) c
