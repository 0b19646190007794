select count(*) as n from pyglue.outgoing_requests
