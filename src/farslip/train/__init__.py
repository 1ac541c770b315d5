"""Training: YAML recipes, the loop, checkpoints with exact resume, torchrun."""
from .config import TrainConfig, load_config
from .loop import train

__all__ = ["TrainConfig", "load_config", "train"]
