-- billing.backfill_free_plans_step(p_project_id, p_product_id, p_after_tenancy_id,
-- p_after_team_id, p_walk): one resumable step of billing.backfill_free_plans. Walks the
-- next p_walk teams of the project's tenancies that have the free product, in key order
-- (tenancy_id, id) after the given one (nulls: from the start), and grants the free
-- product's current version to those without a live plan in its line.
--
-- A caller commits after each step and passes the returned key back, so a run of many
-- steps reads each team once (`pyglue billing backfill-free-plans` does this); after a
-- crash it starts from the beginning again and grants only what is still missing. What a
-- grant is, the unique index that decides it, and the checks of the free product: see
-- billing.backfill_free_plans. The first step (no key given) of a project where no tenancy
-- has the product raises a NOTICE saying so.
-- Returns: granted, walked (teams read), and the key of the last team read
-- (last_tenancy_id, last_team_id; null when walked = 0: done).
-- Errors: 22023 bad walk size or free product; P0002 unknown project.
-- Locks: the inserted rows; waits on concurrent inserts into the same (team, line).
create or replace function billing.backfill_free_plans_step(p_project_id text, p_product_id text,
                                                            p_after_tenancy_id uuid, p_after_team_id uuid,
                                                            p_walk integer default 10000)
returns table (granted bigint, walked bigint, last_tenancy_id uuid, last_team_id uuid)
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
    v_free record;
    v_tenancies integer := 0;
    v_after uuid;
    v_last uuid;
    v_walked bigint;
    v_granted bigint;
begin
    if p_walk is null or p_walk < 1 then
        raise exception 'walk size must be at least 1, got %', coalesce(p_walk::text, 'null') using errcode = '22023';
    end if;
    if not exists (select 1 from app.projects pr where pr.id = p_project_id) then
        raise exception 'no project %', coalesce(quote_literal(p_project_id), 'null') using errcode = 'P0002';
    end if;

    -- every tenancy's free product is checked before anything is written
    select tn.id as tenancy_id, v.customer_type, v.is_add_on, v.stackable,
           billing._recurring_interval(v.content) as period
    into v_free
    from app.tenancies tn
    join billing.products p on p.tenancy_id = tn.id and p.product_id = p_product_id
    join billing.product_versions v on v.id = p.current_version_id
    where tn.project_id = p_project_id
      and (v.customer_type <> 'team' or v.is_add_on or v.stackable or billing._recurring_interval(v.content) is null)
    order by tn.id
    limit 1;
    if found then
        raise exception 'free product "%" of tenancy % must be a team subscription that is neither an add-on nor stackable (customer_type %, interval %, add-on %, stackable %)',
            p_product_id, v_free.tenancy_id, v_free.customer_type, coalesce(v_free.period::text, 'none'),
            v_free.is_add_on, v_free.stackable using errcode = '22023';
    end if;

    granted := 0;
    walked := 0;
    for v_free in
        select tn.id as tenancy_id, v.id as version_id, v.product_line, v.line_key,
               billing._recurring_interval(v.content) as period
        from app.tenancies tn
        join billing.products p on p.tenancy_id = tn.id and p.product_id = p_product_id
        join billing.product_versions v on v.id = p.current_version_id
        where tn.project_id = p_project_id and (p_after_tenancy_id is null or tn.id >= p_after_tenancy_id)
        order by tn.id
    loop
        v_tenancies := v_tenancies + 1;
        v_after := case when v_free.tenancy_id = p_after_tenancy_id and p_after_team_id is not null
                        then p_after_team_id else '00000000-0000-0000-0000-000000000000' end;
        -- the next teams by key; the unique index decides who gets a plan: a team with a
        -- live plan in the line is a conflict, found by one index probe and skipped without
        -- writing. No NOT EXISTS: right after a bulk load the planner may think
        -- billing.subscriptions is empty and turn it into a nested loop over every plan of
        -- the line per team.
        with batch as (
            select t.id from app.teams t
            -- a range the primary key index can start from (an "is null or" could not)
            where t.tenancy_id = v_free.tenancy_id and t.id >= v_after and t.id is distinct from p_after_team_id
            order by t.id
            limit p_walk - walked
        ), granting as (
            insert into billing.subscriptions (tenancy_id, customer_type, customer_id, product_id,
                                               product_version_id, product_line, is_add_on, stackable, status,
                                               quantity, started_at, current_period_start, current_period_end,
                                               creation_source)
            select v_free.tenancy_id, 'team', b.id::text, p_product_id, v_free.version_id, v_free.product_line,
                   false, false, 'active', 1, now(), now(), now() + v_free.period, 'api_grant'
            from batch b
            on conflict (tenancy_id, customer_type, customer_id, line_key)
                where ended_at is null and not is_add_on and not stackable
            do nothing
            returning 1
        )
        select (select count(*) from granting), (select count(*) from batch),
               (select b.id from batch b order by b.id desc limit 1)
        into v_granted, v_walked, v_last;
        continue when v_walked = 0;
        granted := granted + v_granted;
        walked := walked + v_walked;
        last_tenancy_id := v_free.tenancy_id;
        last_team_id := v_last;
        exit when walked >= p_walk;
    end loop;
    if v_tenancies = 0 and p_after_tenancy_id is null then
        raise notice 'no tenancy of project % has a product "%"; nothing to backfill', p_project_id, p_product_id;
    end if;
    return next;
end;
$$;

comment on function billing.backfill_free_plans_step(text, text, uuid, uuid, integer) is
    'One resumable step of the free-plan backfill: walk the next p_walk teams of the project after the given key, grant the free plan to those without one. Returns granted, walked and the last key read.';
