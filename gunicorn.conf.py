"""gunicorn's settings, read from the directory it starts in: ``gunicorn config.wsgi`` (CONTRACT.md).

Threads: a sync worker sits idle while its request waits on PostgreSQL's commit and on Redis, and it
closes the connection after every answer. A gthread worker answers on kept-alive connections and
overlaps those waits. Ingest with 2 workers (issue 6), alternated on one box: sync 736 and 727
requests/s, 2 threads 792 and 786, 4 threads 768 and 783, 8 threads 760 and 787 on a slow box; on a
fast one (2026-11-27, session 11) 2 threads 1,078-1,121 (one run 788), 4 threads 1,183-1,217, 8 threads
1,127 and 1,187: with 4, the machine sat idle less while requests waited on the commit. Each thread
keeps a database connection of its own. Flags on the command line still win (``--threads``, ``-k sync``).
"""

worker_class = "gthread"
threads = 4
