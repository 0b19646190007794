-- The per-row loop's backfill, per team without a plan: the same row the set-based job writes.
insert into billing.subscriptions (tenancy_id, customer_type, customer_id, product_id, product_version_id,
                                   product_line, is_add_on, stackable, status, quantity, started_at,
                                   current_period_start, current_period_end, creation_source)
values (%(tenancy_id)s, 'team', %(team_id)s, %(product_id)s, %(version_id)s, %(product_line)s, false, false,
        'active', 1, now(), now(), now() + %(period)s::interval, 'api_grant')
