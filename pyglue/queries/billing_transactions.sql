-- One page of a customer's (or, with a null customer, a tenancy's) transactions, newest
-- first; the next page passes the last row's at and id (billing.transactions).
select t.id, t.at, t.kind, t.customer_type, t.customer_id, t.product_id, t.product_version_id, t.item_id,
       t.quantity, t.amount, t.currency, t.source_kind, t.source_id
from billing.transactions(%(tenancy_id)s, %(customer_type)s, %(customer_id)s, %(from)s, %(to)s, %(limit)s,
                          %(before_at)s, %(before_id)s) t
