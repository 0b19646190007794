-- Wake workers when work is queued: one NOTIFY pyglue_requests per inserting statement
-- (Postgres folds identical notifications of one transaction into one). Workers LISTEN
-- and fall back to a timed wake-up for backoffs, so a lost notification only delays.
create or replace function pyglue.tg_outgoing_requests__notify()
returns trigger
language plpgsql
as $$
begin
    perform pg_notify('pyglue_requests', '');
    return null;
end;
$$;

comment on function pyglue.tg_outgoing_requests__notify() is
    'Trigger: NOTIFY pyglue_requests when sync requests are queued.';

create or replace trigger _500_notify
    after insert on pyglue.outgoing_requests
    for each statement execute function pyglue.tg_outgoing_requests__notify();
