"""What the cloud does, as plain Python: sync ingest, clip confirmation, feedback, reports,
releases. HTTP lives in ``bentos/`` — this module raises :mod:`cloud.errors` with their status.

Sync is idempotent on UUIDs (a re-sent detection is acknowledged as a duplicate, never stored
twice); a clip is checked against its declared size and sha256, stored content-addressed, and
re-scored by the full ensemble into a confirmation the device fetches incrementally (``since``
cursor). Feedback goes into the relabelling queue that ``silencio cloud export-feedback`` writes
out as labelled clips for training. Everything persistent goes through the store's named
operations (:mod:`cloud.store`); this module holds no SQL.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from pydantic import BaseModel, ValidationError

from cloud.errors import BadRequest, Forbidden, NotFound, NotReady, PayloadTooLarge, Unprocessable
from cloud.inference import Identifier, species_entry
from cloud.ratelimit import BadTokenLimiter, parse_proxies
from cloud.schemas import (
    WIRE_VERSION,
    ClipAck,
    ClipMeta,
    Confirmation,
    FeedbackAck,
    FeedbackIn,
    Rejected,
    SyncAck,
    SyncBatch,
)
from cloud.settings import CloudSettings
from cloud.store import (
    ClipFiles,
    ClipResult,
    DeviceRecord,
    FeedbackResult,
    IngestResult,
    NewConfirmation,
    ReleaseSignature,
    Role,
    Store,
    TourReport,
    open_store,
)
from shared_features.audio import sniff_format

log = logging.getLogger(__name__)
M = TypeVar("M", bound=BaseModel)


def parse(model: type[M], body: bytes | str, limit_bytes: float) -> M:
    """Validate a JSON body against a wire schema: 413 when too large, 422 when malformed."""
    if len(body) > limit_bytes:
        raise PayloadTooLarge(f"JSON body of {len(body)} bytes exceeds the {int(limit_bytes)} byte limit")
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        errs = exc.errors(include_url=False, include_input=False)
        detail = "; ".join(f"{'.'.join(str(x) for x in e['loc']) or 'body'}: {e['msg']}" for e in errs[:5])
        raise Unprocessable(f"{model.__name__} (wire version {WIRE_VERSION}): {detail}") from None


class Cloud:
    """The cloud application state: settings, store, clip files, and (lazily) the model."""

    def __init__(
        self,
        settings: CloudSettings | None = None,
        identifier: Identifier | None = None,
        on_event: Callable[[str, float], None] | None = None,
        store: Store | None = None,
    ) -> None:
        self.settings = settings or CloudSettings()
        self.store: Store = store if store is not None else open_store(self.settings)
        self.clip_files = ClipFiles(self.settings.clips_path)
        #: wrong tokens per client address (the HTTP boundary counts and checks; cloud/ratelimit.py)
        self.auth_limiter = BadTokenLimiter(self.settings.auth_fail_limit, self.settings.auth_fail_window_s)
        self.trusted_proxies = parse_proxies(self.settings.trusted_proxies)
        self._identifier = identifier
        self._load_error: str | None = None
        self.on_event = on_event or (lambda name, value: None)

    # ------------------------------------------------------------------ model
    @property
    def identifier(self) -> Identifier:
        if self._identifier is None:
            try:
                self._identifier = Identifier.load(
                    self.settings.model,
                    self.settings.home,
                    self.settings.taxonomy_path,
                    self.settings.threads,
                )
            except NotReady as exc:
                self._load_error = str(exc)
                raise
        return self._identifier

    def ready(self) -> dict[str, Any]:
        try:
            info = self.identifier.model_info()
        except NotReady as exc:
            return {"ready": False, "reason": str(exc)}
        return {"ready": True, "model": info, "store": self.store.describe()}

    def identify(self, data: bytes | Path, **kw: Any) -> dict[str, Any]:
        size = len(data) if isinstance(data, bytes) else Path(data).stat().st_size
        if size > self.settings.max_upload_mb * 1e6:
            raise PayloadTooLarge(f"upload of {size} bytes exceeds {self.settings.max_upload_mb:g} MB")
        if size == 0:
            raise BadRequest(f"{kw.get('name', 'upload')}: empty upload (0 bytes)")
        out = self.identifier.identify(data, **kw)
        self.on_event("identify_windows", float(len(out["windows"])))
        return out

    # ------------------------------------------------------------------ sync
    def sync(self, token: str | None, body: bytes) -> dict[str, Any]:
        dev = self.store.authenticate(token)
        batch = parse(SyncBatch, body, self.settings.max_json_kb * 1024)
        labels = self.identifier.labels if self._identifier or self._try_labels() else None
        refused: dict[int, Rejected] = {}  # by position in the batch: checks before the store
        for i, d in enumerate(batch.detections):
            if labels is not None and d.species_code not in labels:
                refused[i] = Rejected(uuid=d.uuid, error=f"unknown species code {d.species_code!r}")
            elif d.end_time < d.start_time:
                refused[i] = Rejected(uuid=d.uuid, error="end_time before start_time")
        valid = [d for i, d in enumerate(batch.detections) if i not in refused]
        report = self.store.ingest(dev.id, batch.tours, valid, batch.device)
        stored = iter(report.detections)
        items = [*report.tours, *(refused.get(i) or next(stored) for i in range(len(batch.detections)))]
        accepted, duplicates, rejected = [], [], []
        for it in items:
            if isinstance(it, Rejected):
                rejected.append(it)
            elif it.result is IngestResult.ACCEPTED:
                accepted.append(it.uuid)
            elif it.result is IngestResult.DUPLICATE:
                duplicates.append(it.uuid)
            else:
                rejected.append(Rejected(uuid=it.uuid, error=it.error or it.result.value))
        n_new = sum(1 for it in report.detections if it.result is IngestResult.ACCEPTED)
        self.on_event("detections_ingested", float(n_new))
        return SyncAck(accepted=accepted, duplicates=duplicates, rejected=rejected).model_dump(mode="json")

    def _try_labels(self) -> bool:
        try:
            self.identifier  # noqa: B018 - loads the model (and its labels) once
            return True
        except NotReady:
            return False

    # ------------------------------------------------------------------ clips
    def upload_clip(self, token: str | None, meta_json: bytes | str, audio: bytes) -> dict[str, Any]:
        dev = self.store.authenticate(token)
        meta = parse(ClipMeta, meta_json, 64 * 1024)
        limit = self.settings.max_clip_mb * 1e6
        if len(audio) > limit or meta.bytes > limit:
            raise PayloadTooLarge(
                f"clip of {max(len(audio), meta.bytes)} bytes exceeds {self.settings.max_clip_mb:g} MB"
            )
        if len(audio) != meta.bytes:
            raise BadRequest(
                f"clip {meta.uuid}: received {len(audio)} bytes, meta says {meta.bytes} (partial upload?)"
            )
        digest = hashlib.sha256(audio).hexdigest()
        if digest != meta.sha256:
            raise BadRequest(f"clip {meta.uuid}: sha256 {digest} does not match the declared {meta.sha256}")
        existing = self.store.clip(str(meta.uuid))
        if existing is not None:
            if existing.device_id != dev.id:
                raise Forbidden(f"clip {meta.uuid} belongs to another device")
            conf = self.store.confirmation(str(meta.uuid))
            if conf is None:  # stored, but the process that stored it died before confirming
                conf_json = self._confirm(dev.id, meta, self.identifier.decode(audio, f"clip {meta.uuid}"))
            else:
                conf_json = conf.wire()
            return ClipAck(uuid=meta.uuid, duplicate=True, confirmation=conf_json).model_dump(mode="json")
        wave = self.identifier.decode(audio, f"clip {meta.uuid}")  # 400/415 before anything is stored
        path = self.clip_files.put(audio, digest, sniff_format(audio[:64]) or "bin")
        result = self.store.add_clip(dev.id, meta, str(path))
        if result is ClipResult.NOT_OWNER:
            raise Forbidden(
                f"clip {meta.uuid}: the clip, its tour or its detection belongs to another device"
            )
        conf_json = self._confirm(dev.id, meta, wave)
        duplicate = result is ClipResult.DUPLICATE  # another replica stored it a moment ago
        if not duplicate:
            self.on_event("clips_confirmed", 1.0)
            if conf_json["agree"] is False:
                self.on_event("disagreements", 1.0)
        return ClipAck(uuid=meta.uuid, duplicate=duplicate, confirmation=conf_json).model_dump(mode="json")

    def _confirm(self, device_id: int, meta: ClipMeta, wave: np.ndarray) -> dict[str, Any]:
        from shared_features import DEFAULT, frame_windows

        ident = self.identifier
        windows, times = frame_windows(wave, DEFAULT.replace(window_stride_seconds=2.5))
        probs, _ = ident.scores(windows)
        det = self.store.detection(device_id, str(meta.detection_uuid)) if meta.detection_uuid else None
        edge = det.species_code if det else None
        if det is not None:  # the windows that overlap the detection inside the clip
            start = meta.start_offset
            dur = (det.end_time - det.start_time).total_seconds()
            sel = [i for i, t in enumerate(times) if t.end > start and t.start < start + max(dur, 0.1)]
            probs = probs[sel] if sel else probs
        clip = probs.max(axis=0)
        order = np.argsort(-clip)[:5]
        thr = self.settings.confirm_threshold
        species = [species_entry(ident.labels, int(j), clip[j]) for j in order if clip[j] >= thr] or [
            species_entry(ident.labels, int(order[0]), clip[order[0]])
        ]
        agree = None
        if edge is not None and edge in ident.labels:
            j = ident.labels.index(edge)
            agree = bool(clip[j] >= thr or int(order[0]) == j)
        model = f"{ident.package.name} {ident.package.version}"
        new = NewConfirmation(
            clip_uuid=str(meta.uuid),
            device_id=device_id,
            detection_uuid=str(meta.detection_uuid) if meta.detection_uuid else None,
            edge_species=edge,
            agree=agree,
            species=species,
            model=model,
        )
        return self.store.confirm(new).wire()  # the first verdict stored wins (replicas agree)

    def confirmations(self, token: str | None, since: int = 0, limit: int = 200) -> dict[str, Any]:
        dev = self.store.authenticate(token)
        if since < 0 or not 1 <= limit <= 1000:
            raise Unprocessable(f"since must be ≥ 0 and limit in [1, 1000], got since={since}, limit={limit}")
        rows = self.store.confirmations_since(dev.id, since, limit)
        items = [Confirmation.model_validate(r.wire()).model_dump(mode="json") for r in rows]
        return {
            "wire_version": WIRE_VERSION,
            "confirmations": items,
            "next": items[-1]["seq"] if items else since,
        }

    # ------------------------------------------------------------------ feedback
    def feedback(self, token: str | None, body: bytes) -> dict[str, Any]:
        dev = self.store.authenticate(token)
        fb = parse(FeedbackIn, body, 64 * 1024)
        if fb.kind == "wrong_species":
            if not fb.correct_code:
                raise Unprocessable("wrong_species feedback needs correct_code")
            if self._try_labels() and fb.correct_code not in self.identifier.labels:
                raise Unprocessable(f"unknown species code {fb.correct_code!r}")
        result = self.store.feedback(dev.id, fb)
        if result is FeedbackResult.UNKNOWN_DETECTION:
            raise NotFound(f"detection {fb.detection_uuid} is not on the cloud yet: sync detections first")
        if result is FeedbackResult.NOT_OWNER:
            raise Forbidden(f"feedback {fb.uuid}: the detection (or the UUID) belongs to another device")
        duplicate = result is FeedbackResult.DUPLICATE
        return FeedbackAck(uuid=fb.uuid, duplicate=duplicate).model_dump(mode="json")

    def export_feedback(self, out: Path, include_exported: bool = False) -> dict[str, Any]:
        """The relabelling queue as labelled clips: ``out/labels.csv`` (clip, start, end, label,
        kind, edge label) plus the clip files; marks the rows exported."""
        rows = self.store.relabel_queue(include_exported)
        out.mkdir(parents=True, exist_ok=True)
        (out / "clips").mkdir(exist_ok=True)
        written = 0
        with open(out / "labels.csv", "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["feedback_uuid", "clip", "offset", "label", "kind", "edge_label", "detection_uuid"])
            for r in rows:
                clip = ""
                if r.clip_path and Path(r.clip_path).exists():
                    clip = f"clips/{Path(r.clip_path).name}"
                    shutil.copyfile(r.clip_path, out / clip)
                w.writerow(
                    [
                        r.feedback_uuid,
                        clip,
                        r.start_offset or 0,
                        r.label,
                        r.kind,
                        r.edge_species,
                        r.detection_uuid,
                    ]
                )
                written += 1
        self.store.mark_exported(sorted({r.feedback_uuid for r in rows}))
        return {"rows": written, "path": str(out / "labels.csv")}

    # ------------------------------------------------------------------ reports
    def tour_report(
        self, token: str | None, tour_uuid: str | None = None, *, check: bool = True
    ) -> dict[str, Any]:
        """``check=False``: local access (the CLI, which holds the database itself)."""
        if check:
            self.admin(token)
        reports = self.store.tour_report(tour_uuid)
        if tour_uuid and not reports:
            raise NotFound(f"tour {tour_uuid} not found")
        labels = self.identifier.labels if self._try_labels() else None
        return {"tours": [self._tour_json(t, labels) for t in reports]}

    @staticmethod
    def _tour_json(t: TourReport, labels: Any) -> dict[str, Any]:
        species = []
        for s in t.species:
            entry: dict[str, Any] = {
                "code": s.code,
                "detections": s.detections,
                "first_heard": s.first_heard.isoformat(),
                "confirmed": s.confirmed,
                "flagged": s.flagged,
            }
            if labels is not None and s.code in labels:
                sp = labels[s.code]
                entry.update(
                    scientific_name=sp.scientific_name,
                    common_name=sp.common_name,
                    taxon_class=sp.taxon_class,
                )
            species.append(entry)
        return {
            "tour": t.uuid,
            "guide": t.guide,
            "device": t.device,
            "location": t.location,
            "started_at": t.started_at.isoformat(),
            "ended_at": t.ended_at.isoformat() if t.ended_at else None,
            "species_heard": t.species_heard,
            "species_confirmed": t.species_confirmed,
            "species": species,
        }

    def summary(self, token: str | None, *, check: bool = True) -> dict[str, Any]:
        """Per day and per guide: tours, distinct species heard and confirmed, disagreement rate."""
        if check:
            self.admin(token)
        return dataclasses.asdict(self.store.summary())

    def admin(self, token: str | None) -> DeviceRecord:
        """An admin token's device: 401 for a missing, wrong or revoked token, 403 for a valid
        device token (it authenticates, but may not read every device's data)."""
        dev = self.store.authenticate(token)
        if dev.role is not Role.ADMIN:
            raise Forbidden(f"{dev.role} {dev.name!r} may not read reports: they need an admin token")
        return dev

    # ------------------------------------------------------------------ releases
    def publish_release(self, source: Path) -> dict[str, Any]:
        """Sign an edge release and make it the current one; devices fetch it as a tar archive.

        ``source``: an edge package directory, or a release directory (``package/``,
        ``thresholds.json``, ``release.json`` naming every file's sha256, as the training pipeline
        writes it). The package is verified (sha256s, fingerprint) first. The archive is signed
        with the cloud's release key (:mod:`cloud.signing`); with no key yet, one is created and a
        warning names its public key, which devices must pin (``silencio edge enroll``)."""
        from cloud.signing import ensure_key, rotations, sign_release
        from shared_features.package import load_package
        from shared_features.signature import ReleaseStatement

        source = Path(source)
        release = _release_manifest(source)
        package_dir = source / "package" if release is not None else source
        pkg = load_package(package_dir)
        if pkg.kind != "edge":
            raise BadRequest(f"{package_dir}: a release must be an edge package, not {pkg.kind}")
        thresholds = source / "thresholds.json" if release is not None else None
        if thresholds is not None and not thresholds.is_file():
            thresholds = None
        name = str(release.get("name") or pkg.name) if release else pkg.name
        version = str(release.get("version") or pkg.version) if release else pkg.version
        members = [("package", package_dir)]
        if release is not None:
            members += [(f.name, f) for f in (thresholds, source / "release.json") if f is not None]
        key, created = ensure_key(self.settings.home)
        if created:
            log.warning(
                "no release signing key yet: created %s (key id %s); devices must pin its public key "
                "before they install a release: silencio edge enroll --release-key %s",
                key.path,
                key.key_id,
                key.public_key,
            )
        rel_dir = self.settings.home / "cloud" / "releases"
        rel_dir.mkdir(parents=True, exist_ok=True)
        archive = _write_archive(rel_dir, members)
        digest, size = _sha256_size(archive)
        dest = rel_dir / f"{name}-{version}-{digest[:12]}.tar"
        os.replace(archive, dest)
        statement = ReleaseStatement(
            name=name,
            version=version,
            sha256=digest,
            bytes=size,
            feature_fingerprint=pkg.feature_fingerprint,
            labels_sha256=pkg.labels.digest(),
            thresholds_sha256=_sha256_size(thresholds)[0] if thresholds is not None else None,
            signed_at=utcnow_iso(),
            key_id=key.key_id,
        )
        signature = ReleaseSignature(
            signature=sign_release(key, statement),
            key_id=key.key_id,
            statement=statement.to_dict(),
            key_rotations=[r.to_dict() for r in rotations(self.settings.home)],
        )
        manifest = {**pkg.manifest, **({"release": release} if release is not None else {})}
        self.store.publish_release(version, digest, pkg.feature_fingerprint, str(dest), manifest, signature)
        log.info(
            "published release %s %s (sha256 %s…), signed by key %s", name, version, digest[:12], key.key_id
        )
        return {**self.release_info(None, check=False), "key_created": created, "public_key": key.public_key}

    def release_info(self, token: str | None, check: bool = True) -> dict[str, Any]:
        """The current release as devices see it (:class:`cloud.schemas.ReleaseInfo`). ``version``,
        ``sha256`` and ``feature_fingerprint`` come from the release's row, the other signed fields
        from its signed statement: a device rebuilds the statement from these fields, so a change
        to any of them fails its signature check."""
        if check:
            self.store.authenticate(token)
        rel = self.store.current_release()
        if rel is None:
            raise NotFound("no edge model release published yet (silencio cloud release PACKAGE)")
        man = rel.manifest
        sig = rel.signature
        signed: dict[str, Any] = sig.statement if sig is not None else {}
        return {
            "version": rel.version,
            "name": signed.get("name", man.get("name")),
            "sha256": rel.sha256,
            "feature_fingerprint": rel.feature_fingerprint,
            "bytes": signed["bytes"] if sig is not None else Path(rel.path).stat().st_size,
            "metrics": man.get("metrics", {}),
            "validation": man.get("validation", {}),
            "format": man.get("format_name"),
            "created_at": rel.created_at.isoformat(),
            "download": "/v1/releases/current/download",
            "labels_sha256": signed.get("labels_sha256", man.get("labels_sha256")),
            "thresholds_sha256": signed.get("thresholds_sha256"),
            "signed_at": signed.get("signed_at"),
            "signature": sig.signature if sig is not None else None,
            "key_id": sig.key_id if sig is not None else None,
            "key_rotations": sig.key_rotations if sig is not None else [],
        }

    def release_file(self, token: str | None) -> Path:
        self.store.authenticate(token)
        rel = self.store.current_release()
        if rel is None:
            raise NotFound("no edge model release published yet")
        return Path(rel.path)


# ---------------------------------------------------------------------------------- release archives
def utcnow_iso() -> str:
    from datetime import UTC, datetime

    return datetime.now(UTC).isoformat(timespec="seconds")


def _sha256_size(path: Path) -> tuple[str, int]:
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
            size += len(block)
    return h.hexdigest(), size


def _release_manifest(source: Path) -> dict[str, Any] | None:
    """A release directory's ``release.json`` with every file it names checked against its sha256;
    None for a plain package directory."""
    import json

    mf = source / "release.json"
    if not mf.is_file():
        return None
    try:
        manifest = json.loads(mf.read_text())
        files = manifest["files"]
        if not isinstance(files, dict) or not (source / "package").is_dir():
            raise ValueError("needs a files map and a package/ folder")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise BadRequest(f"{source}: not a readable edge release directory ({exc})") from None
    for rel, info in files.items():
        f = (source / rel).resolve()
        if not f.is_relative_to(source.resolve()) or not f.is_file():
            raise BadRequest(f"{source}: release.json names {rel!r}, which is not a file of the release")
        if _sha256_size(f)[0] != (info or {}).get("sha256"):
            raise BadRequest(f"{source}: {rel} does not match its sha256 in release.json")
    return dict(manifest)


def _write_archive(folder: Path, members: list[tuple[str, Path]]) -> Path:
    """An uncompressed tar of ``members`` (archive name, path) with plain files and folders only
    (owner root, modes 0644 / 0755, no times of this machine beyond the files'): what the edge's
    safe extraction accepts. A link or special file in the release is refused here."""
    import tarfile
    import tempfile

    def plain(info: tarfile.TarInfo) -> tarfile.TarInfo:
        if not (info.isfile() or info.isdir()):
            raise BadRequest(f"release member {info.name}: only plain files and folders may be released")
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        info.mode = 0o755 if info.isdir() else 0o644
        return info

    fd, tmp = tempfile.mkstemp(dir=folder, suffix=".tar.partial")
    os.close(fd)
    try:
        with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
            for arcname, path in members:
                tar.add(path, arcname=arcname, filter=plain)
    except BaseException:
        os.unlink(tmp)
        raise
    return Path(tmp)
