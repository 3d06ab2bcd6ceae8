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
