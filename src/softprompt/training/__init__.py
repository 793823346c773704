"""Training plumbing: job assembly, the run, checks, checkpointing, cross-validation, distributed
strategies, results files, loggers and failed jobs."""
