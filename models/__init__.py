"""ponderscope's model layer: every family, one registry, one halting rule, safe checkpoints."""
from . import act_rnn, aig, resnet  # noqa: F401  (registers the models)
from .checkpoint import CheckpointError, load_checkpoint, read_card, save_checkpoint, write_card
from .halting import HaltingResult, StepwiseHalting, act_weights
from .registry import UnknownModelError, create_model, list_models
from .trace import BlockTrace, Trace

__all__ = [
    "BlockTrace", "CheckpointError", "HaltingResult", "StepwiseHalting", "Trace", "UnknownModelError",
    "act_weights", "create_model", "list_models", "load_checkpoint", "read_card", "save_checkpoint", "write_card",
]
