"""User checkpoints through spandrel: tiny random models of several architectures saved, loaded and run as tools."""

from __future__ import annotations

import argparse

import numpy as np
import pytest
import torch

from agent.degradations import Degradation
from tools.base import ToolError, ToolRegistry
from tools.learned.user import (
    UnsupportedCheckpointError,
    add_user_tool,
    catalogue_path,
    list_user_tools,
    load_descriptor,
    load_user_tools,
    make_user_tool,
    remove_user_tool,
)


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    """One torch thread (tiny models) and a catalogue inside the test's own folder."""
    monkeypatch.setenv("RESTORA_HOME", str(tmp_path / "home"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _nafnet_checkpoint(path):
    from spandrel.architectures.NAFNet import NAFNet

    torch.manual_seed(0)
    model = NAFNet(img_channel=3, width=8, middle_blk_num=1, enc_blk_nums=[1, 1], dec_blk_nums=[1, 1])
    torch.save(model.state_dict(), path)
    return path


def _esrgan_checkpoint(path, scale=2):
    from spandrel.architectures.ESRGAN import ESRGAN

    torch.manual_seed(0)
    model = ESRGAN(in_nc=3, out_nc=3, num_filters=8, num_blocks=1, scale=scale)
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    else:
        torch.save(model.state_dict(), path)
    return path


def _image(height=40, width=36):
    return np.random.default_rng(0).random((height, width, 3), dtype=np.float32)


def test_spandrel_detects_tiny_nafnet_and_esrgan(tmp_path):
    naf = load_descriptor(_nafnet_checkpoint(tmp_path / "naf.pth"))
    esr = load_descriptor(_esrgan_checkpoint(tmp_path / "esr.safetensors"))
    assert naf.architecture.name == "NAFNet" and naf.scale == 1
    assert esr.architecture.name in {"ESRGAN", "RRDBNet"} and esr.scale == 2


def test_same_size_restoration_model_runs_as_a_tool_tiled_and_untiled(tmp_path):
    tool = make_user_tool(_nafnet_checkpoint(tmp_path / "my-denoiser.pth"), ["noise"])
    assert tool.spec.name == "user_my_denoiser" and tool.spec.family == "user"
    image = _image()
    whole = tool(image, {"tile": 0}).image
    tiled = tool(image, {"tile": 24}).image
    assert whole.shape == image.shape
    assert np.abs(whole - tiled).mean() < 0.05


def test_super_resolution_model_keeps_size_unless_told_to_upscale(tmp_path):
    path = _esrgan_checkpoint(tmp_path / "esrgan_x2.pth")
    image = _image(40, 36)
    same = make_user_tool(path, ["low_resolution"])(image).image
    assert same.shape == image.shape
    bigger_tool = make_user_tool(path, ["low_resolution"], name="user_esrgan_up", upscale=True)
    assert bigger_tool.spec.changes_size
    bigger = bigger_tool(image, {"tile": 16}).image
    assert bigger.shape == (80, 72, 3)


def test_garbage_and_missing_files_give_clear_errors(tmp_path):
    garbage = tmp_path / "broken.pth"
    garbage.write_bytes(b"this is not a checkpoint" * 10)
    with pytest.raises(UnsupportedCheckpointError, match="could not be read|does not recognise"):
        load_descriptor(garbage)
    unknown = tmp_path / "unknown.pth"
    torch.save({"some.layer.weight": torch.zeros(3, 3)}, unknown)
    with pytest.raises(UnsupportedCheckpointError, match="does not recognise"):
        load_descriptor(unknown)
    with pytest.raises(FileNotFoundError):
        load_descriptor(tmp_path / "nope.pth")
    with pytest.raises(UnsupportedCheckpointError):
        add_user_tool(garbage, ["noise"])
    assert list_user_tools() == []
    with pytest.raises(ToolError, match="broken.pth"):
        make_user_tool(garbage, ["noise"])(_image())


def test_catalogue_round_trip(tmp_path):
    naf = _nafnet_checkpoint(tmp_path / "naf.pth")
    esr = _esrgan_checkpoint(tmp_path / "esr.pth")
    entry = add_user_tool(naf, ["noise", "jpeg"], name="user_naf")
    assert entry["architecture"] == "NAFNet" and entry["restores"] == ["noise", "jpeg"]
    add_user_tool(esr, "sr")
    assert catalogue_path() == tmp_path / "home" / "user_tools.yaml" and catalogue_path().is_file()
    with pytest.raises(ValueError, match="already"):
        add_user_tool(naf, ["noise"], name="user_naf")
    with pytest.raises(ValueError, match="unknown degradation"):
        add_user_tool(naf, ["fog"], name="user_other")

    registry = ToolRegistry()
    assert load_user_tools(registry) == ["user_naf", "user_esr"]
    assert "user_naf" in [s.name for s in registry.for_degradation(Degradation.JPEG)]
    assert registry.get("user_esr").spec.restores == (Degradation.LOW_RESOLUTION,)
    assert registry.get("user_naf")(_image()).image.shape == (40, 36, 3)

    naf.unlink()  # a vanished file is skipped, the rest still loads
    assert load_user_tools(ToolRegistry()) == ["user_esr"]
    assert remove_user_tool("user_esr") and not remove_user_tool("user_esr")
    assert [e["name"] for e in list_user_tools()] == ["user_naf"]


def test_tools_add_command(tmp_path, capsys):
    from tools.learned.cli_commands import add_tools_add_parser

    parser = argparse.ArgumentParser(prog="restora tools")
    add_tools_add_parser(parser.add_subparsers(dest="tools_command"))
    path = _nafnet_checkpoint(tmp_path / "cli_model.pth")
    args = parser.parse_args(["add", str(path), "--restores", "noise,jpeg", "--name", "user_cli"])
    assert args.func(args) == 0
    assert "user_cli" in capsys.readouterr().out
    assert list_user_tools()[0]["restores"] == ["noise", "jpeg"]
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00" * 64)
    args = parser.parse_args(["add", str(bad), "--restores", "noise"])
    assert args.func(args) == 2
    assert "error:" in capsys.readouterr().err


def test_added_checkpoint_is_listed_planned_and_verified(tmp_path, capsys, monkeypatch):
    """`restora tools add` -> `restora tools` lists it -> the agent tries it first for its degradation."""
    import tools as tools_package
    import tools.classical  # noqa: F401  (registers the built-in tools before the registry is copied)
    from agent.cli import main
    from agent.context import RunContext
    from agent.imageio import save_image
    from agent.runner import restore_image
    from evals.synthesis import procedural_image, synthesize
    from tools.base import REGISTRY, ToolRegistry

    # A fresh process-wide registry, so the user tool does not leak into other tests.
    fresh = ToolRegistry()
    fresh._classes = dict(REGISTRY._classes)
    monkeypatch.setattr(tools_package, "REGISTRY", fresh)
    monkeypatch.setattr(tools_package, "_USER_TOOLS_LOADED", False)
    path = _nafnet_checkpoint(tmp_path / "mine.pth")
    assert main(["tools", "add", str(path), "--restores", "noise", "--name", "user_mine"]) == 0
    assert main(["tools"]) == 0
    assert "user_mine" in capsys.readouterr().out

    noisy = synthesize(procedural_image(96, 96, seed=2), ["noise"], seed=0, severity=0.7).image
    image = save_image(noisy, tmp_path / "noisy.png")
    result = restore_image(
        image, tmp_path / "run", RunContext(policy="fast", registry=tools_package.default_registry())
    )
    noise_attempts = [a for a in result.trace["attempts"] if a.get("target") == "noise"]
    assert noise_attempts and noise_attempts[0]["tool"] == "user_mine"  # planned first
    assert "decision" in noise_attempts[0] and noise_attempts[0].get("checks") is not None  # and verified
