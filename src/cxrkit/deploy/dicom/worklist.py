"""The triaged reading worklist: processed studies ordered by priority, kept in the spool's SQLite database.

The node writes entries (:func:`add_entry`, in the same transaction that queues the results for delivery); the REST
service reads them through :func:`read_worklist` / :func:`entry_image` only (read-only connection), so the service
never imports the node and the node never imports the service.

Priority rules (:data:`PRIORITY_RULES`, lower tier = read first; inside a tier the higher abnormality score first,
then the earlier arrival):

0. ``urgent``: a positive urgent finding (default: Pneumothorax) on a film that passed the quality gate.
1. ``check``: at least one film failed the quality gate: a human must look, the model's scores are not trusted.
2. ``abnormal``: at least one positive finding.
3. ``routine``: no positive finding.
"""
from __future__ import annotations

import contextlib
import json
import sqlite3
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

from cxrkit import RESEARCH_NOTICE
from cxrkit.data.errors import CxrError

DB_NAME = "node.db"
IMAGES_DIR = "worklist"
DEFAULT_URGENT = ("Pneumothorax",)
PRIORITY_RULES = (
    (0, "urgent", "a positive urgent finding on a film that passed the quality gate"),
    (1, "check", "a film failed the quality gate: read by a human, the model's scores are not trusted"),
    (2, "abnormal", "at least one positive finding"),
    (3, "routine", "no positive finding"),
)
PRIORITY_LABELS = {tier: label for tier, label, _ in PRIORITY_RULES}
_DERIVED = ("priority_label", "delivery", "notice")  # added by the reader (_row_to_entry), never stored

SCHEMA = """
CREATE TABLE IF NOT EXISTS worklist (
    entry_id TEXT PRIMARY KEY,
    study_key TEXT NOT NULL,
    study_instance_uid TEXT NOT NULL,
    accession_number TEXT,
    study_date TEXT,
    received_at REAL NOT NULL,
    processed_at REAL NOT NULL,
    priority INTEGER NOT NULL,
    priority_reason TEXT NOT NULL,
    abnormality REAL NOT NULL,
    quality_ok INTEGER NOT NULL,
    synthetic_model INTEGER NOT NULL DEFAULT 0,
    body TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS worklist_order ON worklist (priority, abnormality DESC, received_at);
"""


class WorklistError(CxrError):
    """The worklist cannot be read (no node spool at that path, unknown entry or image)."""


class WorklistUnavailable(WorklistError):
    """No worklist to read yet: no node database at the spool, or one without the worklist table."""


class WorklistNotFound(WorklistError):
    """The worklist has no such entry, or the entry no such image."""


def priority_of(films: Sequence[dict[str, Any]], urgent: Iterable[str] = DEFAULT_URGENT) -> tuple[int, str]:
    """(tier, reason) for a study from its films' ``{"quality_ok", "findings": [{"name", "positive"}]}``."""
    urgent = set(urgent)
    hits = sorted({f["name"] for film in films if film["quality_ok"] for f in film["findings"]
                   if f["positive"] and f["name"] in urgent})
    if hits:
        return 0, f"urgent finding: {', '.join(hits)}"
    failed = sum(1 for film in films if not film["quality_ok"])
    if failed:
        return 1, f"{failed} film(s) failed the quality gate: read by a human"
    positives = sorted({f["name"] for film in films for f in film["findings"] if f["positive"]})
    if positives:
        return 2, f"positive: {', '.join(positives)}"
    return 3, "no positive finding"


def create_schema(conn: sqlite3.Connection) -> None:
    conn.executescript(SCHEMA)


def add_entry(conn: sqlite3.Connection, entry: dict[str, Any]) -> None:
    """Insert (or replace) one worklist entry inside the caller's transaction.

    ``entry`` keys: ``entry_id, study_key, study_instance_uid, accession_number, study_date, received_at,
    processed_at, priority, priority_reason, abnormality, quality_ok, synthetic_model, films, skipped`` (the
    films and skipped lists go into the JSON body as they are, and so does any other key, e.g. ``model_id``; the
    keys the reader derives, ``priority_label, delivery, notice``, are not stored).
    """
    cols = ("entry_id", "study_key", "study_instance_uid", "accession_number", "study_date", "received_at",
            "processed_at", "priority", "priority_reason", "abnormality", "quality_ok", "synthetic_model")
    extra = {k: v for k, v in entry.items() if k not in cols and k not in _DERIVED}
    body = json.dumps({**extra, "films": entry["films"], "skipped": entry.get("skipped", [])})
    marks = ", ".join("?" * (len(cols) + 1))
    conn.execute(f"INSERT OR REPLACE INTO worklist ({', '.join(cols)}, body) VALUES ({marks})",
                 [entry.get(c) if c not in ("quality_ok", "synthetic_model") else int(bool(entry.get(c)))
                  for c in cols] + [body])


