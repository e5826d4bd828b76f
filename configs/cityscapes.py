r"""Cityscapes with block scribbles, DeepLabV3+ on ResNet-101 (paper Table 6).

Paper (section 3.5, appendix C, Table 6): 19 classes, 2,975 training and 500
validation images, the block-wise annotation of TEL [25] keeping 50% of the
labels (``block50``), an ImageNet-pretrained ResNet-101, H_CCE + P_CD on the
4-neighbourhood, eta 0.3, lambda 6, sigma_rgb **3**, batch 12 (the paper's
default), SGD with poly 0.9, trained in a *single stage* (no pCE stage).

Not in the paper, taken from the lineage: crop 769 at scales 0.5-2 of the
crop (DeepLab's and openseg's Cityscapes crop; the paper's VOC code base,
pytorch-deeplab-xception, crops at a random scale of the crop size too), lr
0.01 and 200 epochs (pytorch-deeplab-xception's Cityscapes defaults): 49,584
steps at batch 12. The lr is on the lineage's loss
(``loss.normalization="batch_mean"``: pixel mean / batch size).

Prerequisites: ``cityscapes_block`` prepared in ``--config.input.data_dir``
(builder config ``block50``; the run names the preparation command when it is
missing) and ``weights/resnet101`` from ``python -m potts_jax.models.pretrained
convert --arch resnet101 ...``. Run::

  python -m potts_jax.main --config=configs/cityscapes.py --workdir=DIR

Variants: ``method=``, ``relaxation=``, ``cross_entropy=``, ``neighborhood=``
(as :mod:`configs.voc`), ``block=50|20|10`` (share of labelled pixels),
``stage=single|both|1|2`` (single: the paper's one stage; both: pCE at lr
0.01 then ``method`` at 0.001), ``batch=N``, ``pretrained=false``,
``runlocal``.

Expected (paper Table 6, val mIoU, block50, ResNet-101): 72.4 (TEL 71.5,
GridCRF loss 69.5, DenseCRF loss 69.3; full supervision 80.2).
"""

import ml_collections

from configs import common

TRAIN_IMAGES = 2_975
EPOCHS = 200


def get_config(arg: str = "") -> ml_collections.ConfigDict:
  """The recipe of :func:`configs.common.block_config` on Cityscapes."""
  return common.block_config(arg, dataset="cityscapes_block", num_classes=19,
                             train_images=TRAIN_IMAGES, epochs=EPOCHS,
                             crop_size=769)
