INSERT INTO webhook_events VALUES ('a'); INSERT INTO billing."Payments" (payment_id) VALUES (1);
INSERT INTO audit_log DEFAULT VALUES RETURNING id;