"""vitlib: a Vision Transformer from scratch and the Dogs vs Cats transfer-learning study."""

from vitlib.checkpoints import create_model
from vitlib.config import get_config
from vitlib.model import VisionTransformer, build_vit

__all__ = ["VisionTransformer", "build_vit", "create_model", "get_config"]
__version__ = "0.1.0"
