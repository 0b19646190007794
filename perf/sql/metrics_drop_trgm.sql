-- the search without pg_trgm (as on the embedded server): its one trigram index dropped, in a
-- transaction the benchmark rolls back
drop index if exists app.user_search_haystack_trgm_idx
