"""Data: the procedural shapes data set (shapes.py), images and manifests from files (images.py), and the batch
samplers that feed training (batches.py). Every public name is importable from `tinyvit.data`."""
from .batches import MAX_GROUP_SIZE, BatchConfig, Batches, HardNegativeBatches, negatives_mask
from .images import (IMAGE_MEAN, IMAGE_STD, ManifestDataset, denormalize, load_image, read_manifest, read_rgb,
                     to_tensor)
from .shapes import (COLOURS, HELDOUT, POSITIONS, RGB, SHAPES, SPLITS, UNNAMED_DISTANCE, WHERE, ShapesConfig,
                     ShapesDataset, caption_options, draw_objects, export_shapes, heldout_pairs, make_item, make_scene,
                     object_name, with_article)

__all__ = [
    "BatchConfig", "Batches", "HardNegativeBatches", "MAX_GROUP_SIZE", "negatives_mask",
    "IMAGE_MEAN", "IMAGE_STD", "ManifestDataset", "denormalize", "load_image", "read_manifest", "read_rgb", "to_tensor",
    "COLOURS", "HELDOUT", "POSITIONS", "RGB", "SHAPES", "SPLITS", "UNNAMED_DISTANCE", "WHERE", "ShapesConfig",
    "ShapesDataset", "caption_options", "draw_objects", "export_shapes", "heldout_pairs", "make_item", "make_scene",
    "object_name", "with_article",
]
