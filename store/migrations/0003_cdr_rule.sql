-- 0003: the rule that decided a call which did not connect (the Reason text its caller got:
-- dnc, calling_hours, no_eligible_buyer, overload, trunk_cps, sdp ...); NULL for connected
-- calls. Added at the end of the table so that CDR_COLUMNS stays in table order.
ALTER TABLE cdrs ADD COLUMN rule text;
