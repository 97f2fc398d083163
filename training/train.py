"""The training loop shared by every family: `ponderscope train --config X.json [--set k=v ...]`.

A config names the model, the task and dataset, the optimiser and schedule, and the adaptive-
computation hyperparameters (tau for ACT/SACT/ACT-RNN; target_rate and lam for AIG). Training is
step-based with fixed seeds: the batch of step s depends only on (seed, s), so a resumed run
sees the same data as an uninterrupted one. Every `save_every` steps the weights and optimiser
state are written (safetensors + JSON), and `--resume` picks them up.
"""
from __future__ import annotations

import inspect
import json
import math
import os
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ponderscope import models
from ponderscope.models.checkpoint import save_checkpoint
from ponderscope.models.registry import UnknownModelError

from ponderscope.models.batch_stats import use_global_batch_norm

from .distributed import DistributedModel, Processes, autocast, print_main
from .evaluate import evaluate_model
from ponderscope.core.workloads import make_workload, train_batches

DEFAULTS = {
    "model": "sact_resnet20",
    "model_kwargs": {},
    "task": {"name": "classify"},
    "dataset": "fashion-mnist",
    "data_options": {},
    "steps": 2000,
    "batch_size": 128,
    "optimizer": "sgd",  # sgd (momentum 0.9, nesterov), adam or adamw
    "lr": 0.1,
    "weight_decay": 5e-4,
    "schedule": "onecycle",  # onecycle, cosine, step, constant
    "warmup_fraction": 0.15,
    "grad_clip": None,
    "adaptive": {},  # kwargs of model.adaptive_loss: {"tau": 0.01} or {"target_rate": 0.6, "lam": 2}
    "tau_warmup_steps": 0,  # ramp tau linearly from 0 over these steps
    "seed": 0,
    "log_every": 50,
    "save_every": 500,
    "precision": None,  # "bf16": autocast the forward to bfloat16 (meant for CUDA; runs on CPU too)
    "sync_bn": True,  # under torchrun: batch norm over the global batch, as one process would see it
    "init_from": None,  # a checkpoint directory whose weights start the model (those of the same name and shape; the rest as built)
    "calibrate": None,  # kwargs of model.calibrate(batches, ...) after training, on the held-out images (data option holdout)
}


class ConfigError(ValueError):
    """A config that cannot be run as written: the user's to fix (the CLI prints one line)."""


def _in_current_units(card: dict) -> dict:
    """A card's config, its tau restated per input step where the card was trained with the ponder
    term summed over a sequence (cards from before 2026-11 say so in `tau_units`)."""
    config = json.loads(json.dumps(card["config"]))
    tau = (config.get("adaptive") or {}).get("tau")
    if tau is not None and str(card.get("tau_units", "")).startswith("sum over the") and card.get("task", {}).get("name") == "bytes-lm":
        steps = int((config.get("data_options") or {}).get("seq_len", 100))
        config["adaptive"]["tau"] = tau * steps
        print(f"{card.get('model')}: tau {tau:g} summed over {steps}-byte windows = {tau * steps:g} per byte (the units now)", file=sys.stderr)
    return config


def load_config(path: str | None, overrides: list[str]) -> dict:
    config = json.loads(json.dumps(DEFAULTS))
    if path:
        text = Path(path).read_text(encoding="utf-8")
        if path.endswith((".yaml", ".yml")):
            import yaml

            try:
                loaded = yaml.safe_load(text)
            except yaml.YAMLError as error:
                raise ConfigError(f"{path}: not valid YAML ({error})") from None
        else:
            try:
                loaded = json.loads(text)
            except json.JSONDecodeError as error:
                raise ConfigError(f"{path}: not valid JSON ({error})") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: a config is a mapping of settings")
        if isinstance(loaded.get("config"), dict) and "train_command" in loaded:
            loaded = _in_current_units(loaded)  # a checkpoint's card.json: re-run it with the settings it records
        config.update(loaded)
    for item in overrides:
        key, _, value = item.partition("=")
        if not _:
            raise ConfigError(f"--set expects key=value, got {item!r}")
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            parsed = value
        target = config
        *parents, leaf = key.split(".")
        for parent in parents:
            target = target.setdefault(parent, {})
            if not isinstance(target, dict):
                raise ConfigError(f"--set {item}: {parent!r} holds a value, not settings")
        target[leaf] = parsed
    check_config(config)
    return config


