-- Where the endpoint is: its cursor and the feed's last id.
select w.last_delivered_sequence_id as cursor, (select last_value from pyglue.change_sequence) as handed_out
from pyglue.webhooks w where w.name = %(name)s
