-- billing.fail_stripe_outbox(p_tenancy_id, p_id, p_metadata, p_error, p_base_delay,
-- p_max_delay): a claimed Stripe metadata write failed; try again later.
--
-- The row keeps its error (cut to 1000 characters; the caller leaves API keys out) and is
-- due again after a capped exponential backoff with jitter:
-- least(p_max_delay, p_base_delay * 2^(attempts - 1)) times a random factor in [0.8, 1.2)
-- (so two deliverers that failed together do not retry together). It is never dropped:
-- after many failures it is retried about every p_max_delay, so a long Stripe outage loses
-- nothing. A row whose metadata changed while the write was in flight
-- (p_metadata differs: regen moved the subscription again) keeps the error but stays due.
-- Returns: when the row is due again (null when it was delivered meanwhile).
-- Errors: P0002 no such outbox row; 22023 a delay that is not positive.
-- Locks: the outbox row.
create or replace function billing.fail_stripe_outbox(p_tenancy_id uuid, p_id bigint, p_metadata jsonb, p_error text,
                                                      p_base_delay interval default '5 seconds',
                                                      p_max_delay interval default '1 hour')
returns timestamptz
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
    v_row billing.stripe_outbox;
    v_next timestamptz;
begin
    if p_base_delay is null or p_base_delay <= '0' or p_max_delay is null or p_max_delay < p_base_delay then
        raise exception 'delays must be positive with the base at most the maximum, got % and %',
            coalesce(p_base_delay::text, 'null'), coalesce(p_max_delay::text, 'null') using errcode = '22023';
    end if;
    select * into v_row from billing.stripe_outbox o where o.tenancy_id = p_tenancy_id and o.id = p_id for update;
    if not found then
        raise exception 'no Stripe outbox row % in tenancy %', p_id, p_tenancy_id using errcode = 'P0002';
    end if;
    if v_row.delivered_at is not null then
        return null;
    end if;
    v_next := case
        when v_row.metadata is distinct from p_metadata then least(v_row.next_attempt_at, now())
        else now() + least(p_max_delay, p_base_delay * power(2, least(greatest(v_row.attempts - 1, 0), 30)))
                     * (0.8 + 0.4 * random())
    end;
    update billing.stripe_outbox o set last_error = left(coalesce(p_error, 'unknown error'), 1000),
                                       next_attempt_at = v_next
    where o.tenancy_id = p_tenancy_id and o.id = p_id;
    return v_next;
end;
$$;

comment on function billing.fail_stripe_outbox(uuid, bigint, jsonb, text, interval, interval) is
    'Record a failed Stripe metadata write: keep the error, retry after a capped exponential backoff with jitter. Never dropped. Returns when it is due again.';
