"""Model plugins. Every plugin module is imported here explicitly so its family is registered."""
from models import smp_models, unet3plus  # noqa: F401  (registration side effects)
from models import heatmap_unet  # noqa: F401
from models import hinted  # noqa: F401  (family 'hint': interactive keypoints, image + hint maps in)
from models import yolo  # noqa: F401  (family 'yolo': ultralytics instance segmentation)
from models import timm_models  # noqa: F401  (family 'timm': bone-age regressors with the sex input)
from models import classifier  # noqa: F401  (family 'classifier': timm classifiers, e.g. orientation)
from models.registry import (InputSize, ModelOptionsError, UnknownModelError, check_options, create_model, families,
                             input_size, is_external, list_models, resolve)

__all__ = ["InputSize", "ModelOptionsError", "UnknownModelError", "check_options", "create_model", "families",
           "input_size", "is_external", "list_models", "resolve"]
