"""gunicorn settings for benchmarks: the repository's gunicorn.conf.py minus access log and recycling.

Both servers of a comparison load this file, so they differ only in the app they serve. Access
logging is a fixed per-request cost for both, and recycling (max_requests) would measure the
app's start-up time instead of its requests.
"""

from pathlib import Path

exec(
    compile(
        (Path(__file__).resolve().parent.parent / "gunicorn.conf.py").read_text(),
        "gunicorn.conf.py",
        "exec",
    )
)

accesslog = None
max_requests = 0
max_requests_jitter = 0
