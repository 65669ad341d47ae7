"""The engine: drives every job of every backend to a terminal state.

- ``scheduler``: one runner per backend; cancels, batch timeouts, SIGHUP reloads.
- ``runner``: one backend's I/O loops (submit, poll, fetch results, cancel) and its
  ``stats()`` snapshot. It decides nothing itself; it asks:
- ``schedule``: when a job is polled next (the backoff, predicted waits);
- ``calendar``: which polls are due now (10-ms slots);
- ``policy``: what to do when something fails (retry, poll again, requeue, fail,
  pause the backend) and after how long. A change to what is retried is made there.
- ``ratelimit``: a backend's request budget; ``histogram``: the poll-lag histogram;
  ``notify``: in-process notice of batch changes (long-polls, the event stream).
"""
