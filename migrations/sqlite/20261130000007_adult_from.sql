-- The day the student turns 18: a parent's or guardian's consent stops opening the student's
-- records from then on (the adult student decides). Rows written before this migration have none
-- and are judged without it.
ALTER TABLE sessions ADD COLUMN adult_from TEXT;
