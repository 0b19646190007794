-- app._tg_user_facts_metrics(): statement-level AFTER INSERT / UPDATE / DELETE trigger of
-- app.contact_channels (verified primary email) and app.auth_methods (login methods): both
-- have tenancy_id and user_id. Refreshes the metrics state of each user whose rows the
-- statement touched (old and new owner when a row moved), locking them first, in the same
-- transaction. Rows of users deleted by cascade find no user: the users trigger already
-- removed (or will remove) that user's counts, whichever fires first.
create or replace function app._tg_user_facts_metrics()
returns trigger
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
as $$
begin
    if tg_op = 'INSERT' then
        perform app._refresh_user_metrics(array_agg(k.tenancy_id), array_agg(k.user_id), false, true)
        from (select distinct n.tenancy_id, n.user_id from new_rows n) k;
    elsif tg_op = 'DELETE' then
        perform app._refresh_user_metrics(array_agg(k.tenancy_id), array_agg(k.user_id), false, true)
        from (select distinct o.tenancy_id, o.user_id from old_rows o) k;
    elsif tg_table_name = 'contact_channels' then
        -- only what metrics read (the sequencer's stamping updates touch none of it); a FULL
        -- JOIN is planned as a hash or merge join, never a nested loop over transition tables
        perform app._refresh_user_metrics(array_agg(k.tenancy_id), array_agg(k.user_id), false, true)
        from (select distinct x.tenancy_id, x.user_id
              from new_rows n
              full join old_rows o on o.tenancy_id = n.tenancy_id and o.id = n.id
              cross join lateral (values (n.tenancy_id, n.user_id), (o.tenancy_id, o.user_id)) as x(tenancy_id, user_id)
              where x.user_id is not null
                and (n.id is null or o.id is null
                     or (n.user_id, n.type, n.is_primary, n.is_verified) is distinct from (o.user_id, o.type, o.is_primary, o.is_verified))) k
        having count(*) > 0;
    else
        perform app._refresh_user_metrics(array_agg(k.tenancy_id), array_agg(k.user_id), false, true)
        from (select distinct x.tenancy_id, x.user_id
              from new_rows n
              full join old_rows o on o.tenancy_id = n.tenancy_id and o.id = n.id
              cross join lateral (values (n.tenancy_id, n.user_id), (o.tenancy_id, o.user_id)) as x(tenancy_id, user_id)
              where x.user_id is not null
                and (n.id is null or o.id is null
                     or (n.user_id, n.kind, n.provider) is distinct from (o.user_id, o.kind, o.provider))) k
        having count(*) > 0;
    end if;
    return null;
end;
$$;

comment on function app._tg_user_facts_metrics() is
    'Statement trigger of app.contact_channels and app.auth_methods: refresh the metrics state of the users touched.';
