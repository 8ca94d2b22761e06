"""Settings: defaults run with no file, the example documents every key, errors name the key."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

import dicom_node.tls as tls_module
from radfusion.errors import ConfigError
from radfusion.settings import Settings, load_settings

EXAMPLE = Path(__file__).parents[3] / "config" / "radfusion.example.yaml"


def _keys(tree: dict, prefix: str = "") -> set[str]:
    keys = set()
    for key, value in tree.items():
        keys.add(prefix + key)
        if isinstance(value, dict) and key not in ("match", "headers"):
            keys |= _keys(value, f"{prefix}{key}.")
    return keys


def test_defaults_need_no_file() -> None:
    settings = load_settings()
    assert settings.dicom.ae_title == "RADFUSION"
    assert settings.effective_database_url.startswith("sqlite:///")
    assert settings.effective_database_url.endswith("radfusion-data/radfusion.db")
    assert [r.detectors for r in settings.routing] == [["ich_fusion"], ["nodule_fusion"], ["mammo_fusion"]]


def test_example_config_equals_defaults_and_documents_every_key() -> None:
    example = load_settings(EXAMPLE)
    assert example.model_dump() == Settings().model_dump()
    documented = _keys(yaml.safe_load(EXAMPLE.read_text()))
    assert _keys(Settings().model_dump(mode="json")) - documented == set()


def test_errors_name_each_key_and_reason(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("dicom:\n  port: 70000\n  ae_title: 'A\\\\B'\nworkers: 0\nstability:\n  settle_s: 10\n  quiet_timeout_s: 5\n")
    with pytest.raises(ConfigError) as err:
        load_settings(bad)
    text = str(err.value)
    assert str(bad) in text
    assert "dicom.port: Input should be less than or equal to 65535 (got 70000)" in text
    assert "dicom.ae_title: an AE title is 1-16 printable characters without backslash" in text
    assert "workers: Input should be greater than or equal to 1 (got 0)" in text
    assert "quiet_timeout_s (5.0) must not be shorter than settle_s (10.0)" in text


def test_unknown_key_is_an_error(tmp_path: Path) -> None:
    bad = tmp_path / "typo.yaml"
    bad.write_text("dicom:\n  prot: 104\n")
    with pytest.raises(ConfigError, match=r"dicom\.prot: Extra inputs are not permitted"):
        load_settings(bad)


def test_routing_must_name_configured_destinations(tmp_path: Path) -> None:
    bad = tmp_path / "route.yaml"
    bad.write_text(yaml.safe_dump({"routing": [{"name": "r", "match": {"Modality": "CT"},
                                                "detectors": ["ich_baseline"], "destinations": ["pacs"]}]}))
    with pytest.raises(ConfigError, match=r"routing\[0\]\.destinations: unknown name 'pacs'"):
        load_settings(bad)


@pytest.mark.parametrize(("section", "error"), [
    ({"dicom": {"tls": {"enabled": True, "cert_file": "CERT", "key_file": "KEY"}}},
     r"dicom\.tls: require_client_cert is true but ca_file is not set"),
    ({"hl7": {"tls": {"enabled": True, "cert_file": "CERT", "key_file": "missing.key", "require_client_cert": False}}},
     r"hl7\.tls: key_file '.*missing\.key' is not a readable file"),
    ({"dicom": {"accept_any_calling_ae": True, "allowed_calling_aes": ["CT1"]}},
     r"dicom: accept_any_calling_ae is true and allowed_calling_aes is set \(\['CT1'\]\): choose one"),
    ({"dicom": {"tls": {"enabled": True, "cert_file": "CERT", "key_file": "KEY", "require_client_cert": False}}},
     r"dicom\.tls: cert_file '.*cert\.pem' and key_file '.*key\.pem' are not a PEM certificate and its private key"),
    ({"dicom": {"tls": {"ca_file": "CERT"}}},  # TLS destinations verify against it even while the listener's is off
     r"dicom\.tls: ca_file '.*cert\.pem' is not a readable file of PEM CA certificates"),
    ({"dicom": {"tls": {"ca_file": "/nonexistent/ca.pem"}}},
     r"dicom\.tls: ca_file '/nonexistent/ca\.pem' is not a readable file of PEM CA certificates"),
    ({"retry": {"initial_s": 600, "max_s": 300}}, r"retry: initial_s \(600.0\) must not be longer than max_s"),
    ({"storage_path": "CERT/data"}, r"storage_path: '.*cert\.pem' is a file, not a directory"),
    ({"database_url": "postgres://radfusion@db/radfusion"},  # SQLAlchemy's name is postgresql
     r"database_url: not a database URL radfusion can use \(Can't load plugin: sqlalchemy\.dialects:postgres\)"),
    ({"alerts": {"channels": [{"name": "ed", "url": "http://x/", "headers": {"Authorization": "Bearer é"}}]}},
     r"alerts\.channels\.0\.webhook\.headers\.Authorization: String should match"),
    ({"alerts": {"channels": [{"name": "ed", "url": "http://x/", "headers": {"X Token": "t"}}]}},
     r"alerts\.channels\.0\.webhook\.headers\.X Token\.\[key\]: String should match"),
    ({"clinical": {"analytes": {"ich": ["inr", "potassium_typo"]}}},  # before: accepted, then every ICH job stuck
     r"clinical: analytes\.ich: unknown name 'potassium_typo'"),
    ({"clinical": {"analytes": {"nodule": ["cea"]}}}, r"clinical: analytes: unknown name 'nodule'")])
def test_what_serve_would_refuse_is_refused_when_the_config_is_read(tmp_path: Path, section: dict, error: str) -> None:
    (tmp_path / "cert.pem").write_text("x")
    (tmp_path / "key.pem").write_text("x")
    text = yaml.safe_dump(section).replace("CERT", str(tmp_path / "cert.pem")).replace("KEY", str(tmp_path / "key.pem"))
    config = tmp_path / "c.yaml"
    config.write_text(text)
    with pytest.raises(ConfigError, match=error):
        load_settings(config)


@pytest.mark.parametrize(("text", "error"), [
    ("dicom: {port: [}\n", r"is not valid YAML: .*\n.*\n  in \".*c\.yaml\", line 1, column 16"),
    ("- dicom\n- routing\n", r"the top level must be a mapping of keys \(dicom:, routing:, \.\.\.\), got a list"),
    ("dicom: {port: 104}\nworkers: 3\ndicom: {port: 105}\n", r"key 'dicom' is given twice\n  in .*, line 3")])
def test_a_file_that_is_not_a_yaml_mapping_is_named_with_its_line(tmp_path: Path, text: str, error: str) -> None:
    """Before: a traceback, a message naming no key, or the second 'dicom' silently winning."""
    config = tmp_path / "c.yaml"
    config.write_text(text)
    with pytest.raises(ConfigError, match=error):
        load_settings(config)


def test_an_environment_value_that_is_not_json_is_named_as_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RADFUSION_DICOM__ALLOWED_CALLING_AES", "CT1")  # a list needs JSON: ["CT1"]
    with pytest.raises(ConfigError, match=r"RADFUSION_\* environment variables: .*field \"dicom\""):
        load_settings()


def test_a_misspelled_environment_variable_is_refused_and_null_is_none(monkeypatch: pytest.MonkeyPatch) -> None:
    for misspelled in ("RADFUSION_WORKRS", "radfusion_retention_dais", "RADFUSION_DICOM_PORT",
                       "RADFUSION_CLINICAL_FHIR__BASE_URL"):  # before: ignored without a word
        monkeypatch.setenv(misspelled, "5")
        with pytest.raises(ConfigError, match=f"environment variable {misspelled} names no setting; did you mean"):
            load_settings()
        monkeypatch.delenv(misspelled)
    for platform in ("RADFUSION_SERVICE_HOST", "RADFUSION_PORT", "RADFUSION_PORT_11112_TCP_ADDR"):
        monkeypatch.setenv(platform, "10.0.0.7")  # Kubernetes' service variables for a Service named radfusion
    assert load_settings().workers == 2
    monkeypatch.setenv("RADFUSION_RETENTION_DAYS", "null")  # keep images for ever, as `retention_days: null` does
    assert load_settings().retention_days is None


def test_environment_overrides_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("dicom:\n  port: 104\n  allowed_calling_aes: [CT1]\nworkers: 3\n")
    monkeypatch.setenv("RADFUSION_DICOM__PORT", "11113")
    settings = load_settings(config)
    assert settings.dicom.port == 11113
    assert settings.dicom.allowed_calling_aes == ["CT1"]
    assert settings.workers == 3


def test_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "nope.yaml")


def test_model_bundles_name_a_deep_detector_and_a_bundle_directory(tmp_path: Path) -> None:
    bundle = tmp_path / "nodule_fusion"
    (bundle / "configs").mkdir(parents=True)
    (bundle / "configs" / "metadata.json").write_text("{}")
    assert load_settings(model_bundles={"nodule_fusion": str(bundle)}).model_bundles == {"nodule_fusion": bundle}
    with pytest.raises(ConfigError, match=r"model_bundles: unknown name 'nodule_baseline'"):
        load_settings(model_bundles={"nodule_baseline": str(bundle)})
    with pytest.raises(ConfigError, match=r"model_bundles\.ich_fusion: .* is not a model bundle directory"):
        load_settings(model_bundles={"ich_fusion": str(tmp_path)})


def test_key_material_this_user_may_not_read_is_left_to_the_service(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """An operator's `radfusion status` reads the service's config, whose key is mode 0600 for the service user:
    the files must exist, their content is checked only where they can be read (the service's own start)."""
    for name in ("cert.pem", "key.pem", "ca.pem"):
        (tmp_path / name).write_text("not PEM")
    tls = {"enabled": True, "cert_file": str(tmp_path / "cert.pem"), "key_file": str(tmp_path / "key.pem"),
           "ca_file": str(tmp_path / "ca.pem")}
    with pytest.raises(ConfigError, match="are not a PEM certificate"):
        load_settings(dicom={"tls": tls})
    monkeypatch.setattr(tls_module, "_readable", lambda *paths: False)
    assert load_settings(dicom={"tls": tls}).dicom.tls.enabled  # before: PermissionError for every command


@pytest.mark.parametrize(("url", "shown"), [
    ("sqlite:////var/lib/radfusion/radfusion.db", "sqlite:////var/lib/radfusion/radfusion.db"),
    ("postgresql+psycopg://radfusion@db/radfusion", "postgresql+psycopg://radfusion@db/radfusion"),
    ("postgresql+psycopg://radfusion:pw@[::1]:5432/radfusion?sslpassword=x#y",
     "postgresql+psycopg://radfusion:***@[::1]:5432/radfusion?sslpassword=***#***")])
def test_a_printed_database_url_keeps_its_path_and_user_and_hides_its_secrets(url: str, shown: str) -> None:
    assert load_settings(database_url=url).redacted()["database_url"] == shown
