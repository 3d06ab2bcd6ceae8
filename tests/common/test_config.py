import dataclasses
from pathlib import Path

import pytest

from services.common.config import ConfigError, ServerConfig, check, load_config, setting


@dataclasses.dataclass
class _Cfg(ServerConfig):
    ENV_PREFIX = "COSYVOICE_TEST_"
    model_dir: Path | None = setting(None, "model directory")
    max_num_seqs: int = setting(8, "sequences per batch")
    use_fp16: bool = setting(False, "half precision")

    def validate(self) -> None:
        super().validate()
        check(self.max_num_seqs >= 1, self, "max_num_seqs", "must be >= 1")


def test_flags_beat_environment_beat_defaults():
    env = {"COSYVOICE_TEST_MAX_NUM_SEQS": "4", "COSYVOICE_TEST_PORT": "7000", "COSYVOICE_TEST_USE_FP16": "yes"}
    config = load_config(_Cfg, ["--port", "7001", "--model-dir", "/m"], env)
    assert config.port == 7001
    assert config.max_num_seqs == 4
    assert config.use_fp16 is True
    assert config.model_dir == Path("/m")
    assert load_config(_Cfg, [], {}).max_num_seqs == 8


def test_errors_name_the_setting_both_ways():
    with pytest.raises(ConfigError, match=r"--max-num-seqs / COSYVOICE_TEST_MAX_NUM_SEQS must be >= 1 \(got 0\)"):
        load_config(_Cfg, [], {"COSYVOICE_TEST_MAX_NUM_SEQS": "0"})
    with pytest.raises(ConfigError, match=r"--port / COSYVOICE_TEST_PORT: cannot read 'abc' as int"):
        load_config(_Cfg, ["--port", "abc"], {})
    with pytest.raises(ConfigError, match="--use-fp16 / COSYVOICE_TEST_USE_FP16"):
        load_config(_Cfg, [], {"COSYVOICE_TEST_USE_FP16": "maybe"})
    with pytest.raises(ConfigError, match="log_level|--log-level"):
        load_config(_Cfg, ["--log-level", "LOUD"], {})


@pytest.mark.parametrize(
    ("config_type", "port"),
    [
        ("gateway.config:GatewayConfig", 9400),
        ("services.llm.config:LLMServiceConfig", 9401),
        ("services.flow.config:FlowServiceConfig", 9402),
        ("services.vocoder.config:VocoderServiceConfig", 9403),
        ("services.frontend.config:FrontendServiceConfig", 9404),
    ],
)
def test_each_service_has_its_fixed_metrics_port_and_metrics_host(config_type, port):
    import importlib

    module, name = config_type.split(":")
    cls = getattr(importlib.import_module(module), name)
    defaults = {f.name: f.default for f in dataclasses.fields(cls)}
    assert defaults["metrics_port"] == port
    assert defaults["metrics_host"] == ""
    prefix = cls.ENV_PREFIX
    required = {f"{prefix}{stage.upper()}_ADDR": "127.0.0.1:1" for stage in ("llm", "flow", "vocoder", "frontend")}
    env = {**required, f"{prefix}MODEL_DIR": "/m", f"{prefix}METRICS_HOST": "0.0.0.0", f"{prefix}METRICS_PORT": "0"}
    config = load_config(cls, [], env)
    assert (config.metrics_host, config.metrics_port, config.metrics_bind_host) == ("0.0.0.0", 0, "0.0.0.0")


def test_metrics_host_defaults_to_the_grpc_host():
    config = load_config(_Cfg, ["--host", "10.1.2.3"], {})
    assert config.metrics_bind_host == "10.1.2.3"
    assert load_config(_Cfg, ["--metrics-host", "127.0.0.2"], {}).metrics_bind_host == "127.0.0.2"
    with pytest.raises(ConfigError, match=r"--metrics-host / COSYVOICE_TEST_METRICS_HOST must not contain spaces"):
        load_config(_Cfg, [], {"COSYVOICE_TEST_METRICS_HOST": "a b"})
    with pytest.raises(ConfigError, match=r"--metrics-port / COSYVOICE_TEST_METRICS_PORT must be -1 or in 0..65535"):
        load_config(_Cfg, ["--metrics-port", "-2"], {})


def test_a_misspelt_variable_is_warned_about_naming_the_likely_setting(capsys):
    from services.llm.config import LLMServiceConfig

    config = load_config(LLMServiceConfig, ["--model-dir", "/m"],
                         {"COSYVOICE_LLM_MAX_NUM_SEQ": "32", "COSYVOICE_LLM_GPU": "0", "COSYVOICE_CACHE": "/c"})
    assert config.max_num_seqs == 16  # the typo changed nothing
    assert capsys.readouterr().err.splitlines() == [
        "cosyvoice serve llm: warning: COSYVOICE_LLM_GPU is not a setting of this service; ignored",
        "cosyvoice serve llm: warning: COSYVOICE_LLM_MAX_NUM_SEQ is not a setting of this service; ignored "
        "(did you mean COSYVOICE_LLM_MAX_NUM_SEQS?)",
    ]
