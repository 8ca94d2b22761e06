"""The settings model: YAML file + ``RADFUSION_*`` environment, validated once at start-up.

Precedence (highest first): keyword arguments, environment (``RADFUSION_DICOM__PORT=11113``;
nested keys joined with ``__``), the YAML file, the defaults below. ``radfusion serve`` runs
with no file at all. Every error names the key and the reason (see :func:`load_settings`).
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar
from urllib.parse import parse_qsl, urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Discriminator, Field, Tag, ValidationError, model_validator
from pydantic_settings import (BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict, SettingsError,
                               YamlConfigSettingsSource)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError

from ai_engine.contrast import NO_AGENT
from ai_engine.detectors.registry import BUNDLED_DETECTORS
from ai_engine.results import Task
from ai_engine.volume import PROJECTIONS
from dicom_node.errors import ConfigError as DicomConfigError
from dicom_node.peers import parse_calling_ae_hosts
from dicom_node.tls import TlsConfig, check_ca_file
from hl7_fhir.er7 import HL7_CHARSETS
from hl7_fhir.units import ANALYTES, CODED_ANALYTES
from radfusion.errors import ConfigError

AE_TITLE_PATTERN = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")  # VR AE: 16 chars, no backslash


def _check_ae_title(value: str) -> str:
    stripped = value.strip()
    if not stripped or not AE_TITLE_PATTERN.match(value):
        raise ValueError(f"an AE title is 1-16 printable characters without backslash, got {value!r}")
    return stripped


AeTitle = Annotated[str, AfterValidator(_check_ae_title)]


def _known(key: str, names: Sequence[str], known: set[str]) -> None:
    for name in names:
        if name not in known:
            raise ValueError(f"{key}: unknown name {name!r} (known: {sorted(known)})")


ENV_PREFIX = "RADFUSION_"
SECRET_KEYS = frozenset({"token", "client_secret"})  # FhirAuthSettings
SECRET_MASK = "***"


def _masked_url(url: str) -> str:
    """``url`` with the secrets a URL can carry masked: the password before the host, every query value
    (``?password=...``, ``?token=...``) and a fragment. The user name stays readable, and so does the path (a
    secret in it cannot be told from a path). A URL that does not parse is masked whole after its scheme."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return f"{url.split(':', 1)[0]}://{SECRET_MASK}"
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, host = netloc.rsplit("@", 1)
        if ":" in userinfo:
            netloc = f"{userinfo.split(':', 1)[0]}:{SECRET_MASK}@{host}"
    masked = f"{parts.scheme}://{netloc}{parts.path}"  # by hand: urlunsplit drops sqlite:////abs's empty host
    if parts.query:
        masked += "?" + "&".join(f"{name}={SECRET_MASK}" for name, _ in parse_qsl(parts.query, keep_blank_values=True))
    return masked + (f"#{SECRET_MASK}" if parts.fragment else "")


def _directory_or_new(path: Path) -> Path:
    """A directory, or a path whose nearest existing parent is one (``serve`` creates the rest)."""
    existing = next(p for p in (path.absolute(), *path.absolute().parents) if p.exists())
    if not existing.is_dir():
        raise ValueError(f"{str(existing)!r} is a file, not a directory")
    return path


def _time_zone(name: str) -> str:
    """An IANA time zone name (``Europe/Berlin``), or "" for this machine's own."""
    if name:
        try:
            ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown time zone {name!r}; use an IANA name such as Europe/Berlin") from exc
    return name


def _hl7_charset(name: str) -> str:
    """A charset name of HL7 table 0211 that radfusion can decode (``8859/1``, ``UNICODE UTF-8``), read as MSH-18
    is: in any case, without the spaces around it."""
    normalised = name.strip().upper()
    if normalised not in HL7_CHARSETS:
        raise ValueError(f"unknown HL7 charset {name!r}; use one of {sorted(HL7_CHARSETS)}")
    return normalised


