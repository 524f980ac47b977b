"""erpwatch alerting: the bus subscriber that turns critical events into mail."""
