-- billing.claim_stripe_outbox(p_limit, p_tenancy_id, p_lease): take due Stripe metadata
-- writes, the longest-waiting first.
--
-- Due: not delivered and next_attempt_at reached. A claim counts as an attempt and moves
-- next_attempt_at to now() + p_lease, so a deliverer that dies after claiming gives the rows
-- back when the lease ends; billing.complete_stripe_outbox / billing.fail_stripe_outbox
-- settle them before that. Two deliverers at once never block each other or take the same
-- row (FOR UPDATE SKIP LOCKED, then the lease), and the caller commits the claim before it
-- calls Stripe. p_tenancy_id: only that tenancy's rows (null: every tenancy).
-- Returns: the claimed rows. Errors: 22023 limit below 1 or lease not positive.
-- Locks: the claimed rows (SKIP LOCKED), until the caller commits.
create or replace function billing.claim_stripe_outbox(p_limit integer default 100, p_tenancy_id uuid default null,
                                                       p_lease interval default '5 minutes')
returns setof billing.stripe_outbox
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
begin
    if p_limit is null or p_limit < 1 then
        raise exception 'claim limit must be at least 1, got %', coalesce(p_limit::text, 'null') using errcode = '22023';
    end if;
    if p_lease is null or p_lease <= '0' then
        raise exception 'lease must be positive, got %', coalesce(p_lease::text, 'null') using errcode = '22023';
    end if;
    return query
    with due as (
        select o.tenancy_id, o.id from billing.stripe_outbox o
        where o.delivered_at is null and o.next_attempt_at <= now()
          and (p_tenancy_id is null or o.tenancy_id = p_tenancy_id)
        order by o.next_attempt_at, o.id
        limit p_limit
        for update skip locked
    ), claimed as (
        update billing.stripe_outbox o
        set attempts = o.attempts + 1, next_attempt_at = now() + p_lease
        from due d where o.tenancy_id = d.tenancy_id and o.id = d.id
        returning o.*
    )
    select * from claimed c order by c.tenancy_id, c.id;
end;
$$;

comment on function billing.claim_stripe_outbox(integer, uuid, interval) is
    'Claim up to p_limit due Stripe metadata writes (SKIP LOCKED, under a lease that gives them back). Each claim is an attempt.';
