-- a plain copy of app.events (same columns, defaults, checks and indexes; no triggers): the
-- ingest baseline
create table if not exists public.bench_plain_events (like app.events including all)