SCHEDULES = ("onecycle", "cosine", "step", "constant")


def check_config(config: dict) -> None:
    """Refuse what would otherwise be ignored or fail deep inside training: a misspelt key is
    silently a different run."""
    unknown = sorted(set(config) - set(DEFAULTS))
    if unknown:
        raise ConfigError(f"unknown config key(s) {', '.join(map(repr, unknown))}; known: {', '.join(DEFAULTS)}")
    if config["schedule"] not in SCHEDULES:
        raise ConfigError(f"schedule must be one of {', '.join(SCHEDULES)}, got {config['schedule']!r}")
    if config["optimizer"] not in ("sgd", "adam", "adamw"):
        raise ConfigError(f"optimizer must be sgd, adam or adamw, got {config['optimizer']!r}")
    for key, low in (("steps", 1), ("batch_size", 2), ("log_every", 1), ("save_every", 1), ("tau_warmup_steps", 0), ("seed", 0)):
        # (batch norm needs two examples to train)
        if isinstance(config[key], bool) or not isinstance(config[key], int) or config[key] < low:
            raise ConfigError(f"{key} must be an integer >= {low}, got {config[key]!r}")
    for key in ("lr", "weight_decay", "warmup_fraction") + (("grad_clip",) if config["grad_clip"] is not None else ()):
        if isinstance(config[key], bool) or not isinstance(config[key], (int, float)) or config[key] < 0:
            raise ConfigError(f"{key} must be a number >= 0, got {config[key]!r}")
    if config["precision"] not in (None, "bf16"):
        raise ConfigError(f"precision must be null or \"bf16\", got {config['precision']!r}")
    if not isinstance(config["sync_bn"], bool):
        raise ConfigError(f"sync_bn must be true or false, got {config['sync_bn']!r}")
    for key in ("model_kwargs", "task", "data_options", "adaptive"):
        if not isinstance(config[key], dict):
            raise ConfigError(f"{key} must be a mapping, got {config[key]!r}")
    task = config["task"].get("name")
    if task not in TASK_KEYS:
        raise ConfigError(f"task.name must be one of {', '.join(TASK_KEYS)}, got {task!r}")
    _known_keys("task", config["task"], TASK_KEYS[task])
    _known_keys("data_options", config["data_options"], DATA_OPTIONS[task])
    # the adaptive section is checked against the model's own adaptive_loss (_check_adaptive): a
    # plugin's model takes its own arguments


# The keys each section may hold: anything else would be read by nothing.
TASK_KEYS = {"classify": {"name"}, "parity": {"name", "bits"}, "bytes-lm": {"name"}}
DATA_OPTIONS = {
    "classify": {"flip", "pad", "preprocess", "cluttered_train_size", "channels", "holdout",
                 "input_size", "crop_scale", "val_fraction", "workers"},  # (the last four: image folders)
    "parity": set(),
    "bytes-lm": {"seq_len"},
}


def _known_keys(section: str, values: dict, known: set) -> None:
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"unknown {section} key(s) {', '.join(map(repr, unknown))}; known: {', '.join(sorted(known)) or 'none'}")


