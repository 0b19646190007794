-- A tenancy's subscriptions and a checksum of their (id, xmin): any write of any row,
-- even one that changes no column, gives it a new xmin and changes the checksum.
select count(*) as n,
       md5(coalesce(string_agg(s.id::text || ':' || s.xmin::text, ',' order by s.id), '')) as checksum
from billing.subscriptions s
where s.tenancy_id = %(tenancy_id)s
