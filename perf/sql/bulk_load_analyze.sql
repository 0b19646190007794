-- What autovacuum does to the app tables after a rolled-back load: statistics of dead rows only.
analyze app.users, app.contact_channels, app.user_search, app.metrics_user_state, app.auth_methods,
        app.events, app.metrics_active_days, app.metrics_counters
