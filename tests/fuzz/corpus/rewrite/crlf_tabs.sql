INSERT INTO webhook_events
	VALUES ('a')
	RETURNING id;
