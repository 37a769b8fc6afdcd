#!/usr/bin/env bash
# Pre-release only: rebuild 0001 from the models (no deployed database exists yet).
set -euo pipefail
cd "$(dirname "$0")/.."
tmp=$(mktemp -d)
export CRM_INSTANCE_PATH="$tmp" DATABASE_URL="sqlite:///$tmp/gen.sqlite3"
rm -f migrations/versions/0001_*.py
# Later hand-written revisions build on 0001: set aside while it is generated.
mkdir -p "$tmp/later" && find migrations/versions -maxdepth 1 -name '0*.py' -exec mv {} "$tmp/later/" \;
.venv/bin/flask --app wsgi db migrate -m "initial schema" --rev-id 0001 >/dev/null
find "$tmp/later" -name '*.py' -exec mv {} migrations/versions/ \;
.venv/bin/ruff format -q migrations/versions || true
rm -rf "$tmp"
echo "regenerated migrations/versions/0001_initial_schema.py"
