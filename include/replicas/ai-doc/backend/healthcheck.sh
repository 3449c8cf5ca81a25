#!/bin/sh
# /app/scripts/healthcheck.sh of the guide: the backend is healthy when /health/live answers 200.
exec wget --quiet --tries=1 --timeout=5 --output-document=/dev/null "http://127.0.0.1:${SERVER_PORT:-8080}/health/live"
