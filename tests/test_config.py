"""FitConfig: defaults, TOML round trip, errors, CLI overrides and generated click options."""
from __future__ import annotations

import json

import click
import pytest
from click.testing import CliRunner

from mfface.config import (ConfigError, FitConfig, apply_overrides, config_options, config_to_dict,
                           load_config, overrides_from_kwargs, to_toml)


def test_defaults_follow_nextface():
    cfg = FitConfig()
    assert cfg.stage2.photo_weight == 1000.0
    assert cfg.stage2.identity_prior == cfg.stage2.expression_prior == cfg.stage2.albedo_prior == 0.001
    assert (cfg.stage2.albedo_lr, cfg.stage2.geometry_start) == (0.007, 20)
    # Measured departures from NextFace (bench/RESULTS.md): per-band SH steps, identity in stage 1.
    assert (cfg.stage2.sh_lr, cfg.stage2.sh_band_decay, cfg.stage1.fit_identity) == (0.01, 2.0, True)
    assert (cfg.stage2.iterations, cfg.stage2.spp, cfg.stage3.iterations, cfg.stage3.spp) == (80, 4, 30, 4)
    assert cfg.render.sampler == "ldsampler"   # mfface before 2026-12-03: independent
    assert (cfg.stage2.coarse_size, cfg.stage2.coarse_iterations, cfg.stage2.lr_decay, cfg.stage3.lr_decay) == (
        0, 0, False, False)
    assert (cfg.stage2.landmark_weight, cfg.stage3.specular_lr, cfg.stage3.roughness_lr) == (1.0, 0.002, 0.005)
    assert (cfg.light.sh_bands, cfg.input.max_resolution, cfg.render.texture_size) == (9, 256, 512)
    assert (cfg.input.gamma, cfg.render.roughness_init, cfg.render.max_depth) == (2.2, 0.4, 2)
    assert (cfg.stage1.lr, cfg.stage1.expression_prior) == (0.02, 0.1)


def test_toml_round_trip(tmp_path):
    cfg = apply_overrides(FitConfig(), {"stage2.iterations": 50, "render.device": "cpu",
                                        "stage1.fit_identity": True, "stage2.sh_energy": 2.5e-7})
    path = tmp_path / "c.toml"
    path.write_text(to_toml(cfg))
    assert load_config(path) == cfg
    assert config_to_dict(cfg)["stage2"]["iterations"] == 50


def test_partial_file_keeps_defaults_and_accepts_int_for_float(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("[stage2]\niterations = 7\nphoto_weight = 10\n")
    cfg = load_config(path)
    assert cfg.stage2.iterations == 7
    assert cfg.stage2.photo_weight == 10.0 and isinstance(cfg.stage2.photo_weight, float)
    assert cfg.stage3 == FitConfig().stage3


@pytest.mark.parametrize("text, message", [
    ("[stage2]\niterashuns = 3\n", r"Unknown key 'iterashuns' in section \[stage2\]; valid keys: iterations, spp"),
    ("[stage9]\niterations = 3\n", r"Unknown section \[stage9\].*valid sections: input, render, light"),
    ("[stage2]\niterations = 2.5\n", "stage2.iterations must be an integer, not float 2.5"),
    ("[stage2]\niterations = true\n", "stage2.iterations must be an integer, not bool"),
    ("[stage2]\nphoto_weight = \"high\"\n", "stage2.photo_weight must be a number, not str"),
    ("[stage1]\nfit_identity = 1\n", "stage1.fit_identity must be a boolean, not int"),
    ("[render]\ndevice = \"tpu\"\n", "render.device must be one of 'auto', 'cpu', 'cuda'"),
    ("[stage2]\nspp = 0\n", "stage2.spp must be at least 1, not 0"),
    ("stage2 = 3\n", r"stage2 in .* must be a \[stage2\] table"),
    ("[stage2\niterations = 3\n", "is not valid TOML"),
])
def test_errors(tmp_path, text, message):
    path = tmp_path / "c.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_config(path)


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "none.toml")


