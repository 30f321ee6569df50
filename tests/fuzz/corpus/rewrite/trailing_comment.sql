insert into webhook_events values ($1) -- retry
