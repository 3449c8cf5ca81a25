"""PostgreSQL as a ``pg_dump`` custom-format archive, proven by restoring it into a scratch
server: the client tools and connections (``client``), the fingerprint that proves a copy
(``fingerprint``), the dump (``dump``), its verification (``verify``) and the restore into
a live server (``restore``)."""
