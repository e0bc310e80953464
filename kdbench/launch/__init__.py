"""Launchers: a plan's runs as commands (print), worker processes (local), submitit jobs
(slurm)."""
