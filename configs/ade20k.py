r"""ADE20k with block scribbles, DeepLabV3+ on ResNet-101 (paper Table 6).

Paper (section 3.5, appendix C, Table 6): 150 classes, 20,210 training and
2,000 validation images, the block-wise annotation of TEL [25] keeping 50% of
the labels (``block50``), an ImageNet-pretrained ResNet-101, H_CCE + P_CD on
the 4-neighbourhood, eta 0.3, lambda 6, sigma_rgb **3**, batch 12 (the
paper's default), SGD with poly 0.9, trained in a *single stage*.

Not in the paper, taken from the lineage: crop 513 at scales 0.5-2 of the crop
(the VOC crop of the paper's code base; TEL's openseg config crops 520), lr
0.01 (pytorch-deeplab-xception's non-VOC rate) and 120 epochs (about
openseg's 150k iterations at batch 16): 202,100 steps at batch 12. The lr is
on the lineage's loss (``loss.normalization="batch_mean"``, set by
:func:`configs.common.block_config`: pixel mean / batch size).

Prerequisites: ``ade20k_block`` prepared in ``--config.input.data_dir`` (builder
config ``block50``) and ``weights/resnet101``. Run::

  python -m potts_jax.main --config=configs/ade20k.py --workdir=DIR

Variants: as :mod:`configs.cityscapes` (``method=``, ``relaxation=``,
``cross_entropy=``, ``neighborhood=``, ``block=50|20|10``,
``stage=single|both|1|2``, ``batch=N``, ``pretrained=false``, ``runlocal``).

Expected (paper Table 6, val mIoU, block50, ResNet-101): 39.7 (TEL 39.2,
GridCRF loss 37.7, DenseCRF loss 37.4; full supervision 44.6).
"""

import ml_collections

from configs import common

TRAIN_IMAGES = 20_210
EPOCHS = 120


def get_config(arg: str = "") -> ml_collections.ConfigDict:
  """The recipe of :func:`configs.common.block_config` on ADE20k."""
  return common.block_config(arg, dataset="ade20k_block", num_classes=150,
                             train_images=TRAIN_IMAGES, epochs=EPOCHS,
                             crop_size=513)
