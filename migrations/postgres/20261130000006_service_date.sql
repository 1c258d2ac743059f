-- The local date of service (the calendar date of service.start in the offset it was submitted
-- with): consent data periods and partnerships are judged on it, not on the UTC date (an evening
-- session in California is the next day in UTC). Rows written before this migration fall back
-- to the UTC date of service_start.
ALTER TABLE sessions ADD COLUMN service_date TEXT;
