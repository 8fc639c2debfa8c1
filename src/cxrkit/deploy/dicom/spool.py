"""The node's durable spool: received instances as files (temp file, fsync, rename) and the node's state in one
SQLite database (WAL, ``synchronous=FULL``), so a SIGKILL at any moment loses nothing.

Layout of ``SPOOL/`` (created 0700; every file 0600)::

    node.db                      instances, studies, outbox (delivery queue), worklist
    incoming/<study>/<sop>.dcm   received instances, named by hashed UIDs (no identifiers in file names)
    results/<entry>/*.dcm        SR / SC objects waiting for delivery
    dead-letter/<entry>/*.dcm    results that failed ``max_attempts`` times (``cxr node retry`` re-sends them)
    worklist/<entry>/*.png       the worklist view's film and heatmap images
    tmp/                         partial writes (emptied at start-up)

State machine of an instance: ``received`` -> ``reported`` (SR queued) -> ``processed`` (pictures queued too) |
``skipped`` (reason kept) | ``failed``. Of a result in the outbox:
``pending`` -> ``sent`` | ``dead`` (-> ``pending`` again through retry). Each transition is one transaction.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from cxrkit.data.errors import CxrError
from cxrkit.deploy.dicom import worklist
from cxrkit.fileio import fsync_dir

SCHEMA = """
CREATE TABLE IF NOT EXISTS instances (
    sop_uid TEXT PRIMARY KEY,
    sop_key TEXT NOT NULL,
    study_uid TEXT NOT NULL,
    study_key TEXT NOT NULL,
    sop_class_uid TEXT NOT NULL,
    path TEXT,
    calling_aet TEXT,
    received_at REAL NOT NULL,
    state TEXT NOT NULL DEFAULT 'received',
    reason TEXT,
    entry_id TEXT
);
CREATE INDEX IF NOT EXISTS instances_pending ON instances (state, study_uid);
CREATE TABLE IF NOT EXISTS studies (
    study_uid TEXT PRIMARY KEY,
    study_key TEXT NOT NULL,
    first_arrival REAL NOT NULL,
    last_arrival REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    entry_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    sop_uid TEXT,
    path TEXT NOT NULL,
    destination TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending',
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL,
    claimed_until REAL,
    created_at REAL NOT NULL,
    sent_at REAL,
    last_error TEXT
);
CREATE INDEX IF NOT EXISTS outbox_due ON outbox (state, next_attempt_at);
"""


class SpoolError(CxrError):
    """The spool folder cannot be used (permissions, full disk, not a node spool)."""


def uid_key(uid: str) -> str:
    """A UID's stand-in for logs and file names: 16 hex digits of its SHA-256 (no identifier leaves the DB)."""
    return hashlib.sha256(uid.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Instance:
    sop_uid: str
    sop_key: str
    study_uid: str
    study_key: str
    sop_class_uid: str
    path: Path | None
    received_at: float
    state: str = "received"
    entry_id: str | None = None


@dataclass(frozen=True)
class OutboxItem:
    id: int
    entry_id: str
    kind: str
    sop_uid: str | None
    path: Path
    destination: str
    attempts: int


class Spool:
    """One spool folder. Thread-safe: each thread gets its own SQLite connection."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self._local = threading.local()
        self._make_dirs()
        conn = self.conn()  # executescript commits by itself: no explicit transaction around it
        conn.executescript(SCHEMA)
        worklist.create_schema(conn)

    # -- set-up ---------------------------------------------------------------------------------------
    def _make_dirs(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
            os.chmod(self.root, 0o700)  # mkdir's mode is masked by the umask and ignored for existing folders
            for sub in ("incoming", "results", "dead-letter", worklist.IMAGES_DIR, "tmp"):
                (self.root / sub).mkdir(exist_ok=True, mode=0o700)
        except OSError as exc:
            raise SpoolError(f"{self.root}: cannot create the spool folder ({exc.strerror}); choose a writable "
                             "--spool folder") from None

    def conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.root / worklist.DB_NAME, timeout=30.0, isolation_level=None,
                                   check_same_thread=True)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")  # a committed row survives a power cut, not only a SIGKILL
            conn.execute("PRAGMA busy_timeout=30000")
            self._local.conn = conn
            os.chmod(self.root / worklist.DB_NAME, 0o600)
        return conn

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    class _Txn:
        def __init__(self, conn: sqlite3.Connection):
            self.conn = conn

        def __enter__(self) -> sqlite3.Connection:
            self.conn.execute("BEGIN IMMEDIATE")
            return self.conn

        def __exit__(self, exc_type, exc, tb) -> None:
            self.conn.execute("ROLLBACK" if exc_type else "COMMIT")

    def transaction(self) -> "Spool._Txn":
        """``with spool.transaction() as conn:`` - one atomic, durable change."""
        return Spool._Txn(self.conn())

    # -- receiving ------------------------------------------------------------------------------------
    def has_instance(self, sop_uid: str) -> bool:
        return self.conn().execute("SELECT 1 FROM instances WHERE sop_uid = ?", (sop_uid,)).fetchone() is not None

    def store_instance(self, data: bytes, *, sop_uid: str, study_uid: str, sop_class_uid: str,
                       calling_aet: str | None, now: float | None = None) -> bool:
        """Write a received instance durably and record it; False when that SOP Instance UID is already here
        (stored once). Returns only after the file and its row are on disk: then the sender may be told success."""
        if self.has_instance(sop_uid):
            return False
        now = time.time() if now is None else now
        folder = self.root / "incoming" / uid_key(study_uid)
        folder.mkdir(exist_ok=True, mode=0o700)
        final = folder / f"{uid_key(sop_uid)}.dcm"
        self.write_file(final, data)
        return self._record(final, sop_uid=sop_uid, study_uid=study_uid, sop_class_uid=sop_class_uid,
                            calling_aet=calling_aet, now=now)

    def _record(self, final: Path, *, sop_uid: str, study_uid: str, sop_class_uid: str, calling_aet: str | None,
                now: float) -> bool:
        with self.transaction() as conn:
            cur = conn.execute("INSERT OR IGNORE INTO instances (sop_uid, sop_key, study_uid, study_key, "
                               "sop_class_uid, path, calling_aet, received_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                               (sop_uid, uid_key(sop_uid), study_uid, uid_key(study_uid), sop_class_uid,
                                str(final.relative_to(self.root)), calling_aet, now))
            if cur.rowcount == 0:  # a concurrent association stored the same instance first: same bytes
                return False
            conn.execute("INSERT INTO studies (study_uid, study_key, first_arrival, last_arrival) VALUES (?, ?, ?, ?) "
                         "ON CONFLICT(study_uid) DO UPDATE SET last_arrival = MAX(last_arrival, excluded.last_arrival)",
                         (study_uid, uid_key(study_uid), now, now))
        return True

    def write_file(self, final: Path, data: bytes) -> None:
        """temp file in SPOOL/tmp -> fsync -> rename -> fsync the folder (0600; unique temp name per thread)."""
        tmp = self.root / "tmp" / f"{final.name}.{os.getpid()}.{threading.get_ident()}.part"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, final)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise SpoolError(f"cannot write to the spool {self.root} ({exc.strerror}); free disk space or fix "
                             "its permissions") from None
        fsync_dir(final.parent)

    # -- studies ready for processing -----------------------------------------------------------------
    def due_studies(self, settle: float, now: float | None = None) -> tuple[list[str], float | None]:
        """(studies quiet for ``settle`` s with unprocessed instances, the time the next one becomes due)."""
        now = time.time() if now is None else now
        rows = self.conn().execute(
            "SELECT s.study_uid, s.last_arrival FROM studies s WHERE EXISTS (SELECT 1 FROM instances i "
            "WHERE i.study_uid = s.study_uid AND i.state IN ('received', 'reported')) ORDER BY s.last_arrival"
        ).fetchall()
        due = [uid for uid, last in rows if last + settle <= now]
        waiting = [last + settle for _, last in rows if last + settle > now]
        return due, (min(waiting) if waiting else None)

    def pending_instances(self, study_uid: str) -> list[Instance]:
        rows = self.conn().execute(
            "SELECT sop_uid, sop_key, study_uid, study_key, sop_class_uid, path, received_at, state, entry_id "
            "FROM instances WHERE study_uid = ? AND state IN ('received', 'reported') ORDER BY received_at",
            (study_uid,)).fetchall()
        return [Instance(r[0], r[1], r[2], r[3], r[4], self.root / r[5] if r[5] else None, r[6], r[7], r[8])
                for r in rows]

    def last_arrival(self, study_uid: str) -> float:
        """When the study's latest instance was stored (the worklist's ``received_at``)."""
        row = self.conn().execute("SELECT last_arrival FROM studies WHERE study_uid = ?", (study_uid,)).fetchone()
        return row[0] if row else time.time()

    # -- outbox ---------------------------------------------------------------------------------------
    def due_outbox(self, now: float | None = None, lease: float = 60.0) -> list[OutboxItem]:
        """Claim the results due for delivery for ``lease`` s, so a second process (``cxr node retry`` beside a
        running node) does not send the same object at the same time. A node's start-up drops stale claims."""
        now = time.time() if now is None else now
        with self.transaction() as conn:
            rows = conn.execute("SELECT id, entry_id, kind, sop_uid, path, destination, attempts FROM outbox "
                                "WHERE state = 'pending' AND next_attempt_at <= ? AND (claimed_until IS NULL OR "
                                "claimed_until <= ?) ORDER BY id", (now, now)).fetchall()
            conn.executemany("UPDATE outbox SET claimed_until = ? WHERE id = ?", [(now + lease, r[0]) for r in rows])
        return [OutboxItem(r[0], r[1], r[2], r[3], self.root / r[4], r[5], r[6]) for r in rows]

    def next_outbox_time(self) -> float | None:
        row = self.conn().execute("SELECT MIN(MAX(next_attempt_at, COALESCE(claimed_until, 0))) FROM outbox "
                                  "WHERE state = 'pending'").fetchone()
        return row[0] if row and row[0] is not None else None

    def mark_sent(self, item: OutboxItem, now: float | None = None) -> None:
        with self.transaction() as conn:
            conn.execute("UPDATE outbox SET state = 'sent', sent_at = ?, attempts = attempts + 1, last_error = NULL, "
                         "claimed_until = NULL WHERE id = ?", (time.time() if now is None else now, item.id))

    def mark_failed(self, item: OutboxItem, error: str, *, max_attempts: int, base: float, cap: float,
                    now: float | None = None) -> bool:
        """Count a failed attempt; after ``max_attempts`` move the file to the dead-letter folder. True if dead."""
        now = time.time() if now is None else now
        attempts = item.attempts + 1
        if attempts < max_attempts:
            delay = min(cap, base * 2 ** (attempts - 1))
            with self.transaction() as conn:
                conn.execute("UPDATE outbox SET attempts = ?, next_attempt_at = ?, last_error = ?, "
                             "claimed_until = NULL WHERE id = ?",
                             (attempts, now + delay, error[:500], item.id))
            return False
        dead = self.root / "dead-letter" / item.entry_id / item.path.name
        dead.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        if item.path.exists():
            os.replace(item.path, dead)
            fsync_dir(dead.parent)
        with self.transaction() as conn:
            conn.execute("UPDATE outbox SET state = 'dead', attempts = ?, path = ?, last_error = ?, "
                         "claimed_until = NULL WHERE id = ?",
                         (attempts, str(dead.relative_to(self.root)), error[:500], item.id))
        return True

    def requeue_dead(self, now: float | None = None) -> int:
        """Move every dead-letter result back to the queue (attempts reset); returns how many."""
        now = time.time() if now is None else now
        rows = self.conn().execute("SELECT id, entry_id, path FROM outbox WHERE state = 'dead'").fetchall()
        for row_id, entry_id, rel in rows:
            src = self.root / rel
            dst = self.root / "results" / entry_id / src.name
            dst.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            if src.exists():
                os.replace(src, dst)
            with self.transaction() as conn:
                conn.execute("UPDATE outbox SET state = 'pending', attempts = 0, next_attempt_at = ?, path = ? "
                             "WHERE id = ?", (now, str(dst.relative_to(self.root)), row_id))
        return len(rows)

    def entry_delivered(self, entry_id: str) -> bool:
        """Every result of the entry sent, and none still to be made (films ``reported``: pictures pending)."""
        row = self.conn().execute(
            "SELECT (SELECT COUNT(*) FROM outbox WHERE entry_id = ? AND state != 'sent') + (SELECT COUNT(*) FROM "
            "instances WHERE entry_id = ? AND state = 'reported')", (entry_id, entry_id)).fetchone()
        return row[0] == 0

    def apply_retention(self, entry_id: str) -> None:
        """Once every result of an entry is delivered: delete its result files and its source films (the
        instance rows stay, so a film sent again is still recognised and not processed twice)."""
        shutil.rmtree(self.root / "results" / entry_id, ignore_errors=True)
        rows = self.conn().execute("SELECT sop_uid, path FROM instances WHERE entry_id = ? AND path IS NOT NULL",
                                   (entry_id,)).fetchall()
        for _, rel in rows:
            (self.root / rel).unlink(missing_ok=True)
        with self.transaction() as conn:
            conn.execute("UPDATE instances SET path = NULL WHERE entry_id = ?", (entry_id,))

    # -- recovery -------------------------------------------------------------------------------------
    def recover(self, read_header) -> dict[str, int]:
        """Start-up after a crash: drop partial writes, register films written but not yet recorded (a kill
        between rename and commit), delete results of processing runs that never committed."""
        counts = {"partial": 0, "registered": 0, "orphan_results": 0}
        with self.transaction() as conn:  # claims of a killed delivery pass: send those now, not after the lease
            conn.execute("UPDATE outbox SET claimed_until = NULL WHERE claimed_until IS NOT NULL")
        for part in (self.root / "tmp").iterdir():
            part.unlink(missing_ok=True)
            counts["partial"] += 1
        known = {r[0] for r in self.conn().execute("SELECT path FROM instances WHERE path IS NOT NULL")}
        for file in sorted((self.root / "incoming").glob("*/*.dcm")):
            rel = str(file.relative_to(self.root))
            if rel in known:
                continue
            header = read_header(file)
            if header is None:  # not a readable DICOM header: nothing to process, nothing acknowledged lost
                file.unlink(missing_ok=True)
                continue
            sop_uid, study_uid, sop_class = header
            # the file is already durable at its final name: only its row was missing
            if not self._record(file, sop_uid=sop_uid, study_uid=study_uid, sop_class_uid=sop_class,
                                calling_aet=None, now=file.stat().st_mtime):
                continue
            counts["registered"] += 1
        queued = {r[0] for r in self.conn().execute("SELECT DISTINCT entry_id FROM outbox")}
        for folder in (self.root / "results").iterdir():
            if folder.is_dir() and folder.name not in queued:
                shutil.rmtree(folder, ignore_errors=True)
                counts["orphan_results"] += 1
        return counts



def spool_status(root: str | Path) -> dict[str, dict[str, int] | int]:
    """Counts by state of instances and outbox items, and the worklist size (``cxr node status``)."""
    conn = sqlite3.connect(f"file:{Path(root) / worklist.DB_NAME}?mode=ro", uri=True, timeout=5.0)
    try:
        inst = dict(conn.execute("SELECT state, COUNT(*) FROM instances GROUP BY state").fetchall())
        out = dict(conn.execute("SELECT state, COUNT(*) FROM outbox GROUP BY state").fetchall())
        entries = conn.execute("SELECT COUNT(*) FROM worklist").fetchone()[0]
    finally:
        conn.close()
    return {"instances": inst, "results": out, "worklist_entries": entries}