def _usable_database_url(url: str | None) -> str | None:
    """A URL whose SQLAlchemy dialect is installed (``sqlite:///...``, ``postgresql+psycopg://...``)."""
    if url is not None:
        try:
            make_url(url).get_dialect()
        except (ArgumentError, NoSuchModuleError) as exc:
            raise ValueError(f"not a database URL radfusion can use ({exc}); e.g. sqlite:////var/lib/radfusion/"
                             "radfusion.db or postgresql+psycopg://radfusion@dbhost/radfusion") from None
    return url


class Strict(BaseModel):
    """Base of every section: unknown keys are errors, so a typo never goes unnoticed."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class TlsSettings(Strict):
    """TLS for DICOM (PS3.15 B.1 style): our certificate and key, and the CA that signs peers."""

    enabled: bool = False
    cert_file: Path | None = None
    key_file: Path | None = None
    ca_file: Path | None = None
    require_client_cert: bool = True

    @model_validator(mode="after")
    def _files_when_enabled(self) -> TlsSettings:
        """What ``serve`` would refuse, refused when the config is read (``radfusion config`` included); the CA
        also when the listener's TLS is off, since TLS destinations verify against it."""
        try:
            if not self.enabled:
                if self.ca_file is not None:
                    check_ca_file(self.ca_file)
                return self
            if self.cert_file is None or self.key_file is None:
                raise ValueError("tls.enabled needs cert_file and key_file")
            TlsConfig(self.cert_file, self.key_file, self.ca_file, self.require_client_cert)
        except DicomConfigError as exc:
            raise ValueError(str(exc)) from None
        return self


class DicomSettings(Strict):
    """The DICOM listener (Storage SCP + Verification)."""

    ae_title: AeTitle = "RADFUSION"
    bind_address: str = "0.0.0.0"
    port: int = Field(11112, ge=0, le=65535)
    allowed_calling_aes: list[AeTitle] = Field(default_factory=list)
    accept_any_calling_ae: bool = False
    calling_ae_hosts: dict[AeTitle, list[str]] = Field(default_factory=dict)
    require_called_ae: bool = True
    min_free_disk_mb: int = Field(1024, ge=0)
    max_pdu_bytes: int = Field(0, ge=0)
    network_timeout_s: float = Field(60.0, gt=0)
    acse_timeout_s: float = Field(30.0, gt=0)
    max_associations: int = Field(16, ge=1)
    tls: TlsSettings = TlsSettings()

    @model_validator(mode="after")
    def _one_calling_ae_rule(self) -> DicomSettings:
        if self.accept_any_calling_ae and self.allowed_calling_aes:
            raise ValueError(f"accept_any_calling_ae is true and allowed_calling_aes is set "
                             f"({self.allowed_calling_aes}): choose one")
        try:
            parse_calling_ae_hosts(self.calling_ae_hosts, self.allowed_calling_aes, self.accept_any_calling_ae)
        except DicomConfigError as exc:
            raise ValueError(str(exc)) from None
        return self


class DestinationSettings(Strict):
    """A DICOM node that receives results (usually the PACS)."""

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    ae_title: AeTitle
    host: str = Field(min_length=1)
    port: int = Field(ge=1, le=65535)
    tls: bool = False


class RoutingRuleSettings(Strict):
    """Which detectors run on which series, and where results go (see dicom_node.matching)."""

    name: str = Field(min_length=1)
    match: dict[str, Any]
    detectors: list[str] = Field(min_length=1)
    destinations: list[str] = Field(default_factory=list)
    report_destinations: list[str] = Field(default_factory=list)
    alert_channels: list[str] = Field(default_factory=list)


