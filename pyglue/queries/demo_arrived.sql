-- In a demo target: how many of the renamed names it shows, whether the deleted users are
-- gone and the added one is there.
select (select count(*) from public.users where display_name = any (%(names)s::text[])) as renamed,
       (select count(*) from public.users where id = any (%(deleted)s::uuid[])) as deleted_still_there,
       exists (select 1 from public.users where id = %(added)s) as added
