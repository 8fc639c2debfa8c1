"""The node's configuration: one TOML file (``cxr node --config node.toml``), CLI flags override it.

Every key, its default and its meaning is in :class:`NodeConfig` and docs/dicom.md; an unknown key, a wrong type or
an impossible value is a :class:`NodeConfigError` naming the key and what to write instead.
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cxrkit.data.errors import CxrError

_AET = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")  # DICOM AE title: 1-16 chars of the default repertoire, no '\'
_DEST = re.compile(r"^(?P<aet>[^@]{1,16})@(?P<host>\[[0-9a-fA-F:.]+\]|[^:@\[\]]+):(?P<port>\d{1,5})$")
RETENTION = ("delete", "keep")


class NodeConfigError(CxrError):
    """The node configuration (TOML file or flags) is invalid; the message names the key and a valid value."""


@dataclass(frozen=True)
class Destination:
    """A DICOM peer that receives the results by C-STORE (``AET@HOST:PORT``)."""

    ae_title: str
    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> "Destination":
        match = _DEST.match(str(text).strip())
        if not match or not _AET.match(match["aet"].strip()) or not 1 <= int(match["port"]) <= 65535:
            raise NodeConfigError(f"destination {text!r}: write it as AET@HOST:PORT, e.g. PACS@127.0.0.1:4242 "
                                  "(AE title of 1-16 characters, port 1-65535)")
        return cls(match["aet"].strip(), match["host"].strip("[]"), int(match["port"]))

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host  # IPv6 literals keep their brackets
        return f"{self.ae_title}@{host}:{self.port}"


@dataclass(frozen=True)
class NodeConfig:
    """Everything ``cxr node`` can be told. Times are seconds, sizes bytes."""

    ae_title: str = "CXRKIT"
    host: str = "127.0.0.1"
    port: int = 11112
    spool: Path = Path("cxr-node-spool")
    destinations: tuple[Destination, ...] = ()
    allowed_calling_aets: tuple[str, ...] = ()     # empty: any calling AE may send (log says so)
    max_associations: int = 8
    max_pdu_size: int = 65536                      # 0 = unlimited (pynetdicom convention)
    acse_timeout: float = 30.0
    dimse_timeout: float = 30.0
    network_timeout: float = 60.0
    settle_seconds: float = 5.0                    # a study is processed once quiet this long
    report_findings: tuple[str, ...] = ()          # empty: every finding of the model
    urgent_findings: tuple[str, ...] = ("Pneumothorax",)
    heatmaps: bool = True                          # heatmaps (and boxes) for positive findings
    secondary_capture: bool = True                 # an SC image per film besides the SR
    max_attempts: int = 6                          # delivery tries before the dead-letter folder
    retry_base_seconds: float = 2.0                # back-off: base * 2**(attempt-1), capped below
    retry_max_seconds: float = 300.0
    retention: str = "delete"                      # "delete": received films and sent results removed after delivery
    webhook_url: str | None = None                 # POST one JSON (de-identified) per processed study
    webhook_identifiers: bool = False              # also send StudyInstanceUID / accession number in the webhook
    backend: str = "auto"                          # auto = fastest the bundle and machine have
    precision: str = "auto"
    threads: int | None = None                     # inference threads per worker; default: cores / workers
    workers: int | None = None                     # processing processes; None = auto (2, 1 on one core);
                                                   # 0 = a thread of the node's own process

    def __post_init__(self) -> None:
        _check(_AET.match(self.ae_title or "") is not None, "ae_title",
               f"{self.ae_title!r} is not a DICOM AE title (1-16 printable characters, no backslash)")
        _check(1 <= self.port <= 65535, "port", f"{self.port} is not a TCP port (1-65535)")
        for aet in self.allowed_calling_aets:
            _check(_AET.match(aet) is not None, "allowed_calling_aets", f"{aet!r} is not a DICOM AE title")
        _check(1 <= self.max_associations <= 1000, "max_associations", "must be between 1 and 1000")
        _check(self.max_pdu_size == 0 or 4096 <= self.max_pdu_size <= 2**31, "max_pdu_size",
               "must be 0 (unlimited) or between 4096 and 2**31 bytes")
        for key in ("acse_timeout", "dimse_timeout", "network_timeout", "retry_base_seconds", "retry_max_seconds"):
            _check(getattr(self, key) > 0, key, "must be a positive number of seconds")
        _check(self.settle_seconds >= 0, "settle_seconds", "must be >= 0 seconds")
        _check(self.workers is None or 0 <= self.workers <= 64, "workers", "must be auto or 0-64")
        _check(self.threads is None or self.threads >= 1, "threads", "must be a positive integer")
        _check(self.max_attempts >= 1, "max_attempts", "must be at least 1")
        _check(self.retention in RETENTION, "retention", f"{self.retention!r}: choose one of {', '.join(RETENTION)}")
        _check(self.webhook_url is None or str(self.webhook_url).startswith(("http://", "https://")), "webhook_url",
               "must start with http:// or https://")


def _check(ok: bool, key: str, why: str) -> None:
    if not ok:
        raise NodeConfigError(f"node config {key}: {why}")


_TUPLES = {"destinations", "allowed_calling_aets", "report_findings", "urgent_findings"}


def _coerce(key: str, value: Any, default: Any) -> Any:
    if key == "destinations":
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)):
            raise NodeConfigError("node config destinations: a list of \"AET@HOST:PORT\" strings")
        return tuple(d if isinstance(d, Destination) else Destination.parse(d) for d in items)
    if key in _TUPLES:
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)) or not all(isinstance(v, str) for v in items):
            raise NodeConfigError(f"node config {key}: a list of strings, e.g. [\"A\", \"B\"]")
        return tuple(v.strip() for v in items if v.strip())
    if key == "spool":
        return Path(value)
    if key in ("webhook_url", "threads", "workers") and value is None:
        return None
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise NodeConfigError(f"node config {key}: true or false, not {value!r}")
        return value
    if isinstance(default, (int, float)) and not isinstance(default, bool):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise NodeConfigError(f"node config {key}: a number, not {value!r}")
        if isinstance(default, int) and not float(value).is_integer():
            raise NodeConfigError(f"node config {key}: a whole number, not {value!r}")
        return type(default)(value)
    if key == "threads":
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise NodeConfigError(f"node config threads: a positive integer, not {value!r}")
        return value
    if key == "workers":
        if value == "auto":
            return None
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 64:
            raise NodeConfigError(f"node config workers: \"auto\" or a whole number 0-64 (0 = process in the "
                                  f"node's own process), not {value!r}")
        return value
    if not isinstance(value, str):
        raise NodeConfigError(f"node config {key}: a string, not {value!r}")
    return value


def build_config(file: str | Path | None = None, **overrides: Any) -> NodeConfig:
    """The config from an optional TOML file, then ``overrides`` (CLI flags; None = not given) on top."""
    values: dict[str, Any] = {}
    if file is not None:
        values.update(_read_toml(Path(file)))
    values.update({k: v for k, v in overrides.items() if v is not None and v != ()})
    known = {f.name: f for f in dataclasses.fields(NodeConfig)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise NodeConfigError(f"node config: unknown key(s) {', '.join(unknown)}; known keys: {', '.join(known)}")
    defaults = NodeConfig()
    kwargs = {k: _coerce(k, v, getattr(defaults, k)) for k, v in values.items()}
    return NodeConfig(**kwargs)


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib  # type: ignore[no-redef]
    if not path.is_file():
        raise NodeConfigError(f"{path}: config file not found")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise NodeConfigError(f"{path}: not valid TOML ({exc})") from None
    # a [node] table or top-level keys, both accepted
    return dict(data.get("node", data)) if isinstance(data.get("node", data), dict) else {}
