"""A producer process of final on PostgreSQL: ``python -m tests.pg_producer DSN PREFIX N KEY``.

A handle with ``workers=0`` enqueues the jobs ``PREFIX0`` to ``PREFIX{N-1}`` (in
batches of 500), prints ``enqueued``, then offers one job ``PREFIX-key`` with the
idempotency key ``KEY`` and prints ``key accepted`` or ``key refused``. It waits
(``join``) until every job it accepted has settled, reads each one's ``status``, and
prints ``completed C of T``. It runs nothing itself: other processes do.
"""

from __future__ import annotations

import sys

from final import DuplicateJob, Job, JobQueue, Status

BATCH = 500


def main(argv: list[str]) -> None:
    dsn, prefix, count, key = argv[0], argv[1], int(argv[2]), argv[3]
    q = JobQueue(lambda job: None, dsn=dsn, workers=0)
    ids = [f"{prefix}{i}" for i in range(count)]
    for start in range(0, count, BATCH):
        q.enqueue_many([Job(id=job_id) for job_id in ids[start : start + BATCH]])
    print("enqueued", flush=True)
    try:
        q.enqueue(Job(id=f"{prefix}-key", idempotency_key=key))
    except DuplicateJob:
        print("key refused", flush=True)
    else:
        ids.append(f"{prefix}-key")
        print("key accepted", flush=True)
    if not q.join(timeout=300):
        print("join timed out", flush=True)
    completed = sum(q.status(job_id) is Status.COMPLETED for job_id in ids)
    print(f"completed {completed} of {len(ids)}", flush=True)
    q.close()


if __name__ == "__main__":
    main(sys.argv[1:])
