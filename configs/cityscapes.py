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
(``loss_normalization="batch_mean"``: pixel mean / batch size).

Prerequisites: ``cityscapes_block`` prepared in ``--config.data_dir``
(builder config ``block50``; the run names the preparation command when it is
missing) and ``weights/resnet101`` from ``python -m potts_jax.pretrained
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
from configs import voc

TRAIN_IMAGES = 2_975
EPOCHS = 200
LR = 0.01
BLOCKS = (10, 20, 50)


def get_config(arg: str = "") -> ml_collections.ConfigDict:
  return block_config(arg, dataset="cityscapes_block", num_classes=19,
                      train_images=TRAIN_IMAGES, epochs=EPOCHS, crop_size=769)


def block_config(arg: str, *, dataset: str, num_classes: int,
                 train_images: int, epochs: int, crop_size: int
                 ) -> ml_collections.ConfigDict:
  """The block-scribble recipe of Table 6 (shared with :mod:`configs.ade20k`)."""
  arg = common.parse_arg(
      arg, method="soft_sl", relaxation="cd", cross_entropy="cce",
      neighborhood="nn4", stage="single", block=50, batch=12,
      pretrained=True, runlocal=False)
  voc.check_choice("block", arg.block, BLOCKS)
  c = common.get_config()
  c.lock()

  c.dataset = dataset
  c.dataset_config = f"block{arg.block}"
  c.num_classes = num_classes
  c.train_split = "train"
  c.eval_split = "val"
  c.crop_size = crop_size
  c.scale_range = (0.5, 2.0)
  c.flip = True
  c.blur_prob = 0.0
  c.eval_batch_size = 4

  c.model.backbone = "resnet101"
  c.model.output_stride = 16
  c.model.pretrained_dir = "weights/resnet101" if arg.pretrained else ""

  c.batch_size = arg.batch
  c.total_steps = voc.steps_for(epochs, train_images, arg.batch)
  c.momentum = 0.9
  c.weight_decay = 5e-4
  c.poly_power = 0.9
  # The lineage's loss (pixel mean / batch size), for which lr 0.01 is set.
  c.loss_normalization = "batch_mean"

  voc.set_loss(c, arg)
  c.eta = 0.3
  c.lam = 6.0
  c.sigma_rgb = 3.0
  c.solver_steps = 200
  c.solver_step_size = 0.075

  c.log_every = 50
  c.checkpoint_every = 1000
  c.name = (f"{dataset}{arg.block}_{arg.method}_{arg.cross_entropy}_"
            f"{arg.relaxation}_{arg.neighborhood}")
  if arg.runlocal:
    voc.set_runlocal(c)
  voc.set_stages(c, arg.stage, arg.method, LR, LR / 10)
  return c
