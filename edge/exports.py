"""Exports of the device's detections (:class:`edge.records.ExportRow`, from ``Store.export_rows``):
Raven selection tables, CSV, and Darwin Core occurrences (for ecologists; ``basisOfRecord`` =
MachineObservation).

Times are the recording's start plus the offset (stored in UTC). Species names come from the
detection itself (stored when it was made), else from ``labels``. A Raven table over several
recordings is one continuous timeline: ``Begin Time (s)`` counts from the first recording's start
through the recordings in order, ``Begin File`` and ``File Offset (s)`` say where in which file.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Sequence
from pathlib import Path

from edge.records import ExportRow
from shared_features import LabelSpace

RAVEN_COLUMNS = [
    "Selection",
    "View",
    "Channel",
    "Begin Time (s)",
    "End Time (s)",
    "Low Freq (Hz)",
    "High Freq (Hz)",
    "Begin File",
    "File Offset (s)",
    "Begin Date Time",
    "Species Code",
    "Common Name",
    "Scientific Name",
    "Taxon Class",
    "Confidence",
    "Band",
    "Status",
]
CSV_COLUMNS = [
    "uuid",
    "tour_uuid",
    "source",
    "recording_start",
    "start_basis",
    "start_time",
    "end_time",
    "offset_start",
    "offset_end",
    "species_code",
    "scientific_name",
    "common_name",
    "taxon_class",
    "confidence",
    "band",
    "status",
    "guide_verdict",
    "model_version",
    "sync",
]
DWC_COLUMNS = [
    "occurrenceID",
    "eventDate",
    "eventID",
    "scientificName",
    "vernacularName",
    "taxonRank",
    "class",
    "decimalLatitude",
    "decimalLongitude",
    "geodeticDatum",
    "basisOfRecord",
    "identificationVerificationStatus",
    "identifiedBy",
    "associatedMedia",
    "occurrenceRemarks",
]


def names(row: ExportRow, labels: LabelSpace | None) -> dict[str, str]:
    d = row.detection
    if d.scientific_name:
        return {
            "scientific_name": d.scientific_name,
            "common_name": d.common_name or "",
            "taxon_class": d.taxon_class or "",
        }
    if labels is not None and d.species_code in labels:
        s = labels[d.species_code]
        return {
            "scientific_name": s.scientific_name,
            "common_name": s.common_name,
            "taxon_class": s.taxon_class,
        }
    return {"scientific_name": "", "common_name": "", "taxon_class": ""}


def _timeline(rows: Sequence[ExportRow]) -> dict[str, float]:
    """Each recording's start on one continuous timeline (s), recordings in order of their start."""
    recs = {r.recording.uuid: r.recording for r in rows if r.recording is not None}
    out: dict[str, float] = {}
    at = 0.0
    for rec in sorted(recs.values(), key=lambda r: (r.started_at, r.uuid)):
        out[rec.uuid] = at
        at += rec.duration_s or max(r.detection.offset_end for r in rows if r.recording is rec)
    return out


def write_raven(
    path: Path, rows: Iterable[ExportRow], labels: LabelSpace | None = None, max_freq: float = 16_000
) -> int:
    rows = list(rows)
    timeline = _timeline(rows)
    rows.sort(
        key=lambda r: (timeline.get(r.recording.uuid, 0.0) if r.recording else 0.0, r.detection.offset_start)
    )
    n = 0
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh, delimiter="\t")
        w.writerow(RAVEN_COLUMNS)
        for i, row in enumerate(rows, start=1):
            d, rec = row.detection, row.recording
            at = timeline.get(rec.uuid, 0.0) if rec is not None else 0.0
            nm = names(row, labels)
            w.writerow(
                [
                    i,
                    "Spectrogram 1",
                    1,
                    f"{at + d.offset_start:.3f}",
                    f"{at + d.offset_end:.3f}",
                    0,
                    int(max_freq),
                    rec.source if rec is not None else "",
                    f"{d.offset_start:.3f}",
                    d.start_time,
                    d.species_code,
                    nm["common_name"],
                    nm["scientific_name"],
                    nm["taxon_class"],
                    f"{d.confidence:.4f}",
                    d.band,
                    d.status,
                ]
            )
            n += 1
    return n


def write_csv(path: Path, rows: Iterable[ExportRow], labels: LabelSpace | None = None) -> int:
    n = 0
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=CSV_COLUMNS)
        w.writeheader()
        for row in rows:
            d, rec = row.detection, row.recording
            w.writerow(
                {
                    "uuid": d.uuid,
                    "tour_uuid": d.tour_uuid,
                    "source": rec.source if rec else "",
                    "recording_start": rec.started_at if rec else "",
                    "start_basis": rec.start_basis if rec else "",
                    "start_time": d.start_time,
                    "end_time": d.end_time,
                    "offset_start": f"{d.offset_start:.3f}",
                    "offset_end": f"{d.offset_end:.3f}",
                    "species_code": d.species_code,
                    **names(row, labels),
                    "confidence": f"{d.confidence:.4f}",
                    "band": d.band,
                    "status": d.status,
                    "guide_verdict": d.guide_verdict or "",
                    "model_version": d.model_version,
                    "sync": d.sync_state,
                }
            )
            n += 1
    return n


VERIFICATION = {"confirmed": "verified by the cloud ensemble", "disputed": "disputed by the cloud ensemble"}


def write_dwc(
    path: Path,
    rows: Iterable[ExportRow],
    labels: LabelSpace | None = None,
    latitude: float | None = None,
    longitude: float | None = None,
) -> int:
    """Darwin Core occurrence core (CSV). ``eventDate``: the detection's interval in recording time.
    Coordinates: the tour's, else ``latitude``/``longitude`` (settings or flags). Verification: the
    cloud's verdict; the guide's own verdict is in ``occurrenceRemarks``."""
    n = 0
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=DWC_COLUMNS)
        w.writeheader()
        for row in rows:
            d, t = row.detection, row.tour
            nm = names(row, labels)
            lat = t.latitude if t.latitude is not None else latitude
            lon = t.longitude if t.longitude is not None else longitude
            has_coords = lat is not None and lon is not None
            remarks = f"confidence {d.confidence:.3f} ({d.band}); guide {t.guide}"
            if d.guide_verdict is not None:
                remarks += f"; guide's verdict: {d.guide_verdict}"
            if row.recording is not None:
                remarks += f"; recording {row.recording.source} at {d.offset_start:.1f} s"
            w.writerow(
                {
                    "occurrenceID": f"urn:uuid:{d.uuid}",
                    "eventDate": f"{d.start_time}/{d.end_time}",
                    "eventID": f"urn:uuid:{d.tour_uuid}",
                    "scientificName": nm["scientific_name"],
                    "vernacularName": nm["common_name"],
                    "taxonRank": "species",
                    "class": nm["taxon_class"],
                    "decimalLatitude": lat if has_coords else "",
                    "decimalLongitude": lon if has_coords else "",
                    "geodeticDatum": "WGS84" if has_coords else "",
                    "basisOfRecord": "MachineObservation",
                    "identificationVerificationStatus": VERIFICATION.get(d.status, "unverified"),
                    "identifiedBy": f"El Silencio Acoustic Explorer ({d.model_version})",
                    "associatedMedia": row.clip_path or "",
                    "occurrenceRemarks": remarks,
                }
            )
            n += 1
    return n
