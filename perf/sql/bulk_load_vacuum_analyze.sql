-- VACUUM ANALYZE of the app tables after a rolled-back load: emptied, truncated, analyzed empty.
vacuum analyze app.users, app.contact_channels, app.user_search, app.metrics_user_state, app.auth_methods,
               app.events, app.metrics_active_days, app.metrics_counters
