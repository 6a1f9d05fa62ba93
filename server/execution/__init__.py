"""Where trials run: the Executor/WorkerHandle protocol, the typed worker messages, device
planning, the scheduler, and the two executors (local worker processes and Ray actors)."""
