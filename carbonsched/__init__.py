"""carbonsched: turns grid carbon intensity and power into a FLOPs budget ρ for training jobs.

A daemon watches the grid's carbon intensity and the GPUs' power, maps them to ρ by a policy,
plans jobs that declared a deadline, and records each job's and epoch's energy (J) and carbon
(gCO2e) in SQLite. Training code talks to it through one class:
:class:`carbonsched.client.DaemonClient` (or gt_core's ``DaemonRhoSource``, built on it).

The shared seam, at the top of the package:

* ``client``    -- DaemonClient: the socket client training code and the CLI use.
* ``protocol``  -- the wire format: request fields checked per op, one typed reply per op.
* ``config``    -- the daemon's TOML config; ``paths`` -- where sockets and state live.
* ``store``     -- the SQLite store of readings, decisions, jobs, epochs and pauses.
* ``types``     -- values that cross modules (readings, decisions, JSON values).
* ``times``     -- the time vocabulary: instants, durations and deadlines read one way, one formatter.
* ``cli``       -- the ``carbonsched`` command, built from ``commands/``.

The rooms:

* ``daemon/``     -- the running daemon: lifecycle, socket server and ops, status, periodic work.
* ``planning/``   -- when a job runs and at which ρ: job model, planners, forecasts, backtests
  (pure functions), and the daemon's planning of declared jobs.
* ``providers/``  -- grid carbon-intensity sources (Electricity Maps, WattTime, UK grid, traces, files).
* ``power/``      -- energy measurement: GPUs over NVML, CPU and RAM over RAPL or estimates.
* ``policies/``   -- ρ policies: TOML files mapping intensity, forecast, power and budgets to ρ.
* ``reporting/``  -- energy and carbon accounting, ``carbonsched report``, plots and plan notes.
* ``slurm/``      -- ``carbonsched sbatch``: planned Slurm jobs, begin times, requeues for pauses.
* ``service/``    -- carbonsched as a systemd service: unit, install, status, doctor.
* ``commands/``   -- the CLI's subcommands, one module per group.
"""

__version__ = "0.1.0"
PROTOCOL_VERSION = 1
