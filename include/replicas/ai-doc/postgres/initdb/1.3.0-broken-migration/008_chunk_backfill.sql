-- 1.3.0: backfill one chunk per existing document. Broken on purpose: documents has no
-- column "summary", so this file fails after 007 has been applied.
INSERT INTO document_chunks (document_id, position, body)
SELECT id, 0, summary FROM documents
ON CONFLICT DO NOTHING;
