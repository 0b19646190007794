-- plans of the statements inside app.metrics / app.list_users, sent to this client as LOG
load 'auto_explain';
set auto_explain.log_min_duration = 0;
set auto_explain.log_nested_statements = on;
set auto_explain.log_analyze = on;
set auto_explain.log_timing = on;
set auto_explain.log_buffers = on;
set client_min_messages = log
