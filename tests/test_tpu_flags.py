"""config.libtpu_flags reach LIBTPU_INIT_ARGS before libtpu starts (hdvila_jax/tpu_flags.py)."""
import pytest

from configs import stage1
from hdvila_jax import tpu_flags
from hdvila_jax.config_checks import check_config


def test_config_flags_go_in_front_of_the_users_own(monkeypatch):
    monkeypatch.setenv(tpu_flags.ENV, "--xla_tpu_enable_windowed_einsum_for_reduce_scatter=true --xla_foo=1")
    value = tpu_flags.apply(tpu_flags.DEFAULT)
    # absl takes a flag's last value: the user's own setting still wins
    assert value.split() == [tpu_flags.DEFAULT, "--xla_tpu_enable_windowed_einsum_for_reduce_scatter=true",
                             "--xla_foo=1"]
    assert tpu_flags.apply(tpu_flags.DEFAULT) == value  # applied once, not again


def test_no_flags_leave_the_environment_as_it_is(monkeypatch):
    monkeypatch.delenv(tpu_flags.ENV, raising=False)
    assert tpu_flags.apply("") == ""
    import os
    assert tpu_flags.ENV not in os.environ
    assert tpu_flags.apply("--a=1  --b") == "--a=1 --b"


@pytest.mark.parametrize("bad", ["xla_tpu_foo=false", "--a=1 -b", "--"])
def test_a_word_that_is_not_a_flag_fails_the_config_check(bad):
    config = stage1.get_config("tiny")
    config.libtpu_flags = bad
    with pytest.raises(tpu_flags.TpuFlagsError, match="config.libtpu_flags"):
        check_config(config)


def test_every_config_asks_for_no_windowed_reduce_scatter():
    for variant in ("paper", "demo", "tiny"):
        assert stage1.get_config(variant).libtpu_flags == tpu_flags.DEFAULT
    check_config(stage1.get_config("tiny"))