def test_override_errors():
    with pytest.raises(ConfigError, match="Unknown key 'iters'"):
        apply_overrides(FitConfig(), {"stage2.iters": 1})
    with pytest.raises(ConfigError, match="Unknown config section 'stage'"):
        apply_overrides(FitConfig(), {"stage.iterations": 1})
    assert issubclass(ConfigError, ValueError)


@click.command()
@click.argument("name")
@config_options
def _tiny(name: str, **kwargs) -> None:
    cfg = apply_overrides(FitConfig(), overrides_from_kwargs(kwargs))
    click.echo(f"{name} {cfg.stage2.iterations} {cfg.stage1.fit_identity} {cfg.render.device} "
               f"{cfg.stage2.sh_lr} {sorted(overrides_from_kwargs(kwargs))}")


def test_click_options_cover_every_field():
    runner = CliRunner()
    help_text = runner.invoke(_tiny, ["--help"]).output
    for section, table in config_to_dict(FitConfig()).items():
        for key in table:
            assert f"--{section}-{key}".replace("_", "-") in help_text
    assert "[default: 80]" in " ".join(help_text.split())


def test_click_options_set_values():
    runner = CliRunner()
    out = runner.invoke(_tiny, ["x", "--stage2-iterations", "50", "--no-stage1-fit-identity",
                                "--render-device", "cpu", "--stage2-sh-lr", "0.5"])
    assert out.exit_code == 0, out.output
    assert out.output.strip() == ("x 50 False cpu 0.5 ['render.device', 'stage1.fit_identity', "
                                  "'stage2.iterations', 'stage2.sh_lr']")
    out = runner.invoke(_tiny, ["x"])
    assert out.output.strip() == "x 80 True auto 0.01 []"
    out = runner.invoke(_tiny, ["x", "--render-device", "tpu"])
    assert out.exit_code != 0 and "tpu" in out.output


# The keys of the real-photo geometry work: sliding outline correspondences, coarse-to-fine stage 2,
# the cosine learning-rate decay of stages 2 and 3 and the renders' sampler (non-default values).
GEOMETRY_KEYS = {"landmarks.sliding_contour": True, "stage2.coarse_size": 96, "stage2.coarse_iterations": 30,
                 "stage2.lr_decay": True, "stage3.lr_decay": True, "render.sampler": "independent",
                 "input.mirror_average": False, "stage2.geometry_warmup": 3}


def _dotted(cfg: FitConfig, key: str):
    section, name = key.split(".")
    return getattr(getattr(cfg, section), name)


def test_geometry_keys_through_toml_and_flags(tmp_path):
    defaults = FitConfig()
    assert all(_dotted(defaults, k) != v for k, v in GEOMETRY_KEYS.items())
    lines = []
    for section in sorted({k.split(".")[0] for k in GEOMETRY_KEYS}):
        lines.append(f"[{section}]")
        lines += [f"{k.split('.')[1]} = {json.dumps(v)}" for k, v in GEOMETRY_KEYS.items() if k.startswith(section)]
    path = tmp_path / "geometry.toml"
    path.write_text("\n".join(lines) + "\n")
    from_file = load_config(path)
    assert {k: _dotted(from_file, k) for k in GEOMETRY_KEYS} == GEOMETRY_KEYS

    @click.command()
    @config_options
    def show(**kwargs) -> None:
        cfg = apply_overrides(FitConfig(), overrides_from_kwargs(kwargs))
        click.echo(repr({k: _dotted(cfg, k) for k in GEOMETRY_KEYS}))

    flags = ["--landmarks-sliding-contour", "--stage2-coarse-size", "96", "--stage2-coarse-iterations", "30",
             "--stage2-lr-decay", "--stage3-lr-decay", "--render-sampler", "independent",
             "--no-input-mirror-average", "--stage2-geometry-warmup", "3"]
    out = CliRunner().invoke(show, flags)
    assert out.exit_code == 0, out.output
    assert out.output.strip() == repr(GEOMETRY_KEYS)
    bad = CliRunner().invoke(show, ["--stage2-coarse-size", "-1"])
    assert isinstance(bad.exception, ConfigError) and "stage2.coarse_size" in str(bad.exception)
    bad = CliRunner().invoke(show, ["--render-sampler", "sobol"])
    assert bad.exit_code != 0 and "sobol" in bad.output
