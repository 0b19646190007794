-- pyglue.record_webhook_delivery(...): settle one delivery attempt of a webhook batch, in
-- the transaction that holds the endpoint's row lock (the worker locks it FOR UPDATE
-- before sending, so one batch per endpoint is in flight).
--
-- p_cursor: the endpoint's cursor the batch was read after; p_batch_end: the sequence id
-- of its last event; p_status: the HTTP status (null: no response: network error or
-- timeout, p_error says which); p_response: an excerpt of the response body.
-- Outcomes:
--   delivered  2xx: the cursor moves to p_batch_end, attempts and backoff are cleared;
--   retrying   no response, 5xx or 429: attempts + 1, the batch is kept (the retry sends
--              exactly these events again) and the next attempt waits Retry-After
--              (p_retry_after_s, capped at p_max_delay_s) or a capped exponential backoff
--              p_base_delay_s * 2^(attempts - 1) with jitter (50-100 %);
--   parked     the same after p_max_attempts attempts, or at once for any other status
--              (4xx but 429, 3xx, 1xx): the endpoint stops, with the status and response
--              kept, until pyglue.retry_webhook. Other endpoints are not affected.
-- Every attempt is logged in pyglue.webhook_deliveries (kept 7 days per endpoint).
-- Returns: the outcome, or 'gone' when the endpoint was removed meanwhile.
-- Errors: 40001 the cursor is no longer p_cursor (another delivery moved it).
-- Locks: the endpoint's row (FOR UPDATE).
create or replace function pyglue.record_webhook_delivery(
    p_webhook_id bigint, p_cursor bigint, p_batch_end bigint, p_events integer, p_status integer,
    p_error text, p_response text, p_duration_ms integer, p_retry_after_s double precision default null,
    p_max_attempts integer default 12, p_base_delay_s double precision default 1.0,
    p_max_delay_s double precision default 300.0)
returns text
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
    v_hook pyglue.webhooks%rowtype;
    v_outcome text;
    v_delay double precision;
begin
    select * into v_hook from pyglue.webhooks w where w.id = p_webhook_id for update;
    if not found then
        return 'gone';
    end if;
    if v_hook.last_delivered_sequence_id <> p_cursor then
        raise exception 'webhook % cursor is %, not %: another delivery moved it', v_hook.name,
            v_hook.last_delivered_sequence_id, p_cursor using errcode = '40001';
    end if;
    v_outcome := case
        when p_status between 200 and 299 then 'delivered'
        when p_status is null or p_status = 429 or p_status >= 500 then
            case when v_hook.attempts + 1 >= greatest(p_max_attempts, 1) then 'parked' else 'retrying' end
        else 'parked'
    end;
    if v_outcome = 'delivered' then
        update pyglue.webhooks w
        set last_delivered_sequence_id = p_batch_end, pending_batch_end = null, attempts = 0,
            retry_after = null, last_delivered_at = now(), last_success_at = now(), last_status = p_status
        where w.id = p_webhook_id;
    else
        v_delay := least(greatest(p_max_delay_s, 0),
                         case when p_retry_after_s is not null then greatest(p_retry_after_s, 0)
                              else greatest(p_base_delay_s, 0) * power(2, least(v_hook.attempts, 30))
                                   * (0.5 + random() * 0.5) end);
        update pyglue.webhooks w
        set attempts = w.attempts + 1, pending_batch_end = p_batch_end,
            retry_after = case when v_outcome = 'retrying' then now() + make_interval(secs => v_delay) end,
            parked_at = case when v_outcome = 'parked' then now() end,
            last_failure_at = now(), last_status = p_status, last_error = left(p_error, 500),
            last_response = left(p_response, 1000)
        where w.id = p_webhook_id;
    end if;
    insert into pyglue.webhook_deliveries (webhook_id, after_sequence_id, last_sequence_id, events, status_code,
                                           outcome, error, response_excerpt, duration_ms)
    values (p_webhook_id, p_cursor, p_batch_end, p_events, p_status, v_outcome, left(p_error, 500),
            left(p_response, 1000), p_duration_ms);
    delete from pyglue.webhook_deliveries d
    where d.webhook_id = p_webhook_id and d.attempted_at < now() - interval '7 days';
    return v_outcome;
end;
$$;

comment on function pyglue.record_webhook_delivery(bigint, bigint, bigint, integer, integer, text, text, integer,
                                                   double precision, integer, double precision, double precision) is
    'Settle a webhook batch attempt: advance the cursor on 2xx, back off on no response/5xx/429, park on other statuses or after N attempts; log it. Returns the outcome.';
