"""SQLite store for intensity/energy samples, ρ decisions, jobs and epochs.

One file under the state directory, WAL journal, ``synchronous=FULL`` so that a row is on disk
once the call that wrote it returns (it survives ``kill -9`` and power loss). One connection
shared by the daemon's threads behind a lock; other processes (reports, CLI) open their own.

All instants are stored as UTC unix seconds (REAL) and returned as such.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from carbonsched.types import Decision, EnergyReading, IntensityReading, JsonValue, finite_or_none

Row = dict[str, JsonValue]
"""One stored row by column name (JSON columns such as a job's devices decoded)."""
SqlParam = None | int | float | str | bytes

J_PER_KWH = 3.6e6

# Forward-only: append, never edit an entry that has shipped. Index i brings the file to i + 1.
MIGRATIONS: list[str] = [
    """
    CREATE TABLE intensity_samples (
        id INTEGER PRIMARY KEY,
        ts REAL NOT NULL,
        provider TEXT NOT NULL,
        zone TEXT,
        signal TEXT NOT NULL,
        intensity_g_per_kwh REAL NOT NULL,
        estimated INTEGER NOT NULL DEFAULT 0,
        fetched_at REAL NOT NULL
    );
    CREATE UNIQUE INDEX intensity_samples_key
        ON intensity_samples (provider, ifnull(zone, ''), ts);
    CREATE INDEX intensity_samples_ts ON intensity_samples (ts);

    CREATE TABLE energy_samples (
        id INTEGER PRIMARY KEY,
        "start" REAL NOT NULL,
        "end" REAL NOT NULL,
        device TEXT NOT NULL,
        energy_j REAL NOT NULL,
        source TEXT NOT NULL,
        power_w REAL,
        pids TEXT NOT NULL DEFAULT '[]'
    );
    CREATE INDEX energy_samples_end ON energy_samples ("end");

    CREATE TABLE decisions (
        id INTEGER PRIMARY KEY,
        ts REAL NOT NULL,
        rho REAL NOT NULL,
        policy TEXT NOT NULL,
        reason TEXT NOT NULL,
        intensity_g_per_kwh REAL,
        gpu_power_w REAL,
        override INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX decisions_ts ON decisions (ts);

    CREATE TABLE jobs (
        job_id TEXT PRIMARY KEY,
        model TEXT NOT NULL,
        scheme TEXT NOT NULL,
        pid INTEGER,
        uid INTEGER,
        devices TEXT NOT NULL DEFAULT '[]',
        started_at REAL NOT NULL,
        ended_at REAL,
        status TEXT NOT NULL DEFAULT 'running'
    );

    CREATE TABLE epochs (
        job_id TEXT NOT NULL REFERENCES jobs (job_id),
        epoch INTEGER NOT NULL,
        started_at REAL,
        ended_at REAL,
        rho_asked REAL,
        rho_effective REAL,
        flops_forward REAL,
        flops_backward REAL,
        flops_full REAL,
        wall_s REAL,
        train_loss REAL,
        val_loss REAL,
        extra TEXT NOT NULL DEFAULT '{}',
        PRIMARY KEY (job_id, epoch)
    );
    """,
    # Energy and carbon of an epoch are computed when it ends, so they outlive sample retention.
    """
    ALTER TABLE epochs ADD COLUMN energy_j REAL;
    ALTER TABLE epochs ADD COLUMN carbon_g REAL;
    """,
    # Multi-node jobs: which process registered on this node; this node's name; the epoch's
    # energy by device kind and how GPU energy was attributed.
    """
    ALTER TABLE jobs ADD COLUMN hostname TEXT;
    ALTER TABLE jobs ADD COLUMN rank INTEGER;
    ALTER TABLE jobs ADD COLUMN local_rank INTEGER;
    ALTER TABLE jobs ADD COLUMN world_size INTEGER;
    ALTER TABLE jobs ADD COLUMN pids TEXT NOT NULL DEFAULT '[]';
    ALTER TABLE jobs ADD COLUMN pids_local INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE epochs ADD COLUMN gpu_j REAL;
    ALTER TABLE epochs ADD COLUMN cpu_j REAL;
    ALTER TABLE epochs ADD COLUMN ram_j REAL;
    ALTER TABLE epochs ADD COLUMN gpu_attribution TEXT;
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE INDEX epochs_started_at ON epochs (started_at);
    """,
    # A job whose pids belong to another pid namespace (a container): NVML's host pids never
    # match them, so its GPU energy is attributed per device.
    """
    ALTER TABLE jobs ADD COLUMN pids_foreign INTEGER NOT NULL DEFAULT 0;
    """,
    # Deadline jobs: what the job declared at job.start, and when it was paused (the trainer's
    # word: from its first ρ request while paused to its first one after).
    """
    ALTER TABLE jobs ADD COLUMN deadline REAL;
    ALTER TABLE jobs ADD COLUMN epochs REAL;
    ALTER TABLE jobs ADD COLUMN epoch_seconds REAL;
    ALTER TABLE jobs ADD COLUMN rho_min REAL;
    ALTER TABLE jobs ADD COLUMN mean_rho REAL;
    ALTER TABLE jobs ADD COLUMN may_pause INTEGER NOT NULL DEFAULT 0;
    CREATE TABLE pauses (
        job_id TEXT NOT NULL REFERENCES jobs (job_id),
        started_at REAL NOT NULL,
        ended_at REAL,
        planned_until REAL,
        PRIMARY KEY (job_id, started_at)
    );
    """,
    # Deadline jobs: the first plan the daemon made for each, kept to judge later whether planning
    # paid off (carbonsched.reporting.plan_outcome). Expected carbon is NULL when the job's running power was
    # not measured yet; the plan's carbon per W of running power is kept for pricing it later.
    """
    CREATE TABLE job_plans (
        job_id TEXT PRIMARY KEY REFERENCES jobs (job_id),
        planned_at REAL NOT NULL,
        provider TEXT NOT NULL,
        zone TEXT,
        epochs_left REAL NOT NULL,
        mean_rho REAL NOT NULL,
        running_s REAL NOT NULL,
        finish_at REAL NOT NULL,
        expected_carbon_g REAL,
        expected_g_per_w REAL,
        power_w REAL
    );
    """,
    # The daemon's own runs: when each started, was last known alive and stopped (NULL until it
    # stops; a run that was killed is given its last sign of life when the next one starts). An
    # epoch left open across a stop ends, as far as the daemon can know, at that stop.
    """
    CREATE TABLE daemon_runs (
        started_at REAL PRIMARY KEY,
        alive_at REAL NOT NULL,
        stopped_at REAL
    );
    """,
    # Jobs started by Slurm: the Slurm job id and node list the trainer reported.
    """
    ALTER TABLE jobs ADD COLUMN slurm_job_id TEXT;
    ALTER TABLE jobs ADD COLUMN slurm_nodes TEXT;
    ALTER TABLE jobs ADD COLUMN release_after_s REAL;
    CREATE INDEX jobs_slurm_job_id ON jobs (slurm_job_id);
    """,
]

SCHEMA_VERSION = len(MIGRATIONS)


class StoreError(Exception):
    """The store file cannot be used (newer schema, corrupt, unwritable)."""


def to_unix_s(value: datetime | float | int | None) -> float | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        return value.timestamp()
    return float(value)


class Store:
    """``read_only``: open another node's store (a copy, or a shared state directory) for
    reports without creating, migrating or writing anything; an older schema reads as far as
    its columns go."""

    def __init__(self, path: Path | str, *, timeout_s: float = 10.0, read_only: bool = False):
        self.path = Path(path)
        self._lock = threading.RLock()
        try:
            if read_only:
                if not self.path.is_file():
                    raise StoreError(f"{self.path}: no such file")
                self._db = sqlite3.connect(
                    f"{self.path.resolve().as_uri()}?mode=ro", uri=True, timeout=timeout_s,
                    isolation_level=None, check_same_thread=False,
                )
                self._db.row_factory = sqlite3.Row
                self._check_not_newer()
                return
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(
                str(self.path), timeout=timeout_s, isolation_level=None, check_same_thread=False
            )
            self._db.row_factory = sqlite3.Row
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("PRAGMA foreign_keys=ON")
            self._migrate()
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"{self.path}: {exc}") from exc

    # -- lifecycle -------------------------------------------------------------------------

    @property
    def schema_version(self) -> int:
        with self._lock:
            return int(self._db.execute("PRAGMA user_version").fetchone()[0])

    def _check_not_newer(self) -> int:
        """The file's schema version, if this carbonsched can read it."""
        current = self.schema_version
        if current > SCHEMA_VERSION:
            raise StoreError(
                f"{self.path}: schema version {current} is newer than this carbonsched "
                f"understands ({SCHEMA_VERSION}); upgrade carbonsched"
            )
        return current

    def _migrate(self) -> None:
        with self._lock:
            current = self._check_not_newer()
            for version in range(current, SCHEMA_VERSION):
                try:
                    self._db.executescript(
                        f"BEGIN IMMEDIATE;\n{MIGRATIONS[version]}\nPRAGMA user_version = {version + 1};\nCOMMIT;"
                    )
                except sqlite3.DatabaseError:
                    if self._db.in_transaction:
                        self._db.execute("ROLLBACK")
                    raise

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _write(self, sql: str, params: Sequence[SqlParam] = ()) -> sqlite3.Cursor:
        with self._lock:
            return self._db.execute(sql, params)

    def _rows(self, sql: str, params: Sequence[SqlParam] = ()) -> list[Row]:
        with self._lock:
            return [dict(row) for row in self._db.execute(sql, params).fetchall()]

    # -- samples ---------------------------------------------------------------------------

    def add_intensity(self, reading: IntensityReading) -> bool:
        """Store a reading; returns False when the same (provider, zone, ts) is already stored."""
        cur = self._write(
            "INSERT OR IGNORE INTO intensity_samples "
            "(ts, provider, zone, signal, intensity_g_per_kwh, estimated, fetched_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                to_unix_s(reading.timestamp),
                reading.provider,
                reading.zone,
                reading.signal,
                float(reading.intensity_g_per_kwh),
                int(bool(reading.estimated)),
                to_unix_s(reading.fetched_at),
            ),
        )
        return cur.rowcount == 1

    def add_energy(self, readings: Iterable[EnergyReading]) -> int:
        rows = [
            (
                to_unix_s(r.start),
                to_unix_s(r.end),
                r.device,
                float(r.energy_j),
                r.source,
                finite_or_none(r.power_w),
                json.dumps([int(p) for p in r.pids]),
            )
            for r in readings
        ]
        if not rows:
            return 0
        with self._lock:
            self._db.execute("BEGIN")
            try:
                self._db.executemany(
                    'INSERT INTO energy_samples ("start", "end", device, energy_j, source, power_w, pids) '
                    "VALUES (?, ?, ?, ?, ?, ?, ?)",
                    rows,
                )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return len(rows)

    def add_decision(
        self,
        ts: datetime | float,
        decision: Decision,
        *,
        intensity_g_per_kwh: float | None,
        gpu_power_w: float | None,
        override: bool = False,
    ) -> None:
        self._write(
            "INSERT INTO decisions (ts, rho, policy, reason, intensity_g_per_kwh, gpu_power_w, override) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                to_unix_s(ts),
                float(decision.rho),
                decision.policy,
                decision.reason,
                finite_or_none(intensity_g_per_kwh),
                finite_or_none(gpu_power_w),
                int(override),
            ),
        )

    def prune(self, retention_days: float, now: datetime | float) -> int:
        """Delete samples and decisions older than ``retention_days``; jobs and epochs stay."""
        cutoff = to_unix_s(now) - retention_days * 86400.0
        with self._lock:
            self._db.execute("BEGIN")
            try:
                n = self._db.execute("DELETE FROM intensity_samples WHERE ts < ?", (cutoff,)).rowcount
                n += self._db.execute('DELETE FROM energy_samples WHERE "end" < ?', (cutoff,)).rowcount
                n += self._db.execute("DELETE FROM decisions WHERE ts < ?", (cutoff,)).rowcount
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return n

    # -- jobs and epochs -------------------------------------------------------------------

    def start_job(
        self,
        job_id: str,
        *,
        model: str,
        scheme: str,
        pid: int | None,
        uid: int | None,
        devices: Sequence[str] = (),
        started_at: datetime | float,
        hostname: str | None = None,
        rank: int | None = None,
        local_rank: int | None = None,
        world_size: int | None = None,
        pids: Sequence[int] = (),
        pids_local: bool = False,
        pids_foreign: bool = False,
    ) -> bool:
        """Record a new running job; False if ``job_id`` already exists (nothing is changed).
        ``hostname``/``rank``/``local_rank``/``world_size``: the process that registered a
        multi-process job on this node; ``pids``: all of the job's processes on this node (GPU
        energy NVML lists for any of them belongs to the job). ``pids_local``: those ids are this
        process's view of them (same pid namespace), so the daemon may check they still exist.
        ``pids_foreign``: those ids are another pid namespace's (a container's), so NVML's
        process lists cannot name the job and its GPU energy is attributed per device."""
        cur = self._write(
            "INSERT OR IGNORE INTO jobs (job_id, model, scheme, pid, uid, devices, started_at, status, "
            "hostname, rank, local_rank, world_size, pids, pids_local, pids_foreign) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, 'running', ?, ?, ?, ?, ?, ?, ?)",
            (job_id, model, scheme, pid, uid, json.dumps(list(devices)), to_unix_s(started_at),
             hostname, rank, local_rank, world_size, json.dumps([int(p) for p in pids]), int(pids_local),
             int(pids_foreign)),
        )
        return cur.rowcount == 1

    def resume_job(
        self, job_id: str, *, pid: int | None = None, pids: Sequence[int] | None = None, pids_local: bool | None = None,
        pids_foreign: bool | None = None,
    ) -> bool:
        """Mark an existing job running again (a trainer restarted with the same job id); a new
        ``pid``/``pids`` replace the old ones, so per-pid GPU attribution follows the restarted
        processes."""
        cur = self._write(
            "UPDATE jobs SET status = 'running', ended_at = NULL, pid = coalesce(?, pid), pids = coalesce(?, pids), "
            "pids_local = coalesce(?, pids_local), pids_foreign = coalesce(?, pids_foreign) WHERE job_id = ?",
            (pid, None if pids is None else json.dumps([int(p) for p in pids]),
             None if pids_local is None else int(pids_local), None if pids_foreign is None else int(pids_foreign), job_id),
        )
        return cur.rowcount == 1

    # -- the daemon's runs ------------------------------------------------------------------

    def start_daemon_run(self, started_at: float) -> None:
        """Record a daemon run starting at ``started_at`` (unix s). A previous run that never
        recorded its stop (killed) is given one: its last heartbeat or the end of the last
        energy sample it stored, whichever is later."""
        with self._lock:
            self._write(
                "UPDATE daemon_runs SET stopped_at = max(alive_at, coalesce("
                '(SELECT max("end") FROM energy_samples WHERE "end" >= daemon_runs.started_at AND "end" <= ?), '
                "alive_at)) WHERE stopped_at IS NULL",
                (started_at,),
            )
            self._write("INSERT OR REPLACE INTO daemon_runs (started_at, alive_at) VALUES (?, ?)", (started_at, started_at))

    def daemon_alive(self, run_started_at: float, alive_at: float) -> None:
        """The run that started at ``run_started_at`` is still alive at ``alive_at`` (unix s)."""
        self._write("UPDATE daemon_runs SET alive_at = max(alive_at, ?) WHERE started_at = ?", (alive_at, run_started_at))

    def end_daemon_run(self, run_started_at: float, stopped_at: float) -> None:
        """The run that started at ``run_started_at`` stops at ``stopped_at`` (unix s)."""
        self._write("UPDATE daemon_runs SET alive_at = max(alive_at, ?), stopped_at = ? WHERE started_at = ?",
                    (stopped_at, stopped_at, run_started_at))

    def daemon_stop_after(self, since_s: float, *, before_run: float) -> float | None:
        """When the daemon run in force at ``since_s`` (unix s) stopped, if that run is not the
        current one (started at ``before_run``); None when the current run was in force. A killed
        run's last sign of life may predate ``since_s`` by up to a heartbeat: then ``since_s``."""
        rows = self._rows(
            "SELECT started_at, coalesce(stopped_at, alive_at) AS stop FROM daemon_runs WHERE started_at <= ? "
            "ORDER BY started_at DESC LIMIT 1",
            (since_s,),
        )
        if not rows or rows[0]["started_at"] >= before_run:
            return None
        return max(rows[0]["stop"], since_s)

    # -- node identity ----------------------------------------------------------------------

    def set_meta(self, key: str, value: str) -> None:
        self._write(
            "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (key, value),
        )

    def meta(self, key: str) -> str | None:
        """A value set by :meth:`set_meta`; None if unset (or the store predates the meta table)."""
        try:
            rows = self._rows("SELECT value FROM meta WHERE key = ?", (key,))
        except sqlite3.OperationalError:
            return None
        return rows[0]["value"] if rows else None

    def end_job(self, job_id: str, status: str, ended_at: datetime | float, *, keep_pause_open: bool = False) -> bool:
        """Mark the job ended; a pause still open ends with it, unless ``keep_pause_open`` (the
        job was requeued for its pause and comes back as the same job)."""
        if not keep_pause_open:
            self.end_pause(job_id, ended_at)
        cur = self._write(
            "UPDATE jobs SET status = ?, ended_at = ? WHERE job_id = ?",
            (status, to_unix_s(ended_at), job_id),
        )
        return cur.rowcount == 1

    def declare_job(self, job_id: str, *, deadline: float | None, epochs: float | None, epoch_seconds: float | None,
                    rho_min: float | None, mean_rho: float | None, may_pause: bool,
                    release_after_s: float | None = None) -> None:
        """Keep what the job declared at ``job.start``: deadline (unix s), epochs, epoch seconds
        at ρ 1, ρ bounds, whether it may pause and (under Slurm) after how long a pause releases
        its resources (a new job.start replaces them)."""
        self._write(
            "UPDATE jobs SET deadline = ?, epochs = ?, epoch_seconds = ?, rho_min = ?, mean_rho = ?, may_pause = ?, "
            "release_after_s = ? WHERE job_id = ?",
            (deadline, epochs, epoch_seconds, rho_min, mean_rho, int(may_pause), release_after_s, job_id),
        )

    def set_slurm_job(self, job_id: str, slurm_job_id: str, slurm_nodes: str | None) -> None:
        """Keep the Slurm job id (and node list) a job reported at ``job.start``."""
        self._write("UPDATE jobs SET slurm_job_id = ?, slurm_nodes = coalesce(?, slurm_nodes) WHERE job_id = ?",
                    (slurm_job_id, slurm_nodes, job_id))

    def jobs_of_slurm_job(self, slurm_job_id: str) -> list[str]:
        """Ids of the jobs that reported this Slurm job id (oldest first)."""
        try:
            rows = self._rows("SELECT job_id FROM jobs WHERE slurm_job_id = ? ORDER BY started_at", (slurm_job_id,))
        except sqlite3.OperationalError:  # a read-only store older than the column
            return []
        return [row["job_id"] for row in rows]

    def job_energy_and_carbon(self, job_id: str) -> tuple[float, float]:
        """The job's recorded energy (J) and carbon (gCO2e): the sums over its ended epochs."""
        rows = self._rows("SELECT coalesce(sum(energy_j), 0) AS energy_j, coalesce(sum(carbon_g), 0) AS carbon_g "
                          "FROM epochs WHERE job_id = ?", (job_id,))
        return float(rows[0]["energy_j"]), float(rows[0]["carbon_g"])

    def start_pause(self, job_id: str, started_at: datetime | float, planned_until: float | None) -> bool:
        """Open a pause of the job unless one is open; True when opened."""
        with self._lock:
            if self._rows("SELECT 1 FROM pauses WHERE job_id = ? AND ended_at IS NULL", (job_id,)):
                return False
            self._write("INSERT OR IGNORE INTO pauses (job_id, started_at, planned_until) VALUES (?, ?, ?)",
                        (job_id, to_unix_s(started_at), planned_until))
            return True

    def end_pause(self, job_id: str, ended_at: datetime | float) -> bool:
        """Close the job's open pause; True when one was open."""
        cur = self._write("UPDATE pauses SET ended_at = ? WHERE job_id = ? AND ended_at IS NULL",
                          (to_unix_s(ended_at), job_id))
        return cur.rowcount > 0

    def pauses(self, job_id: str) -> list[Row]:
        """The job's pauses, oldest first (``ended_at`` None: still paused). An older schema has none."""
        if self.schema_version < 5:
            return []
        return self._rows("SELECT * FROM pauses WHERE job_id = ? ORDER BY started_at", (job_id,))

    FIRST_PLAN_FIELDS = ("provider", "zone", "epochs_left", "mean_rho", "running_s", "finish_at", "expected_carbon_g",
                         "expected_g_per_w", "power_w")

    def record_first_plan(self, job_id: str, planned_at: datetime | float, **values: float | str | None) -> bool:
        """Keep the job's first plan (see the ``job_plans`` migration); a later call for the same
        job changes nothing. True when recorded."""
        if set(values) != set(self.FIRST_PLAN_FIELDS):
            raise TypeError(f"first plan fields must be {sorted(self.FIRST_PLAN_FIELDS)}, got {sorted(values)}")
        cur = self._write(
            f"INSERT OR IGNORE INTO job_plans (job_id, planned_at, {', '.join(self.FIRST_PLAN_FIELDS)}) "
            f"VALUES (?, ?{', ?' * len(self.FIRST_PLAN_FIELDS)})",
            (job_id, to_unix_s(planned_at), *[values[name] for name in self.FIRST_PLAN_FIELDS]),
        )
        return cur.rowcount == 1

    def first_plan(self, job_id: str) -> Row | None:
        """The job's first plan as recorded; None if none was (or the store predates plan records)."""
        if self.schema_version < 6:
            return None
        rows = self._rows("SELECT * FROM job_plans WHERE job_id = ?", (job_id,))
        return rows[0] if rows else None

    def start_epoch(
        self,
        job_id: str,
        epoch: int,
        *,
        rho_asked: float,
        rho_effective: float | None,
        started_at: datetime | float,
    ) -> None:
        """Insert the epoch, or restart it (a resumed job repeats an epoch): end fields are cleared."""
        self._write(
            "INSERT INTO epochs (job_id, epoch, started_at, rho_asked, rho_effective) VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT (job_id, epoch) DO UPDATE SET started_at = excluded.started_at, "
            "rho_asked = excluded.rho_asked, rho_effective = excluded.rho_effective, ended_at = NULL",
            (job_id, epoch, to_unix_s(started_at), rho_asked, rho_effective),
        )

    EPOCH_END_FIELDS = (
        "rho_asked",
        "rho_effective",
        "flops_forward",
        "flops_backward",
        "flops_full",
        "wall_s",
        "train_loss",
        "val_loss",
        "energy_j",
        "carbon_g",
        "gpu_j",
        "cpu_j",
        "ram_j",
        "gpu_attribution",
    )

    def end_epoch(
        self,
        job_id: str,
        epoch: int,
        *,
        ended_at: datetime | float,
        extra: Mapping[str, JsonValue] | None = None,
        started_at: datetime | float | None = None,
        **values: float | str | None,
    ) -> None:
        """Record an epoch's end; an epoch that never reported its start is created with
        ``started_at`` if given, else ``ended_at - wall_s``."""
        unknown = set(values) - set(self.EPOCH_END_FIELDS)
        if unknown:
            raise TypeError(f"unknown epoch fields: {sorted(unknown)}")
        end_s = to_unix_s(ended_at)
        wall_s = values.get("wall_s")
        start_guess = to_unix_s(started_at) if started_at is not None else end_s - wall_s if wall_s is not None else None
        cols = list(values)
        assignments = ", ".join(f"{c} = excluded.{c}" for c in cols)
        self._write(
            f"INSERT INTO epochs (job_id, epoch, started_at, ended_at, extra{''.join(', ' + c for c in cols)}) "
            f"VALUES (?, ?, ?, ?, ?{', ?' * len(cols)}) "
            "ON CONFLICT (job_id, epoch) DO UPDATE SET ended_at = excluded.ended_at, extra = excluded.extra, "
            f"started_at = coalesce(epochs.started_at, excluded.started_at){', ' + assignments if cols else ''}",
            (job_id, epoch, start_guess, end_s, json.dumps(extra or {}), *[values[c] for c in cols]),
        )

    def job(self, job_id: str) -> Row | None:
        rows = self._rows("SELECT * FROM jobs WHERE job_id = ?", (job_id,))
        return _decode_job(rows[0]) if rows else None

    def jobs(self, *, status: str | None = None, since: datetime | float | None = None) -> list[Row]:
        sql, params = "SELECT * FROM jobs WHERE 1", []
        if status is not None:
            sql += " AND status = ?"
            params.append(status)
        if since is not None:
            sql += " AND started_at >= ?"
            params.append(to_unix_s(since))
        return [_decode_job(r) for r in self._rows(sql + " ORDER BY started_at, job_id", params)]

    def epochs(self, job_id: str) -> list[Row]:
        rows = self._rows("SELECT * FROM epochs WHERE job_id = ? ORDER BY epoch", (job_id,))
        for row in rows:
            row["extra"] = json.loads(row["extra"] or "{}")
        return rows

    def epoch_windows(self, start: datetime | float, end: datetime | float) -> list[Row]:
        """Epochs that may overlap [start, end): started before ``end`` and ended after ``start``,
        or not ended yet while their job runs. Each row is the job's columns with the epoch's
        ``epoch``, ``epoch_started_at`` and ``epoch_ended_at``."""
        rows = self._rows(
            "SELECT jobs.*, epochs.epoch AS epoch, epochs.started_at AS epoch_started_at, "
            "epochs.ended_at AS epoch_ended_at "
            "FROM epochs JOIN jobs USING (job_id) WHERE epochs.started_at IS NOT NULL AND epochs.started_at < ? "
            "AND (epochs.ended_at > ? OR (epochs.ended_at IS NULL AND jobs.status = 'running')) "
            "ORDER BY epochs.started_at, job_id",
            (to_unix_s(end), to_unix_s(start)),
        )
        return [_decode_job(row) for row in rows]

    # -- windows for reports ---------------------------------------------------------------

    def intensity_samples(self, start: datetime | float, end: datetime | float, *,
                          source: tuple[str, str | None] | None = None) -> list[Row]:
        """Readings with ``start <= ts < end``; with ``source`` (provider name, zone), only that
        provider's readings for that zone (None: readings stored without a zone)."""
        where, params = "ts >= ? AND ts < ?", [to_unix_s(start), to_unix_s(end)]
        if source is not None:
            provider, zone = source
            where, params = where + " AND provider = ? AND ifnull(zone, '') = ?", [*params, provider, zone or ""]
        return self._rows(f"SELECT * FROM intensity_samples WHERE {where} ORDER BY ts", tuple(params))

    def latest_intensity(self) -> Row | None:
        rows = self._rows("SELECT * FROM intensity_samples ORDER BY ts DESC LIMIT 1")
        return rows[0] if rows else None

    def energy_samples(
        self, start: datetime | float, end: datetime | float, *, devices: Sequence[str] | None = None
    ) -> list[Row]:
        sql = 'SELECT * FROM energy_samples WHERE "end" > ? AND "start" < ?'
        params: list[Any] = [to_unix_s(start), to_unix_s(end)]
        if devices:
            sql += f" AND device IN ({', '.join('?' * len(devices))})"
            params.extend(devices)
        rows = self._rows(sql + ' ORDER BY "start", device', params)
        for row in rows:
            pids = row["pids"]
            row["pids"] = [] if not pids or pids == "[]" else json.loads(pids)  # most rows list none (CPU, RAM)
        return rows

    def decisions(self, start: datetime | float, end: datetime | float) -> list[Row]:
        return self._rows(
            "SELECT * FROM decisions WHERE ts >= ? AND ts < ? ORDER BY ts",
            (to_unix_s(start), to_unix_s(end)),
        )

    def energy_and_carbon(
        self, start: datetime | float, end: datetime | float, *, devices: Sequence[str] | None = None
    ) -> tuple[float, float | None]:
        """Energy (J) of samples overlapping [start, end), pro rata by overlap, and its carbon
        (gCO2e) using the latest intensity at or before each sample's start (or the first one
        after, if the sample predates all readings). Carbon is None if no intensity is stored."""
        s, e = to_unix_s(start), to_unix_s(end)
        energy_total_j, carbon_total_g, any_intensity = 0.0, 0.0, False
        for row in self.energy_samples(s, e, devices=devices):
            span_s = row["end"] - row["start"]
            overlap_s = min(row["end"], e) - max(row["start"], s)
            share = 1.0 if span_s <= 0 else max(0.0, overlap_s) / span_s
            energy_j = row["energy_j"] * share
            energy_total_j += energy_j
            intensity = self._intensity_at(row["start"])
            if intensity is not None:
                any_intensity = True
                carbon_total_g += energy_j / J_PER_KWH * intensity
        return energy_total_j, (carbon_total_g if any_intensity else None)

    def _intensity_at(self, ts: float) -> float | None:
        with self._lock:
            row = self._db.execute(
                "SELECT intensity_g_per_kwh FROM intensity_samples WHERE ts <= ? ORDER BY ts DESC LIMIT 1",
                (ts,),
            ).fetchone()
            if row is None:
                row = self._db.execute(
                    "SELECT intensity_g_per_kwh FROM intensity_samples WHERE ts > ? ORDER BY ts LIMIT 1",
                    (ts,),
                ).fetchone()
        return None if row is None else float(row[0])


def _decode_job(row: Row) -> Row:
    row["devices"] = json.loads(row["devices"] or "[]")
    row["pids"] = json.loads(row.get("pids") or "[]")
    if "may_pause" in row:
        row["may_pause"] = bool(row["may_pause"])
    return row
