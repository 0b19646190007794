-- pyglue.record_sync_result(p_target_id, p_error, ...): what the last sync of a target did.
-- Null p_error: success (failures reset, last_success_at set). Otherwise the error is kept
-- and the target backs off: retry_after = now() + least(p_max_delay, p_base_delay *
-- 2^(failures - 1)) (exponent capped at 30 so long outages cannot overflow the interval);
-- workers skip it until then, other targets are not held up. The cap is short (15 s): a
-- retry costs one connection attempt, and a target back from an outage should not wait
-- minutes. last_error and last_error_at are kept after a success (the history);
-- consecutive_failures > 0 is what "failing" means.
-- Returns: retry_after (null after a success).
create or replace function pyglue.record_sync_result(p_target_id bigint, p_error text default null,
                                                     p_base_delay interval default '2 seconds',
                                                     p_max_delay interval default '15 seconds')
returns timestamptz
language sql
set search_path = pg_catalog, pg_temp
as $$
    update pyglue.sync_targets t
    set last_success_at = case when p_error is null then now() else t.last_success_at end,
        last_error = coalesce(p_error, t.last_error),
        last_error_at = case when p_error is null then t.last_error_at else now() end,
        consecutive_failures = case when p_error is null then 0 else t.consecutive_failures + 1 end,
        retry_after = case when p_error is null then null
                           else now() + least(p_max_delay, p_base_delay * power(2, least(t.consecutive_failures, 30))) end
    where t.id = p_target_id
    returning t.retry_after;
$$;

comment on function pyglue.record_sync_result(bigint, text, interval, interval) is
    'Record a sync success (null error) or failure of a target; failures back off exponentially. Returns retry_after.';
