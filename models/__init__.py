"""ponderscope's model layer: every family, one registry, one halting rule, safe checkpoints."""
from . import act_rnn, aig, avit, early_exit, mixture_of_depths, resnet, universal_transformer  # noqa: F401  (registers the models)
from .contract import TraceContractError, check_trace
from .checkpoint import Card, CheckpointError, Task, load_checkpoint, read_card, save_checkpoint, write_card
from .halting import HaltingResult, StepwiseHalting, act_weights
from .registry import FAMILIES, Family, ModelInfo, UnknownModelError, create_model, family, list_models, model_info, register_family, register_model
from .trace import BlockTrace, Trace

__all__ = [
    "BlockTrace", "Card", "CheckpointError", "Task", "FAMILIES", "Family", "HaltingResult", "ModelInfo", "StepwiseHalting", "Trace", "TraceContractError", "UnknownModelError",
    "act_weights", "check_trace", "create_model", "family", "list_models", "model_info", "register_family", "register_model", "load_checkpoint", "read_card", "save_checkpoint", "write_card",
]