def _check_adaptive(model, adaptive: dict) -> None:
    loss = getattr(model, "adaptive_loss", None)
    if loss is None:
        if adaptive:
            raise ConfigError(f"{type(model).__name__} has no adaptive loss; remove adaptive {adaptive}")
        return
    accepted = set(inspect.signature(loss).parameters) - {"trace"}
    unknown = sorted(set(adaptive) - accepted)
    if unknown:
        raise ConfigError(f"{type(model).__name__}'s adaptive loss takes {', '.join(sorted(accepted))}, not {', '.join(unknown)}")


def learning_rate(config: dict, step: int) -> float:
    base, total = config["lr"], config["steps"]
    kind = config["schedule"]
    if kind == "constant":
        return base
    if kind == "step":  # x0.1 at 60%, 75%, 90% (the SACT CIFAR schedule, scaled to the run)
        return base * 0.1 ** sum(step >= f * total for f in (0.6, 0.75, 0.9))
    warmup = int(config["warmup_fraction"] * total) if kind == "onecycle" else 0
    if step < warmup:
        return base * (0.1 + 0.9 * step / max(1, warmup))
    progress = (step - warmup) / max(1, total - warmup)
    return base * 0.5 * (1 + math.cos(math.pi * progress))


def _optimizer(config: dict, model: torch.nn.Module) -> torch.optim.Optimizer:
    # No weight decay on BatchNorm and biases (they only rescale), as usual for ResNets.
    decay = [p for n, p in model.named_parameters() if p.requires_grad and p.dim() > 1]
    no_decay = [p for n, p in model.named_parameters() if p.requires_grad and p.dim() <= 1]
    groups = [{"params": decay, "weight_decay": config["weight_decay"]}, {"params": no_decay, "weight_decay": 0.0}]
    if config["optimizer"] == "sgd":
        return torch.optim.SGD(groups, lr=config["lr"], momentum=0.9, nesterov=True)
    if config["optimizer"] == "adam":
        return torch.optim.Adam(groups, lr=config["lr"])
    if config["optimizer"] == "adamw":  # decoupled weight decay: the usual optimiser for transformers
        return torch.optim.AdamW(groups, lr=config["lr"])
    raise ValueError(f"unknown optimizer {config['optimizer']!r}")


def _init_from(model: torch.nn.Module, checkpoint: Path, processes: Processes) -> None:
    """Start from another checkpoint's weights (an early-exit ResNet from the dense ResNet it
    extends): every tensor of the file must fit a parameter or buffer of the model by name and
    shape; the model's others keep their initial values, and are named in the log."""
    from safetensors.torch import load_file

    path = checkpoint / "model.safetensors"
    if not path.is_file():
        raise ConfigError(f"init_from: no model.safetensors in {checkpoint}")
    weights = load_file(str(path))
    own = model.state_dict()
    misfits = [k for k, v in weights.items() if k not in own or own[k].shape != v.shape]
    if misfits:
        raise ConfigError(f"init_from {checkpoint}: {len(misfits)} tensor(s) fit no part of the model, e.g. {misfits[:3]}")
    model.load_state_dict(weights, strict=False)
    fresh = sorted(set(own) - set(weights))
    print_main(processes, f"init_from {checkpoint}: {len(weights)} tensors loaded; {len(fresh)} start as built ({', '.join(fresh[:4])}{' ...' if len(fresh) > 4 else ''})")


def _save_state(path: Path, model, optimizer, step: int, elapsed: float) -> None:
    """Resumable state without pickle: tensors in safetensors, the rest in JSON."""
    # Written under new names, then renamed (state.json last): a kill while saving leaves the
    # previous state whole, or the new one.
    path.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}, str(path / "model.safetensors.tmp"))
    opt = optimizer.state_dict()
    tensors, scalars = {}, {}
    for index, state in opt["state"].items():
        for key, value in state.items():
            if torch.is_tensor(value):
                tensors[f"{index}.{key}"] = value.detach().contiguous().cpu()
            else:
                scalars[f"{index}.{key}"] = value
    save_file(tensors or {"empty": torch.zeros(1)}, str(path / "optimizer.safetensors.tmp"))
    groups = [{k: v for k, v in g.items()} for g in opt["param_groups"]]
    tmp = path / "state.json.tmp"
    tmp.write_text(json.dumps({"step": step, "elapsed": elapsed, "param_groups": groups, "scalars": scalars}))
    os.replace(path / "model.safetensors.tmp", path / "model.safetensors")
    os.replace(path / "optimizer.safetensors.tmp", path / "optimizer.safetensors")
    os.replace(tmp, path / "state.json")


