-- pyglue.webhook_status(p_tenancy_id): per webhook endpoint of a tenancy (or of all):
-- state (ok, retrying, parked, disabled), pending_events (rows of its tables and their
-- tombstones past its cursor or not yet sequenced), its cursor, last delivery, last
-- success and failure with the status code, error and a response excerpt, attempts,
-- the next retry, and lag_seconds: how long ago the oldest change it has not received
-- was sequenced (null when it has none). The URL is shown without user:password@; the
-- secret never.
create or replace function pyglue.webhook_status(p_tenancy_id uuid default null)
returns table (
    tenancy_id uuid, name text, url text, tables text[], mappings text[], enabled boolean, state text,
    pending_events bigint, last_delivered_sequence_id bigint, last_delivered_at timestamptz,
    last_success_at timestamptz, last_failure_at timestamptz, last_status integer, last_error text,
    last_response text, attempts integer, retry_after timestamptz, parked_at timestamptz,
    lag_seconds double precision)
language plpgsql
stable
set search_path = pg_catalog, pg_temp
as $$
declare
    v_hook record;
    v_table record;
    v_count bigint;
    v_min bigint;
    v_pending bigint;
    v_oldest bigint;
begin
    for v_hook in
        select w.* from pyglue.webhooks w
        where p_tenancy_id is null or w.tenancy_id = p_tenancy_id
        order by w.tenancy_id, w.name
    loop
        v_pending := 0;
        v_oldest := null;
        for v_table in
            select t.table_name, t.tenancy_column from pyglue.tracked_tables t
            where v_hook.tables is null or t.table_name::text = any (v_hook.tables)
        loop
            execute format('select count(*), min(sequence_id) from %s where %I = $1 and sequence_id > $2',
                           v_table.table_name, v_table.tenancy_column)
            into v_count, v_min using v_hook.tenancy_id, v_hook.last_delivered_sequence_id;
            v_pending := v_pending + v_count
                + pyglue._unsequenced_rows(v_table.table_name, v_hook.tenancy_id, v_hook.last_delivered_sequence_id);
            v_oldest := least(v_oldest, v_min);
            select count(*), min(d.sequence_id) filter (where d.sequence_id > v_hook.last_delivered_sequence_id)
            into v_count, v_min
            from pyglue.deleted_rows d
            where d.tenancy_id = v_hook.tenancy_id and d.table_name = v_table.table_name::text
              and (d.sequence_id > v_hook.last_delivered_sequence_id or d.should_update_sequence_id);
            v_pending := v_pending + v_count;
            v_oldest := least(v_oldest, v_min);
        end loop;
        tenancy_id := v_hook.tenancy_id;
        name := v_hook.name;
        url := regexp_replace(v_hook.url, '^([A-Za-z]+://)[^/?#@]*@', '\1');
        tables := v_hook.tables;
        mappings := v_hook.mappings;
        enabled := v_hook.enabled;
        state := case when v_hook.parked_at is not null then 'parked'
                      when not v_hook.enabled then 'disabled'
                      when v_hook.retry_after is not null then 'retrying'
                      else 'ok' end;
        pending_events := v_pending;
        last_delivered_sequence_id := v_hook.last_delivered_sequence_id;
        last_delivered_at := v_hook.last_delivered_at;
        last_success_at := v_hook.last_success_at;
        last_failure_at := v_hook.last_failure_at;
        last_status := v_hook.last_status;
        last_error := v_hook.last_error;
        last_response := v_hook.last_response;
        attempts := v_hook.attempts;
        retry_after := v_hook.retry_after;
        parked_at := v_hook.parked_at;
        lag_seconds := extract(epoch from now() - (select m.stamped_at from pyglue.sequence_marks m
                                                   where m.last_id >= v_oldest order by m.last_id limit 1));
        return next;
    end loop;
end;
$$;

comment on function pyglue.webhook_status(uuid) is
    'Per webhook endpoint: state, pending events, cursor, last success and failure (status, error, response excerpt), retry time, lag in seconds. Never the secret.';
