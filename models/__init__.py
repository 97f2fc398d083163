"""ponderscope's model layer: every family, one registry, one halting rule, safe checkpoints."""
from . import act_rnn, aig, resnet  # noqa: F401  (registers the models)
from .checkpoint import Card, CheckpointError, Task, load_checkpoint, read_card, save_checkpoint, write_card
from .halting import HaltingResult, StepwiseHalting, act_weights
from .registry import FAMILIES, ModelInfo, UnknownModelError, create_model, list_models, model_info, register_family, register_model
from .trace import BlockTrace, Trace

__all__ = [
    "BlockTrace", "Card", "CheckpointError", "Task", "FAMILIES", "HaltingResult", "ModelInfo", "StepwiseHalting", "Trace", "UnknownModelError",
    "act_weights", "create_model", "list_models", "model_info", "register_family", "register_model", "load_checkpoint", "read_card", "save_checkpoint", "write_card",
]