def _load_state(path: Path, model, optimizer, device) -> tuple[int, float]:
    meta = json.loads((path / "state.json").read_text())
    model.load_state_dict(load_file(str(path / "model.safetensors"), device=str(device)))
    tensors = load_file(str(path / "optimizer.safetensors"), device=str(device))
    state: dict = {}
    for key, value in list(tensors.items()) + list(meta["scalars"].items()):
        if key == "empty":
            continue
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    return meta["step"], meta["elapsed"]


def train(config: dict, out_dir: str, device: str = "auto", resume: bool = False, command: str | None = None, progress: bool = True,
          stop_after: int | None = None) -> Path:
    """Train as `config` says and write the checkpoint to out_dir. Under torchrun every process
    runs this: each computes its share of every step's batch, DDP averages the gradients, and
    rank 0 alone logs, saves the training state and writes the checkpoint and its card.

    stop_after: save the training state after that many steps and stop, without a checkpoint
    (a job with a time limit); `resume` continues it."""
    processes = Processes.start(device)
    return processes.run(lambda: _train(config, Path(out_dir), processes, resume, command, progress, stop_after))


def _train(config: dict, out: Path, processes: Processes, resume: bool, command: str | None, progress: bool, stop_after: int | None) -> Path:
    device = processes.device
    torch.manual_seed(config["seed"])  # the same initial weights on every rank
    workload = make_workload(config["task"], config["dataset"], device, config.get("data_options"))
    model_kwargs = {**workload.model_kwargs(), **config["model_kwargs"]}
    try:
        model = models.create_model(config["model"], **model_kwargs).to(device)
    except (UnknownModelError, TypeError) as error:  # a misspelt model or keyword argument
        raise ConfigError(f"model {config['model']!r}: {error}") from None
    _check_adaptive(model, config["adaptive"])
    if config["calibrate"]:  # checked now, not after the last step
        if not (hasattr(model, "calibrate") and int(config["data_options"].get("holdout", 0)) > 0):
            raise ConfigError("calibrate needs a model with a calibrate() method and held-out images (data_options holdout > 0)")
        try:
            inspect.signature(model.calibrate).bind(None, **config["calibrate"])
        except TypeError as error:
            raise ConfigError(f"calibrate {config['calibrate']}: {error} (model.calibrate{inspect.signature(model.calibrate)})") from None
    if config["init_from"]:
        _init_from(model, Path(config["init_from"]), processes)
    if config["batch_size"] % processes.world:
        raise ConfigError(f"batch_size {config['batch_size']} must be a multiple of the number of processes ({processes.world})")
    if processes.world > 1 and config["sync_bn"]:
        use_global_batch_norm(model)
    if processes.world > 1:  # the same initial weights, but each rank its own random draws (AIG's Gumbel noise)
        torch.manual_seed(config["seed"] * 1_000_003 + 7919 * processes.rank + 1)
    optimizer = _optimizer(config, model)
    state_dir = out / "train_state"
    start, elapsed = 0, 0.0
    if resume and (state_dir / "state.json").is_file():  # every rank reads it: --out is shared by all nodes
        start, elapsed = _load_state(state_dir, model, optimizer, device)
        print_main(processes, f"resumed from step {start}")
    trained = DistributedModel(model, processes) if processes.world > 1 else model
    adaptive = dict(config["adaptive"])
    started = time.time() - elapsed
    bar = None
    if progress and processes.main:
        from tqdm import tqdm

        bar = tqdm(total=config["steps"], initial=start, desc=config["model"], dynamic_ncols=True, mininterval=1.0)
    model.train()
    running: dict[str, torch.Tensor] = {}
    stopped = False
    if stop_after is not None and stop_after <= start:
        raise ConfigError(f"--stop-after {stop_after}: the run is already at step {start}")
    batches = train_batches(workload, config, start, processes.rank, processes.world)
    for step, batch in zip(range(start, config["steps"]), batches):
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(config, step)
        hp = dict(adaptive)
        if "tau" in hp and config["tau_warmup_steps"]:
            hp["tau"] = hp["tau"] * min(1.0, step / config["tau_warmup_steps"])
        with autocast(device, config["precision"]):
            loss, stats = workload.loss(trained, batch, hp)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if config["grad_clip"]:
            torch.nn.utils.clip_grad_norm_(model.parameters(), config["grad_clip"])
        optimizer.step()
        # Statistics stay on the device between log lines: reading them each step would force
        # a device sync per step.
        stats = {"loss_total": loss.detach(), **stats}
        for key, value in stats.items():  # exponential moving average for the progress bar
            value = value.detach().float() if torch.is_tensor(value) else torch.tensor(float(value))
            running[key] = value if key not in running else 0.95 * running[key] + 0.05 * value
        if step % config["log_every"] == 0 or step + 1 == config["steps"]:
            shown = {k: round(v, 4) for k, v in processes.mean(running).items()}  # over the ranks
            if not math.isfinite(shown["loss_total"]):
                raise FloatingPointError(f"loss became {shown['loss_total']} at step {step}; lower the learning rate")
            shown.pop("loss_total")
            if bar is not None:
                bar.set_postfix({k: f"{v:.3f}" for k, v in shown.items()})
            elif processes.main:
                print(json.dumps({"step": step, **shown}), flush=True)
        if bar is not None:
            bar.update(1)
        stopped = stop_after is not None and step + 1 == stop_after and step + 1 < config["steps"]
        if ((step + 1) % config["save_every"] == 0 or stopped) and step + 1 < config["steps"] and processes.main:
            _save_state(state_dir, model, optimizer, step + 1, time.time() - started)
        if stopped:
            break
    if bar is not None:
        bar.close()
    if stopped:
        processes.barrier()  # the state is written before any rank leaves
        print_main(processes, f"stopped after step {stop_after}: the state is in {state_dir}; continue with --resume")
        return out
    training_time = time.time() - started
    model.eval()
    devices = processes.devices()
    if not processes.main:  # rank 0 writes and evaluates the checkpoint; the others wait in close()
        return out
    card = {
        **workload.card_fields,
        "train_command": processes.launch_command(command or ""),
        "seed": config["seed"],
        "training_time_s": round(training_time, 1),
        "trained_on": devices[0] if processes.world == 1 else f"{processes.world} processes: " + ", ".join(devices),
        "world_size": processes.world,
        "devices": devices,
        "torch_version": torch.__version__,
        "config": config,
    }
    if "tau" in config["adaptive"] and hasattr(model, "TAU_UNITS"):
        card["tau_units"] = model.TAU_UNITS  # what the config's tau means for this model
    if config["calibrate"]:  # a setting chosen after training on held-out training images (the card keeps how)
        try:
            with torch.no_grad():
                card["calibration"] = model.calibrate(workload.holdout_batches(), **config["calibrate"])
        except ValueError as error:  # e.g. no setting meets the budget: the trained weights are saved all the same
            card["calibration"] = {"failed": str(error)}
            print_main(processes, f"calibrate failed, the model keeps its configured setting: {error}")
    save_checkpoint(model, out, card)
    if state_dir.exists():
        for f in state_dir.iterdir():
            f.unlink()
        state_dir.rmdir()
    evaluate_model(out, device=str(device), workload=workload)
    return out
