"""Slurm integration: submitting with a begin time, requeueing on long pauses, writing a job's energy into its record."""
