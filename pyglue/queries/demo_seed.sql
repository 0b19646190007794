-- Seed the demo tenancy: %(users)s users, each with a primary email (two thirds verified),
-- every third with a phone too, a team per 20 users and one membership per user.
-- Ids come from the user number (md5), so a re-run adds nothing twice.
with users as (
    insert into app.users (tenancy_id, id, display_name, signed_up_at, client_metadata)
    select %(tenancy_id)s, md5('demo-user-' || g)::uuid, 'Demo User ' || g,
           now() - make_interval(mins => g), jsonb_build_object('plan', case when g %% 10 = 0 then 'pro' else 'free' end)
    from generate_series(1, %(users)s) g
    on conflict do nothing
    returning id, display_name
), emails as (
    insert into app.contact_channels (tenancy_id, user_id, type, value, is_primary, is_verified, used_for_auth)
    select %(tenancy_id)s, u.id, 'email', lower(replace(u.display_name, ' ', '.')) || '@example.com',
           true, abs(hashtext(u.id::text)) %% 3 <> 0, true
    from users u
), phones as (
    insert into app.contact_channels (tenancy_id, user_id, type, value)
    select %(tenancy_id)s, u.id, 'phone', '+1555' || lpad((abs(hashtext(u.id::text)) %% 10000000)::text, 7, '0')
    from users u where abs(hashtext(u.id::text || 'p')) %% 3 = 0
), teams as (
    insert into app.teams (tenancy_id, id, display_name)
    select %(tenancy_id)s, md5('demo-team-' || g)::uuid, 'Team ' || g
    from generate_series(1, greatest(%(users)s / 20, 1)) g
    on conflict do nothing
    returning id
)
insert into app.team_members (tenancy_id, team_id, user_id)
select %(tenancy_id)s, md5('demo-team-' || (1 + abs(hashtext(u.id::text)) %% greatest(%(users)s / 20, 1)))::uuid, u.id
from users u
where exists (select 1 from teams) or true
on conflict do nothing
