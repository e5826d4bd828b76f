"""Label conversions of the block-scribble builders: Cityscapes and ADE20k.

The class names and the tables that turn the datasets' label files into the
stored masks (class ids ``0..K-1``, 255 ignore), used by
:mod:`potts_jax.data.builders.block_builders`:

- Cityscapes (19 trainIds): :data:`CITYSCAPES_CLASSES`,
  :data:`CITYSCAPES_TRAIN_IDS` (labelIds 0..33 -> trainIds by the official
  table of ``cityscapesscripts/helpers/labels.py``, the other ids -> 255),
  :func:`cityscapes_train_ids`;
- ADE20k SceneParsing (150 classes): :data:`ADE20K_CLASSES` (annotation 0,
  "other", -> 255, 1..150 -> 0..149), :func:`ade20k_classes`.

A value outside those ranges is a ``ValueError`` naming the label file. No
TensorFlow or TFDS here: numpy only.
"""

from __future__ import annotations

import pathlib

import numpy as np

_IGNORE = 255

CITYSCAPES_CLASSES: tuple[str, ...] = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light",
    "traffic sign", "vegetation", "terrain", "sky", "person", "rider", "car",
    "truck", "bus", "train", "motorcycle", "bicycle",
)
"""Names of Cityscapes trainIds 0..18."""
CITYSCAPES_TRAIN_IDS: dict[int, int] = {
    7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9,
    23: 10, 24: 11, 25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18,
}
"""labelId -> trainId (``cityscapesscripts`` labels.py); the other ids
0..33 (unlabeled, ego vehicle, ..., parking, ..., caravan, trailer) -> 255."""
CITYSCAPES_NUM_IDS = 34

ADE20K_CLASSES: tuple[str, ...] = tuple((
    "wall,building,sky,floor,tree,ceiling,road,bed,windowpane,grass,cabinet,"
    "sidewalk,person,earth,door,table,mountain,plant,curtain,chair,car,"
    "water,painting,sofa,shelf,house,sea,mirror,rug,field,armchair,seat,"
    "fence,desk,rock,wardrobe,lamp,bathtub,railing,cushion,base,box,column,"
    "signboard,chest of drawers,counter,sand,sink,skyscraper,fireplace,"
    "refrigerator,grandstand,path,stairs,runway,case,pool table,pillow,"
    "screen door,stairway,river,bridge,bookcase,blind,coffee table,toilet,"
    "flower,book,hill,bench,countertop,stove,palm,kitchen island,computer,"
    "swivel chair,boat,bar,arcade machine,hovel,bus,towel,light,truck,tower,"
    "chandelier,awning,streetlight,booth,television receiver,airplane,"
    "dirt track,apparel,pole,land,bannister,escalator,ottoman,bottle,buffet,"
    "poster,stage,van,ship,fountain,conveyer belt,canopy,washer,plaything,"
    "swimming pool,stool,barrel,basket,waterfall,tent,bag,minibike,cradle,"
    "oven,ball,food,step,tank,trade name,microwave,pot,animal,bicycle,lake,"
    "dishwasher,screen,blanket,sculpture,hood,sconce,vase,traffic light,"
    "tray,ashcan,fan,pier,crt screen,plate,monitor,bulletin board,shower,"
    "radiator,glass,clock,flag"
).split(","))
"""Names of ADE20k SceneParsing classes 0..149 (annotation values 1..150)."""


def _lookup(path: pathlib.Path, labels: np.ndarray, table: np.ndarray,
            what: str) -> np.ndarray:
  """``table[labels]``; -1 entries are an error naming ``path``."""
  out = table[labels]
  if np.any(out < 0):
    bad = np.unique(labels[out < 0]).tolist()
    raise ValueError(f"{path}: values {bad} are not {what}")
  return out.astype(np.uint8)


def cityscapes_train_ids(label_ids: np.ndarray,
                         path: pathlib.Path | str = "labels") -> np.ndarray:
  """Cityscapes labelIds ``[H, W]`` uint8 -> trainIds ``[H, W]`` uint8.

  Raises:
    ValueError: naming ``path`` for an id above 33.
  """
  table = np.full(256, -1, np.int16)
  table[:CITYSCAPES_NUM_IDS] = _IGNORE
  for label_id, train_id in CITYSCAPES_TRAIN_IDS.items():
    table[label_id] = train_id
  return _lookup(pathlib.Path(path), np.asarray(label_ids, np.uint8), table,
                 f"Cityscapes labelIds (0..{CITYSCAPES_NUM_IDS - 1})")


def ade20k_classes(annotation: np.ndarray,
                   path: pathlib.Path | str = "labels") -> np.ndarray:
  """ADE20k annotation ``[H, W]`` uint8 (0..150) -> ``[H, W]`` 0..149, 255.

  Raises:
    ValueError: naming ``path`` for a value above 150.
  """
  table = np.full(256, -1, np.int16)
  table[0] = _IGNORE
  table[1:len(ADE20K_CLASSES) + 1] = np.arange(len(ADE20K_CLASSES))
  return _lookup(pathlib.Path(path), np.asarray(annotation, np.uint8), table,
                 f"ADE20k classes (0..{len(ADE20K_CLASSES)})")
