-- Fails: knowledges has no summary column (the release forgot the migration adding it).
INSERT INTO chunks (knowledge_id, seq, content) SELECT id, 0, summary FROM knowledges;
