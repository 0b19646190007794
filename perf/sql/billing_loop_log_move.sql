-- The per-row loop's regen, per subscription: the same log row the set-based job writes.
insert into billing.subscription_moves (tenancy_id, subscription_id, from_version_id, to_version_id)
values (%(tenancy_id)s, %(subscription_id)s, %(from_version_id)s, %(to_version_id)s)
