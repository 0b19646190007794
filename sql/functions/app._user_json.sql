-- app._user_json(p_user app.users): the user object of app.metrics and app.list_users:
-- id, display_name, primary_email (the primary email channel's value, or null),
-- signed_up_at, last_active_at, is_anonymous. One index lookup in app.contact_channels.
create or replace function app._user_json(p_user app.users)
returns jsonb
language sql
stable
set search_path = pg_catalog, pg_temp
as $$
    select jsonb_build_object(
        'id', p_user.id,
        'display_name', p_user.display_name,
        'primary_email', (select c.value from app.contact_channels c
                          where c.tenancy_id = p_user.tenancy_id and c.user_id = p_user.id
                            and c.type = 'email' and c.is_primary),
        'signed_up_at', p_user.signed_up_at,
        'last_active_at', p_user.last_active_at,
        'is_anonymous', p_user.is_anonymous)
$$;

comment on function app._user_json(app.users) is
    'A user as the jsonb object of app.metrics and app.list_users, with its primary email.';
