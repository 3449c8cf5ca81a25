-- 1.1.0: every email has a label; the emails stored before get 'inbox', and the backend
-- stores the label it is given from now on.
ALTER TABLE emails ADD COLUMN label text;
UPDATE emails SET label = 'inbox';
ALTER TABLE emails ALTER COLUMN label SET NOT NULL;