class StabilitySettings(Strict):
    """When a study counts as complete (ARCHITECTURE.md: release + settle + gap check, quiet timeout)."""

    settle_s: float = Field(2.0, ge=0)
    quiet_timeout_s: float = Field(120.0, gt=0)
    check_interval_s: float = Field(0.5, gt=0)
    gap_factor: float = Field(1.5, gt=1)

    @model_validator(mode="after")
    def _quiet_after_settle(self) -> StabilitySettings:
        if self.quiet_timeout_s < self.settle_s:
            raise ValueError(
                f"quiet_timeout_s ({self.quiet_timeout_s}) must not be shorter than settle_s ({self.settle_s})"
            )
        return self


class RetrySettings(Strict):
    """Persistent retries with exponential backoff for every outbound delivery."""

    initial_s: float = Field(2.0, gt=0)
    factor: float = Field(2.0, ge=1)
    max_s: float = Field(300.0, gt=0)
    give_up_after_h: float = Field(72.0, gt=0)
    timeout_s: float = Field(30.0, gt=0)

    @model_validator(mode="after")
    def _initial_within_max(self) -> RetrySettings:
        if self.initial_s > self.max_s:
            raise ValueError(f"initial_s ({self.initial_s}) must not be longer than max_s ({self.max_s}), "
                             "which caps every wait")
        return self


