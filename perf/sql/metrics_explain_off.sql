set auto_explain.log_min_duration = -1;
set client_min_messages = notice
