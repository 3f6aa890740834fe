"""Detections for ecologists, for a date range: Darwin Core occurrences, a flat CSV, and a Raven
selection table. Rows come from :meth:`cloud.store.Store.export_detections` page by page, so a
large range streams in constant memory."""

from __future__ import annotations

import csv
import enum
import io
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path

from cloud.store import DetectionStatus, ExportRow, Store
from shared_features import LabelSpace


class ExportFormat(enum.StrEnum):
    DWC = "dwc"
    CSV = "csv"
    RAVEN = "raven"

    @property
    def title(self) -> str:
        return {
            "dwc": "Darwin Core occurrences (CSV)",
            "csv": "Detections (CSV)",
            "raven": "Raven selection table (TSV)",
        }[self.value]

    @property
    def extension(self) -> str:
        return "txt" if self is ExportFormat.RAVEN else "csv"

    @property
    def media_type(self) -> str:
        return "text/tab-separated-values" if self is ExportFormat.RAVEN else "text/csv"


CSV_COLUMNS = [
    "uuid",
    "tour_uuid",
    "device",
    "guide",
    "start_time",
    "end_time",
    "species_code",
    "scientific_name",
    "common_name",
    "taxon_class",
    "confidence",
    "band",
    "model_version",
    "status",
    "verified_by",
    "corrected_to",
    "latitude",
    "longitude",
    "clip",
]
DWC_COLUMNS = [
    "occurrenceID",
    "basisOfRecord",
    "eventDate",
    "eventID",
    "scientificName",
    "vernacularName",
    "taxonRank",
    "class",
    "decimalLatitude",
    "decimalLongitude",
    "geodeticDatum",
    "locality",
    "recordedBy",
    "identifiedBy",
    "identificationVerificationStatus",
    "occurrenceRemarks",
    "associatedMedia",
]
RAVEN_COLUMNS = [
    "Selection",
    "View",
    "Channel",
    "Begin Time (s)",
    "End Time (s)",
    "Low Freq (Hz)",
    "High Freq (Hz)",
    "Begin File",
    "Species Code",
    "Scientific Name",
    "Common Name",
    "Taxon Class",
    "Confidence",
    "Band",
    "Status",
]


def rows(store: Store, since: datetime, until: datetime, page: int = 5000) -> Iterator[ExportRow]:
    after = None
    while True:
        batch = store.export_detections(since, until, after=after, limit=page)
        yield from batch
        if len(batch) < page:
            return
        after = batch[-1].key


def _names(labels: LabelSpace, code: str) -> tuple[str, str, str]:
    if code in labels:
        s = labels[code]
        return s.scientific_name, s.common_name, s.taxon_class
    return "", "", ""


def _identified_by(r: ExportRow) -> str:
    j = r.judgement
    if j.verified_by == "reviewer":
        return f"{j.reviewer} (reviewer)"
    if j.verified_by == "guide":
        return f"{r.guide} (guide)"
    return f"El Silencio Acoustic Explorer ({r.detection.model_version})"


def csv_row(r: ExportRow, labels: LabelSpace) -> list[object]:
    d, j = r.detection, r.judgement
    sci, common, cls = _names(labels, d.species_code)
    return [
        d.uuid,
        d.tour_uuid,
        r.device,
        r.guide,
        d.start_time.isoformat(),
        d.end_time.isoformat(),
        d.species_code,
        sci,
        common,
        cls,
        f"{d.confidence:.4f}",
        d.band,
        d.model_version,
        j.status.value,
        j.verified_by or "",
        "" if j.corrected_to is None else (j.corrected_to or "not an animal"),
        "" if r.latitude is None else r.latitude,
        "" if r.longitude is None else r.longitude,
        Path(r.clip_path).name if r.clip_path else "",
    ]


def dwc_row(r: ExportRow, labels: LabelSpace) -> list[object] | None:
    """A Darwin Core occurrence; None for a rejected detection (it is not evidence of its species)."""
    d, j = r.detection, r.judgement
    if j.status is DetectionStatus.REJECTED:
        return None
    sci, common, cls = _names(labels, d.species_code)
    has_pos = r.latitude is not None and r.longitude is not None
    return [
        f"urn:uuid:{d.uuid}",
        "MachineObservation",
        f"{d.start_time.isoformat()}/{d.end_time.isoformat()}",
        f"urn:uuid:{d.tour_uuid}",
        sci,
        common,
        "species",
        cls,
        r.latitude if has_pos else "",
        r.longitude if has_pos else "",
        "WGS84" if has_pos else "",
        r.location or "",
        r.guide,
        _identified_by(r),
        "verified" if j.status is DetectionStatus.CONFIRMED else "unverified",
        f"code {d.species_code}; confidence {d.confidence:.3f} ({d.band}); device {r.device}",
        Path(r.clip_path).name if r.clip_path else "",
    ]


def raven_row(i: int, r: ExportRow, labels: LabelSpace, max_freq: float = 16_000) -> list[object]:
    """Times are seconds from the tour's start (the tour is the recording); ``Begin File`` names it."""
    d = r.detection
    sci, common, cls = _names(labels, d.species_code)
    begin = (d.start_time - r.tour_started_at).total_seconds()
    end = (d.end_time - r.tour_started_at).total_seconds()
    return [
        i,
        "Spectrogram 1",
        1,
        f"{begin:.3f}",
        f"{end:.3f}",
        0,
        int(max_freq),
        f"tour-{d.tour_uuid}",
        d.species_code,
        sci,
        common,
        cls,
        f"{d.confidence:.4f}",
        d.band,
        r.judgement.status.value,
    ]


def stream(
    fmt: ExportFormat, source: Iterator[ExportRow], labels: LabelSpace, chunk_rows: int = 2000
) -> Iterator[str]:
    """The export as text chunks (header first)."""
    buf = io.StringIO()
    delimiter = "\t" if fmt is ExportFormat.RAVEN else ","
    w = csv.writer(buf, delimiter=delimiter, lineterminator="\n")
    header = {ExportFormat.DWC: DWC_COLUMNS, ExportFormat.CSV: CSV_COLUMNS, ExportFormat.RAVEN: RAVEN_COLUMNS}
    w.writerow(header[fmt])
    make: Callable[[int, ExportRow], list[object] | None] = {
        ExportFormat.DWC: lambda i, r: dwc_row(r, labels),
        ExportFormat.CSV: lambda i, r: csv_row(r, labels),
        ExportFormat.RAVEN: lambda i, r: raven_row(i, r, labels),
    }[fmt]
    n = 0
    for r in source:
        row = make(n + 1, r)
        if row is None:
            continue
        w.writerow(row)
        n += 1
        if n % chunk_rows == 0:
            yield buf.getvalue()
            buf.seek(0)
            buf.truncate()
    yield buf.getvalue()