Name = Annotated[str, Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")]
NamedT = TypeVar("NamedT")


class WebhookChannelSettings(Strict):
    """An alert channel that receives a JSON POST."""

    name: Name
    kind: Literal["webhook"] = "webhook"
    url: str = Field(pattern=r"^https?://")
    headers: dict[Annotated[str, Field(pattern=r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")],
                  Annotated[str, Field(pattern=r"^[\x20-\x7e]*$")]] = Field(default_factory=dict)  # HTTP: ASCII


class FhirAlertChannelSettings(Strict):
    """An alert channel that creates a FHIR Communication (priority stat) on a FHIR destination."""

    name: Name
    kind: Literal["fhir"]
    destination: Name


class Hl7AlertChannelSettings(Strict):
    """An alert channel that sends a critical-result ORU^R01 to an HL7 destination."""

    name: Name
    kind: Literal["hl7"]
    destination: Name


def _channel_kind(value: Any) -> str:
    """A channel's kind; a channel without one is a webhook."""
    return value.get("kind", "webhook") if isinstance(value, dict) else getattr(value, "kind", "webhook")


AlertChannel = Annotated[
    Annotated[WebhookChannelSettings, Tag("webhook")]
    | Annotated[FhirAlertChannelSettings, Tag("fhir")]
    | Annotated[Hl7AlertChannelSettings, Tag("hl7")],
    Discriminator(_channel_kind),
]


class AlertSettings(Strict):
    """Urgent hemorrhage alerts."""

    ich_min_volume_ml: float = Field(0.1, ge=0)
    ich_min_score: float = Field(0.5, ge=0, le=1)
    channels: list[AlertChannel] = Field(default_factory=list)


class FhirAuthSettings(Strict):
    """How to authenticate to a FHIR server: none, a static bearer token, or SMART backend services."""

    kind: Literal["none", "bearer", "client_credentials"] = "none"
    token: str | None = None
    token_url: str | None = None
    client_id: str | None = None
    client_secret: str | None = None
    scope: str = "system/*.read"

    @model_validator(mode="after")
    def _complete(self) -> FhirAuthSettings:
        needed = {"bearer": ("token",), "client_credentials": ("token_url", "client_id", "client_secret")}
        missing = [key for key in needed.get(self.kind, ()) if not getattr(self, key)]
        if missing:
            raise ValueError(f"auth kind {self.kind!r} needs {', '.join(missing)}")
        return self


class FhirServerSettings(Strict):
    """A FHIR R4 server."""

    name: Name = "emr"
    base_url: str = Field(pattern=r"^https?://")
    auth: FhirAuthSettings = FhirAuthSettings()
    timeout_s: float = Field(5.0, gt=0)
    retries: int = Field(2, ge=0)


class Hl7DestinationSettings(Strict):
    """An HL7 v2 interface (RIS/EMR) that receives result and critical-result ORU^R01 over MLLP."""

    name: Name
    host: str = Field(min_length=1)
    port: int = Field(ge=1, le=65535)
    receiving_application: str = ""
    receiving_facility: str = ""


def default_analytes() -> dict[str, list[str]]:
    """Clinical values asked for per task (canonical names of hl7_fhir.units)."""
    return {
        "ich": ["inr", "platelets", "hemoglobin", "systolic_bp", "gcs"],
        "lung_nodule": ["cea", "pack_years", "smoking_status"],
        "mammography": [],
    }


class ClinicalSettings(Strict):
    """Where the patient's labs and record come from, and how long a job may wait for them."""

    fhir: FhirServerSettings | None = None
    default_identifier_system: str = "urn:oid:1.2.3.4.5"
    identifier_systems: dict[str, str] = Field(default_factory=dict)
    lookback_days: float = Field(90.0, gt=0)
    after_study_hours: float = Field(2.0, ge=0)
    time_budget_s: float = Field(2.0, gt=0)
    analytes: dict[str, list[str]] = Field(default_factory=default_analytes)

    @model_validator(mode="after")
    def _known_analytes(self) -> ClinicalSettings:
        _known("analytes", list(self.analytes), {task.value for task in Task})
        for task, names in self.analytes.items():
            _known(f"analytes.{task}", names, {*ANALYTES, *CODED_ANALYTES})
        return self

    def identifier_system(self, issuer: str) -> str | None:
        """The FHIR identifier system of a PatientID issued by ``issuer`` (IssuerOfPatientID): its mapping, the
        default for a study that names no issuer, and None for an issuer not mapped (an outside hospital's
        patient 12345 is not ours: the EMR is neither asked about them nor told of their results)."""
        if not issuer:
            return self.default_identifier_system
        return self.identifier_systems.get(issuer)


class Hl7Settings(Strict):
    """The HL7 v2 MLLP listener (ORU labs, ADT demographics, ORM/OMI orders) and our MSH identity."""

    listen: bool = False
    bind_address: str = "0.0.0.0"
    port: int = Field(2575, ge=0, le=65535)
    sending_application: str = "RADFUSION"
    sending_facility: str = ""
    max_message_bytes: int = Field(1 << 20, ge=1024)  # larger: refused (AR); an ORU with a report PDF needs more
    # the charset (HL7 table 0211) of a message whose MSH-18 is empty; many LIS send 8859/1 without saying so
    default_charset: Annotated[str, AfterValidator(_hl7_charset)] = "UNICODE UTF-8"
    tls: TlsSettings = TlsSettings()


# The nodule model learned 1-2.5 mm slices (held out: up to 3 mm); a 5 mm reconstruction of a clean chest drew
# ~10 false nodules (model card), so the default chest rule reads a series only when its SliceThickness is at most
# 3 mm or absent (an unreadable value such as '5mm' does not pass). A study's thin reconstruction is read; a site
# with thick slices only edits the rule.
THIN_SLICE_LIMIT_MM = 3.05
# The hemorrhage model learned 2.5 and 5 mm slices and was validated on 1.25-5 mm; a trauma head's 0.6 mm thin series
# is noisier (often over the ICH detectors' 14 HU limit: a failed job on every such study), so the default head rule
# reads a series of at least 1.2 mm (or none given); a site that sends only thin slices edits the rule.
HEAD_SLICE_MIN_MM = 1.2

# A CT study holds more than the reconstructions the detectors read: dose screens (Secondary Capture with Modality
# CT), maximum/minimum intensity projections and renderings. The CT rules read CT Image Storage and its enhanced forms
# only (or a series stored before SOPClassUID was routable), and no projection; sagittal and coronal reformats get no
# job either (radfusion.assembly: the CT detectors read axial series). The head rule leaves out kernels named bone or
# edge and sharp kernels named in the Siemens/Canon manner (H70h, Hr64, J70h, FC81: letters, then a sharpness of 60 or
# more); the ICH detectors refuse a bone kernel of another name by its noise (ai_engine/detectors/head_input.py).
CT_IMAGE_CLASSES = ("1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.2.1", "1.2.840.10008.5.1.4.1.1.2.2")
NOT_PROJECTION = f"!/^({'|'.join(sorted(PROJECTIONS))})$/i"  # what the volume loader refuses
NOT_SCOUT_OR_PROJECTION = "!/scout|localizer|topogram|surview|\\bmip\\b|\\bmin ?ip\\b/i"
NOT_BONE_KERNEL = "!/bone|edge|^[a-z]{1,2}[6-9][0-9]/i"


def _body_part(pattern: str) -> dict[str, object]:
    """A match on Body Part Examined, or, where it is empty (it is Type 3, and often left out), on the study's or
    series' description or protocol name."""
    described = [{keyword: pattern} for keyword in ("StudyDescription", "SeriesDescription", "ProtocolName")]
    return {"any": [{"BodyPartExamined": pattern}, {"BodyPartExamined": "!/./", "any": described}]}


def default_routing(destinations: Sequence[str] = (), alert_channels: Sequence[str] = ()) -> list[RoutingRuleSettings]:
    """Head CT, chest CT and mammograms to the deep fusion detectors; results kept locally unless
    ``destinations`` and ``alert_channels`` are given."""
    ct_image = {"Modality": "CT", "SOPClassUID": ["!/./", *CT_IMAGE_CLASSES], "ImageType": NOT_PROJECTION,
                "SeriesDescription": NOT_SCOUT_OR_PROJECTION}
    common = {"destinations": list(destinations), "alert_channels": list(alert_channels)}
    return [
        RoutingRuleSettings(
            name="head-ct-hemorrhage",
            match={**ct_image, **_body_part("/head|brain|skull|cran/i"), "ConvolutionKernel": NOT_BONE_KERNEL,
                   "SliceThickness": ["!/./", {"min": HEAD_SLICE_MIN_MM}],
                   "ContrastBolusAgent": ["!/./", f"/^{NO_AGENT}$/i"]},  # no agent, or a word for none (contrast.py)
            detectors=["ich_fusion"], **common,
        ),
        RoutingRuleSettings(
            name="chest-ct-nodule",
            match={**ct_image, **_body_part("/chest|lung|thora/i"),
                   "SliceThickness": ["!/./", {"max": THIN_SLICE_LIMIT_MM}]},  # thin reconstructions only, see below
            detectors=["nodule_fusion"], **common,
        ),
        RoutingRuleSettings(name="mammography", match={"Modality": "MG"}, detectors=["mammo_fusion"], **common),
    ]


class Settings(BaseSettings):
    """All of radfusion's configuration. See config/radfusion.example.yaml for every key."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_nested_delimiter="__", env_parse_none_str="null", extra="forbid", frozen=True
    )

    storage_path: Annotated[Path, AfterValidator(_directory_or_new)] = Path("radfusion-data")
    retention_days: int | None = Field(14, ge=1)
    database_url: Annotated[str | None, AfterValidator(_usable_database_url)] = None
    workers: int = Field(2, ge=1, le=64)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    timezone: Annotated[str, AfterValidator(_time_zone)] = ""
    dicom: DicomSettings = DicomSettings()
    destinations: list[DestinationSettings] = Field(default_factory=list)
    routing: list[RoutingRuleSettings] = Field(default_factory=default_routing)
    stability: StabilitySettings = StabilitySettings()
    retry: RetrySettings = RetrySettings()
    alerts: AlertSettings = AlertSettings()
    clinical: ClinicalSettings = ClinicalSettings()
    hl7: Hl7Settings = Hl7Settings()
    fhir_destinations: list[FhirServerSettings] = Field(default_factory=list)
    hl7_destinations: list[Hl7DestinationSettings] = Field(default_factory=list)
    model_bundles: dict[str, Path] = Field(default_factory=dict)

    def redacted(self) -> dict[str, Any]:
        """The settings as JSON values, with the secrets a shared screen or ticket must not show masked: the
        database password, FHIR tokens and client secrets, and webhook header values."""
        def mask(value: Any, key: str = "") -> Any:
            if isinstance(value, dict):
                if key == "headers":
                    return dict.fromkeys(value, SECRET_MASK)
                return {k: mask(v, k) for k, v in value.items()}
            if isinstance(value, list):
                return [mask(v) for v in value]
            if key.endswith("url") and isinstance(value, str):
                return _masked_url(value)
            return SECRET_MASK if key in SECRET_KEYS and value is not None else value

        return mask(self.model_dump(mode="json"))

    @property
    def effective_database_url(self) -> str:
        """The configured URL, or a SQLite file under the storage path."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.storage_path / 'radfusion.db').resolve()}"

    def destination(self, name: str) -> DestinationSettings:
        """The DICOM destination called ``name`` (KeyError if none)."""
        return _named(self.destinations, name)

    def channel(self, name: str) -> WebhookChannelSettings | FhirAlertChannelSettings | Hl7AlertChannelSettings:
        """The alert channel called ``name`` (KeyError if none)."""
        return _named(self.alerts.channels, name)

    def fhir_destination(self, name: str) -> FhirServerSettings:
        """The FHIR destination called ``name`` (KeyError if none)."""
        return _named(self.fhir_destinations, name)

    def hl7_destination(self, name: str) -> Hl7DestinationSettings:
        """The HL7 destination called ``name`` (KeyError if none)."""
        return _named(self.hl7_destinations, name)

    @model_validator(mode="after")
    def _check_references(self) -> Settings:
        _unique("destinations", [d.name for d in self.destinations])
        _unique("alerts.channels", [c.name for c in self.alerts.channels])
        _unique("routing", [r.name for r in self.routing])
        _unique("fhir_destinations + hl7_destinations",
                [d.name for d in self.fhir_destinations] + [d.name for d in self.hl7_destinations])
        known_dest = {d.name for d in self.destinations}
        known_reports = {d.name for d in self.fhir_destinations} | {d.name for d in self.hl7_destinations}
        known_chan = {c.name for c in self.alerts.channels}
        for i, rule in enumerate(self.routing):
            _known(f"routing[{i}].destinations", rule.destinations, known_dest)
            _known(f"routing[{i}].report_destinations", rule.report_destinations, known_reports)
            _known(f"routing[{i}].alert_channels", rule.alert_channels, known_chan)
        for name, path in self.model_bundles.items():
            _known("model_bundles", [name], set(BUNDLED_DETECTORS))
            if not (path / "configs" / "metadata.json").is_file():
                raise ValueError(f"model_bundles.{name}: {path} is not a model bundle directory "
                                 "(no configs/metadata.json)")
        for i, dest in enumerate(self.destinations):
            if dest.tls and self.dicom.tls.ca_file is None:
                raise ValueError(f"destinations[{i}].tls needs dicom.tls.ca_file to verify {dest.name!r} against")
        for i, channel in enumerate(self.alerts.channels):
            if channel.kind == "fhir":
                _known(f"alerts.channels[{i}].destination", [channel.destination], {d.name for d in self.fhir_destinations})
            elif channel.kind == "hl7":
                _known(f"alerts.channels[{i}].destination", [channel.destination], {d.name for d in self.hl7_destinations})
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, YamlConfigSettingsSource(settings_cls))


def _named(items: Sequence[NamedT], name: str) -> NamedT:
    """The entry of ``items`` whose ``name`` is ``name``; names are unique (checked at load)."""
    for item in items:
        if item.name == name:
            return item
    raise KeyError(name)


def _unique(key: str, names: list[str]) -> None:
    seen = {n for n in names if names.count(n) > 1}
    if seen:
        raise ValueError(f"{key}: duplicate names {sorted(seen)}")


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key given twice in one mapping (PyYAML would keep the last one silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)  # type: ignore[no-untyped-call]
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"key {key!r} is given twice",
                                                        key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


def _check_yaml(config_file: Path) -> None:
    """Refuse a config file that is not a YAML mapping, naming the line of the problem."""
    try:
        with config_file.open(encoding="utf-8") as stream:  # marks then name the file
            data = yaml.load(stream, Loader=_UniqueKeyLoader)  # noqa: S506 - a safe loader
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {str(config_file)!r} is not valid YAML: {exc}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config file {str(config_file)!r}: {exc}") from None
    if data is not None and not isinstance(data, dict):
        raise ConfigError(f"config file {str(config_file)!r}: the top level must be a mapping of keys "
                          f"(dicom:, routing:, ...), got a {type(data).__name__}")


def _check_environment() -> None:
    """Refuse a RADFUSION_* variable (any case) that was meant for a setting but names none: a near miss of a key
    (RADFUSION_WORKRS), or a section and key joined by one underscore instead of two (RADFUSION_DICOM_PORT). The
    library would ignore either. A platform's own are left alone (a Kubernetes Service named radfusion gives every
    pod RADFUSION_SERVICE_HOST and RADFUSION_PORT)."""
    fields = list(Settings.model_fields)
    for name in sorted(os.environ):
        if not name.upper().startswith(ENV_PREFIX):
            continue
        if name.upper() == "RADFUSION_CONFIG":
            if name != "RADFUSION_CONFIG":
                raise ConfigError(f"environment variable {name}: write it RADFUSION_CONFIG")
            continue
        key = name[len(ENV_PREFIX):].split("__")[0].lower()
        if key in fields:
            continue
        near = [f"{ENV_PREFIX}{f.upper()}" for f in difflib.get_close_matches(key, fields, n=1, cutoff=0.8)] + [
            f"{ENV_PREFIX}{f.upper()}__{name[len(ENV_PREFIX) + len(f) + 1:].upper()}" for f in fields
            if key.startswith(f"{f}_")]
        if near:
            raise ConfigError(f"environment variable {name} names no setting; did you mean {near[0]}? (nested keys "
                              f"are joined by __)")


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Load and validate settings; raise ConfigError whose lines name each bad key and why."""
    _check_environment()
    if config_file is not None:
        if not config_file.is_file():
            raise ConfigError(f"config file {str(config_file)!r} does not exist")
        _check_yaml(config_file)

    class FileSettings(Settings):
        model_config = SettingsConfigDict(yaml_file=config_file)

    try:
        return FileSettings(**overrides)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, config_file)) from None
    except SettingsError as exc:  # an environment value that is not the JSON its nested key needs
        raise ConfigError(f"cannot read the RADFUSION_* environment variables: {exc}") from None


def format_validation_error(exc: ValidationError, config_file: Path | None) -> str:
    """One line per problem: ``key.path: reason (got value)``."""
    where = f" in {config_file}" if config_file else ""
    lines = [f"invalid configuration{where}:"]
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"]) or "(top level)"
        message = err["msg"].removeprefix("Value error, ")
        shown = _shown_input(err["loc"], err.get("input"))
        got = "" if err["type"] in ("missing", "value_error") else f" (got {shown})"
        lines.append(f"  {key}: {message}{got}")
    return "\n".join(lines)


def _shown_input(loc: tuple[int | str, ...], value: Any) -> str:
    """What an error may show of a value it refuses: not a secret (``SECRET_KEYS``, webhook headers, a URL's
    password), and of a mapping or list only its kind, since it may hold one."""
    if {str(part) for part in loc} & {*SECRET_KEYS, "headers"}:
        return SECRET_MASK
    if isinstance(value, dict | list):
        return f"a {'mapping' if isinstance(value, dict) else 'list'}"
    if str(loc[-1] if loc else "").endswith("url") and isinstance(value, str):
        return repr(_masked_url(value))
    return repr(value)
