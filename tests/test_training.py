"""The training command: writes a loadable checkpoint with a full card, and resuming gives the
same weights as an uninterrupted run."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from ponderscope import models
from ponderscope.training.train import ConfigError, load_config, learning_rate, train

TINY_PARITY = {
    "model": "act_rnn",
    "model_kwargs": {"hidden_size": 8, "max_steps": 5},
    "task": {"name": "parity", "bits": 4},
    "dataset": "parity",
    "steps": 12,
    "batch_size": 16,
    "optimizer": "adam",
    "lr": 1e-2,
    "weight_decay": 0.0,
    "schedule": "constant",
    "adaptive": {"tau": 0.01},
    "log_every": 4,
    "save_every": 6,
    "seed": 3,
}


def _config(**changes):
    config = load_config(None, [])
    config.update(json.loads(json.dumps(TINY_PARITY)))
    config.update(changes)
    return config


def test_train_writes_checkpoint_and_card(tmp_path):
    out = train(_config(), str(tmp_path / "ck"), device="cpu", command="ponderscope train test", progress=False)
    model = models.load_checkpoint(out)
    card = model.card.data
    assert card["model"] == "act_rnn" and card["seed"] == 3
    assert card["task"] == {"name": "parity", "bits": 4}
    assert card["train_command"] == "ponderscope train test"
    assert 0.0 <= card["metrics"]["test"]["accuracy"] <= 1.0
    assert card["metrics"]["slice"]["examples"] == 500
    assert not (tmp_path / "ck" / "train_state").exists()  # cleaned up once finished
    x = torch.tensor([[1.0, 0.0, -1.0, 1.0]])
    assert model(x).shape == (1, 2)


def test_resume_matches_uninterrupted_run(tmp_path):
    from ponderscope.training import train as train_module

    straight = train(_config(), str(tmp_path / "a"), device="cpu", progress=False)
    # An interrupted run: the state is saved after step 6, then the process "dies".
    config = _config()
    partial = tmp_path / "c"
    original = train_module._save_state
    saved = {}

    def save_then_stop(path, model_, optimizer, step, elapsed):
        original(path, model_, optimizer, step, elapsed)
        saved["step"] = step
        raise KeyboardInterrupt

    train_module._save_state = save_then_stop
    try:
        train(config, str(partial), device="cpu", progress=False)
    except KeyboardInterrupt:
        pass
    finally:
        train_module._save_state = original
    assert saved["step"] == 6 and (partial / "train_state" / "state.json").is_file()
    train(config, str(partial), device="cpu", resume=True, progress=False)
    a = load_file(str(Path(straight) / "model.safetensors"))
    c = load_file(str(partial / "model.safetensors"))
    assert a.keys() == c.keys()
    for key in a:
        torch.testing.assert_close(a[key], c[key], rtol=0, atol=1e-6, msg=key)


def test_overrides_and_schedule():
    config = load_config(None, ["adaptive.tau=0.02", "model=sact_resnet20", "steps=100", "schedule=step", "lr=0.1"])
    assert config["adaptive"] == {"tau": 0.02} and config["model"] == "sact_resnet20"
    assert learning_rate(config, 0) == 0.1
    assert abs(learning_rate(config, 60) - 0.01) < 1e-12 and abs(learning_rate(config, 95) - 1e-4) < 1e-12


def test_cli_train_and_eval(tmp_path):
    config = tmp_path / "c.json"
    config.write_text(json.dumps(TINY_PARITY))
    out = tmp_path / "ck"
    run = subprocess.run(
        [sys.executable, "-m", "ponderscope", "train", "--config", str(config), "--out", str(out), "--device", "cpu", "--no-progress", "--steps", "5"],
        capture_output=True, text=True, timeout=120,
    )
    assert run.returncode == 0, run.stderr
    card = json.loads((out / "card.json").read_text())
    assert card["train_command"].startswith("ponderscope train --config")
    assert card["config"]["steps"] == 5
    lines = run.stdout.splitlines()  # the log (a JSON object a line), then the card's test metrics, indented
    trained = json.loads("\n".join(lines[lines.index("{"):]))
    assert trained == card["metrics"]["test"]
    run = subprocess.run([sys.executable, "-m", "ponderscope", "eval", str(out), "--device", "cpu"], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    metrics = json.loads((out / "card.json").read_text())["metrics"]
    test = metrics["test"]
    assert test["examples"] == 10000
    path, printed = run.stdout.split("\n", 1)  # eval prints the folder, then the metrics it wrote
    assert path == str(out) and json.loads(printed) == metrics
    assert test["accuracy"] == trained["accuracy"] and test["mean_ponder"] == pytest.approx(trained["mean_ponder"], rel=1e-6)  # the same weights


def test_every_shipped_config_is_valid():
    configs = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.json"))
    assert len(configs) >= 9
    defaults = load_config(None, [])
    for path in configs:
        config = load_config(str(path), [])
        written = json.loads(path.read_text(encoding="utf-8"))
        # the file's settings exactly as written (steps and model among them), the defaults for the rest
        assert config == {**defaults, **written}, path.name
        assert isinstance(written["steps"], int) and written["steps"] >= 1, path.name
        assert written["model"] in models.list_models(), path.name


@pytest.mark.parametrize(
    "overrides, message",
    [
        (['"schedule"=step'], "unknown config key"),  # a quoted key would silently be another run
        (["shedule=step"], "unknown config key"),
        (["schedule=linear"], "schedule must be one of"),
        (["optimizer=rmsprop"], "optimizer must be"),
        (["batch_size=1"], "batch_size must be an integer >= 2"),
        (["steps=0"], "steps must be an integer >= 1"),
        (["steps"], "--set expects key=value"),
        (["steps=true"], "steps must be an integer"),
        (["steps.x=1"], "'steps' holds a value"),
        (["lr=abc"], "lr must be a number"),
        (["task.name=parity", "task.bit=32"], "unknown task key"),  # would silently train 16 bits
        (["task.name=sorting"], "task.name must be one of"),
        (["data_options.seqlen=50", "task.name=bytes-lm"], "unknown data_options key"),
    ],
)
def test_bad_configs_are_refused_with_the_reason(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["adaptive.target_rate=0.5"], "adaptive loss takes tau, not target_rate"),
        (["adaptive.taus=0.1"], "adaptive loss takes tau, not taus"),  # checked against the model's own adaptive_loss (plugins take theirs)
        (["model=act_rnn_typo"], "unknown model"),
        (["model_kwargs.hidden=3"], "unexpected keyword argument 'hidden'"),
    ],
)
def test_configs_that_do_not_fit_the_model_are_refused_before_training(tmp_path, overrides, message):
    config = load_config(None, ["task.name=parity", "task.bits=4", "dataset=parity", "model=act_rnn", "steps=2", *overrides])
    with pytest.raises(ConfigError, match=message):
        train(config, str(tmp_path / "out"), device="cpu", progress=False)
    assert not (tmp_path / "out" / "model.safetensors").exists()


def test_bad_config_files_are_refused(tmp_path):
    for name, text, message in (("a.json", "{\"steps\": 3,", "not valid JSON"), ("b.yaml", "steps: [1,", "not valid YAML"), ("c.json", "[1, 2]", "a mapping")):
        (tmp_path / name).write_text(text)
        with pytest.raises(ConfigError, match=message):
            load_config(str(tmp_path / name), [])


def test_a_card_is_a_config():
    """`ponderscope train --config card.json` re-runs a checkpoint with the settings it records."""
    root = Path(__file__).resolve().parents[1]
    card = json.loads((root / "checkpoints" / "parity16_rnn" / "card.json").read_text())
    config = load_config(str(root / "checkpoints" / "parity16_rnn" / "card.json"), ["steps=7"])
    # (settings added since the card was written take their defaults, which train as before)
    assert config == {**card["config"], "steps": 7, "precision": None, "sync_bn": True, "init_from": None, "calibrate": None}


def test_old_card_reruns_with_its_tau_in_the_current_units():
    """A card from before tau was per step (ponder summed over a 100-byte window) re-runs with the
    same penalty: its tau times 100, per byte."""
    from ponderscope.training.train import load_config

    root = Path(__file__).resolve().parents[1]
    old = root / "docs" / "experiments" / "jargon_act_lstm_ramp1e3.card.json"
    card = json.loads(old.read_text(encoding="utf-8"))
    assert card["config"]["adaptive"]["tau"] == 0.001 and card["tau_units"].startswith("sum over the 100 bytes")
    assert load_config(str(old), [])["adaptive"]["tau"] == pytest.approx(0.1)
    new = root / "checkpoints" / "jargon_act_lstm" / "card.json"
    assert load_config(str(new), [])["adaptive"]["tau"] == json.loads(new.read_text(encoding="utf-8"))["config"]["adaptive"]["tau"]
    parity = root / "checkpoints" / "parity16_act_rnn" / "card.json"  # one step: unchanged
    assert load_config(str(parity), [])["adaptive"]["tau"] == json.loads(parity.read_text(encoding="utf-8"))["config"]["adaptive"]["tau"]


def test_training_card_says_what_tau_means(tmp_path):
    overrides = ['model="act_rnn"', 'task={"name": "parity", "bits": 4}', 'dataset="parity"', "steps=2", "batch_size=4",
                 'model_kwargs={"hidden_size": 4, "max_steps": 3}', 'adaptive={"tau": 0.01}', 'optimizer="adam"', "lr=0.001",
                 'schedule="constant"', "log_every=1"]
    out = train(load_config(None, overrides), tmp_path / "ckpt", device="cpu", command="test", progress=False)
    card = json.loads((out / "card.json").read_text(encoding="utf-8"))
    assert card["tau_units"].startswith("per input step")
