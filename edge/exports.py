"""Exports of the device's detections: Raven selection tables, CSV, and Darwin Core occurrences
(for ecologists; ``basisOfRecord`` = MachineObservation)."""

from __future__ import annotations

import csv
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from shared_features import LabelSpace

RAVEN_COLUMNS = [
    "Selection",
    "View",
    "Channel",
    "Begin Time (s)",
    "End Time (s)",
    "Low Freq (Hz)",
    "High Freq (Hz)",
    "Species Code",
    "Common Name",
    "Scientific Name",
    "Taxon Class",
    "Confidence",
    "Band",
]
CSV_COLUMNS = [
    "uuid",
    "tour_uuid",
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
    "model_version",
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
    "basisOfRecord",
    "identificationVerificationStatus",
    "identifiedBy",
    "associatedMedia",
    "occurrenceRemarks",
]


def _names(labels: LabelSpace, code: str) -> dict[str, str]:
    if code in labels:
        s = labels[code]
        return {
            "scientific_name": s.scientific_name,
            "common_name": s.common_name,
            "taxon_class": s.taxon_class,
        }
    return {"scientific_name": "", "common_name": "", "taxon_class": ""}


def write_raven(
    path: Path, rows: Iterable[dict[str, Any]], labels: LabelSpace, max_freq: float = 16_000
) -> int:
    n = 0
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh, delimiter="\t")
        w.writerow(RAVEN_COLUMNS)
        for i, d in enumerate(rows, start=1):
            nm = _names(labels, d["species_code"])
            w.writerow(
                [
                    i,
                    "Spectrogram 1",
                    1,
                    f"{d['offset_start']:.3f}",
                    f"{d['offset_end']:.3f}",
                    0,
                    int(max_freq),
                    d["species_code"],
                    nm["common_name"],
                    nm["scientific_name"],
                    nm["taxon_class"],
                    f"{d['confidence']:.4f}",
                    d["band"],
                ]
            )
            n += 1
    return n


def write_csv(path: Path, rows: Iterable[dict[str, Any]], labels: LabelSpace) -> int:
    n = 0
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=CSV_COLUMNS, extrasaction="ignore")
        w.writeheader()
        for d in rows:
            w.writerow({**d, **_names(labels, d["species_code"])})
            n += 1
    return n


def write_dwc(
    path: Path, rows: Iterable[dict[str, Any]], labels: LabelSpace, tours: dict[str, dict[str, Any]]
) -> int:
    """Darwin Core occurrence core (CSV). Verification: the cloud's confirmation or the guide's."""
    status = {"confirmed": "verified", "disputed": "disputed", "pending": "unverified"}
    n = 0
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=DWC_COLUMNS)
        w.writeheader()
        for d in rows:
            nm = _names(labels, d["species_code"])
            t = tours.get(d["tour_uuid"], {})
            w.writerow(
                {
                    "occurrenceID": f"urn:uuid:{d['uuid']}",
                    "eventDate": f"{d['start_time']}/{d['end_time']}",
                    "eventID": f"urn:uuid:{d['tour_uuid']}",
                    "scientificName": nm["scientific_name"],
                    "vernacularName": nm["common_name"],
                    "taxonRank": "species",
                    "class": nm["taxon_class"],
                    "decimalLatitude": t.get("latitude") if t.get("latitude") is not None else "",
                    "decimalLongitude": t.get("longitude") if t.get("longitude") is not None else "",
                    "basisOfRecord": "MachineObservation",
                    "identificationVerificationStatus": status.get(d["status"], "unverified"),
                    "identifiedBy": f"El Silencio Acoustic Explorer ({d['model_version']})",
                    "associatedMedia": d.get("clip_path") or "",
                    "occurrenceRemarks": (
                        f"confidence {d['confidence']:.3f} ({d['band']}); guide {t.get('guide', '')}"
                    ),
                }
            )
            n += 1
    return n
