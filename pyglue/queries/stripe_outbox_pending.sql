-- Undelivered Stripe metadata writes (of one tenancy, or all) and seconds until the next is due.
select count(*) as pending,
       greatest(extract(epoch from min(o.next_attempt_at) - now()), 0)::float8 as next_due_s
from billing.stripe_outbox o
where o.delivered_at is null and (%(tenancy_id)s::uuid is null or o.tenancy_id = %(tenancy_id)s::uuid)
