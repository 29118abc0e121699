"""``train.precision = "auto"``: bf16 only where the hardware computes it natively."""

from __future__ import annotations

import torch

from mtbert.engine.device import autocast, cpu_bf16_flags, resolve_precision

CPU = torch.device("cpu")


def test_auto_takes_bf16_on_cpus_with_amx_or_avx512_bf16():
    for flags in [("amx_bf16",), ("avx512_bf16",), ("amx_bf16", "avx512_bf16")]:
        chosen = resolve_precision("auto", CPU, cpu_flags=flags)
        assert chosen.name == "bf16" and chosen.requested == "auto"
        assert all(flag in chosen.reason for flag in flags)


def test_auto_stays_fp32_on_cpus_without_native_bf16():
    chosen = resolve_precision("auto", CPU, cpu_flags=())
    assert chosen.name == "fp32" and "emulated" in chosen.reason


def test_an_explicit_precision_is_kept_whatever_the_cpu():
    assert resolve_precision("fp32", CPU, cpu_flags=("amx_bf16",)).name == "fp32"
    assert resolve_precision("bf16", CPU, cpu_flags=()).name == "bf16"
    assert resolve_precision("bf16", CPU).reason == "set in the recipe"


def test_auto_on_other_devices_is_fp32_without_native_support():
    assert resolve_precision("auto", torch.device("mps")).name == "fp32"
    if not torch.cuda.is_available():
        assert resolve_precision("auto", torch.device("cuda")).name == "fp32"


def test_cpu_flags_are_read_from_cpuinfo(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu sse avx512f avx512_bf16 amx_tile amx_bf16\n\n"
                    "processor\t: 1\nflags\t\t: fpu sse avx512f avx512_bf16 amx_tile amx_bf16\n")
    assert cpu_bf16_flags(info) == ("amx_bf16", "avx512_bf16")
    info.write_text("processor\t: 0\nflags\t\t: fpu sse avx2\n")
    assert cpu_bf16_flags(info) == ()
    assert cpu_bf16_flags(tmp_path / "missing") == ()


def test_autocast_resolves_auto_for_the_device():
    expected = resolve_precision("auto", CPU).name
    with autocast(CPU, "auto"):
        enabled = torch.is_autocast_enabled("cpu")
    assert enabled == (expected == "bf16")
    with autocast(CPU, "bf16"):
        assert torch.get_autocast_dtype("cpu") == torch.bfloat16 and torch.is_autocast_enabled("cpu")
    with autocast(CPU, "fp32"):
        assert not torch.is_autocast_enabled("cpu")
