INSERT INTO webhook_events VALUES ('a');;/* only a comment */;
-- line
;INSERT INTO webhook_events VALUES ('b') RETURNING *;;