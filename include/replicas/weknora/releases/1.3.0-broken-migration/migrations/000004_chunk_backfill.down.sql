DELETE FROM chunks;
