  -- insert into webhook_events
/* INSERT INTO audit_log */