@contextlib.contextmanager
def _connect_ro(spool: str | Path) -> Iterator[sqlite3.Connection]:
    """A read-only connection, closed on exit (``with sqlite3.connect()`` alone only ends a transaction)."""
    db = Path(spool) / DB_NAME
    if not db.is_file():
        raise WorklistUnavailable(f"{spool}: no node database ({DB_NAME}); pass the --spool folder of a `cxr node` "
                                  "(the node creates it when it starts)")
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5.0)
    try:
        conn.row_factory = sqlite3.Row
        yield conn
    finally:
        conn.close()


def _query(conn: sqlite3.Connection, spool: str | Path, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
    try:
        return conn.execute(sql, params).fetchall()
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc):
            raise WorklistUnavailable(f"{spool}: the node database has no worklist yet ({exc})") from None
        if "locked" in str(exc) or "busy" in str(exc):  # a long write of the node (rollback-journal mode)
            raise WorklistUnavailable(f"{spool}: the node database is busy ({exc}); retry in a moment") from None
        raise


def _delivery_counts(conn: sqlite3.Connection, entry_ids: Sequence[str]) -> dict[str, dict[str, int]]:
    if not entry_ids:
        return {}
    try:
        rows = conn.execute(f"SELECT entry_id, state, COUNT(*) FROM outbox WHERE entry_id IN "
                            f"({', '.join('?' * len(entry_ids))}) GROUP BY entry_id, state", list(entry_ids)).fetchall()
    except sqlite3.OperationalError:  # a database without the node's outbox table
        return {}
    out: dict[str, dict[str, int]] = {}
    for entry_id, state, n in rows:
        out.setdefault(entry_id, {"pending": 0, "sent": 0, "dead": 0})[state] = n
    return out


def _row_to_entry(row: sqlite3.Row, delivery: dict[str, dict[str, int]]) -> dict[str, Any]:
    body = json.loads(row["body"])
    entry = {k: row[k] for k in row.keys() if k != "body"}
    entry["quality_ok"] = bool(entry["quality_ok"])
    entry["synthetic_model"] = bool(entry["synthetic_model"])
    entry["priority_label"] = PRIORITY_LABELS.get(entry["priority"], "routine")
    entry.update(body)
    entry["delivery"] = delivery.get(entry["entry_id"], {"pending": 0, "sent": 0, "dead": 0})
    entry["notice"] = RESEARCH_NOTICE
    return entry


def read_worklist(spool: str | Path, *, limit: int = 200, offset: int = 0) -> list[dict[str, Any]]:
    """Worklist entries, most urgent first (see the module docstring for the order).

    Each entry: the columns of :data:`SCHEMA` (without ``body``), ``priority_label``, ``films`` (per film:
    ``sop_key, view, abnormality, quality_ok, quality_reason, findings: [{name, probability, threshold, positive,
    boxes}], images: {name: file}``), ``skipped``, ``delivery: {pending, sent, dead}`` and ``notice``.
    """
    with _connect_ro(spool) as conn:
        rows = _query(conn, spool, "SELECT * FROM worklist ORDER BY priority, abnormality DESC, received_at "
                                   "LIMIT ? OFFSET ?", (int(limit), int(offset)))
        delivery = _delivery_counts(conn, [r["entry_id"] for r in rows])
    return [_row_to_entry(r, delivery) for r in rows]


def count_entries(spool: str | Path) -> int:
    """How many entries the worklist holds (for paging through :func:`read_worklist`)."""
    with _connect_ro(spool) as conn:
        return int(_query(conn, spool, "SELECT COUNT(*) FROM worklist")[0][0])


def get_entry(spool: str | Path, entry_id: str) -> dict[str, Any]:
    with _connect_ro(spool) as conn:
        rows = _query(conn, spool, "SELECT * FROM worklist WHERE entry_id = ?", (entry_id,))
        if not rows:
            raise WorklistNotFound(f"no worklist entry {entry_id!r}")
        return _row_to_entry(rows[0], _delivery_counts(conn, [entry_id]))


def entry_image(spool: str | Path, entry_id: str, name: str) -> Path:
    """The PNG file ``name`` of a worklist entry (only names the entry lists: no path from the client is used)."""
    entry = get_entry(spool, entry_id)
    root = (Path(spool) / IMAGES_DIR).resolve()
    folder = (root / entry_id).resolve()
    for film in entry["films"]:
        for file in film.get("images", {}).values():
            if file == name:
                path = (folder / file).resolve()
                # A listed name is still only served from the entry's own folder (no "..", no symlink out).
                if folder.parent == root and path.parent == folder and path.is_file():
                    return path
    raise WorklistNotFound(f"worklist entry {entry_id!r} has no image {name!r}")
