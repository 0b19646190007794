-- billing.backfill_free_plans(p_project_id, p_product_id, p_batch_size, p_limit): give
-- every team of the project's tenancies that has no live plan in the free product's line
-- a subscription to the free product's current version.
--
-- A live plan is a live (ended_at null) subscription of that product line that is not an
-- add-on and not stackable, free or paid: exactly what the unique index
-- billing.subscriptions_one_live_plan_idx allows once per customer and line. Tenancies of
-- the project without the product are skipped; a project where no tenancy has it returns
-- 0 with a NOTICE (a fresh database, or a product not written yet, is not an error for a
-- job run after every deploy). Grants are api_grant subscriptions, quantity 1, active,
-- first period now() .. now() + the product's interval.
--
-- Set-based: per tenancy, one INSERT ... SELECT per batch of p_batch_size teams, walking
-- the teams in id order (keyset), with ON CONFLICT DO NOTHING on the unique index. So it
-- is idempotent (a re-run inserts nothing and writes no row) and safe to run twice at
-- once: a run that meets a team another run is granting waits for that transaction and
-- then skips the team if it committed (or grants it if it rolled back), and every team
-- ends with one free plan. p_limit stops after that many grants (null: no limit), so a
-- caller can commit every p_limit rows and call again until it returns 0 (teams that have
-- a plan are walked again each call; a probe each); a killed run loses only its
-- uncommitted batch, and the next run picks up what is missing.
-- Returns: teams granted by this call.
-- Errors: 22023 bad batch size or limit, or a free product that is not a team
-- subscription exclusive in its line (customer_type team, an interval, neither add-on nor
-- stackable); P0002 unknown project. Checks every tenancy's product before writing.
-- Locks: the inserted rows; waits on concurrent inserts into the same (team, line).
create or replace function billing.backfill_free_plans(p_project_id text default 'internal',
                                                       p_product_id text default 'free',
                                                       p_batch_size integer default 10000,
                                                       p_limit bigint default null)
returns bigint
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
    v_free record;
    v_tenancies integer := 0;
    v_from uuid;
    v_last uuid;
    v_batch bigint;
    v_granted bigint;
    v_total bigint := 0;
begin
    if p_batch_size is null or p_batch_size < 1 then
        raise exception 'batch size must be at least 1, got %', coalesce(p_batch_size::text, 'null')
            using errcode = '22023';
    end if;
    if p_limit is not null and p_limit < 1 then
        raise exception 'limit must be at least 1 or null, got %', p_limit using errcode = '22023';
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

    for v_free in
        select tn.id as tenancy_id, v.id as version_id, v.product_line, v.line_key,
               billing._recurring_interval(v.content) as period
        from app.tenancies tn
        join billing.products p on p.tenancy_id = tn.id and p.product_id = p_product_id
        join billing.product_versions v on v.id = p.current_version_id
        where tn.project_id = p_project_id
        order by tn.id
    loop
        v_tenancies := v_tenancies + 1;
        v_from := '00000000-0000-0000-0000-000000000000';  -- the smallest uuid
        v_last := null;
        loop
            v_batch := least(p_batch_size, p_limit - v_total);
            exit when v_batch <= 0;
            -- the next batch of teams (id >= v_from, the last batch's last team excluded);
            -- the unique index decides who gets a plan: a team with a live plan in the line
            -- is a conflict, found by one index probe and skipped without writing. No NOT
            -- EXISTS: right after a bulk load the planner may think billing.subscriptions is
            -- empty and turn it into a nested loop over every plan of the line per team.
            with batch as (
                select t.id from app.teams t
                where t.tenancy_id = v_free.tenancy_id and t.id >= v_from and t.id is distinct from v_last
                order by t.id
                limit v_batch
            ), granted as (
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
            select (select count(*) from granted), (select b.id from batch b order by b.id desc limit 1)
            into v_granted, v_last;
            exit when v_last is null;
            v_total := v_total + v_granted;
            v_from := v_last;
        end loop;
    end loop;
    if v_tenancies = 0 then
        raise notice 'no tenancy of project % has a product "%"; nothing to backfill', p_project_id, p_product_id;
    end if;
    return v_total;
end;
$$;

comment on function billing.backfill_free_plans(text, text, integer, bigint) is
    'Give every team of the project without a live plan in the free product''s line the free product''s current version. Idempotent, concurrency-safe, set-based. Returns teams granted.';
