"""The `carbonsched` sub-commands, one module per group (daemon, plan, report, policy, service, slurm, ...)."""
