"""Configuration: defaults, TOML, environment overrides, secrets, and the errors a user meets."""

from __future__ import annotations

from pathlib import Path

import pytest

from adapter.cli import main
from adapter.config import load_config, render_config
from adapter.errors import ConfigError


def test_defaults_work_without_a_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With no file and no environment, the embedded defaults are used (SQLite under ./var, 2575, 8080)."""
    monkeypatch.chdir(tmp_path)
    config = load_config(environ={})
    assert config.store.url == "sqlite:///var/oncall-adapter.db"
    assert (config.mllp.host, config.mllp.port) == ("127.0.0.1", 2575)
    assert (config.http.host, config.http.port) == ("127.0.0.1", 8080)
    assert config.oncall.effective_base_url == "https://api.oncallhealth.ca"


def test_file_then_environment_override(tmp_path: Path) -> None:
    """The TOML file sets values; ONCALL_ADAPTER_<SECTION>__<KEY> overrides them."""
    path = tmp_path / "a.toml"
    path.write_text('[mllp]\nport = 3000\n[oncall]\nregion = "us"\n')
    config = load_config(path, environ={"ONCALL_ADAPTER_MLLP__PORT": "3001",
                                        "ONCALL_ADAPTER_MLLP__PATIENT_ID_TYPE_CODES": '["MR", "PI"]'})
    assert config.mllp.port == 3001
    assert config.mllp.patient_id_type_codes == ["MR", "PI"]
    assert config.oncall.effective_base_url == "https://api.oncallhealth.us"


def test_config_path_from_environment(tmp_path: Path) -> None:
    """ONCALL_ADAPTER_CONFIG names the file when --config is not given."""
    path = tmp_path / "b.toml"
    path.write_text("[workers]\ncount = 7\n")
    assert load_config(environ={"ONCALL_ADAPTER_CONFIG": str(path)}).workers.count == 7


@pytest.mark.parametrize(("toml", "env", "key", "fragment"), [
    ("[mllp]\nport = 70000\n", {}, "mllp.port", "less than or equal to 65535"),
    ("[store]\nsynchronous = \"OFF\"\n", {}, "store.synchronous", "'FULL' or 'NORMAL'"),
    ("[mllp]\nprot = 1\n", {}, "mllp.prot", "unknown setting"),
    ("", {"ONCALL_ADAPTER_WORKERS__COUNT": "many"}, "workers.count", "valid integer"),
    ("", {"ONCALL_ADAPTER_NOPE__X": "1"}, "ONCALL_ADAPTER_NOPE__X", "no section [nope]"),
])
def test_invalid_values_name_key_value_and_what_is_allowed(tmp_path: Path, toml: str, env: dict[str, str],
                                                           key: str, fragment: str) -> None:
    """An invalid setting raises one ConfigError naming the key, the value and what is allowed."""
    path = tmp_path / "c.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError) as info:
        load_config(path, environ=env)
    assert info.value.key == key
    assert fragment in str(info.value)


def test_secret_in_toml_is_refused_and_not_echoed(tmp_path: Path) -> None:
    """A secret written in the TOML is refused, the message says where to put it and hides the value."""
    path = tmp_path / "d.toml"
    path.write_text('[oncall]\napi_key = "s3cr3t-value"\n')
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    assert "ONCALL_ADAPTER_ONCALL__API_KEY" in str(info.value)
    assert "api_key_file" in str(info.value)
    assert "s3cr3t-value" not in str(info.value)


def test_secrets_from_environment_or_file_and_masked(tmp_path: Path) -> None:
    """Secrets come from the environment or a file, and `config show` masks them."""
    key_file = tmp_path / "key"
    key_file.write_text("from-file\n")
    path = tmp_path / "e.toml"
    path.write_text(f'[oncall]\napi_key_file = "{key_file}"\n')
    config = load_config(path, environ={"ONCALL_ADAPTER_WEBHOOKS__SECRET": "from-env"})
    assert config.secret("oncall", "api_key") == "from-file"
    assert config.secret("webhooks", "secret") == "from-env"
    shown = render_config(config)
    assert "from-env" not in shown and "from-file" not in shown
    assert 'secret = "********"' in shown


def test_cli_exit_status_2_on_invalid_configuration(tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """`config show` with a bad file exits 2 with the one message on stderr."""
    path = tmp_path / "f.toml"
    path.write_text("[http]\nport = -1\n")
    assert main(["config", "show", "--config", str(path)]) == 2
    assert "http.port = -1" in capsys.readouterr().err


def test_cli_config_show_prints_effective_configuration(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """`config show` prints every section, with environment overrides applied."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ONCALL_ADAPTER_HTTP__PORT", "9191")
    assert main(["config", "show"]) == 0
    out = capsys.readouterr().out
    assert "[http]" in out and "port = 9191" in out and "[store]" in out


def test_configuration_reference_is_up_to_date() -> None:
    """docs/configuration.md is what `config reference` generates from the schema: regenerate it
    with `oncall-adapter config reference --write docs/configuration.md` after changing a setting."""
    from adapter.cli.config_cmd import reference_text
    doc = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"
    assert doc.read_text(encoding="utf-8") == reference_text()


def test_every_setting_is_described() -> None:
    """Each setting carries a description, so the reference says what it does."""
    from adapter.config import Config
    for name, section in Config.model_fields.items():
        model = section.annotation
        assert isinstance(model, type) and model.__doc__, name
        for key, field in model.model_fields.items():
            assert field.description, f"{name}.{key}"
