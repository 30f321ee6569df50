SELECT 1; INSERT INTO other VALUES (1); UPDATE webhook_events SET payload = 'insert'; INSERT INTO webhook_events VALUES ('c') -- tail
