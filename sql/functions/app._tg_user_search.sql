-- app._tg_user_search(): statement-level AFTER INSERT / UPDATE / DELETE trigger of app.users
-- and app.contact_channels: the users the statement touched get their search rows
-- recomputed (app._refresh_user_search) in the same transaction. An update that changes no
-- searched column (display_name, signed_up_at, is_anonymous of a user; user_id, value of a
-- channel), such as the sequencer's stamping, costs one join of the transition tables.
create or replace function app._tg_user_search()
returns trigger
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
as $$
begin
    if tg_table_name = 'users' then
        if tg_op = 'INSERT' then
            perform app._refresh_user_search(array_agg(n.tenancy_id), array_agg(n.id)) from new_rows n;
        elsif tg_op = 'DELETE' then
            perform app._refresh_user_search(array_agg(o.tenancy_id), array_agg(o.id)) from old_rows o;
        else
            perform app._refresh_user_search(array_agg(k.tenancy_id), array_agg(k.id))
            from (select n.tenancy_id, n.id from new_rows n
                  left join old_rows o on o.tenancy_id = n.tenancy_id and o.id = n.id
                  where (n.display_name, n.signed_up_at, n.is_anonymous)
                        is distinct from (o.display_name, o.signed_up_at, o.is_anonymous)
                  union
                  select o.tenancy_id, o.id from old_rows o
                  where not exists (select 1 from new_rows n where n.tenancy_id = o.tenancy_id and n.id = o.id)) k;
        end if;
    elsif tg_op = 'INSERT' then
        perform app._refresh_user_search(array_agg(n.tenancy_id), array_agg(n.user_id)) from new_rows n;
    elsif tg_op = 'DELETE' then
        perform app._refresh_user_search(array_agg(o.tenancy_id), array_agg(o.user_id)) from old_rows o;
    else
        perform app._refresh_user_search(array_agg(k.tenancy_id), array_agg(k.user_id))
        from (select n.tenancy_id, n.user_id from new_rows n
              left join old_rows o on o.tenancy_id = n.tenancy_id and o.id = n.id
              where (n.user_id, n.value) is distinct from (o.user_id, o.value)
              union
              select o.tenancy_id, o.user_id from old_rows o
              left join new_rows n on n.tenancy_id = o.tenancy_id and n.id = o.id
              where (n.user_id, n.value) is distinct from (o.user_id, o.value)) k;
    end if;
    return null;
end;
$$;

comment on function app._tg_user_search() is
    'Statement trigger of app.users and app.contact_channels: recompute the touched users'' search rows.';
