r"""PASCAL VOC 2012 + ScribbleSup, DeepLabV3+ on ResNet-101 (paper Table 5).

The recipe of :mod:`configs.voc` (two stages of 60 epochs over ``train_aug``,
stage 1 pCE at lr 0.007, stage 2 soft self-labeling at lr 0.0007 from stage
1, batch 12, crop 513, H_CCE + P_CD, 4-NN, eta 0.3, lambda 6, sigma_rgb 9)
with an ImageNet-pretrained ResNet-101 backbone at output stride 16, converted
once into ``weights/resnet101`` (``--config.model.pretrained_dir``). As in
:mod:`configs.voc`, lr 0.007 / 0.0007 are on the lineage's loss: pixel mean /
batch size (``loss.normalization="batch_mean"``)::

  python -m potts_jax.models.pretrained convert --arch resnet101 \
      --src resnet101-63fe2227.pth --dst weights/resnet101

Run::

  python -m potts_jax.main --config=configs/voc_r101.py --workdir=DIR

Variants: those of :mod:`configs.voc` (``method=``, ``relaxation=``,
``cross_entropy=``, ``neighborhood=``, ``length=``, ``stage=both|1|2|single``,
``batch=N``, ``pretrained=false``, ``runlocal``). ``batch=16`` is the paper's
larger-batch row; ``stage=single`` (soft self-labeling alone from ImageNet at
lr 0.007, no pCE stage) is its "no pretrain" row.

Expected (paper Table 5, val mIoU, no CRF post-processing): 77.7 at batch 12
(77.5 with ``relaxation=q``), 78.1 at ``batch=16``; "no pretrain"
(``stage=single``) 76.7 at batch 12, 77.6 at ``stage=single,batch=16``.
"""

import ml_collections

from configs import voc


def get_config(arg: str = "") -> ml_collections.ConfigDict:
  c = voc.get_config(arg)
  c.model.backbone = "resnet101"
  c.model.width = 1.0
  if c.model.pretrained_dir:
    c.model.pretrained_dir = "weights/resnet101"
  c.name = c.name.replace("voc_", "voc_r101_", 1)
  return c
