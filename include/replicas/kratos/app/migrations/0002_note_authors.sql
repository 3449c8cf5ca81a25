-- 1.1.0: every note has an author; the notes written before get 'legacy', and the app
-- writes the author it is given from now on.
ALTER TABLE notes ADD COLUMN author text;
UPDATE notes SET author = 'legacy';
ALTER TABLE notes ALTER COLUMN author SET NOT NULL;
