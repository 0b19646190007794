-- Dropping a schema drops everything in it; only for throwaway databases.
drop schema if exists billing cascade;
drop schema if exists app cascade;
drop schema if exists pyglue cascade;
